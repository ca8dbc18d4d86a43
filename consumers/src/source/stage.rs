//! What a reader runs its records through: a shard's engine (stage one,
//! which also builds partials when the fleet stage is on) or the fleet stage
//! (stage two, whose records are partials). One type, so a reader, its
//! checkpoint rule and its reshard replay serve both streams (docs/fleet.md).

use sshwarden_pipeline::engine::RecordKind;
use sshwarden_pipeline::envelope::DecodeError;
use sshwarden_pipeline::fleet::{FleetConfig, FleetStage};
use sshwarden_pipeline::partial::{Partial, PartialError};
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{Engine, EngineConfig, RecordInput};

/// Which stage a reader runs, with its settings.
#[derive(Debug, Clone)]
pub enum StageConfig {
    /// The stream of logs: a shard's engine (`partials` set: stage one).
    Logs(EngineConfig),
    /// The stream of partials: the fleet stage.
    Fleet(FleetConfig),
}

/// A record a stage could not use.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Partial(#[from] PartialError),
}

// One per reader, made once: the engine's size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Processor {
    Logs(Engine),
    Fleet(FleetStage),
}

impl Processor {
    /// The stage for the shard (or partition) `shard`: partials it builds carry that name.
    pub fn new(config: &StageConfig, shard: &str) -> Result<Processor, String> {
        match config {
            StageConfig::Logs(c) => {
                let mut c = c.clone();
                if let Some(p) = &mut c.partials {
                    p.shard = shard.to_owned();
                }
                Engine::new(c)
                    .map(Processor::Logs)
                    .map_err(|e| e.to_string())
            }
            StageConfig::Fleet(c) => FleetStage::new(c.clone())
                .map(Processor::Fleet)
                .map_err(|e| e.to_string()),
        }
    }

    pub fn process_record(
        &mut self,
        record: &RecordInput<'_>,
        out: &mut Vec<Decision>,
    ) -> Result<RecordKind, StageError> {
        match self {
            Processor::Logs(e) => Ok(e.process_record(record, out)?),
            Processor::Fleet(f) => {
                let p = Partial::decode(record.data)?;
                f.ingest(p, record.position, out);
                Ok(RecordKind::Data { events: 1 })
            }
        }
    }

    /// The position a checkpoint must stay before.
    pub fn low_water_position(&self) -> Option<u64> {
        match self {
            Processor::Logs(e) => e.low_water_position(),
            Processor::Fleet(f) => f.low_water_position(),
        }
    }

    /// The clock a checkpoint stores (stage one only: the fleet stage
    /// re-merges what it replays, and a partial's id makes that idempotent).
    pub fn event_time(&self) -> Option<i64> {
        match self {
            Processor::Logs(e) => e.event_time(),
            Processor::Fleet(_) => None,
        }
    }

    pub fn resume_from(&mut self, event_time_ms: i64) {
        if let Processor::Logs(e) = self {
            e.resume_from(event_time_ms);
        }
    }

    pub fn observe_idle(&mut self, now_ms: i64) {
        if let Processor::Logs(e) = self {
            e.observe_idle(now_ms);
        }
    }

    pub fn finish(&mut self) {
        if let Processor::Logs(e) = self {
            e.finish();
        }
    }

    /// Stage one: see [`Engine::pause_partials`].
    pub fn pause_partials(&mut self, paused: bool) {
        if let Processor::Logs(e) = self {
            e.pause_partials(paused);
        }
    }

    /// Stage one: see [`Engine::flush_partials`].
    pub fn flush_partials(&mut self) {
        if let Processor::Logs(e) = self {
            e.flush_partials();
        }
    }

    /// Partials stage one emitted since the last call, each with the
    /// smallest record position it counts.
    pub fn drain_partials(&mut self, out: &mut Vec<(u64, Partial)>) {
        if let Processor::Logs(e) = self {
            e.drain_partials_held(out);
        }
    }

    pub fn engine(&self) -> Option<&Engine> {
        match self {
            Processor::Logs(e) => Some(e),
            Processor::Fleet(_) => None,
        }
    }
}
