//! Compatibility with fail2ban's sshd test logs (`tests/corpus/fail2ban`):
//! every line is replayed in file order (so connection context builds up as
//! in production) and our verdict, "counted against address H", is compared
//! with what the logs' own `failJSON` annotations say fail2ban 1.0.2 expects
//! in each of its modes (read by `fail2ban::cases`, not kept here).
//!
//! The reference for a case is its broadest annotated mode (aggressive, else
//! ddos/extra, else normal). The deliberate disagreements are listed below
//! with the reason for each; any other disagreement fails the test, and so
//! does a listed one that starts agreeing (keep the list honest).

mod fail2ban;

use std::collections::{BTreeMap, HashMap};

use fail2ban::{Case, Expected};
use sshwarden_pipeline::engine::LineVerdict;
use sshwarden_pipeline::peer::Peer;
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

/// What we say of every line of a file, by 1-based line number.
fn verdicts(name: &str) -> HashMap<usize, Option<String>> {
    let text = fail2ban::read(name);
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
    Peer::parse(host).map_or_else(|| host.to_owned(), |s| s.to_string())
}

/// Whether our verdict is what fail2ban expects.
fn agrees(expected: &Expected, ours: &Option<String>) -> bool {
    match expected {
        Expected::NoMatch => ours.is_none(),
        Expected::Host(h) => ours.as_deref() == Some(normalise(h).as_str()),
        Expected::AnyHost => ours.is_some(),
    }
}

#[test]
fn fail2ban_corpus_agreement() {
    let files: HashMap<&str, _> = fail2ban::FILES.iter().map(|f| (*f, verdicts(f))).collect();
    let cases: Vec<Case> = fail2ban::cases();
    let deliberate: BTreeMap<&str, &str> = DELIBERATE.iter().copied().collect();
    let mut per_mode: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let (mut agree, mut total, mut attacks) = (0, 0, 0);
    let mut unexpected = Vec::new();
    let mut now_agreeing = Vec::new();
    for case in &cases {
        let ours = &files[case.file][&case.line_no];
        for (mode, expected) in &case.by_mode {
            let e = per_mode.entry(mode.clone()).or_default();
            e.1 += 1;
            if agrees(expected, ours) {
                e.0 += 1;
            }
        }
        let broadest = case.broadest();
        total += 1;
        if *broadest != Expected::NoMatch {
            attacks += 1;
        }
        let source = case.source.as_str();
        if agrees(broadest, ours) {
            agree += 1;
            if deliberate.contains_key(source) {
                now_agreeing.push(source.to_owned());
            }
        } else if !deliberate.contains_key(source) {
            unexpected.push(format!(
                "{source}: fail2ban {broadest:?}, sshwarden {ours:?}: {}",
                case.line
            ));
        }
    }
    println!("agreement with fail2ban's broadest mode: {agree}/{total} ({attacks} attacks)");
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
    let listed_but_not_a_case: Vec<_> = deliberate
        .keys()
        .filter(|s| !cases.iter().any(|c| c.source == **s))
        .collect();
    assert!(
        listed_but_not_a_case.is_empty(),
        "deliberate disagreements that are no annotated case: {listed_but_not_a_case:?}"
    );
    // A reader that finds no annotations would pass everything above.
    assert!(total >= 250, "only {total} annotated cases read");
    assert!(attacks >= 150, "only {attacks} annotated attacks read");
    assert_eq!(agree + DELIBERATE.len(), total);
}

// The annotation reader itself (fail2ban/mod.rs), on hand-written input.
#[test]
fn annotations_are_read_per_mode() {
    let text = "\
# filterOptions: [{}, {\"mode\": \"aggressive\"}]
# failJSON: { \"match\": true, \"host\": \"192.0.2.1\" }
a
# failJSON: { \"constraint\": \"opts.get('mode') == 'aggressive'\", \"match\": true }
b
# failJSON: { \"match\": false }
c
d
# filterOptions: {\"test.condition\": \"name=='sshd'\", \"mode\": \"ddos\"}
# failJSON: { \"constraint\": \"opts.get('mode') != 'aggressive'\", \"match\": false }
e
";
    let cases = fail2ban::cases_of("t", text);
    let got: Vec<(String, Vec<(String, Expected)>)> =
        cases.into_iter().map(|c| (c.source, c.by_mode)).collect();
    let host = Expected::Host("192.0.2.1".into());
    assert_eq!(
        got,
        vec![
            (
                "t:3".into(),
                vec![("normal".into(), host.clone()), ("aggressive".into(), host)]
            ),
            ("t:5".into(), vec![("aggressive".into(), Expected::AnyHost)]),
            (
                "t:7".into(),
                vec![
                    ("normal".into(), Expected::NoMatch),
                    ("aggressive".into(), Expected::NoMatch)
                ]
            ),
            ("t:11".into(), vec![("ddos".into(), Expected::NoMatch)]),
        ]
    );
}

#[test]
#[should_panic(expected = "not one this reader evaluates")]
fn an_unknown_constraint_fails() {
    fail2ban::cases_of(
        "t",
        "# failJSON: { \"constraint\": \"len(opts) > 1\", \"match\": false }\nx\n",
    );
}

/// One attempt feeds a signal once (docs/detection.md): on the fail2ban
/// corpus, the second line of every disconnect pair is evidence but not a
/// new attempt, and every line that is not a new attempt follows a line of
/// the same connection that counted the same signal.
#[test]
fn attempts_not_lines_on_the_corpus() {
    use sshwarden_pipeline::classify::Signal;
    use sshwarden_pipeline::prefix::parse_line;
    for name in ["sshd.log", "sshd-journal.log"] {
        let text = fail2ban::read(name);
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        // (pid, signal) -> counted before
        let mut counted: HashMap<(u32, Signal), usize> = HashMap::new();
        let mut previous: Option<(u32, Option<u16>, Signal, bool)> = None;
        let (mut pairs, mut repeated, mut new) = (0, 0, 0);
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let pid = parse_line(line).and_then(|l| l.pid);
            let LineVerdict::Classified(v) = engine.verdict(line, "corpus") else {
                continue;
            };
            let Some(signal) = v.signal else {
                continue;
            };
            let here = format!("{name}:{}: {line}", i + 1);
            if v.new_attempt {
                new += 1;
                if let Some(pid) = pid {
                    counted.insert((pid, signal), i);
                }
            } else {
                repeated += 1;
                let pid = pid.unwrap_or_else(|| panic!("a repeat needs a connection: {here}"));
                assert!(
                    counted.contains_key(&(pid, signal)),
                    "not counted, and nothing before it counted: {here}"
                );
            }
            if let (Some((p, port, Signal::Disconnect, true)), Some(pid)) = (previous, pid) {
                if p == pid && port == v.port && signal == Signal::Disconnect {
                    pairs += 1;
                    assert!(
                        !v.new_attempt,
                        "the second line of a disconnect pair counted: {here}"
                    );
                }
            }
            previous = pid.map(|p| (p, v.port, signal, v.new_attempt));
        }
        println!("{name}: {new} attempts, {repeated} repeated lines, {pairs} disconnect pairs");
        assert!(pairs >= 1, "{name}: the corpus has disconnect pairs");
        assert!(repeated >= pairs);
    }
}
