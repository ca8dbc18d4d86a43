//! The hot path, stage by stage, on one generated corpus (~40 MB of
//! subscription JSON, ~100 events per record, a quarter attack evidence):
//!
//! * `decode/gzip+json` and `decode/json`: `Decoder::decode` on the gzip
//!   records and on the same records uncompressed (the difference is gunzip);
//!   throughput in bytes of uncompressed JSON.
//! * `classify/scanner` and `classify/oracle`: the two classifiers over the
//!   sshd messages; bytes of message.
//! * `aggregate/process_line`: `Engine::process_line` (prefix, classify,
//!   context, windows, policy) over pre-extracted lines; bytes of line.
//! * `whole/process_record`: `Engine::process_record` over the gzip records;
//!   bytes of uncompressed JSON. `whole/process_record_seed`: the same with
//!   the seed policy (the original sample's three per-instance rules), the
//!   engine's cost before #13's graduated rules, for comparison.
//! * `hard/dense` and `hard/flood`: the whole path on the hard inputs of
//!   issue #17: a dense sshd log (200 instances, heavy scanning and a
//!   40,000-address botnet: most evidence from a new address) and an
//!   address flood (200,000 `Invalid user` lines on one instance in one
//!   minute, each from a new address). The default (graduated) policy's
//!   hour and day windows hold every source's state throughout.
//!
//! Each measurement is one pass over the whole corpus; a fresh engine per
//! pass (its construction is not timed), as event ids seen once are dropped
//! as duplicates the second time.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use sshwarden_benches::{bench_fleet, corpus, corpus_of, dense_fleet, flood_events, Corpus};
use sshwarden_pipeline::classify::{self, oracle};
use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::envelope::Decoder;
use sshwarden_pipeline::policy::PolicyConfig;
use sshwarden_pipeline::rules::PolicyName;
use sshwarden_pipeline::{Engine, EngineConfig, LineInput, RecordInput};

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat);
    g
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).expect("default config is valid")
}

fn describe(name: &str, corpus: &Corpus) {
    eprintln!(
        "{name} corpus: {} records, {} events, {:.1} MB JSON, {:.1} MB gzip, {:.1} MB lines, {:.1} MB sshd messages, {:.0}% evidence, {} expected detections",
        corpus.records.len(),
        corpus.events,
        corpus.json_bytes as f64 / 1e6,
        corpus.records.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        corpus.line_bytes as f64 / 1e6,
        corpus.message_bytes as f64 / 1e6,
        corpus.evidence_ratio * 100.0,
        corpus.expected_detections,
    );
}

/// `Engine::process_record` over every record of `corpus`, a fresh engine
/// with `policy` per pass.
fn whole_path(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    corpus: &Corpus,
    policy: PolicyName,
) {
    g.throughput(Throughput::Bytes(corpus.json_bytes));
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                Engine::new(EngineConfig {
                    policy: PolicyConfig::named(policy),
                    ..EngineConfig::default()
                })
                .expect("built-in policy")
            },
            |mut e| {
                let mut out = Vec::new();
                for (pos, r) in corpus.records.iter().enumerate() {
                    let record = RecordInput {
                        data: r,
                        position: pos as u64,
                        ..RecordInput::default()
                    };
                    let _ = e.process_record(&record, &mut out);
                }
                black_box(out.len());
                e
            },
            BatchSize::PerIteration,
        )
    });
}

fn benches(c: &mut Criterion) {
    let corpus: Corpus = corpus(&bench_fleet());
    describe("standard", &corpus);

    let mut g = group(c, "decode");
    g.throughput(Throughput::Bytes(corpus.json_bytes));
    g.bench_function("gzip+json", |b| {
        let mut d = Decoder::default();
        b.iter(|| {
            let mut n = 0;
            for r in &corpus.records {
                n += d.decode(r).map_or(0, |e| e.log_events.len());
            }
            black_box(n)
        })
    });
    g.bench_function("json", |b| {
        let mut d = Decoder::default();
        b.iter(|| {
            let mut n = 0;
            for r in &corpus.json {
                n += d.decode(r).map_or(0, |e| e.log_events.len());
            }
            black_box(n)
        })
    });
    g.finish();

    let mut g = group(c, "classify");
    g.throughput(Throughput::Bytes(corpus.message_bytes));
    g.bench_function("scanner", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &corpus.messages {
                n += usize::from(classify::classify(black_box(m)).is_some());
            }
            black_box(n)
        })
    });
    g.bench_function("oracle", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &corpus.messages {
                n += usize::from(oracle::classify(black_box(m)).is_some());
            }
            black_box(n)
        })
    });
    g.finish();

    let origin = Origin {
        account: "123456789012".into(),
        log_group: "/ec2/sshd".into(),
        log_stream: String::new(),
    };
    let mut g = group(c, "aggregate");
    g.throughput(Throughput::Bytes(corpus.line_bytes));
    g.bench_function("process_line", |b| {
        b.iter_batched(
            engine,
            |mut e| {
                let mut out = Vec::new();
                for l in &corpus.lines {
                    e.process_line(
                        &LineInput {
                            instance: &l.instance,
                            instance_from_host: false,
                            event_id: Some(&l.id),
                            time_ms: Some(l.time_ms),
                            arrival_ms: None,
                            position: 0,
                            line: &l.line,
                        },
                        &origin,
                        &mut out,
                    );
                }
                black_box(out.len());
                e
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = group(c, "whole");
    whole_path(&mut g, "process_record", &corpus, PolicyName::Graduated);
    whole_path(&mut g, "process_record_seed", &corpus, PolicyName::Seed);
    g.finish();

    let dense = self::corpus(&dense_fleet());
    describe("dense", &dense);
    let flood = flood_events(200_000);
    let flood = corpus_of(&flood, 1.0, 0);
    describe("flood", &flood);
    let mut g = group(c, "hard");
    whole_path(&mut g, "dense", &dense, PolicyName::Graduated);
    whole_path(&mut g, "flood", &flood, PolicyName::Graduated);
    g.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
