//! Encoders for generated events: CloudWatch Logs subscription payloads (as
//! Kinesis and Kafka deliver them) and raw `auth.log` text.
//!
//! CloudWatch batches per log stream, so a record holds events of one
//! instance only: up to `events_per_record` of them, spanning at most
//! `max_span_ms` of event time (the agent flushes every few seconds, so a
//! quiet instance sends small records). Records come out in the order of
//! their last event. With `max_span_ms` no larger than the detector's allowed
//! lateness no event is late, so a detector must count every event.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Serialize;

use crate::event::GeneratedEvent;

/// How events are cut into records and what the envelope says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOptions {
    pub events_per_record: usize,
    /// Event-time span of one record at most.
    pub max_span_ms: i64,
    pub owner: String,
    pub log_group: String,
    pub subscription_filter: String,
    /// gzip level, 0-9.
    pub compression: u32,
    /// Keep the uncompressed JSON in [`SubscriptionRecord::json`].
    pub keep_json: bool,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            events_per_record: 100,
            max_span_ms: 30_000,
            owner: "123456789012".into(),
            log_group: "/ec2/sshd".into(),
            subscription_filter: "sshwarden".into(),
            compression: 6,
            keep_json: false,
        }
    }
}

/// One encoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// The instance id.
    pub log_stream: String,
    /// The gzip member, as a Kinesis record's data.
    pub data: Vec<u8>,
    /// The uncompressed JSON when `keep_json` was asked for, else empty.
    pub json: Vec<u8>,
    /// Size of the uncompressed JSON.
    pub json_len: usize,
    pub events: usize,
    pub first_time_ms: i64,
    pub last_time_ms: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    message_type: &'static str,
    owner: &'a str,
    log_group: &'a str,
    log_stream: &'a str,
    subscription_filters: [&'a str; 1],
    log_events: Vec<PayloadEvent<'a>>,
}

#[derive(Serialize)]
struct PayloadEvent<'a> {
    id: &'a str,
    timestamp: i64,
    message: &'a str,
}

/// Gzip-compressed subscription payloads with the default options and
/// `events_per_record` events per record at most.
pub fn subscription_records(events: &[GeneratedEvent], events_per_record: usize) -> Vec<Vec<u8>> {
    let opts = RecordOptions {
        events_per_record,
        ..RecordOptions::default()
    };
    encode_records(events, &opts)
        .into_iter()
        .map(|r| r.data)
        .collect()
}

/// Cuts `events` into per-instance records (see the module docs) and encodes them.
pub fn encode_records(events: &[GeneratedEvent], opts: &RecordOptions) -> Vec<SubscriptionRecord> {
    batches(events, opts.events_per_record, opts.max_span_ms)
        .iter()
        .map(|b| {
            let batch: Vec<&GeneratedEvent> = b.iter().map(|&i| &events[i]).collect();
            encode_batch(&batch, opts)
        })
        .collect()
}

/// How a log agent cuts `events` into per-instance batches (indexes into
/// `events`, in time order within a batch): at most `per_batch` events
/// spanning at most `max_span_ms`, in the order of their last event.
pub fn batches(events: &[GeneratedEvent], per_batch: usize, max_span_ms: i64) -> Vec<Vec<usize>> {
    let per_record = per_batch.max(1);
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].time_ms);
    let mut open: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let e = &events[i];
        let buf = open.entry(&e.instance).or_default();
        if let Some(&first) = buf.first() {
            if e.time_ms - events[first].time_ms > max_span_ms {
                batches.push(std::mem::take(buf));
            }
        }
        buf.push(i);
        if buf.len() >= per_record {
            batches.push(std::mem::take(buf));
        }
    }
    let mut rest: Vec<Vec<usize>> = open.into_values().filter(|b| !b.is_empty()).collect();
    rest.sort_by(|a, b| events[a[0]].instance.cmp(&events[b[0]].instance));
    batches.extend(rest);
    // Stable: batches flushed earlier stay earlier among equal last times.
    batches.sort_by_key(|b| b.last().map_or(i64::MIN, |&i| events[i].time_ms));
    batches
}

/// The JSON envelope of one batch of events of one log stream.
pub fn subscription_json(batch: &[&GeneratedEvent], opts: &RecordOptions) -> Vec<u8> {
    let payload = Payload {
        message_type: "DATA_MESSAGE",
        owner: &opts.owner,
        log_group: &opts.log_group,
        log_stream: batch.first().map_or("", |e| &e.instance),
        subscription_filters: [&opts.subscription_filter],
        log_events: batch
            .iter()
            .map(|e| PayloadEvent {
                id: &e.id,
                timestamp: e.time_ms,
                message: &e.line,
            })
            .collect(),
    };
    // Serializing plain strings and integers into memory cannot fail.
    serde_json::to_vec(&payload).expect("a subscription payload serializes")
}

/// One batch of one instance's events as a subscription record.
pub fn encode_batch(batch: &[&GeneratedEvent], opts: &RecordOptions) -> SubscriptionRecord {
    let json = subscription_json(batch, opts);
    let data = gzip(&json, opts.compression);
    SubscriptionRecord {
        log_stream: batch
            .first()
            .map_or_else(String::new, |e| e.instance.clone()),
        data,
        json_len: json.len(),
        json: if opts.keep_json { json } else { Vec::new() },
        events: batch.len(),
        first_time_ms: batch.first().map_or(0, |e| e.time_ms),
        last_time_ms: batch.last().map_or(0, |e| e.time_ms),
    }
}

/// The reachability probe CloudWatch sends when a subscription is created, gzip-compressed.
pub fn control_message() -> Vec<u8> {
    let json = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1700000000000,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#;
    gzip(json.as_bytes(), 6)
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(data.len() / 8 + 64),
        Compression::new(level.min(9)),
    );
    // Writing into a Vec cannot fail.
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// The events' lines, one per line, in the given order (an `auth.log` /
/// `/var/log/secure` of the whole fleet; the syslog host tells instances apart).
pub fn auth_log(events: &[GeneratedEvent]) -> String {
    let mut s = String::with_capacity(events.iter().map(|e| e.line.len() + 1).sum());
    for e in events {
        s.push_str(&e.line);
        s.push('\n');
    }
    s
}
