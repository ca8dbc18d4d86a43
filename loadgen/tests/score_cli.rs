//! `sshwarden-loadgen truth` and `score` as a user runs them: the truth of a
//! fleet, commands made from it (one missing, one false, one repeated, a
//! line that is no command), scored from a file and from stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn loadgen(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sshwarden-loadgen"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sshwarden-loadgen");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sshwarden-loadgen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn score_reads_commands_from_a_file_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.json");
    let fleet = ["--instances", "12", "--minutes", "6", "--seed", "5"];
    let truth_text = loadgen(&[&fleet[..], &["truth"]].concat(), None);
    std::fs::write(&truth_path, &truth_text).unwrap();
    let truth: Value = serde_json::from_str(&truth_text).unwrap();
    let expected = truth["expected"].as_array().unwrap();
    assert!(expected.len() >= 5, "{} expected", expected.len());

    let command = |e: &Value, rule: &str| {
        json!({"version": 1, "id": "x", "subject_kind": "instance", "instance_id": e["instance"],
               "rule": rule, "window_start_ms": e["window_start_ms"]})
        .to_string()
    };
    let mut lines: Vec<String> = expected
        .iter()
        .skip(1)
        .map(|e| command(e, e["rule"].as_str().unwrap()))
        .collect();
    lines.push(command(&expected[1], expected[1]["rule"].as_str().unwrap()));
    lines.push(command(&expected[2], "no-such-rule"));
    lines.push("sshwarden: not a command".into());
    let commands = lines.join("\n") + "\n";
    let commands_path = dir.path().join("commands.jsonl");
    std::fs::write(&commands_path, &commands).unwrap();

    let truth_arg = truth_path.to_str().unwrap();
    for (source, stdin) in [
        (commands_path.to_str().unwrap(), None),
        ("-", Some(commands.as_str())),
    ] {
        let out = loadgen(
            &[
                "score",
                "--truth",
                truth_arg,
                "--commands",
                source,
                "--json",
            ],
            stdin,
        );
        let r: Value = serde_json::from_str(out.trim()).unwrap();
        let n = expected.len() as f64;
        assert_eq!(r["score"]["true_positives"], expected.len() - 1, "{r}");
        // One missed of n, one false of n detected.
        for what in ["recall", "precision"] {
            let v = r["score"][what].as_f64().unwrap();
            assert!((v - (n - 1.0) / n).abs() < 1e-9, "{what} {v}");
        }
        assert_eq!(r["duplicate_commands"], 1);
        assert_eq!(r["unparsed_lines"], 1);
        assert_eq!(r["score"]["missed"][0]["instance"], expected[0]["instance"]);
        assert_eq!(
            r["event_to_command"]["samples"].as_u64().unwrap() as usize,
            expected.len() - 1
        );
    }
    let text = loadgen(
        &[
            "score",
            "--truth",
            truth_arg,
            "--commands",
            commands_path.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        text.contains("recall") && text.contains("missed:"),
        "{text}"
    );
}
