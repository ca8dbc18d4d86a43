//! The sink's settings, whichever source feeds it: which sink, its targets,
//! and where the blast-radius limit is counted. Read by [`crate::sink`].

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON command per line on stdout (dry run).
    #[default]
    Stdout,
    /// Step Functions StartExecution on the quarantine state machine.
    Sfn,
    /// The quarantine and notify steps through the EC2 and SNS APIs.
    Direct,
}

/// Where the blast-radius limit (`--blast-radius-max` per
/// `--blast-radius-period-secs`) is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlastRadiusScope {
    /// Across every worker, in a DynamoDB table of counters per period (and
    /// also by each shard's engine).
    #[default]
    Fleet,
    /// By each shard's engine only.
    Shard,
}

/// The sink settings of `sshwarden run`, whichever source feeds it.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub kind: SinkKind,
    /// The quarantine state machine (with `--sink sfn`).
    pub state_machine_arn: Option<String>,
    /// The block state machine (with `--sink sfn` and `[blocks]`).
    pub block_state_machine_arn: Option<String>,
    /// The quarantine security group (with `--sink direct`).
    pub quarantine_group_id: Option<String>,
    /// The SNS topic for notifications (with `--sink direct`).
    pub topic_arn: Option<String>,
    /// Where the blast-radius limit is counted: fleet-wide in DynamoDB or per shard only.
    pub blast_radius_scope: BlastRadiusScope,
    /// DynamoDB table of the fleet-wide counters.
    pub blast_radius_table: String,
    /// `[blocks]` of the file: block commands go to network ACLs with these
    /// (through the worker with the direct sink, the block state machine with sfn).
    pub blocks: Option<super::BlockSettings>,
}
