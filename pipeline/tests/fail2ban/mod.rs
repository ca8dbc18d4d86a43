//! fail2ban's sshd test logs (`pipeline/tests/corpus/fail2ban`, kept in the
//! repository; origin and licence in its README) and what their annotations
//! say fail2ban expects of each line, read the way fail2ban's own sample test
//! harness reads them.
//!
//! `# filterOptions: {...}` or `[{...}, ...]` sets the option sets (one per
//! fail2ban filter mode: `mode`, default `normal`) that the annotations after
//! it hold for. `# failJSON: {...}` annotates the next log line: `match`,
//! `host` (optional: fail2ban checks only the fields given) and an optional
//! `constraint`, a Python expression over `name` (the filter, `sshd`) and
//! `opts` (the option set). The few constraint forms the logs use are
//! evaluated here; an unknown one fails loudly rather than being guessed.
#![allow(dead_code)] // each test binary uses a part

use std::path::PathBuf;

use serde_json::Value;

/// The corpus files, by the names the cases use.
pub const FILES: [&str; 2] = ["sshd.log", "sshd-journal.log"];

/// fail2ban's sshd filter modes, broadest first.
pub const MODES_BROADEST_FIRST: [&str; 4] = ["aggressive", "ddos", "extra", "normal"];

pub fn dir() -> PathBuf {
    // At run time: a target directory shared by two checkouts must not
    // read the other one's corpus.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/corpus/fail2ban")
}

pub fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading the fail2ban corpus {}: {e}", path.display()))
}

/// What fail2ban expects of one line in one mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Not a failure.
    NoMatch,
    /// A failure by this host (as written in the annotation).
    Host(String),
    /// A failure; the annotation names no host.
    AnyHost,
}

/// One annotated log line.
#[derive(Clone, Debug)]
pub struct Case {
    /// `file:line`, 1-based.
    pub source: String,
    pub file: &'static str,
    pub line_no: usize,
    pub line: String,
    /// (mode, expectation), in the order the option sets list them.
    pub by_mode: Vec<(String, Expected)>,
}

impl Case {
    pub fn expected_in(&self, mode: &str) -> Option<&Expected> {
        self.by_mode.iter().find(|(m, _)| m == mode).map(|(_, e)| e)
    }

    /// The expectation in the broadest mode the annotation holds for.
    pub fn broadest(&self) -> &Expected {
        MODES_BROADEST_FIRST
            .iter()
            .find_map(|m| self.expected_in(m))
            .unwrap_or_else(|| panic!("{}: no known mode in {:?}", self.source, self.by_mode))
    }
}

/// Every annotated line of both files.
pub fn cases() -> Vec<Case> {
    FILES.iter().flat_map(|f| cases_of(f, &read(f))).collect()
}

pub fn cases_of(file: &'static str, text: &str) -> Vec<Case> {
    let mut options: Vec<Value> = vec![Value::Object(Default::default())];
    let mut pending: Option<(usize, Value)> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if let Some(json) = comment.strip_prefix("filterOptions:") {
                let v: Value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("{file}:{line_no}: filterOptions: {e}"));
                options = match v {
                    Value::Array(sets) => sets,
                    one => vec![one],
                };
            } else if let Some(json) = comment.strip_prefix("failJSON:") {
                let v = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("{file}:{line_no}: failJSON: {e}"));
                pending = Some((line_no, v));
            }
            continue;
        }
        let Some((annotated_at, annotation)) = pending.take() else {
            continue;
        };
        let matched = annotation["match"]
            .as_bool()
            .unwrap_or_else(|| panic!("{file}:{annotated_at}: failJSON without a boolean match"));
        let expected = match (matched, annotation["host"].as_str()) {
            (false, _) => Expected::NoMatch,
            (true, Some(host)) => Expected::Host(host.to_owned()),
            (true, None) => Expected::AnyHost,
        };
        let constraint = annotation["constraint"].as_str();
        let mut by_mode = Vec::new();
        for set in &options {
            let mode = set["mode"].as_str().unwrap_or("normal");
            let applies = set["test.condition"]
                .as_str()
                .is_none_or(|c| holds(c, mode, file, annotated_at))
                && constraint.is_none_or(|c| holds(c, mode, file, annotated_at));
            if applies {
                by_mode.push((mode.to_owned(), expected.clone()));
            }
        }
        if !by_mode.is_empty() {
            out.push(Case {
                source: format!("{file}:{line_no}"),
                file,
                line_no,
                line: line.to_owned(),
                by_mode,
            });
        }
    }
    out
}

/// The constraint forms fail2ban's sshd logs use, for the `sshd` filter in `mode`.
fn holds(expr: &str, mode: &str, file: &str, line_no: usize) -> bool {
    let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let compact = compact.replace('"', "'");
    if compact == "name=='sshd'" {
        return true;
    }
    if let Some(m) = compact
        .strip_prefix("opts.get('mode')==")
        .and_then(|m| m.strip_prefix('\'')?.strip_suffix('\''))
    {
        return mode == m;
    }
    if let Some(m) = compact
        .strip_prefix("opts.get('mode')!=")
        .and_then(|m| m.strip_prefix('\'')?.strip_suffix('\''))
    {
        return mode != m;
    }
    panic!("{file}:{line_no}: constraint {expr:?} is not one this reader evaluates: extend `holds`")
}
