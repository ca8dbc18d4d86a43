//! `sshwarden scan`: offline analysis of auth logs, journal exports or
//! captured subscription payloads through the whole pipeline with the
//! configured policy. Prints per instance (or host) and per source the counts
//! per signal, the rules that fired and the commands that would be issued.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::command::{Command, Origin};
use sshwarden_pipeline::embedded::{EmbeddedStages, FleetSummary};
use sshwarden_pipeline::policy::{Decision, Suppression};
use sshwarden_pipeline::time::format_rfc3339_ms;
use sshwarden_pipeline::{EngineConfig, LineInput, RecordInput, Stats, TextLine};

use super::input::{self, Format, Payload};
use super::scan_split;

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Files to scan (`-` for stdin; gzip is read directly).
    #[arg(default_value = "-")]
    pub inputs: Vec<String>,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Year for syslog timestamps without one [default: the current year].
    #[arg(long)]
    pub year: Option<i64>,
    /// How many source networks to list (largest totals first, ties in
    /// address order).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Progress on stderr every two seconds [default: when stderr is a terminal].
    #[arg(long)]
    pub progress: bool,
    /// Split the input over this many shard engines by host (or log
    /// stream), as Kinesis splits a fleet, with the fleet stage adding up
    /// their partials (docs/fleet.md). 1: one engine sees everything.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Threads for raw lines: with 2, one reads and classifies while the
    /// other counts, and the report is the same as with 1. The work has two
    /// halves, so a third thread would add nothing; --shards above 1 runs
    /// on one [default: 2 with one shard and two cores or more, else 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub threads: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub inputs: Vec<String>,
    pub stats: Stats,
    pub invalid_utf8_lines: u64,
    pub bad_payloads: u64,
    pub instances: Vec<Row>,
    pub sources: Vec<Row>,
    pub commands: Vec<Command>,
    pub suppressed: Vec<SuppressedRow>,
    /// With `--shards` above 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSummary>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub subject: String,
    pub total: u64,
    pub counts: BTreeMap<&'static str, u64>,
    pub rules_fired: BTreeSet<String>,
}

#[derive(Debug, Serialize)]
pub struct SuppressedRow {
    pub rule: String,
    pub subject: String,
    pub window_start: String,
    pub reason: Suppression,
}

pub fn scan(
    args: &ScanArgs,
    mut config: EngineConfig,
    out: &mut dyn Write,
) -> anyhow::Result<Report> {
    config.keep_totals = true;
    // Nothing checkpoints a scan: the windows need not keep positions.
    config.window.checkpoint_positions = false;
    config.default_year = args.year.unwrap_or_else(current_year);
    let mut stages = EmbeddedStages::new(config, args.shards)?;
    let threads = match args.threads {
        Some(2) if args.shards > 1 => {
            anyhow::bail!("--threads 2 needs --shards 1: shard engines run on one thread")
        }
        Some(n) => n,
        None if args.shards > 1 => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(2) as u8),
    };
    let mut decisions = Vec::new();
    let mut invalid_utf8_lines = 0u64;
    let mut bad_payloads = 0u64;
    let show_progress = args.progress || std::io::stderr().is_terminal();
    let mut progress = Progress::new(show_progress);
    let mut position = 0u64;
    // Offline, the reading clock stands for the arrival time: a line cannot
    // have been written after it was read (read once: a file is read in
    // seconds, and the clamp allows a minute).
    let reading_clock = crate::clock::now_ms();
    for name in &args.inputs {
        let mut input = input::open(name, args.format)?;
        let fallback_instance = if name == "-" { "stdin" } else { name.as_str() };
        match input.format {
            Format::Payloads => input::for_each_payload(&mut *input.reader, |p| {
                position += 1;
                match p {
                    Payload::Record(bytes) => {
                        let record = RecordInput {
                            data: &bytes,
                            position,
                            arrival_ms: Some(reading_clock),
                            ..RecordInput::default()
                        };
                        if let Err(e) = stages.process_payload(&record, &mut decisions) {
                            eprintln!("sshwarden: {name}: payload {position} skipped: {e}");
                        }
                    }
                    Payload::Bad(why) => {
                        bad_payloads += 1;
                        eprintln!("sshwarden: {name}: payload {position} skipped: {why}");
                    }
                }
                progress.tick(position, &stages);
                Ok(())
            })?,
            Format::Lines | Format::Auto => {
                let origin = Origin {
                    account: String::new(),
                    log_group: String::new(),
                    log_stream: name.clone(),
                };
                let line = TextLine {
                    instance: fallback_instance,
                    instance_from_host: true,
                    arrival_ms: Some(reading_clock),
                    position,
                    line: "",
                };
                // One engine: its halves (on one thread or two); shard
                // engines and their fleet stage: line by line.
                match stages.engine_mut() {
                    Some(engine) => {
                        let read = scan_split::scan_lines(
                            threads,
                            &mut *input.reader,
                            engine,
                            line,
                            &origin,
                            &mut decisions,
                            |at, stats| progress.tick_with(at, stats),
                        )?;
                        position += read.lines;
                        invalid_utf8_lines += read.lossy;
                    }
                    None => input::for_each_line(&mut *input.reader, |text, lossy| {
                        position += 1;
                        invalid_utf8_lines += u64::from(lossy);
                        stages.process_line(
                            &LineInput::from(TextLine {
                                position,
                                line: text,
                                ..line
                            }),
                            &origin,
                            &mut decisions,
                        );
                        if position % 65_536 == 0 {
                            progress.tick(position, &stages);
                        }
                        Ok(())
                    })?,
                }
            }
        }
    }
    stages.finish(&mut decisions);
    progress.done(position, &stages);
    let report = build_report(args, &stages, decisions, invalid_utf8_lines, bad_payloads);
    let late = report.stats.windows.late_events;
    if late > 0 {
        // A yearless line read as the wrong year is late by whole years:
        // the year is as likely a cause as the order.
        let year = args.year.unwrap_or_else(current_year);
        eprintln!(
            "sshwarden: {late} events arrived after their window closed and were not counted; \
             give inputs in time order, --year if lines without a year are not from {year}, \
             or raise --allowed-lateness-secs"
        );
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        print_table(&report, out)?;
    }
    Ok(report)
}

fn build_report(
    args: &ScanArgs,
    stages: &EmbeddedStages,
    decisions: Vec<Decision>,
    invalid_utf8_lines: u64,
    bad_payloads: u64,
) -> Report {
    let mut fired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut commands = Vec::new();
    let mut suppressed = Vec::new();
    for d in decisions {
        match d {
            Decision::Command(c) => {
                let subject = c
                    .instance_id
                    .clone()
                    .or(c.source.clone())
                    .unwrap_or_default();
                fired.entry(subject).or_default().insert(c.rule.clone());
                commands.push(*c);
            }
            Decision::Suppressed {
                rule,
                subject,
                window_start_ms,
                reason,
            } => {
                let subject = subject_text(&subject);
                fired
                    .entry(subject.clone())
                    .or_default()
                    .insert(rule.clone());
                suppressed.push(SuppressedRow {
                    rule,
                    subject,
                    window_start: format_rfc3339_ms(window_start_ms),
                    reason,
                });
            }
        }
    }
    let row = |subject: String, counts: &[u64; Signal::COUNT]| Row {
        total: counts.iter().sum(),
        counts: Signal::ALL
            .iter()
            .filter(|s| counts[s.index()] > 0)
            .map(|s| (s.as_str(), counts[s.index()]))
            .collect(),
        rules_fired: fired.get(&subject).cloned().unwrap_or_default(),
        subject,
    };
    let (mut instances, mut sources) = (Vec::new(), Vec::new());
    if let Some(t) = stages.totals() {
        instances = t.instances.iter().map(|(k, c)| row(k.clone(), c)).collect();
        instances.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then_with(|| a.subject.cmp(&b.subject))
        });
        sources = t
            .top_sources(args.top)
            .into_iter()
            .map(|(net, c)| row(net.to_string(), c))
            .collect();
    }
    Report {
        inputs: args.inputs.clone(),
        stats: stages.stats(),
        invalid_utf8_lines,
        bad_payloads,
        instances,
        sources,
        commands,
        suppressed,
        fleet: (args.shards > 1).then(|| stages.fleet_summary()),
    }
}

fn subject_text(s: &sshwarden_pipeline::window::Subject) -> String {
    match s {
        sshwarden_pipeline::window::Subject::Instance(i) => i.to_string(),
        sshwarden_pipeline::window::Subject::Source(s) => s.to_string(),
    }
}

fn print_table(r: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = &r.stats;
    writeln!(
        out,
        "scanned {} lines: {} not from sshd, {} sshd lines not recognised, {} counted as evidence",
        s.events,
        s.non_sshd_lines,
        s.unclassified_sshd_lines,
        s.signals.values().sum::<u64>()
    )?;
    if s.records > 0 {
        writeln!(
            out,
            "payloads: {} records, {} control messages, {} decode errors, {} bad payloads",
            s.records, s.control_messages, s.decode_errors, r.bad_payloads
        )?;
    }
    let skipped = [
        ("late (window closed)", s.windows.late_events),
        ("duplicate event ids", s.windows.duplicate_events),
        ("from allowlisted sources", s.allowlisted_source_events),
        (
            "invalid UTF-8 lines (read with U+FFFD)",
            r.invalid_utf8_lines,
        ),
        ("ambiguous lines (no address attributed)", s.ambiguous_lines),
        (
            "evidence with no attributable address",
            s.unattributed_evidence,
        ),
        ("evicted instance keys", s.windows.evicted_instances),
        ("evicted source keys", s.windows.evicted_sources),
        (
            "sources whose totals were dropped (the smallest, past max_sources)",
            s.dropped_source_totals,
        ),
        (
            "instances whose totals were dropped (the smallest, past max_instances)",
            s.dropped_instance_totals,
        ),
    ];
    for (what, n) in skipped.iter().filter(|(_, n)| *n > 0) {
        writeln!(out, "  {n} {what}")?;
    }
    let signal_header: String = Signal::ALL
        .iter()
        .map(|s| format!(" {:>12}", s.as_str()))
        .collect();
    for (title, rows) in [("instance / host", &r.instances), ("source", &r.sources)] {
        writeln!(out)?;
        writeln!(
            out,
            "{title:<40} {:>7}{signal_header}  rules fired",
            "total"
        )?;
        for row in rows.iter() {
            let cells: String = Signal::ALL
                .iter()
                .map(|s| format!(" {:>12}", row.counts.get(s.as_str()).copied().unwrap_or(0)))
                .collect();
            let rules: Vec<&str> = row.rules_fired.iter().map(String::as_str).collect();
            writeln!(
                out,
                "{:<40} {:>7}{cells}  {}",
                row.subject,
                row.total,
                rules.join(",")
            )?;
        }
        if rows.is_empty() {
            writeln!(out, "(none)")?;
        }
    }
    if let Some(f) = &r.fleet {
        writeln!(out)?;
        writeln!(
            out,
            "fleet stage over {} shards: {} partials ({:.1} kB), {} fleet rules fired, {} left to the shard that saw them whole",
            f.shards,
            f.partials,
            f.partial_bytes as f64 / 1e3,
            f.stage.fired,
            f.stage.left_to_shard
        )?;
    }
    writeln!(out)?;
    writeln!(out, "commands that would be issued: {}", r.commands.len())?;
    for c in &r.commands {
        writeln!(out, "  {}", c.summary())?;
    }
    for s in &r.suppressed {
        writeln!(
            out,
            "  suppressed ({:?}) {} rule={} window={}",
            s.reason, s.subject, s.rule, s.window_start
        )?;
    }
    Ok(())
}

struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, position: u64, stages: &EmbeddedStages) {
        self.tick_with(position, &|| stages.stats());
    }

    fn tick_with(&mut self, position: u64, stats: &dyn Fn() -> Stats) {
        if self.enabled && self.last.elapsed() >= Duration::from_secs(2) {
            self.last = Instant::now();
            self.print(position, &stats());
        }
    }

    fn done(&mut self, position: u64, stages: &EmbeddedStages) {
        if self.enabled && self.started.elapsed() >= Duration::from_secs(2) {
            self.print(position, &stages.stats());
        }
    }

    fn print(&self, position: u64, s: &Stats) {
        eprintln!(
            "sshwarden: {position} inputs read, {} evidence lines, {} commands, {:.1}s",
            s.signals.values().sum::<u64>(),
            s.commands_quarantine + s.commands_block + s.commands_notify,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn current_year() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    sshwarden_pipeline::time::civil_from_days(secs.div_euclid(86_400)).0
}
