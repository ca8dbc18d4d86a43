//! Compatibility with fail2ban's sshd test logs (`shared/corpora/fail2ban`):
//! every annotated line is replayed in file order (so connection context
//! builds up as in production) and our verdict, "counted against address H",
//! is compared with what fail2ban 1.0.2 answered in each of its modes.
//!
//! The reference for a case is its broadest annotated mode (aggressive, else
//! ddos/extra, else normal). The deliberate disagreements are listed below
//! with the reason for each; any other disagreement fails the test, and so
//! does a listed one that starts agreeing (keep the list honest).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::Value;
use sshwarden_pipeline::engine::LineVerdict;
use sshwarden_pipeline::source::Source;
use sshwarden_pipeline::{Engine, EngineConfig};

/// (case source, why we differ from fail2ban's broadest mode).
const DELIBERATE: &[(&str, &str)] = &[
    ("sshd.log:144", "password auth logs no `: INFO` after ssh2, so the tail-anchored reading (10.10.1.2) is the peer; fail2ban takes the address inside the username"),
    ("sshd-journal.log:145", "as sshd.log:144"),
    ("sshd.log:172", "annotated for normal mode only; a pre-auth close is evidence in aggressive mode (sshd.log:174, the same line)"),
    ("sshd-journal.log:173", "as sshd.log:172"),
    ("sshd.log:263", "annotated for normal mode only; the same line is evidence in aggressive mode (sshd.log:389)"),
    ("sshd-journal.log:263", "as sshd.log:263"),
    ("sshd.log:242", "pam_unix echoes a failure sshd logs itself; counting it would count every failed password twice"),
    ("sshd-journal.log:242", "as sshd.log:242"),
    ("sshd.log:244", "an accepted login is not an attack"),
    ("sshd-journal.log:244", "as sshd.log:244"),
    ("sshd.log:254", "an accepted login is not an attack"),
    ("sshd-journal.log:254", "as sshd.log:254"),
];

fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/fail2ban");
    assert!(
        dir.join("cases.jsonl").exists(),
        "the fail2ban corpus is missing at {}: it ships in shared/corpora/ beside the repository",
        dir.display()
    );
    dir
}

/// What we say of every line of a file, by 1-based line number.
fn verdicts(path: &PathBuf) -> HashMap<usize, Option<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let counted = match engine.verdict(line, "corpus") {
            LineVerdict::Classified(v) if v.signal.is_some() => v.source.map(|s| s.to_string()),
            _ => None,
        };
        out.insert(i + 1, counted);
    }
    out
}

fn normalise(host: &str) -> String {
    Source::parse(host).map_or_else(|| host.to_owned(), |s| s.to_string())
}

#[test]
fn fail2ban_corpus_agreement() {
    let dir = corpus_dir();
    let mut files = HashMap::new();
    for f in ["sshd.log", "sshd-journal.log"] {
        files.insert(f.to_owned(), verdicts(&dir.join(f)));
    }
    let deliberate: BTreeMap<&str, &str> = DELIBERATE.iter().copied().collect();
    let mut per_mode: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let (mut agree, mut total) = (0, 0);
    let mut unexpected = Vec::new();
    let mut now_agreeing = Vec::new();
    for line in std::fs::read_to_string(dir.join("cases.jsonl"))
        .unwrap()
        .lines()
    {
        let case: Value = serde_json::from_str(line).unwrap();
        let source = case["source"].as_str().unwrap();
        let (file, n) = source.split_once(':').unwrap();
        let ours = files[file][&n.parse::<usize>().unwrap()].clone();
        let modes = case["fail2ban_result_by_mode"].as_object().unwrap();
        let expected_in = |mode: &str| -> Option<Option<String>> {
            let r = modes.get(mode)?;
            Some(if r["match"].as_bool().unwrap() {
                r["host"].as_str().map(normalise)
            } else {
                None
            })
        };
        for mode in modes.keys() {
            let e = per_mode.entry(mode.clone()).or_default();
            e.1 += 1;
            if expected_in(mode) == Some(ours.clone()) {
                e.0 += 1;
            }
        }
        let broadest = ["aggressive", "ddos", "extra", "normal"]
            .iter()
            .find_map(|m| expected_in(m))
            .unwrap();
        total += 1;
        let ok = broadest == ours;
        if ok {
            agree += 1;
            if deliberate.contains_key(source) {
                now_agreeing.push(source.to_owned());
            }
        } else if !deliberate.contains_key(source) {
            unexpected.push(format!(
                "{source}: fail2ban {broadest:?}, sshwarden {ours:?}: {}",
                case["line"].as_str().unwrap()
            ));
        }
    }
    println!("agreement with fail2ban's broadest mode: {agree}/{total}");
    for (mode, (a, t)) in &per_mode {
        println!(
            "  mode {mode:<10} {a}/{t} ({:.1}%)",
            100.0 * f64::from(*a) / f64::from(*t)
        );
    }
    println!("deliberate disagreements: {}", DELIBERATE.len());
    assert!(
        unexpected.is_empty(),
        "unexpected disagreements:\n{}",
        unexpected.join("\n")
    );
    assert!(
        now_agreeing.is_empty(),
        "listed as deliberate but now agreeing: {now_agreeing:?}"
    );
    assert_eq!(total, 277, "the corpus has 277 cases");
    assert_eq!(agree + DELIBERATE.len(), total);
}
