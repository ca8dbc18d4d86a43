//! The `sshwarden` binary end to end: `classify` and `scan` over files, stdin,
//! gzip and captured payloads, and its errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sshwarden(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sshwarden"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or(b"")).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn repo(path: &str) -> String {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

fn json_lines(o: &Output) -> Vec<Value> {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn classify_one_object_per_line_in_order() {
    let corpus = repo("pipeline/tests/corpus/fail2ban/sshd.log");
    let text = std::fs::read_to_string(&corpus).expect("fail2ban corpus in pipeline/tests/corpus");
    let out = json_lines(&sshwarden(&["classify", &corpus], None));
    assert_eq!(out.len(), text.lines().count());
    for (i, v) in out.iter().enumerate() {
        assert_eq!(v["line"], i as u64 + 1);
        for field in ["kind", "attack", "ip", "user", "port"] {
            assert!(v.get(field).is_some(), "line {} lacks {field}: {v}", i + 1);
        }
    }
    // sshd.log:13, `Failed password for invalid user ROOT from 194.117.26.69 port 50273 ssh2`
    let v = &out[12];
    assert_eq!(v["kind"], "failed_password");
    assert_eq!(v["attack"], true);
    assert_eq!(v["ip"], "194.117.26.69");
    assert_eq!(v["user"], "ROOT");
    assert_eq!(v["port"], 50273);
}

#[test]
fn classify_reads_stdin_and_never_attributes_an_injected_address() {
    let input = b"Nov 29 10:00:00 h sshd[1]: Invalid user a from 10.0.0.5 port 22 from 203.0.113.9 port 4242\n\
Nov 29 10:00:01 h sshd[2]: Accepted publickey for ec2-user from 198.51.100.1 port 5 ssh2: ED25519 SHA256:abc\n\
Nov 29 10:00:02 h logger: Invalid user x from 1.2.3.4\n\
Nov 29 10:00:03 h sshd[3]: Failed password for invalid user a from 10.0.0.5 port 22 ssh2 from 203.0.113.9 port 4243 ssh2\n\
Nov 29 10:00:04 h sshd[4]: Received signal 15; terminating.\n\
Nov 29 10:00:05 h sshd[5]: Invalid user \xff from 203.0.113.9 port 1\n";
    let out = json_lines(&sshwarden(&["classify", "-"], Some(input)));
    assert_eq!(out.len(), 6);
    assert_eq!(out[0]["ip"], "203.0.113.9");
    assert_eq!(out[0]["user"], "a from 10.0.0.5 port 22");
    assert_eq!(
        (out[1]["kind"].as_str(), out[1]["attack"].as_bool()),
        (Some("accepted"), Some(false))
    );
    assert_eq!(
        (out[2]["sshd"].as_bool(), out[2]["attack"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(out[3]["ip"], "203.0.113.9");
    assert_eq!(
        (out[4]["kind"].clone(), out[4]["attack"].as_bool()),
        (Value::Null, Some(false))
    );
    assert_eq!(out[5]["invalid_utf8"], true);
    assert_eq!(out[5]["ip"], "203.0.113.9");
}

#[test]
fn scan_table_and_json_on_the_shipped_sample() {
    let sample = repo("examples/auth.log");
    let table = sshwarden(&["scan", &sample], None);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("commands that would be issued: 1"), "{text}");
    assert!(
        text.contains("BLOCK 203.0.113.66/32 rule=brute-force"),
        "{text}"
    );
    let json: Value =
        serde_json::from_slice(&sshwarden(&["scan", "--json", &sample], None).stdout).unwrap();
    let sources = json["sources"].as_array().unwrap();
    assert_eq!(sources[0]["subject"], "203.0.113.66/32");
    assert_eq!(sources[0]["rules_fired"][0], "brute-force");
    assert!(
        sources.iter().all(|s| s["subject"] != "10.0.0.5/32"),
        "injected address counted"
    );
    let commands = json["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(
        (&commands[0]["action"], &commands[0]["held"]),
        (&Value::from("block"), &Value::from(false))
    );
    // Under the seed policy, host names are not instance ids: never
    // quarantined, held for a person.
    let seed: Value = serde_json::from_slice(
        &sshwarden(&["--policy", "seed", "scan", "--json", &sample], None).stdout,
    )
    .unwrap();
    let commands = seed["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 2);
    assert!(commands
        .iter()
        .all(|c| c["action"] == "notify" && c["held"] == true));
}

/// `scan --shards`: the input split by host over shard engines, the fleet
/// stage adding up their partials. A spray no shard sees whole is found
/// fleet-wide, and the per-host and per-source counts are those of one
/// engine.
#[test]
fn scan_over_shards_finds_a_spray_fleet_wide_and_counts_as_one_engine() {
    // One address, one guess on each of 40 hosts, a minute apart; a
    // second address guessing on one host only.
    let mut log = String::new();
    for i in 0..40 {
        log.push_str(&format!(
            "Nov 29 10:{i:02}:00 ip-10-0-1-{i} sshd[{}]: Failed password for root from 198.51.100.77 port {} ssh2\n",
            1000 + i,
            40000 + i
        ));
        log.push_str(&format!(
            "Nov 29 10:{i:02}:30 ip-10-0-2-1 sshd[{}]: Invalid user u{i} from 203.0.113.5 port {}\n",
            2000 + i,
            50000 + i
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.log");
    std::fs::write(&path, &log).unwrap();
    let scan = |shards: &str| -> Value {
        let out = sshwarden(
            &[
                "scan",
                "--json",
                "--year",
                "2026",
                "--shards",
                shards,
                path.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (one, split) = (scan("1"), scan("8"));
    let rules = |r: &Value, source: &str| -> Vec<String> {
        r["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["source"] == source)
            .map(|c| c["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    let sprayer = "198.51.100.77/32";
    let fired = |r: &Value| -> Vec<Value> {
        let row = r["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["subject"] == sprayer)
            .unwrap();
        row["rules_fired"].as_array().unwrap().clone()
    };
    // One engine sees the spray whole (its block may be held back by the
    // cooldown of the brute-force block before it: fired, not sent).
    assert!(fired(&one).contains(&Value::from("spray")), "{one}");
    assert!(
        one.get("fleet").is_none(),
        "one engine needs no fleet stage"
    );
    // Split, the fleet stage sees it, and it blocks the address.
    assert!(
        fired(&split).contains(&Value::from("fleet-spray")),
        "{split}"
    );
    let fleet_blocks: Vec<String> = rules(&split, sprayer)
        .into_iter()
        .filter(|r| r.starts_with("fleet-"))
        .collect();
    assert!(!fleet_blocks.is_empty(), "{split}");
    assert_eq!(split["fleet"]["shards"], 8);
    assert!(split["fleet"]["partials"].as_u64().unwrap() > 0);
    // The address that guessed on one host only is blocked by that host's
    // shard, as one engine blocks it; no fleet rule repeats it.
    assert_eq!(
        rules(&split, "203.0.113.5/32")
            .iter()
            .filter(|r| !r.starts_with("fleet-"))
            .count(),
        rules(&one, "203.0.113.5/32").len()
    );
    // Counts are the shards' added up: the same as one engine's.
    for key in ["instances", "sources"] {
        let rows = |r: &Value| -> Vec<(Value, Value)> {
            r[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| (row["subject"].clone(), row["counts"].clone()))
                .collect()
        };
        assert_eq!(rows(&split), rows(&one), "{key}");
    }
    assert_eq!(split["stats"]["events"], one["stats"]["events"]);
    assert_eq!(split["stats"]["signals"], one["stats"]["signals"]);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn payload(stream: &str, first_ms: i64, messages: &[String]) -> String {
    let events: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            serde_json::json!({"id": format!("{:056}", first_ms as usize * 100 + i), "timestamp": first_ms + i as i64 * 1000, "message": m})
        })
        .collect();
    serde_json::json!({
        "messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/ec2/sshd",
        "logStream": stream, "subscriptionFilters": ["sshwarden"], "logEvents": events
    })
    .to_string()
}

#[test]
fn scan_captured_payloads_quarantines_instances_and_skips_bad_records() {
    let attack: Vec<String> = (0..6)
        .map(|i| format!("Nov 29 10:00:0{i} ip-10-0-0-9 sshd[{}]: Invalid user u{i} from 203.0.113.7 port {}", 100 + i, 4000 + i))
        .collect();
    let benign = vec!["Nov 29 10:00:00 ip-10-0-0-8 sshd[1]: Accepted publickey for a from 198.51.100.2 port 1 ssh2: RSA SHA256:x".to_string()];
    let control = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#;
    let attacked = payload("i-0123456789abcdef0", 1_764_410_400_000, &attack);
    // JSON lines, with a redelivered record (same event ids) in the middle
    let text = format!(
        "{control}\n{attacked}\n{}\n{attacked}\n",
        payload("i-0fedcba9876543210", 1_764_410_400_000, &benign)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payloads.json.gz");
    std::fs::write(&path, gzip(text.as_bytes())).unwrap();
    let out = sshwarden(&["scan", "--json", path.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["stats"]["control_messages"], 1);
    assert_eq!(r["stats"]["windows"]["duplicate_events"], 6);
    // The graduated policy blocks the guessing source; the instance that
    // accepted nothing from it is not quarantined.
    let commands = r["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0]["action"], "block");
    assert_eq!(commands[0]["held"], false);
    assert_eq!(commands[0]["subject_kind"], "source");
    assert_eq!(commands[0]["source"], "203.0.113.7/32");
    assert_eq!(commands[0]["rule"], "brute-force");
    assert_eq!(commands[0]["window_secs"], 600);
    assert_eq!(
        commands[0]["instances"],
        serde_json::json!(["i-0123456789abcdef0"])
    );
    assert_eq!(commands[0]["account"], "123456789012");
    assert_eq!(commands[0]["counts"]["invalid_user"], 5);
    assert_eq!(commands[0]["distinct"]["users"], 5);
    // Split over shards by log stream: the same block, the same counts.
    let split = sshwarden(
        &["scan", "--json", "--shards", "4", path.to_str().unwrap()],
        None,
    );
    let split: Value = serde_json::from_slice(&split.stdout).unwrap();
    assert_eq!(split["commands"].as_array().unwrap().len(), 1, "{split}");
    assert_eq!(split["commands"][0]["rule"], "brute-force");
    assert_eq!(split["stats"], r["stats"]);
    // The original sample's policy quarantines the attacked instance.
    let out = sshwarden(
        &["--policy", "seed", "scan", "--json", path.to_str().unwrap()],
        None,
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let commands = r["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0]["action"], "quarantine");
    assert_eq!(commands[0]["instance_id"], "i-0123456789abcdef0");
    assert_eq!(commands[0]["counts"]["invalid_user"], 5);

    // base64 gzip records, one per line, with a corrupt one: counted, reported, the rest read
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut corrupt = gzip(attacked.as_bytes());
    corrupt[12] ^= 0xff;
    let lines = format!(
        "{}\n{}\n%%%\n{}\n",
        b64(&corrupt),
        b64(&gzip(attacked.as_bytes())),
        b64(b"H4sI")
    );
    let out = sshwarden(&["scan", "--json", "-"], Some(lines.as_bytes()));
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["stats"]["decode_errors"], 2);
    assert_eq!(r["bad_payloads"], 1);
    assert_eq!(r["commands"].as_array().unwrap().len(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("payload 1 skipped: gzip stream is truncated or corrupt"),
        "{stderr}"
    );
}

#[test]
fn config_file_env_and_flags() {
    let sample = repo("examples/auth.log");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[rules]]\nname = \"any\"\nsignals = [\"disconnect\"]\nthreshold = 100\n",
    )
    .unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| -> Value {
        let mut args = vec!["scan", "--json", "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(&sample);
        let out = Command::new(env!("CARGO_BIN_EXE_sshwarden"))
            .args(&args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(run(&[], &[])["commands"].as_array().unwrap().len(), 0);
    assert_eq!(
        run(&[], &[("SSHWARDEN_THRESHOLD", "3")])["commands"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // the flag wins over the environment
    assert_eq!(
        run(&["--threshold", "100"], &[("SSHWARDEN_THRESHOLD", "3")])["commands"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // an allowlisted source is not counted at all
    let r = run(
        &["--threshold", "3", "--allow-sources", "203.0.113.0/24"],
        &[],
    );
    assert_eq!(r["commands"].as_array().unwrap().len(), 0);
    assert!(r["stats"]["allowlisted_source_events"].as_u64().unwrap() > 0);
}

#[test]
fn errors_are_clear() {
    let out = sshwarden(&["scan", "/nonexistent/auth.log"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/auth.log"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[window]\nsise_secs = 5\n").unwrap();
    let out = sshwarden(&["scan", "--config", cfg.to_str().unwrap(), "-"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("unknown field `sise_secs`"),
        "{err}"
    );
    let out = sshwarden(&["scan", "--allow-sources", "10.0.0.0/99", "-"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a CIDR"));
    let out = sshwarden(
        &[
            "release",
            "i-xyz",
            "--release-state-machine-arn",
            "arn:aws:states:us-east-1:1:stateMachine:r",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an EC2 instance id"));
    let out = sshwarden(&["run", "--stream", "s", "--sink", "sfn"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sink sfn needs --state-machine-arn"));
    let gz = gzip(b"Nov 29 10:00:00 h sshd[1]: Invalid user a from 203.0.113.9 port 1\n");
    for threads in ["1", "2"] {
        let out = sshwarden(
            &["scan", "--threads", threads, "-"],
            Some(&gz[..gz.len() / 2]),
        );
        assert!(
            !out.status.success(),
            "a truncated gzip input must fail, not pass quietly ({threads} threads)"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("read failed"), "{threads} threads: {err}");
    }
}

#[test]
fn demo_notices_every_incident_and_quarantines_only_the_compromised() {
    let out = sshwarden(
        &[
            "demo",
            "--json",
            "--minutes",
            "6",
            "--seconds",
            "1",
            "--instances",
            "12",
        ],
        None,
    );
    let lines = json_lines(&out);
    let report = lines.last().unwrap();
    let commands = &lines[..lines.len() - 1];
    assert!(!commands.is_empty());
    assert!(commands
        .iter()
        .all(|c| c["version"] == 1 && c["id"].as_str().unwrap().starts_with("sw1-")));
    assert_eq!(
        report["commands"].as_u64().unwrap() as usize,
        commands.len()
    );
    // Judged by incident, by loadgen's judge (not by sshwarden's rules).
    let judged = &report["incidents"];
    let kinds = judged["kinds"].as_array().unwrap();
    assert!(kinds.len() >= 5, "{judged}");
    for k in kinds {
        assert_eq!(k["missed"], 0, "an incident kind was missed: {k}");
    }
    let succeeded = kinds
        .iter()
        .find(|k| k["kind"] == "succeeded_brute_force")
        .unwrap();
    assert_eq!(
        succeeded["responded_as_expected"], succeeded["incidents"],
        "{succeeded}"
    );
    let f = &judged["false_responses"];
    assert_eq!(f["quarantines"], 0, "a bystander was quarantined: {f}");
    assert_eq!(f["benign_blocks"], 0, "{f}");
    let quarantines: Vec<_> = commands
        .iter()
        .filter(|c| c["action"] == "quarantine")
        .collect();
    assert_eq!(quarantines.len(), 1, "{quarantines:?}");
    assert_eq!(quarantines[0]["rule"], "compromise");
    assert_eq!(report["decoys_counted"], 0);
    // Split over 4 shards (the default) with the fleet stage across them.
    let fleet = &report["fleet"];
    assert_eq!(fleet["shards"], 4);
    assert!(fleet["partials"].as_u64().unwrap() > 0, "{fleet}");
}

/// Split over shards, what each shard alone cannot add up is found by the
/// fleet stage: the same incidents are detected as with one engine that
/// sees everything.
#[test]
fn demo_over_shards_with_the_fleet_stage_detects_what_one_engine_does() {
    let run = |shards: &str| {
        let out = sshwarden(
            &[
                "demo",
                "--json",
                "--minutes",
                "10",
                "--seconds",
                "1",
                "--instances",
                "20",
                "--shards",
                shards,
            ],
            None,
        );
        let lines = json_lines(&out);
        lines.last().unwrap().clone()
    };
    let (one, split) = (run("1"), run("8"));
    let detected = |r: &serde_json::Value| -> Vec<(String, u64)> {
        r["incidents"]["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kind"].as_str().unwrap().to_owned(),
                    k["detected"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(detected(&split), detected(&one));
    assert_eq!(split["incidents"]["false_responses"]["quarantines"], 0);
    assert_eq!(split["incidents"]["false_responses"]["benign_blocks"], 0);
    assert_eq!(
        one["fleet"]["partials"], 0,
        "one engine needs no fleet stage"
    );
    let stage = &split["fleet"]["stage"];
    assert!(stage["fired"].as_u64().unwrap() > 0, "{stage}");
}

/// `scan --threads 2` (reading and classifying on one thread, counting on
/// the other) prints byte for byte the report of one thread, from a file
/// and from stdin, over an input of several of its blocks.
#[test]
fn scan_on_two_threads_prints_the_report_of_one() {
    use sshwarden_loadgen::encode::auth_log;
    use sshwarden_loadgen::fleet::{Fleet, FleetConfig, Scenario};
    let (instances, duration_ms) = (100, 30 * 60_000);
    let fleet = Fleet::generate(&FleetConfig {
        instances,
        duration_ms,
        scenarios: Scenario::default_mix(instances, duration_ms),
        ..FleetConfig::default()
    })
    .unwrap();
    let log = auth_log(fleet.events());
    assert!(
        log.len() > 9 << 20,
        "{} bytes: more than one block",
        log.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.log");
    std::fs::write(&path, &log).unwrap();
    let path = path.to_str().unwrap();
    let scan = |threads: &str, json: bool, stdin: bool| -> Vec<u8> {
        let mut args = vec!["scan", "--year", "2023", "--threads", threads];
        if json {
            args.push("--json");
        }
        args.push(if stdin { "-" } else { path });
        let out = sshwarden(&args, stdin.then_some(log.as_bytes()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let one = scan("1", true, false);
    let report: Value = serde_json::from_slice(&one).unwrap();
    assert_eq!(report["stats"]["events"], fleet.events().len());
    assert!(
        report["commands"].as_array().unwrap().len() > 5,
        "rules fire"
    );
    assert!(one == scan("2", true, false), "JSON from a file differs");
    assert!(
        scan("1", true, true) == scan("2", true, true),
        "JSON from stdin differs"
    );
    assert!(
        scan("1", false, false) == scan("2", false, false),
        "tables differ"
    );
}

#[test]
fn scan_refuses_threads_it_cannot_use() {
    let sample = repo("examples/auth.log");
    let out = sshwarden(&["scan", "--threads", "2", "--shards", "2", &sample], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads 2 needs --shards 1"), "{err}");
    let out = sshwarden(&["scan", "--threads", "3", &sample], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads"), "{err}");
}

#[test]
fn scan_names_the_year_when_lines_without_one_make_others_late() {
    // A host's first line has no year and takes 2030; its next lines are
    // ISO-stamped 2023, three years behind its own clock: late, uncounted.
    let mut log = String::from(
        "Nov 14 22:13:20 web-1 sshd[1]: Connection closed by 198.51.100.7 port 1 [preauth]\n",
    );
    for i in 0..5 {
        log.push_str(&format!(
            "2023-11-14T22:13:2{i}.000+00:00 web-1 sshd[{}]: Invalid user u{i} from 198.51.100.7 port {i}\n",
            10 + i
        ));
    }
    let out = sshwarden(&["scan", "--year", "2030", "-"], Some(log.as_bytes()));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("5 events arrived after their window closed"),
        "{err}"
    );
    assert!(
        err.contains("--year if lines without a year are not from 2030"),
        "{err}"
    );
    // Given the right year, nothing is late.
    let out = sshwarden(&["scan", "--year", "2023", "-"], Some(log.as_bytes()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("not counted"),
        "{err}"
    );
}

#[test]
fn run_fails_at_once_when_its_metrics_port_is_taken() {
    // Without its port a worker would read on with no health checks.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = sshwarden(
        &[
            "run",
            "--stream",
            "s",
            "--sink",
            "stdout",
            "--metrics-addr",
            &addr,
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} for /metrics")),
        "{err}"
    );
}
