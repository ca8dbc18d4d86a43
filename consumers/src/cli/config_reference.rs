//! The README's configuration reference, generated from the CLI's own
//! definitions so it cannot drift: every option of every command, its
//! `SSHWARDEN_*` variable, its key in the TOML file and its default.

use clap::CommandFactory;

/// How the reference is regenerated (also written into the begin marker).
const BLESS: &str = "SSHWARDEN_BLESS=1 cargo test -p sshwarden-consumers --lib config_reference";
/// The begin marker's line starts so (the rest names [`BLESS`]).
const BEGIN: &str = "<!-- config-reference:begin";
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
    let path = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let marker = readme
        .find(BEGIN)
        .expect("README.md has no config-reference:begin marker");
    let start = marker
        + readme[marker..]
            .find('\n')
            .expect("README.md's config-reference:begin marker ends the file")
        + 1;
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
            format!(
                "{}{BEGIN} (generated by `{BLESS}`) -->\n{want}{}",
                &readme[..marker],
                &readme[end..]
            ),
        )
        .unwrap();
        return;
    }
    panic!("README.md's configuration reference is not the CLI's: run\n  {BLESS}\nwanted:\n{want}");
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

/// A flag that clap gives a default and whose help text names one too
/// (`--timeout-ms`) must name the same: the reference shows the help text's.
#[test]
fn help_text_defaults_agree_with_clap_defaults() {
    let cli = super::Cli::command();
    let mut checked = 0;
    for sub in std::iter::once(&cli).chain(cli.get_subcommands()) {
        for arg in sub.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some((_, rest)) = help.split_once(" [default: ") else {
                continue;
            };
            let stated = rest.trim_end_matches('.').trim_end_matches(']');
            let clap: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !clap.is_empty() {
                assert_eq!(clap.join(","), stated, "--{}", arg.get_id());
                checked += 1;
            }
        }
    }
    assert!(checked >= 1, "no flag has both: the test checks nothing");
}
