//! The `sshwarden` binary: subcommands over the pipeline core.

mod blast_radius;
mod classify_cmd;
mod config;
mod demo;
mod input;
#[cfg(feature = "kafka")]
mod kafka;
mod metrics;
mod release;
mod run;
mod scan;
mod sink;

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SSH intrusion detection and response for EC2 fleets.
#[derive(Parser)]
#[command(name = "sshwarden", version, about)]
struct Cli {
    #[command(flatten)]
    config: config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `run` variant's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on a simulated fleet under attack, no cloud needed.
    Demo(demo::DemoArgs),
    /// Analyse auth logs, journal exports or captured subscription payloads offline.
    Scan(scan::ScanArgs),
    /// Print one JSON verdict per input line.
    Classify(classify_cmd::ClassifyArgs),
    /// The service: consume a Kinesis stream with shard leases in DynamoDB (or a Kafka topic).
    Run(Box<config::RunFlags>),
    /// Release a quarantined instance: start the release state machine, or restore directly.
    Release(release::ReleaseArgs),
    /// Ask a running worker's /healthz (or /readyz); exit 0 if it answers 200 (container health check).
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct HealthArgs {
    /// Ask /readyz (a lease held, the sink reachable) instead of /healthz (the process serves).
    #[arg(long)]
    ready: bool,
    /// The worker's --metrics-addr; an unspecified address (0.0.0.0) is asked on loopback [default: 127.0.0.1:9464].
    #[arg(long, env = "SSHWARDEN_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Give up after this many milliseconds [default: 2000].
    #[arg(long, env = "SSHWARDEN_HEALTH_TIMEOUT_MS", default_value_t = 2000)]
    timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        // The stdout sink writes from many tasks: stdout must not stay locked here.
        Command::Run(flags) => cli
            .config
            .run_config(flags)
            .and_then(|(config, args)| run_service(args, config)),
        Command::Release(args) => release::run(args),
        Command::Health(args) => health(args, &cli.config),
        Command::Scan(args) => with_stdout(|out| {
            let config = cli.config.engine_config()?;
            scan::run(args, config, out).map(|_| ())
        }),
        Command::Classify(args) => with_stdout(|out| classify_cmd::run(args, out)),
        Command::Demo(args) => with_stdout(|out| {
            let mut config = cli.config.engine_config()?;
            config.keep_totals = true;
            demo::run(args, config, out).map(|_| ())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshwarden: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` with a buffered, locked stdout and flushes it.
fn with_stdout(f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = f(&mut out);
    let flushed = out.flush();
    result.and(flushed.map_err(Into::into))
}

/// An AWS SDK error with its whole chain of causes, for anyhow.
pub(crate) fn aws_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    )
}

/// Logs go to stderr as JSON lines (stdout carries the stdout sink's commands).
fn run_service(
    service: config::Service,
    config: sshwarden_pipeline::EngineConfig,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SSHWARDEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match service {
        config::Service::Kinesis(args) => runtime.block_on(run::run(args, config)),
        config::Service::Kafka(args) => run_kafka(&runtime, args, config),
    }
}

#[cfg(feature = "kafka")]
fn run_kafka(
    runtime: &tokio::runtime::Runtime,
    args: config::KafkaArgs,
    config: sshwarden_pipeline::EngineConfig,
) -> anyhow::Result<()> {
    runtime.block_on(kafka::run(args, config))
}

#[cfg(not(feature = "kafka"))]
fn run_kafka(
    _: &tokio::runtime::Runtime,
    _: config::KafkaArgs,
    _: sshwarden_pipeline::EngineConfig,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "--source kafka: this sshwarden was built without the Kafka source; \
         rebuild with `cargo build --release --features kafka`"
    )
}

/// `sshwarden health`: one GET to the worker's endpoint, quiet on success.
fn health(args: &HealthArgs, config: &config::ConfigArgs) -> anyhow::Result<()> {
    let addr = metrics::local_target(config.metrics_addr(args.metrics_addr)?);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
    let (status, body) = metrics::get(addr, path, timeout)?;
    if status == 200 {
        Ok(())
    } else {
        anyhow::bail!("{path} on {addr} answered {status}: {}", body.trim())
    }
}

/// `sshwarden classify big.log | head` is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

/// The README's configuration reference, generated from the CLI's own
/// definitions so it cannot drift: every option of every command, its
/// `SSHWARDEN_*` variable, its key in the TOML file and its default.
#[cfg(test)]
mod config_reference {
    use clap::CommandFactory;

    const BEGIN: &str = "<!-- config-reference:begin (generated by `SSHWARDEN_BLESS=1 cargo test -p sshwarden-consumers --bin sshwarden config_reference`) -->\n";
    const END: &str = "<!-- config-reference:end -->";

    /// Where a flag lives in the config file, if it has a key there.
    fn toml_key(command: &str, id: &str) -> Option<String> {
        let global = match id {
            "window_secs" => "[window] size_secs",
            "allowed_lateness_secs" => "[window] allowed_lateness_secs",
            "threshold" => "[[rules]] threshold (per rule)",
            "cooldown_secs" => "[policy] cooldown_secs",
            "allow_instances" => "[policy] allow_instances",
            "allow_sources" => "[policy] allow_sources",
            "blast_radius_max" => "[policy.blast_radius] max_quarantines",
            "blast_radius_period_secs" => "[policy.blast_radius] period_secs",
            "max_sources" => "[window] max_sources",
            "max_instances" => "[window] max_instances",
            "max_decompressed_bytes" => "[input] max_decompressed_bytes",
            _ => "",
        };
        match command {
            "every command" if !global.is_empty() => Some(global.to_owned()),
            "run" => Some(format!("[run] {id}")),
            "health" if id == "metrics_addr" => Some("[run] metrics_addr".to_owned()),
            _ => None,
        }
    }

    fn row(command: &str, arg: &clap::Arg) -> String {
        let name = match arg.get_long() {
            Some(long) => format!("`--{long}`"),
            None => format!("`<{}>`", arg.get_id().as_str().to_uppercase()),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "–".into());
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        // Defaults are written in the help text ("[default: 60]") where the
        // value is an Option resolved later; clap knows the others.
        let (text, default) = match help.split_once(" [default: ") {
            Some((text, rest)) => (
                text.to_owned(),
                rest.trim_end_matches('.').trim_end_matches(']').to_owned(),
            ),
            None => {
                let d: Vec<_> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                let d = if d.is_empty() {
                    match arg.get_action() {
                        clap::ArgAction::SetTrue => "off".to_owned(),
                        _ if arg.is_required_set() => "required".to_owned(),
                        _ => "none".to_owned(),
                    }
                } else {
                    d.join(",")
                };
                (help.clone(), d)
            }
        };
        let key = toml_key(command, arg.get_id().as_str())
            .map(|k| format!("`{k}`"))
            .unwrap_or_else(|| "–".into());
        format!(
            "| {command} | {name} | {env} | {key} | {} | {} |\n",
            default.replace('|', "\\|"),
            text.trim().replace('|', "\\|")
        )
    }

    fn shown(arg: &clap::Arg) -> bool {
        !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version")
    }

    fn table() -> String {
        let cli = super::Cli::command();
        let mut out = String::from(
            "| command | option | variable | config file key | default | meaning |\n|---|---|---|---|---|---|\n",
        );
        let globals: Vec<_> = cli.get_arguments().filter(|a| shown(a)).collect();
        for arg in &globals {
            out += &row("every command", arg);
        }
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| shown(a)) {
                if globals.iter().any(|g| g.get_id() == arg.get_id()) {
                    continue;
                }
                out += &row(sub.get_name(), arg);
            }
        }
        out
    }

    #[test]
    fn config_reference_in_readme_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let start = readme
            .find(BEGIN)
            .expect("README.md has no config-reference:begin marker")
            + BEGIN.len();
        let end = start
            + readme[start..]
                .find(END)
                .expect("README.md has no config-reference:end marker");
        let want = table();
        if readme[start..end] == want {
            return;
        }
        if std::env::var_os("SSHWARDEN_BLESS").is_some() {
            std::fs::write(
                &path,
                format!("{}{want}{}", &readme[..start], &readme[end..]),
            )
            .unwrap();
            return;
        }
        panic!(
            "README.md's configuration reference is not the CLI's: run\n  SSHWARDEN_BLESS=1 cargo test -p sshwarden-consumers --bin sshwarden config_reference\nwanted:\n{want}"
        );
    }

    #[test]
    fn defaults_come_from_the_help_text_or_from_clap() {
        let t = table();
        let has = |needle: &str| t.lines().any(|l| l.starts_with(needle));
        assert!(has("| run | `--lease-table` | `SSHWARDEN_LEASE_TABLE` | `[run] lease_table` | sshwarden-leases |"), "{t}");
        assert!(
            has("| health | `--timeout-ms` | `SSHWARDEN_HEALTH_TIMEOUT_MS` | – | 2000 |"),
            "{t}"
        );
        assert!(has("| health | `--ready` | – | – | off |"), "{t}");
        assert!(has("| every command | `--window-secs` | `SSHWARDEN_WINDOW_SECS` | `[window] size_secs` | 60 |"), "{t}");
        assert!(has("| release | `<INSTANCE_ID>` |"), "{t}");
    }
}
