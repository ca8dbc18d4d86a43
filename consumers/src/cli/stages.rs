//! Both stages in one process, for the offline commands: shard engines
//! split as Kinesis splits a fleet (one log stream, one shard), their
//! partials carried in wire form over an in-memory channel to one fleet
//! stage. The same pipeline code the service runs, without a second stream.

use std::hash::BuildHasher;
use std::sync::mpsc;

use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::engine::{RecordKind, Totals};
use sshwarden_pipeline::envelope::DecodeError;
use sshwarden_pipeline::fleet::{FleetConfig, FleetStage, FleetStats};
use sshwarden_pipeline::partial::{Partial, PartialConfig};
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::rules::PolicyName;
use sshwarden_pipeline::{Engine, EngineConfig, LineInput, RecordInput, Stats};

/// What the fleet stage was sent and did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FleetSummary {
    pub shards: usize,
    pub partials: u64,
    pub partial_bytes: u64,
    pub stage: FleetStats,
}

pub struct LocalStages {
    shards: Vec<Engine>,
    /// `None` with the seed policy (per instance only) or one shard.
    stage: Option<FleetStage>,
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    scratch: Vec<Partial>,
    route: foldhash::fast::FixedState,
    summary: FleetSummary,
    position: u64,
}

impl LocalStages {
    /// `shards` engines of `config`; with more than one (and a policy that
    /// has source rules), a fleet stage over their partials.
    pub fn new(config: EngineConfig, shards: usize) -> anyhow::Result<LocalStages> {
        anyhow::ensure!(
            (1..=256).contains(&shards),
            "--shards must be between 1 and 256"
        );
        let fleet = shards > 1 && config.policy.name != PolicyName::Seed;
        let engines = (0..shards)
            .map(|i| {
                Engine::new(EngineConfig {
                    partials: fleet.then(|| PartialConfig {
                        shard: format!("local-{i}"),
                        ..PartialConfig::default()
                    }),
                    ..config.clone()
                })
                .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stage = if fleet {
            Some(
                FleetStage::new(FleetConfig::for_shards(&config.policy))
                    .map_err(anyhow::Error::msg)?,
            )
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        Ok(LocalStages {
            shards: engines,
            stage,
            tx,
            rx,
            scratch: Vec::new(),
            route: foldhash::fast::FixedState::with_seed(0x5a4d),
            summary: FleetSummary {
                shards,
                ..FleetSummary::default()
            },
            position: 0,
        })
    }

    /// The shard a log stream (or host) goes to.
    pub fn shard_of(&self, key: &str) -> usize {
        (self.route.hash_one(key) % self.shards.len() as u64) as usize
    }

    pub fn process_record(
        &mut self,
        key: &str,
        record: &RecordInput<'_>,
        out: &mut Vec<Decision>,
    ) -> Result<RecordKind, DecodeError> {
        let shard = self.shard_of(key);
        let r = self.shards[shard].process_record(record, out);
        self.pump(shard, out);
        r
    }

    pub fn process_line(
        &mut self,
        key: &str,
        input: &LineInput<'_>,
        origin: &Origin,
        out: &mut Vec<Decision>,
    ) {
        let shard = self.shard_of(key);
        self.shards[shard].process_line(input, origin, out);
        self.pump(shard, out);
    }

    /// Sends `shard`'s new partials over the channel and lets the fleet
    /// stage merge what arrived.
    fn pump(&mut self, shard: usize, out: &mut Vec<Decision>) {
        let Some(stage) = &mut self.stage else {
            return;
        };
        self.shards[shard].drain_partials(&mut self.scratch);
        for p in self.scratch.drain(..) {
            let bytes = p.encode();
            self.summary.partials += 1;
            self.summary.partial_bytes += bytes.len() as u64;
            // The receiver lives as long as `self`.
            let _ = self.tx.send(bytes);
        }
        while let Ok(bytes) = self.rx.try_recv() {
            self.position += 1;
            match Partial::decode(&bytes) {
                Ok(p) => stage.ingest(p, self.position, out),
                // Written by this process a moment ago: a bug, not input.
                Err(e) => tracing::error!(error = %e, "a partial did not decode"),
            }
        }
    }

    /// Closes every window and partial (end of input).
    pub fn finish(&mut self, out: &mut Vec<Decision>) {
        for i in 0..self.shards.len() {
            self.shards[i].finish();
            self.pump(i, out);
        }
    }

    /// The shards' statistics, added up.
    pub fn stats(&self) -> Stats {
        let mut all = self.shards.iter().map(Engine::stats);
        let Some(mut s) = all.next() else {
            return Stats::default();
        };
        for t in all {
            add_stats(&mut s, &t);
        }
        s
    }

    /// The shards' totals, merged (offline reports).
    pub fn totals(&self) -> Option<Totals> {
        let mut merged: Option<Totals> = None;
        for t in self.shards.iter().filter_map(Engine::totals) {
            let m = merged.get_or_insert_with(Totals::default);
            for (k, v) in &t.instances {
                let e = m.instances.entry(k.clone()).or_default();
                e.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
            for (k, v) in &t.sources {
                let e = m.sources.entry(k.clone()).or_default();
                e.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            }
        }
        merged
    }

    pub fn fleet_summary(&self) -> FleetSummary {
        FleetSummary {
            stage: self
                .stage
                .as_ref()
                .map(FleetStage::stats)
                .unwrap_or_default(),
            ..self.summary
        }
    }

    pub fn engines(&self) -> &[Engine] {
        &self.shards
    }
}

fn add_stats(a: &mut Stats, b: &Stats) {
    macro_rules! add {
        ($($f:ident),*) => { $( a.$f += b.$f; )* };
    }
    add!(
        records,
        control_messages,
        decode_errors,
        events,
        non_sshd_lines,
        unclassified_sshd_lines,
        attributed_by_line,
        attributed_by_connection,
        unattributed_evidence,
        ambiguous_lines,
        repeated_attempt_lines,
        allowlisted_source_events,
        future_times_clamped,
        commands_quarantine,
        commands_block,
        commands_notify,
        commands_held,
        suppressed,
        connection_evictions,
        dropped_source_totals
    );
    for (k, v) in &b.kinds {
        *a.kinds.entry(k).or_default() += v;
    }
    for (k, v) in &b.signals {
        *a.signals.entry(k).or_default() += v;
    }
    let (w, x) = (&mut a.windows, &b.windows);
    w.late_events += x.late_events;
    w.partly_late_events += x.partly_late_events;
    w.duplicate_events += x.duplicate_events;
    w.evicted_instances += x.evicted_instances;
    w.evicted_sources += x.evicted_sources;
    w.windows_closed += x.windows_closed;
}
