//! The record → engine → deliver step both readers share: count the
//! record, run it through the engine, count its events (or log why it was
//! skipped), then log the suppressed decisions and hand back the commands
//! to deliver, in order (delivery itself: [`crate::sink::deliver`]). Log fields
//! stay each source's own ([`Place`]).

use sshwarden_pipeline::command::Command;
use sshwarden_pipeline::engine::RecordKind;
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{Engine, RecordInput};
use tracing::{debug, info, warn};

use super::stage::Processor;
use crate::metrics::{EngineEventLabel, Metrics, ReaderLabel};

/// The log targets the readers' own lines had before this step moved here:
/// `SSHWARDEN_LOG` filters (`sshwarden::source::kinesis::reader=debug`)
/// still select them.
const KINESIS: &str = "sshwarden::source::kinesis::reader";
const KAFKA: &str = "sshwarden::source::kafka::reader";

/// Where a record was read: names the log fields (and target) that say so.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// A Kinesis record (`shard`, `sequence`).
    Shard { sequence: &'a str },
    /// A Kafka message (`partition`, `offset`).
    Partition { offset: i64 },
}

/// Counts one record of `bytes` bytes read by `label`.
pub fn received(metrics: &Metrics, label: &ReaderLabel, bytes: usize) {
    metrics.records.get_or_create(label).inc();
    metrics.bytes.get_or_create(label).inc_by(bytes as u64);
}

/// Runs one record through the engine into `decisions`: its events are
/// counted; a control message is logged at debug, an undecodable record
/// logged, counted as a `decode` error and skipped.
pub fn process(
    engine: &mut Engine,
    record: &RecordInput,
    decisions: &mut Vec<Decision>,
    metrics: &Metrics,
    label: &ReaderLabel,
    place: Place,
) {
    let name = label.name();
    match engine.process_record(record, decisions) {
        Ok(RecordKind::Data { events }) => {
            metrics.events.get_or_create(label).inc_by(events as u64);
        }
        Ok(RecordKind::Control) => match place {
            Place::Shard { sequence } => {
                debug!(target: KINESIS, shard = %name, sequence, "control message skipped");
            }
            Place::Partition { offset } => {
                debug!(target: KAFKA, partition = %name, offset, "control message skipped");
            }
        },
        Err(e) => {
            match place {
                Place::Shard { sequence } => {
                    warn!(target: KINESIS, shard = %name, sequence, error = %e, "record skipped");
                }
                Place::Partition { offset } => {
                    warn!(target: KAFKA, partition = %name, offset, error = %e, "message skipped");
                }
            }
            metrics.error(name, "decode");
        }
    }
    engine_events(engine, metrics, label);
}

/// Runs one record through a reader's stage: the engine as [`process`]
/// does, or, on the stream of partials, the fleet stage (a partial that does
/// not decode is logged, counted as a `partial` error and skipped).
pub fn process_stage(
    processor: &mut Processor,
    record: &RecordInput,
    decisions: &mut Vec<Decision>,
    metrics: &Metrics,
    label: &ReaderLabel,
    place: Place,
) {
    match processor {
        Processor::Logs(engine) => process(engine, record, decisions, metrics, label, place),
        Processor::Fleet(_) => {
            if let Err(e) = processor.process_record(record, decisions) {
                let name = label.name();
                match place {
                    Place::Shard { sequence } => {
                        warn!(target: KINESIS, shard = %name, sequence, error = %e, "partial skipped");
                    }
                    Place::Partition { offset } => {
                        warn!(target: KAFKA, partition = %name, offset, error = %e, "partial skipped");
                    }
                }
                metrics.error(name, "partial");
            } else {
                metrics.events.get_or_create(label).inc();
            }
            if let Processor::Fleet(stage) = processor {
                for (kind, n) in stage.stat_counts() {
                    metrics
                        .fleet_stage
                        .get_or_create(&EngineEventLabel {
                            shard: label.name().to_owned(),
                            kind,
                        })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }
}

/// Publishes what `label`'s engine set aside or merged so far.
pub fn engine_events(engine: &Engine, metrics: &Metrics, label: &ReaderLabel) {
    for (kind, n) in engine.skip_counts() {
        metrics
            .engine_events
            .get_or_create(&EngineEventLabel {
                shard: label.name().to_owned(),
                kind,
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The commands among `decisions`, in order, for the caller to deliver;
/// each suppressed one is logged as it is passed.
pub fn commands<'d>(
    decisions: &'d [Decision],
    label: &'d ReaderLabel,
    place: Place<'d>,
) -> impl Iterator<Item = &'d Command> + 'd {
    decisions.iter().filter_map(move |d| match d {
        Decision::Command(c) => Some(&**c),
        Decision::Suppressed {
            rule,
            subject,
            reason,
            ..
        } => {
            let name = label.name();
            match place {
                Place::Shard { .. } => {
                    info!(target: KINESIS, shard = %name, rule, ?subject, ?reason, "rule fired, command suppressed");
                }
                Place::Partition { .. } => {
                    info!(target: KAFKA, partition = %name, rule, ?subject, ?reason, "rule fired, command suppressed");
                }
            }
            None
        }
    })
}
