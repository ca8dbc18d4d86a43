//! The harness of the `sshwarden run --source kafka` tests: the broker
//! (tansu on 127.0.0.1, or librdkafka's mock cluster), each test's own topic
//! and consumer group, seeded traffic as subscription payloads or raw
//! lines, workers started with the test timings, the group's committed
//! offsets, and the end markers a "nothing more will come" check waits for.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sshwarden_loadgen::kafka::{line_messages, payload_messages, produce, Outgoing};
use sshwarden_loadgen::{encode_records, Fleet, RecordOptions};

use super::*;

// ------------------------------------------------------------------ broker

/// The broker's address; fails the test when nothing answers there.
pub fn broker() -> String {
    let brokers =
        std::env::var("SSHWARDEN_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&first)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no Kafka broker answers at {brokers}. These tests need one: run \
         `scripts/emulators up kafka` (or set SSHWARDEN_KAFKA_BROKERS to where a broker listens)."
    );
    brokers
}

pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = rt
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap_or_else(|e| panic!("CreateTopics {topic}: {e}"));
    for r in results {
        if let Err((t, e)) = r {
            panic!("CreateTopics {t}: {e}");
        }
    }
}

/// The group's committed offsets, per partition (-1: none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("OffsetFetch {group}: {e}"));
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

pub fn write(brokers: &str, topic: &str, messages: &[Outgoing]) {
    produce(brokers, topic, &[], messages, None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("producing to {topic}: {e:#}"));
}

pub fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// One look's worth of sleep in a wait-until-fact loop.
pub fn poll() {
    std::thread::sleep(POLL);
}

/// Writes `payload` once to each of the topic's `partitions`, after
/// everything written before it.
pub fn write_to_each_partition(brokers: &str, topic: &str, partitions: i32, payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for p in 0..partitions {
        producer
            .send(
                BaseRecord::<str, [u8]>::to(topic)
                    .partition(p)
                    .key("end-marker")
                    .payload(payload),
            )
            .unwrap_or_else(|(e, _)| panic!("producing the end marker to {topic}/{p}: {e}"));
    }
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flushing the end markers to {topic}: {e}"));
}

/// Per partition, the offset after its last message (the high watermark).
pub fn ends(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .collect()
}

// ------------------------------------------------------------------ traffic

pub struct Traffic {
    pub fleet: Fleet,
    pub expected: Vec<Expected>,
}

impl Traffic {
    /// Every instance under a brute force for the whole duration, plus
    /// benign traffic and background scanning.
    pub fn brute_force(seed: u64, instances: usize, start_ms: i64, duration_ms: i64) -> Traffic {
        let fleet = brute_force_fleet(seed, instances, start_ms, duration_ms);
        let expected = expected_commands(&fleet);
        Traffic { fleet, expected }
    }

    /// One message per subscription payload (25 events, 5 s at most).
    pub fn payloads(&self) -> Vec<Outgoing> {
        let opts = RecordOptions {
            events_per_record: 25,
            max_span_ms: 5_000,
            ..RecordOptions::default()
        };
        payload_messages(&encode_records(self.fleet.events(), &opts))
    }

    pub fn lines(&self) -> Vec<Outgoing> {
        line_messages(self.fleet.events())
    }
}

/// Messages whose (last) event is before `time_ms`, and the rest.
pub fn split_at(messages: &[Outgoing], time_ms: i64) -> (&[Outgoing], &[Outgoing]) {
    let i = messages.partition_point(|m| m.timestamp_ms < time_ms);
    messages.split_at(i)
}

// ------------------------------------------------------------------ workers

/// One test's topic, group, workers and scratch directory (the workers'
/// part is [`Workers`], which a harness derefs to).
pub struct Harness {
    base: Workers,
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub partitions: i32,
    /// librdkafka's mock cluster, when the test runs on it (dropped last:
    /// the workers are killed first).
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

derefs_to_workers!(Harness);

impl Harness {
    /// A topic on the broker (tansu).
    pub fn new(label: &str, partitions: i32) -> Harness {
        Harness::on(label, partitions, None)
    }

    /// A topic on a mock cluster of librdkafka's, in this process but
    /// listening on 127.0.0.1: the workers still talk the Kafka protocol
    /// to it over TCP.
    pub fn on_mock(label: &str, partitions: i32) -> Harness {
        Harness::on(
            label,
            partitions,
            Some(MockCluster::new(1).expect("librdkafka mock cluster")),
        )
    }

    pub fn on(
        label: &str,
        partitions: i32,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
    ) -> Harness {
        let unique = unique_name(label);
        let topic = format!("sshwarden-it-{unique}");
        let brokers = match &mock {
            Some(m) => {
                m.create_topic(&topic, partitions, 1)
                    .unwrap_or_else(|e| panic!("mock CreateTopic {topic}: {e}"));
                m.bootstrap_servers()
            }
            None => {
                let b = broker();
                create_topic(&b, &topic, partitions);
                b
            }
        };
        let group = format!("sshwarden-it-group-{unique}");
        Harness {
            base: Workers::new("kafka-", label, format!("topic {topic}, group {group}")),
            _mock: mock,
            brokers,
            group,
            topic,
            partitions,
        }
    }

    pub fn write(&self, messages: &[Outgoing]) {
        write(&self.brokers, &self.topic, messages);
        self.log(format_args!("wrote {} messages", messages.len()));
    }

    pub fn committed(&self) -> Vec<i64> {
        committed(&self.brokers, &self.group, &self.topic, self.partitions)
    }

    /// Starts a worker: stdout sink (the default), no cooldown, no blast radius, short
    /// commit and idle intervals, a short session timeout.
    pub fn spawn(&mut self, id: &str, extra: &[&str]) -> usize {
        self.spawn_env(id, extra, &[])
    }

    pub fn spawn_env(&mut self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let mut args: Vec<&str> = vec![
            "--source",
            "kafka",
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--group",
            &self.group,
            "--checkpoint-ms",
            "300",
            "--idle-poll-ms",
            "300",
            "--kafka-option",
            "session.timeout.ms=6000",
            "--kafka-option",
            "heartbeat.interval.ms=500",
            "--kafka-option",
            "fetch.wait.max.ms=100",
        ];
        args.extend_from_slice(extra);
        self.base.spawn(id, &args, env)
    }

    /// Waits until the workers hold `shares` partitions each (as their
    /// metrics say), every partition once.
    pub fn wait_assigned(&mut self, workers: &[usize], shares: &[usize]) {
        let d = Deadline::new(format!("partitions assigned as {shares:?}"), MAX_WAIT);
        loop {
            self.check_running();
            let held: Vec<usize> = workers
                .iter()
                .map(|&w| self.workers[w].metric("sshwarden_kafka_partitions_assigned") as usize)
                .collect();
            let mut sorted = held.clone();
            sorted.sort_unstable();
            let mut want = shares.to_vec();
            want.sort_unstable();
            if sorted == want {
                self.log(format_args!("assigned: {held:?}"));
                return;
            }
            d.check(|| format!("assigned {held:?}"));
            pause(100);
        }
    }

    /// Messages read by all workers (their `sshwarden_records_total`).
    pub fn records(&self, worker: usize) -> u64 {
        self.workers[worker].metric("sshwarden_records_total") as u64
    }

    /// The label of partition `p` in the metrics.
    pub fn partition_label(&self, p: i32) -> String {
        format!("{}/{p}", self.topic)
    }

    /// Writes an [`END_MARKER`] after the traffic to every partition, then
    /// waits until the `readers` counted each one (as a decode error):
    /// every message before it was read and its commands delivered. What a
    /// check that nothing more will come (no duplicate, nothing read twice)
    /// waits for. For payloads; a reader of `--kafka-format lines` decodes
    /// anything (see [`Harness::read_lines_to_the_end`]).
    pub fn read_to_the_end(&mut self, readers: &[usize]) {
        self.read_to_the_end_past(readers, 0);
    }

    /// [`Harness::read_to_the_end`] on partitions that each hold `poison`
    /// undecodable messages before the end marker.
    pub fn read_to_the_end_past(&mut self, readers: &[usize], poison: usize) {
        write_to_each_partition(&self.brokers, &self.topic, self.partitions, END_MARKER);
        let partitions: Vec<String> = (0..self.partitions)
            .map(|p| self.partition_label(p))
            .collect();
        self.base.wait_end_markers(readers, &partitions, poison);
    }

    /// For a `--kafka-format lines` reader, which takes any message for
    /// lines: writes an empty line (no event, no command) after the traffic
    /// to every partition, then waits until `reader`, which started at the
    /// offsets `from`, has read every partition to its end (its
    /// records_total per partition is the high watermark less `from`): the
    /// last message it counted is that empty line, so every message before
    /// it was read and its commands delivered. Returns what it read in all.
    pub fn read_lines_to_the_end(&mut self, reader: usize, from: &[i64]) -> u64 {
        write_to_each_partition(&self.brokers, &self.topic, self.partitions, b"\n");
        let ends = ends(&self.brokers, &self.topic, self.partitions);
        let want: BTreeMap<String, f64> = (0..self.partitions)
            .map(|p| {
                let n = ends[p as usize] - from[p as usize].max(0);
                (self.partition_label(p), n as f64)
            })
            .collect();
        let d = Deadline::new(
            format!("every partition to be read to its end {ends:?}"),
            MAX_WAIT,
        );
        loop {
            self.check_running();
            let page = metrics_page(self.workers[reader].metrics);
            let read = samples_by_shard(&page, "sshwarden_records_total", &[]);
            let behind: Vec<(&String, f64, f64)> = want
                .iter()
                .map(|(p, &n)| (p, read.get(p).copied().unwrap_or(0.0), n))
                .filter(|&(_, got, n)| got < n)
                .collect();
            if behind.is_empty() {
                self.log(format_args!("read to the end of every partition {ends:?}"));
                return want.values().sum::<f64>() as u64;
            }
            d.check(|| format!("(partition, read, to read): {behind:?}"));
            poll();
        }
    }
}
