//! Both stages in one process, for the offline commands (`demo`, `scan`)
//! and the benchmarks: shard engines split as Kinesis splits a fleet (one
//! log stream or host, one shard), their partials carried in wire form over
//! an in-memory channel to one fleet stage. The same code the service runs
//! on two streams, without the streams (docs/fleet.md).

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::mpsc;

use crate::command::Origin;
use crate::engine::{RecordKind, Totals};
use crate::envelope::{DecodeError, Decoder};
use crate::fleet::{FleetConfig, FleetStage, FleetStats};
use crate::partial::{Partial, PartialConfig};
use crate::policy::Decision;
use crate::rules::PolicyName;
use crate::{prefix, Engine, EngineConfig, LineInput, RecordInput, Stats};

/// The most shards one process splits its input over.
pub const MAX_SHARDS: usize = 256;

/// What the fleet stage was sent and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetSummary {
    pub shards: usize,
    pub partials: u64,
    pub partial_bytes: u64,
    /// Partials the fleet stage could not read (a bug: they were encoded by
    /// this process a moment before).
    pub undecodable_partials: u64,
    pub stage: FleetStats,
}

/// A configuration [`EmbeddedStages::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbeddedError {
    #[error("shards must be between 1 and {MAX_SHARDS}, not {0}")]
    Shards(usize),
    #[error("{0}")]
    Config(String),
}

pub struct EmbeddedStages {
    shards: Vec<Engine>,
    /// `None` with the seed policy (per instance only) or one shard.
    stage: Option<FleetStage>,
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    scratch: Vec<Partial>,
    route: foldhash::fast::FixedState,
    /// Reads a payload's log stream to route it, when it is not given.
    router: Option<Decoder>,
    /// Where the fleet stage's decisions go when the caller keeps them apart.
    fleet_out: Option<Vec<Decision>>,
    summary: FleetSummary,
    position: u64,
}

impl EmbeddedStages {
    /// `shards` engines of `config`; with more than one (and a policy that
    /// has source rules), a fleet stage over their partials.
    pub fn new(config: EngineConfig, shards: usize) -> Result<EmbeddedStages, EmbeddedError> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(EmbeddedError::Shards(shards));
        }
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
                .map_err(|e| EmbeddedError::Config(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stage = if fleet {
            Some(
                FleetStage::new(FleetConfig::for_shards(&config.policy))
                    .map_err(|e| EmbeddedError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        Ok(EmbeddedStages {
            router: (shards > 1).then(|| Decoder::new(config.max_decompressed)),
            shards: engines,
            stage,
            tx,
            rx,
            scratch: Vec::new(),
            route: foldhash::fast::FixedState::with_seed(0x5a4d),
            fleet_out: None,
            summary: FleetSummary {
                shards,
                ..FleetSummary::default()
            },
            position: 0,
        })
    }

    /// From now on the fleet stage's decisions are kept apart (see
    /// [`EmbeddedStages::take_fleet_decisions`]) instead of joining the
    /// shards' in `out`: to judge the shards alone against both stages.
    pub fn keep_fleet_decisions_apart(&mut self) {
        self.fleet_out.get_or_insert_with(Vec::new);
    }

    /// The fleet stage's decisions kept apart since the last call.
    pub fn take_fleet_decisions(&mut self) -> Vec<Decision> {
        self.fleet_out
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The shard a log stream (or host) goes to.
    pub fn shard_of(&self, key: &str) -> usize {
        (self.route.hash_one(key) % self.shards.len() as u64) as usize
    }

    /// Processes a record routed by `key` (its log stream, as the Kinesis
    /// partition key is).
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

    /// Processes a record routed by the log stream it names (decoded twice
    /// when there are several shards: once to route, once to count). A
    /// record that does not decode goes to the first shard, which counts
    /// the error.
    pub fn process_payload(
        &mut self,
        record: &RecordInput<'_>,
        out: &mut Vec<Decision>,
    ) -> Result<RecordKind, DecodeError> {
        let shard = match &mut self.router {
            None => 0,
            Some(d) => match d.decode(record.data) {
                Ok(e) => {
                    let stream = e.log_stream.into_owned();
                    self.shard_of(&stream)
                }
                Err(_) => 0,
            },
        };
        let r = self.shards[shard].process_record(record, out);
        self.pump(shard, out);
        r
    }

    /// Processes a line routed by its syslog host when `instance_from_host`
    /// and the line names one, else by `input.instance`.
    pub fn process_line(
        &mut self,
        input: &LineInput<'_>,
        origin: &Origin,
        out: &mut Vec<Decision>,
    ) {
        let shard = if self.shards.len() == 1 {
            0
        } else {
            let host = input
                .instance_from_host
                .then(|| prefix::parse_line(input.line).and_then(|l| l.host))
                .flatten();
            self.shard_of(host.unwrap_or(input.instance))
        };
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
            // The receiver lives as long as `self`: sending cannot fail.
            let _ = self.tx.send(bytes);
        }
        let out = self.fleet_out.as_mut().unwrap_or(out);
        while let Ok(bytes) = self.rx.try_recv() {
            self.position += 1;
            match Partial::decode(&bytes) {
                Ok(p) => stage.ingest(p, self.position, out),
                Err(_) => self.summary.undecodable_partials += 1,
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
        let mut s = Stats::default();
        for e in &self.shards {
            s.add(&e.stats());
        }
        s
    }

    /// The shards' totals, merged (with `keep_totals`). A source network's
    /// totals from several shards add up; each shard caps its own.
    pub fn totals(&self) -> Option<Cow<'_, Totals>> {
        if let [one] = self.shards.as_slice() {
            return one.totals().map(Cow::Borrowed);
        }
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
        merged.map(Cow::Owned)
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

    /// The engine, when there is one shard (and so no fleet stage to
    /// feed): to drive it directly ([`Engine::split`]).
    pub fn engine_mut(&mut self) -> Option<&mut Engine> {
        match self.shards.as_mut_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub fn engines(&self) -> &[Engine] {
        &self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_counts_outside_the_bounds_are_refused() {
        for n in [0, MAX_SHARDS + 1] {
            assert_eq!(
                EmbeddedStages::new(EngineConfig::default(), n).err(),
                Some(EmbeddedError::Shards(n))
            );
        }
    }

    #[test]
    fn a_host_goes_to_one_shard_and_the_seed_policy_has_no_fleet_stage() {
        let mut stages = EmbeddedStages::new(EngineConfig::default(), 8).unwrap();
        let origin = Origin {
            account: String::new(),
            log_group: String::new(),
            log_stream: "auth.log".into(),
        };
        let mut out = Vec::new();
        for i in 0..20 {
            let line = format!(
                "Nov 29 10:00:{i:02} ip-10-0-0-7 sshd[{i}]: Invalid user u{i} from 203.0.113.9 port 4{i:03}"
            );
            stages.process_line(
                &LineInput {
                    instance: "auth.log",
                    instance_from_host: true,
                    event_id: None,
                    time_ms: None,
                    arrival_ms: None,
                    position: i,
                    line: &line,
                },
                &origin,
                &mut out,
            );
        }
        let busy: Vec<u64> = stages.engines().iter().map(|e| e.stats().events).collect();
        assert_eq!(busy.iter().filter(|&&n| n > 0).count(), 1, "{busy:?}");
        assert_eq!(stages.stats().events, 20);
        let seed = EngineConfig {
            policy: crate::policy::PolicyConfig::named(PolicyName::Seed),
            ..EngineConfig::default()
        };
        let seed = EmbeddedStages::new(seed, 8).unwrap();
        assert!(seed.stage.is_none());
    }
}
