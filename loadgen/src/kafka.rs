//! Writes generated traffic to a Kafka topic (feature `kafka`), as a log
//! shipper would: one message per CloudWatch subscription payload (gzip
//! JSON, as Kinesis delivers it) or one per raw sshd line. The key is the
//! instance id, so one instance's messages stay in one partition, in order;
//! the message timestamp is the event time (of the record's last event for
//! a payload). [`KafkaWriter`] is also what a worker's fleet stage writes
//! its partials with (`sshwarden run --fleet-topic`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::encode::SubscriptionRecord;
use crate::event::GeneratedEvent;

/// One message to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub key: String,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
}

/// One message per subscription payload.
pub fn payload_messages(records: &[SubscriptionRecord]) -> Vec<Outgoing> {
    records
        .iter()
        .map(|r| Outgoing {
            key: r.log_stream.clone(),
            payload: r.data.clone(),
            timestamp_ms: r.last_time_ms,
        })
        .collect()
}

/// One message per log line.
pub fn line_messages(events: &[GeneratedEvent]) -> Vec<Outgoing> {
    events
        .iter()
        .map(|e| Outgoing {
            key: e.instance.clone(),
            payload: e.line.clone().into_bytes(),
            timestamp_ms: e.time_ms,
        })
        .collect()
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// What became of one call's messages: the producer's delivery callback
/// counts each one acknowledged or failed (librdkafka retries before it
/// reports a failure), and the call waits until all are counted.
#[derive(Default)]
struct Batch {
    counts: std::sync::Mutex<Counts>,
    settled: std::sync::Condvar,
}

#[derive(Default)]
struct Counts {
    acked: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Only counters behind it: a poisoned lock still holds valid counts.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Routes each delivery report to the call that sent the message.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<Batch>) {
        let mut c = batch.lock();
        match result {
            Ok(_) => c.acked += 1,
            Err((e, _)) => {
                c.failed += 1;
                c.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        drop(c);
        batch.settled.notify_all();
    }
}

/// A Kafka producer that writes batches of messages and returns once the
/// broker acknowledged every one: the load generator's writer, and the
/// worker's writer of partials (`sshwarden run --fleet-topic`), which may
/// share one between threads (each call waits for its own messages only).
pub struct KafkaWriter {
    producer: ThreadedProducer<Deliveries>,
    timeout: Duration,
}

impl KafkaWriter {
    /// A producer for `brokers`; a message not acknowledged within
    /// `timeout` fails its call. `options` are librdkafka settings passed
    /// through (after these, so they win).
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        timeout: Duration,
    ) -> anyhow::Result<KafkaWriter> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", timeout.as_millis().to_string());
        for (k, v) in options {
            config.set(k, v);
        }
        let producer = config
            .create_with_context(Deliveries)
            .context("cannot create the Kafka producer")?;
        Ok(KafkaWriter { producer, timeout })
    }

    /// Writes `messages` to `topic` (each to the partition its key hashes
    /// to) and waits until every one is acknowledged (at most the writer's
    /// timeout in all), at `rate` messages per second when given. Blocks:
    /// from async code, call it on a blocking thread.
    pub fn write(
        &self,
        topic: &str,
        messages: &[Outgoing],
        rate: Option<f64>,
    ) -> anyhow::Result<Sent> {
        let timeout = self.timeout;
        let start = Instant::now();
        let deadline = start + timeout;
        let batch = Arc::new(Batch::default());
        let mut sent = Sent::default();
        for (i, m) in messages.iter().enumerate() {
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let mut record = BaseRecord::with_opaque_to(topic, batch.clone())
                .key(m.key.as_bytes())
                .payload(&m.payload)
                .timestamp(m.timestamp_ms);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        if Instant::now() > deadline {
                            bail!("Kafka producer queue still full after {timeout:?}");
                        }
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e).context("cannot queue a Kafka message"),
                }
            }
            sent.messages += 1;
            sent.bytes += m.payload.len() as u64;
        }
        let mut c = batch.lock();
        while c.acked + c.failed < sent.messages {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "Kafka messages not acknowledged in time: {} of {} after {timeout:?}",
                    c.acked + c.failed,
                    sent.messages
                );
            }
            c = batch
                .settled
                .wait_timeout(c, left)
                .map(|(c, _)| c)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        sent.elapsed = start.elapsed();
        if c.failed > 0 {
            bail!(
                "{} of {} Kafka messages failed: {}",
                c.failed,
                sent.messages,
                c.first_error.clone().unwrap_or_default()
            );
        }
        Ok(sent)
    }
}

/// Writes `messages` to `topic` with a writer of its own and waits until
/// every one is acknowledged (at most `timeout` in all), at `rate` messages
/// per second when given. `options` are librdkafka settings passed through.
pub fn produce(
    brokers: &str,
    topic: &str,
    options: &[(String, String)],
    messages: &[Outgoing],
    rate: Option<f64>,
    timeout: Duration,
) -> anyhow::Result<Sent> {
    KafkaWriter::new(brokers, options, timeout)?.write(topic, messages, rate)
}

/// `sshwarden-loadgen kafka`: the fleet's traffic to a topic.
#[derive(Debug, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The topic (create it first, with as many partitions as wanted).
    #[arg(long)]
    pub topic: String,
    /// payloads: one CloudWatch subscription payload per message; lines: one sshd line per message.
    #[arg(long, value_enum, default_value_t = KafkaContent::Payloads)]
    pub content: KafkaContent,
    /// Events per payload.
    #[arg(long, default_value_t = 100)]
    pub events_per_record: usize,
    /// Messages per second [default: as fast as the broker takes them].
    #[arg(long)]
    pub rate: Option<f64>,
    /// A librdkafka setting, KEY=VALUE (repeatable).
    #[arg(long = "kafka-option")]
    pub options: Vec<String>,
    /// Give up when not every message is acknowledged within this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaContent {
    Payloads,
    Lines,
}

/// Runs `sshwarden-loadgen kafka` on a generated fleet; returns a one-line summary.
pub fn run(fleet: &crate::Fleet, args: &KafkaArgs) -> anyhow::Result<String> {
    let messages = match args.content {
        KafkaContent::Payloads => {
            let opts = crate::RecordOptions {
                events_per_record: args.events_per_record,
                ..crate::RecordOptions::default()
            };
            payload_messages(&crate::encode_records(fleet.events(), &opts))
        }
        KafkaContent::Lines => line_messages(fleet.events()),
    };
    let options = args
        .options
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--kafka-option {kv:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sent = produce(
        &args.brokers,
        &args.topic,
        &options,
        &messages,
        args.rate,
        Duration::from_secs(args.timeout_secs),
    )?;
    Ok(format!(
        "{} messages ({} bytes, {} events) to {} in {:.2} s ({:.0} messages/s)",
        sent.messages,
        sent.bytes,
        fleet.events().len(),
        args.topic,
        sent.elapsed.as_secs_f64(),
        sent.messages as f64 / sent.elapsed.as_secs_f64().max(1e-9)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fleet, FleetConfig};

    #[test]
    fn messages_are_keyed_by_instance_and_stamped_with_event_time() {
        let fleet = Fleet::generate(&FleetConfig {
            duration_ms: 120_000,
            scenarios: crate::Scenario::default_mix(20, 120_000),
            ..FleetConfig::default()
        })
        .unwrap();
        let lines = line_messages(fleet.events());
        assert_eq!(lines.len(), fleet.events().len());
        for (m, e) in lines.iter().zip(fleet.events()) {
            assert_eq!(m.key, e.instance);
            assert_eq!(m.timestamp_ms, e.time_ms);
            assert_eq!(m.payload, e.line.as_bytes());
        }
        let records = crate::encode_records(fleet.events(), &crate::RecordOptions::default());
        let payloads = payload_messages(&records);
        assert_eq!(payloads.len(), records.len());
        assert!(payloads
            .iter()
            .zip(&records)
            .all(|(m, r)| m.key == r.log_stream && m.payload.starts_with(&[0x1f, 0x8b])));
    }

    #[test]
    fn an_unreachable_broker_is_an_error_not_a_hang() {
        // Nothing listens on port 1 of loopback: delivery fails within the timeout.
        let m = Outgoing {
            key: "i-0123456789abcdef0".into(),
            payload: b"x".to_vec(),
            timestamp_ms: 1,
        };
        let err = produce(
            "127.0.0.1:1",
            "t",
            &[],
            &[m],
            None,
            Duration::from_millis(1500),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("failed") || text.contains("not acknowledged"),
            "{text}"
        );
    }
}
