//! The writers against the real local emulators, over HTTP: PutRecords on
//! kinesis-local, PutLogEvents on moto with a subscription filter into moto's
//! Kinesis. Each test makes its own stream / log group (random suffix) and
//! deletes it at the end.
//!
//! Start the emulators first: `scripts/emulators up`. A test fails (never
//! skips) when one is not reachable. Endpoints: SSHWARDEN_MOTO_ENDPOINT
//! [http://127.0.0.1:5000] and SSHWARDEN_KINESIS_ENDPOINT [http://127.0.0.1:4567].

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sshwarden_loadgen::encode::batches;
use sshwarden_loadgen::writer::kinesis::{
    ensure_stream, hash_ranges, shard_index, KinesisItem, KinesisWriter, KinesisWriterConfig,
};
use sshwarden_loadgen::writer::logs::{
    ensure_log_group, ensure_subscription, LogBatch, LogEvent, LogsWriter, LogsWriterConfig,
};
use sshwarden_loadgen::writer::{OnWritten, RateTarget};
use sshwarden_loadgen::{Fleet, FleetConfig, Scenario};

use sshwarden_testsupport::{
    kinesis_endpoint, moto_endpoint, now_ms, read_all, sdk, suffix, StreamGuard,
};

fn items(n: usize) -> Vec<KinesisItem> {
    (0..n)
        .map(|i| KinesisItem {
            partition_key: format!("i-{:017x}", i % 37),
            // Distinct, of varied size.
            data: format!("record {i} {}", "x".repeat(i % 300)).into_bytes(),
            due_ms: None,
            marks: vec![format!("m{i}")],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_writer_puts_exactly_its_records_in_calls_of_at_most_500() {
    let endpoint = kinesis_endpoint();
    let client = aws_sdk_kinesis::Client::new(&sdk(&endpoint).await);
    let stream = format!("loadgen-writer-{}", suffix());
    ensure_stream(&client, &stream, 3, Duration::from_secs(60))
        .await
        .unwrap();
    let _guard = StreamGuard(client.clone(), stream.clone());
    let ranges = hash_ranges(&client, &stream).await.unwrap();
    assert_eq!(ranges.len(), 3);

    let n = 1_234;
    let sent = items(n);
    let marked: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = marked.clone();
    let on_written: OnWritten = Arc::new(Mutex::new(move |m: &str, _us: i64| {
        sink.lock().unwrap().push(m.to_owned())
    }));
    let mut config = KinesisWriterConfig::new(&stream);
    config.concurrency = 3;
    let writer = KinesisWriter::new(client.clone(), config).await.unwrap();
    let report = writer.write(sent.clone(), Some(on_written)).await.unwrap();
    assert_eq!(report.records, n as u64);
    assert!(
        report.max_per_call <= 500,
        "a call carried {} records",
        report.max_per_call
    );
    // 1,234 records over 3 shards: one call per shard queue of up to 500.
    assert!(report.calls >= 3, "{report}");
    assert_eq!(marked.lock().unwrap().len(), n);

    let read = read_all(&client, &stream, n).await;
    let total: usize = read.values().map(Vec::len).sum();
    assert_eq!(total, n, "read back {total} records, wrote {n}");
    // Each record is on the shard its key's MD5 maps to, in the order given.
    let mut shard_ids: Vec<&String> = read.keys().collect();
    shard_ids.sort();
    for (idx, shard) in shard_ids.iter().enumerate() {
        let expect: Vec<(String, Vec<u8>)> = sent
            .iter()
            .filter(|i| shard_index(&ranges, &i.partition_key) == idx)
            .map(|i| (i.partition_key.clone(), i.data.clone()))
            .collect();
        assert_eq!(
            read[*shard], expect,
            "shard {shard}: content or order differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_writer_holds_the_target_rate() {
    let endpoint = kinesis_endpoint();
    let client = aws_sdk_kinesis::Client::new(&sdk(&endpoint).await);
    let stream = format!("loadgen-rate-{}", suffix());
    ensure_stream(&client, &stream, 1, Duration::from_secs(60))
        .await
        .unwrap();
    let _guard = StreamGuard(client.clone(), stream.clone());
    let mut config = KinesisWriterConfig::new(&stream);
    config.rate = RateTarget {
        records_per_sec: Some(400.0),
        bytes_per_sec: None,
    };
    let writer = KinesisWriter::new(client, config).await.unwrap();
    // 400 of burst, then 600 more at 400/s: at least 1.5 s however fast the emulator.
    let started = Instant::now();
    let report = writer.write(items(1_000), None).await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.records, 1_000);
    assert!(
        took >= Duration::from_millis(1_400),
        "1,000 records at 400/s took only {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_writer_reports_what_it_cannot_write() {
    let endpoint = kinesis_endpoint();
    let client = aws_sdk_kinesis::Client::new(&sdk(&endpoint).await);
    // No such stream: an error at once, not a retry loop.
    let missing = format!("loadgen-missing-{}", suffix());
    let err = KinesisWriter::new(client.clone(), KinesisWriterConfig::new(&missing))
        .await
        .err()
        .expect("a missing stream is an error");
    assert!(err.message.contains(&missing), "{err}");

    let stream = format!("loadgen-oversize-{}", suffix());
    ensure_stream(&client, &stream, 1, Duration::from_secs(60))
        .await
        .unwrap();
    let _guard = StreamGuard(client.clone(), stream.clone());
    let writer = KinesisWriter::new(client, KinesisWriterConfig::new(&stream))
        .await
        .unwrap();
    let mut batch = items(10);
    batch[5].data = vec![b'x'; 1024 * 1024];
    let err = writer.write(batch, None).await.unwrap_err();
    assert!(err.message.contains("can never be written"), "{err}");
    // The five before it were written; it and the four after it were not.
    assert_eq!(err.unwritten, 5, "{err}");
    assert_eq!(writer.stats().report("kinesis", Duration::ZERO).records, 5);
}

/// Gunzipped subscription envelopes of every record of a moto stream.
async fn envelopes(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (_, records) in read_all(client, stream, usize::MAX).await {
        for (_, data) in records {
            let mut json = String::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_string(&mut json)
                .expect("a gzip record");
            out.push(serde_json::from_str(&json).expect("a JSON envelope"));
        }
    }
    out
}

async fn count_group_events(logs: &aws_sdk_cloudwatchlogs::Client, group: &str) -> usize {
    let mut n = 0;
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let out = logs
            .filter_log_events()
            .log_group_name(group)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap();
        n += out.events().len();
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_writer_lands_in_the_group_and_through_the_subscription_in_kinesis() {
    let moto = moto_endpoint();
    let config = sdk(&moto).await;
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
    let id = suffix();
    let stream = format!("loadgen-logs-{id}");
    let group = format!("/loadgen/{id}");
    let arn = ensure_stream(&kinesis, &stream, 1, Duration::from_secs(60))
        .await
        .unwrap();
    let _guard = StreamGuard(kinesis.clone(), stream.clone());
    ensure_log_group(&logs, &group).await.unwrap();
    ensure_subscription(
        &logs,
        &group,
        "sshwarden",
        &arn,
        Some("arn:aws:iam::123456789012:role/cwl-to-kinesis"),
    )
    .await
    .unwrap();

    let now = now_ms();
    let fleet = Fleet::generate(&FleetConfig {
        instances: 4,
        seed: 3,
        start_ms: now - 120_000,
        duration_ms: 120_000,
        scenarios: Scenario::default_mix(4, 120_000),
        ..FleetConfig::default()
    })
    .unwrap();
    let events = fleet.events();
    let log_batches: Vec<LogBatch> = batches(events, 100, 5_000)
        .iter()
        .map(|b| LogBatch {
            log_stream: events[b[0]].instance.clone(),
            events: b
                .iter()
                .map(|&i| LogEvent {
                    time_ms: events[i].time_ms,
                    message: events[i].line.clone(),
                    mark: None,
                })
                .collect(),
            due_ms: None,
        })
        .collect();
    let writer = LogsWriter::new(logs.clone(), LogsWriterConfig::new(&group));
    let report = writer.write(log_batches, None).await;
    let in_group = count_group_events(&logs, &group).await;
    let _ = logs.delete_log_group().log_group_name(&group).send().await;
    let report = report.unwrap();
    assert_eq!(report.records, events.len() as u64);
    assert!(report.max_per_call <= 10_000);
    assert_eq!(in_group, events.len(), "events in the log group");

    let mut want: Vec<(String, i64, String)> = events
        .iter()
        .map(|e| (e.instance.clone(), e.time_ms, e.line.clone()))
        .collect();
    want.sort();
    let mut got: Vec<(String, i64, String)> = Vec::new();
    for env in envelopes(&kinesis, &stream).await {
        if env["messageType"] != "DATA_MESSAGE" {
            continue;
        }
        assert_eq!(env["logGroup"], group.as_str());
        let log_stream = env["logStream"].as_str().unwrap().to_owned();
        for e in env["logEvents"].as_array().unwrap() {
            got.push((
                log_stream.clone(),
                e["timestamp"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            ));
        }
    }
    got.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "events through the subscription: {} of {}",
        got.len(),
        want.len()
    );
    assert!(got == want, "the subscription delivered different events");
}
