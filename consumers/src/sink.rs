//! Sinks: where remediation commands go. A sink either delivers a command or
//! says why not; the caller retries with backoff and holds the shard's
//! checkpoint until delivery, so a command is never dropped.

use std::io::Write;

use sshwarden_pipeline::command::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON command per line on stdout (dry run).
    Stdout,
    /// Step Functions StartExecution on the quarantine state machine.
    Sfn,
    /// The quarantine and notify steps through the EC2 and SNS APIs.
    Direct,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    New,
    /// Delivered before (same execution name): a replay.
    AlreadyHandled,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

pub enum Sink {
    Stdout(StdoutSink),
}

impl Sink {
    pub async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        match self {
            Sink::Stdout(s) => s.deliver(command),
        }
    }
}

pub struct StdoutSink;

impl StdoutSink {
    fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let mut line = serde_json::to_vec(command).map_err(|e| DeliveryError(e.to_string()))?;
        line.push(b'\n');
        // One write of a whole line under the lock: lines from shard tasks never interleave.
        let mut out = std::io::stdout().lock();
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError(format!("stdout: {e}")))?;
        Ok(Delivered::New)
    }
}
