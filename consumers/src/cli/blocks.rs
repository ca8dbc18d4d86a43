//! `sshwarden blocks list | unblock CIDR | sweep`: what the `block` action
//! wrote to network ACLs, read from and undone through the blocks table
//! (needs a build with the `direct` feature). `sweep` lifts every ban that
//! has ended and is safe to run any number of times, from a schedule or by
//! hand; `--json` prints one JSON document instead of text.

use std::io::Write;

#[derive(Debug, Clone, clap::Args)]
pub struct BlocksArgs {
    #[command(subcommand)]
    pub command: BlocksCommand,
    /// The blocks table [default: `[blocks] table` of the config file, else sshwarden-blocks].
    #[arg(long, env = "SSHWARDEN_BLOCKS_TABLE", global = true)]
    pub blocks_table: Option<String>,
    /// Where `unblocked` notifications go (none without it).
    #[arg(long, env = "SSHWARDEN_TOPIC_ARN", global = true)]
    pub topic_arn: Option<String>,
    /// One JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BlocksCommand {
    /// Every ban in force: prefix, network ACLs and rule numbers, expiry, ban count.
    List {
        /// Also bans that ended but still count for escalation.
        #[arg(long)]
        all: bool,
    },
    /// Lift the ban of a prefix now (its deny entries and its slots).
    Unblock {
        /// The prefix as blocked, e.g. 203.0.113.9/32 or 2001:db8:1:2::/64.
        cidr: String,
    },
    /// Lift every ban that has ended.
    Sweep,
}

pub fn blocks(
    args: &BlocksArgs,
    config: &crate::config::ConfigArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut settings = config.block_settings()?.unwrap_or_default();
    if let Some(t) = &args.blocks_table {
        settings.table = t.clone();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args, settings, out))
}

#[cfg(feature = "direct")]
async fn run(
    args: &BlocksArgs,
    settings: crate::config::BlockSettings,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    use crate::sink::block::{unblocked_message, Blocker};
    use serde_json::json;

    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let sns = args
        .topic_arn
        .clone()
        .map(|t| (aws_sdk_sns::Client::new(&sdk), t));
    let b = Blocker::new(
        settings,
        aws_sdk_ec2::Client::new(&sdk),
        aws_sdk_dynamodb::Client::new(&sdk),
        sns,
    )?;
    let now = crate::clock::now_ms() / 1000;
    let fail = |e: crate::sink::block::BlockError| anyhow::anyhow!("{}: {}", e.error, e.cause);
    match &args.command {
        BlocksCommand::List { all } => {
            let records: Vec<_> = b
                .list()
                .await?
                .into_iter()
                .filter(|r| *all || !r.acls.is_empty())
                .collect();
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &json!({ "now": now, "blocks": records }))?;
                writeln!(out)?;
            } else {
                for r in &records {
                    let acls: Vec<String> =
                        r.acls.iter().map(|(a, n)| format!("{a}#{n}")).collect();
                    let state = if r.acls.is_empty() {
                        "ended"
                    } else if r.expires_at <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\tbans={}\t{}",
                        r.cidr,
                        if acls.is_empty() {
                            "-".into()
                        } else {
                            acls.join(",")
                        },
                        sshwarden_pipeline::time::format_rfc3339_ms(r.expires_at * 1000),
                        state,
                        r.ban_count,
                        r.rule
                    )?;
                }
            }
        }
        BlocksCommand::Unblock { cidr } => {
            let lifted = b.unblock(cidr, now).await.map_err(fail)?;
            if let Some(l) = &lifted {
                b.publish(&unblocked_message(l, "by hand"))
                    .await
                    .map_err(fail)?;
            }
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &json!({ "unblocked": lifted }))?;
                writeln!(out)?;
            } else {
                match lifted {
                    Some(l) => writeln!(
                        out,
                        "{} unblocked ({} entries removed)",
                        l.cidr,
                        l.removed.len()
                    )?,
                    None => writeln!(out, "{cidr}: no ban in force")?,
                }
            }
        }
        BlocksCommand::Sweep => {
            let lifted = b.sweep(now).await.map_err(fail)?;
            for l in &lifted {
                b.publish(&unblocked_message(l, "expired"))
                    .await
                    .map_err(fail)?;
            }
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &json!({ "swept": lifted }))?;
                writeln!(out)?;
            } else {
                for l in &lifted {
                    writeln!(
                        out,
                        "{} lifted ({} entries removed)",
                        l.cidr,
                        l.removed.len()
                    )?;
                }
                writeln!(out, "{} bans lifted", lifted.len())?;
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "direct"))]
async fn run(
    _args: &BlocksArgs,
    _settings: crate::config::BlockSettings,
    _out: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "this sshwarden was built without the direct feature: rebuild with `cargo build --release --features direct`"
    )
}
