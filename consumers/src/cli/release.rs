//! `sshwarden release INSTANCE_ID`: starts the release state machine, which
//! restores the security groups the quarantine saved in tags and removes its
//! tags, and (with `--wait`) reports how the execution ended. With
//! `--direct` (built with the `direct` feature) it does the same steps
//! itself through EC2 (and SNS, given `--topic-arn`); either way works on an
//! instance quarantined by either sink, since both write the same tags.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sshwarden_pipeline::policy::is_ec2_instance_id;

#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// The quarantined instance.
    pub instance_id: String,
    /// The release state machine (unless --direct).
    #[arg(long, env = "SSHWARDEN_RELEASE_STATE_MACHINE_ARN")]
    pub release_state_machine_arn: Option<String>,
    /// Restore the saved groups through EC2 from here, without Step Functions
    /// (needs a build with `--features direct`).
    #[arg(long, conflicts_with_all = ["release_state_machine_arn", "wait"])]
    pub direct: bool,
    /// With --direct: where the `released` notification goes (none without
    /// it). The release state machine publishes to its own topic, so this is
    /// unused without --direct.
    #[arg(long, env = "SSHWARDEN_TOPIC_ARN")]
    pub topic_arn: Option<String>,
    /// Who asked, recorded in the execution input.
    #[arg(long, env = "USER", default_value = "unknown")]
    pub requested_by: String,
    /// Wait for the execution to end (at most this many seconds) and exit
    /// non-zero unless it succeeded.
    #[arg(long)]
    pub wait: Option<u64>,
}

pub fn release(args: &ReleaseArgs) -> anyhow::Result<()> {
    if !is_ec2_instance_id(&args.instance_id) {
        bail!(
            "{:?} is not an EC2 instance id (i- and 8 or 17 hex digits)",
            args.instance_id
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.direct {
        return runtime.block_on(release_direct(args));
    }
    let Some(arn) = args.release_state_machine_arn.as_deref() else {
        bail!("give --release-state-machine-arn (SSHWARDEN_RELEASE_STATE_MACHINE_ARN), or --direct to restore without Step Functions");
    };
    if !arn.starts_with("arn:") {
        bail!("--release-state-machine-arn {arn:?} is not an ARN");
    }
    runtime.block_on(release_through_machine(args, arn))
}

#[cfg(feature = "direct")]
async fn release_direct(args: &ReleaseArgs) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let r = crate::sink::direct::release(
        &sdk,
        &args.instance_id,
        &args.requested_by,
        args.topic_arn.as_deref(),
    )
    .await?;
    for (interface, groups) in &r.interfaces {
        println!("{interface} {}", groups.join(","));
    }
    for (interface, why) in &r.skipped {
        eprintln!("sshwarden: warning: {interface}: {why}");
    }
    eprintln!("sshwarden: {} {}", args.instance_id, r.event);
    Ok(())
}

#[cfg(not(feature = "direct"))]
async fn release_direct(_args: &ReleaseArgs) -> anyhow::Result<()> {
    bail!("this sshwarden was built without the direct sink: rebuild with `cargo build --release --features direct`, or give --release-state-machine-arn")
}

async fn release_through_machine(
    args: &ReleaseArgs,
    state_machine_arn: &str,
) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = format!("sw1-release-{}-{now}", args.instance_id);
    let input = serde_json::json!({
        "version": 1,
        "action": "release",
        "instance_id": args.instance_id,
        "requested_by": args.requested_by,
    });
    let started = sfn
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(&name)
        .input(input.to_string())
        .send()
        .await
        .map_err(crate::aws::aws_error)
        .context("cannot start the release execution")?;
    let arn = started.execution_arn().to_owned();
    println!("{arn}");
    let Some(wait) = args.wait else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let d = sfn
            .describe_execution()
            .execution_arn(&arn)
            .send()
            .await
            .map_err(crate::aws::aws_error)
            .context("cannot describe the release execution")?;
        match d.status().as_str() {
            "RUNNING" | "PENDING_REDRIVE" => {}
            "SUCCEEDED" => {
                eprintln!("sshwarden: {} released", args.instance_id);
                return Ok(());
            }
            other => bail!(
                "release of {} ended {other}: {} {}",
                args.instance_id,
                d.error().unwrap_or(""),
                d.cause().unwrap_or("")
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "release of {} still running after {wait} s: {arn}",
                args.instance_id
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
