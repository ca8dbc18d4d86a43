//! End to end through the emulators: the load generator's Kinesis writer puts
//! a small simulated fleet under attack into kinesis-local; a separate
//! `sshwarden run --sink stdout` process (lease table on moto's DynamoDB)
//! reads it; the load generator's scorer reads the worker's stdout live and
//! scores the commands against the fleet's ground truth. Every expected
//! detection must be found, nothing else (precision = recall = 1.0), and
//! each found detection gets a write → command latency.
//!
//! Start the emulators first: `scripts/emulators up`. The test fails (never
//! skips) when one is not reachable. Endpoints: SSHWARDEN_MOTO_ENDPOINT
//! [http://127.0.0.1:5000] and SSHWARDEN_KINESIS_ENDPOINT [http://127.0.0.1:4567].
//! SSHWARDEN_BIN names the `sshwarden` binary to run [the one cargo built].

// The binary under test, as the other `sshwarden run` tests find it.
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sshwarden_loadgen::encode::{batches, encode_batch};
use sshwarden_loadgen::writer::kinesis::{
    ensure_stream, KinesisItem, KinesisWriter, KinesisWriterConfig,
};
use sshwarden_loadgen::writer::OnWritten;
use sshwarden_loadgen::{
    CommandScorer, Fleet, FleetConfig, GeneratedEvent, RecordOptions, Scenario, WrittenLog,
};

use common::sshwarden_bin;
use sshwarden_testsupport::{kinesis_endpoint, moto_endpoint, sdk};

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Kills the worker and deletes the stream and lease table, pass or fail.
struct Cleanup {
    worker: Option<Child>,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    stream: String,
    table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(w) = &mut self.worker {
            let _ = w.kill();
            let _ = w.wait();
        }
        let (k, d) = (self.kinesis.clone(), self.dynamodb.clone());
        let (stream, table) = (self.stream.clone(), self.table.clone());
        common::clean_up(async move {
            let _ = k
                .delete_stream()
                .stream_name(stream)
                .enforce_consumer_deletion(true)
                .send()
                .await;
            let _ = d.delete_table().table_name(table).send().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_writer_worker_and_scorer_agree_with_the_ground_truth() {
    let kinesis_url = kinesis_endpoint();
    let moto_url = moto_endpoint();
    let kinesis = aws_sdk_kinesis::Client::new(&sdk(&kinesis_url).await);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk(&moto_url).await);
    let tag = format!("{}-{}", std::process::id(), now_us() % 1_000_000_000);
    let stream = format!("loadgen-e2e-{tag}");
    let table = format!("loadgen-e2e-leases-{tag}");
    let mut cleanup = Cleanup {
        worker: None,
        kinesis: kinesis.clone(),
        dynamodb,
        stream: stream.clone(),
        table: table.clone(),
    };
    ensure_stream(&kinesis, &stream, 2, Duration::from_secs(60))
        .await
        .expect("stream");

    // A small fleet whose traffic ends now.
    let duration_ms = 4 * 60_000;
    let fleet = Fleet::generate(&FleetConfig {
        instances: 10,
        seed: 11,
        start_ms: now_us() / 1000 - duration_ms,
        duration_ms,
        scenarios: Scenario::default_mix(10, duration_ms),
        ..FleetConfig::default()
    })
    .expect("fleet");
    let truth = fleet.ground_truth().clone();
    assert!(
        truth.expected.len() >= 10,
        "too few detections to test: {}",
        truth.expected.len()
    );
    let crossing: HashSet<&str> = truth
        .expected
        .iter()
        .map(|e| e.crossing_event_id.as_str())
        .collect();
    let events = fleet.events();
    let opts = RecordOptions {
        max_span_ms: 5_000,
        ..RecordOptions::default()
    };
    let items: Vec<KinesisItem> = batches(events, 100, 5_000)
        .iter()
        .map(|b| {
            let batch: Vec<&GeneratedEvent> = b.iter().map(|&i| &events[i]).collect();
            let r = encode_batch(&batch, &opts);
            KinesisItem {
                partition_key: r.log_stream,
                data: r.data,
                due_ms: None,
                marks: batch
                    .iter()
                    .filter(|e| crossing.contains(e.id.as_str()))
                    .map(|e| e.id.clone())
                    .collect(),
            }
        })
        .collect();
    let n_records = items.len();

    // The worker first, so write → command latency is the pipeline's.
    let stderr_path = std::env::temp_dir().join(format!("{stream}.stderr"));
    let mut worker = Command::new(sshwarden_bin())
        .args([
            // The rule-level scorer models the seed policy's rules.
            "--policy",
            "seed",
            "--blast-radius-max",
            "0",
            "--cooldown-secs",
            "0",
            "run",
            "--stream",
            &stream,
            "--lease-table",
            &table,
            "--worker-id",
            "e2e",
            "--sink",
            "stdout",
            "--metrics-addr",
            "127.0.0.1:0",
            "--idle-poll-ms",
            "200",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", &moto_url)
        .env("AWS_ENDPOINT_URL_KINESIS", &kinesis_url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SSHWARDEN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn sshwarden run");
    let stdout = worker.stdout.take().expect("worker stdout");
    cleanup.worker = Some(worker);
    let (tx, rx) = mpsc::channel::<(String, i64)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, now_us())).is_err() {
                break;
            }
        }
    });

    let written: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let log = written.clone();
    let on_written: OnWritten = Arc::new(Mutex::new(move |id: &str, us: i64| {
        if let Ok(mut l) = log.lock() {
            l.entry(id.to_owned()).or_insert(us);
        }
    }));
    let writer = KinesisWriter::new(kinesis.clone(), KinesisWriterConfig::new(&stream))
        .await
        .expect("writer");
    let report = writer.write(items, Some(on_written)).await.expect("write");
    assert_eq!(report.records, n_records as u64);

    // Read until every expected detection is in, then one more second for
    // anything that should not be there; at most 90 s.
    let mut scorer = CommandScorer::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut stop = deadline;
    while Instant::now() < stop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((line, read_us)) => {
                scorer.observe_line(&line, read_us);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if stop == deadline && scorer.complete(&truth) {
            stop = Instant::now() + Duration::from_secs(1);
        }
    }
    drop(cleanup);
    let written = WrittenLog(written.lock().map(|w| w.clone()).unwrap_or_default());
    let r = scorer.report(&truth, Some(&written));
    let mut text = Vec::new();
    r.write_text(&mut text).expect("report");
    let text = String::from_utf8_lossy(&text);
    let mut stderr = String::new();
    if let Ok(mut f) = std::fs::File::open(&stderr_path) {
        let _ = f.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_file(&stderr_path);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    eprintln!(
        "{n_records} records, {} expected detections\n{text}",
        truth.expected.len()
    );
    assert!(
        r.score.precision == 1.0 && r.score.recall == 1.0,
        "the worker's commands differ from the ground truth:\n{text}\nworker stderr (last lines, newest first):\n{}",
        tail.join("\n")
    );
    assert_eq!(r.unparsed_lines, 0, "{text}");
    let latency = r.write_to_command.expect("write → command latency");
    assert_eq!(latency.samples as usize, truth.expected.len(), "{text}");
    assert_eq!(latency.negative, 0, "{text}");
}
