//! sshwarden's pure core: from the bytes a source hands over to the
//! remediation commands a sink delivers, with no I/O, no AWS types and no
//! async runtime.
//!
//! The path of a record: [`envelope`] decodes a CloudWatch Logs subscription
//! payload, [`prefix`] finds sshd's message in each log line, [`classify`]
//! says what the message reports and whom it names, [`context`] attributes
//! lines that name nobody from earlier lines of the same connection,
//! [`window`] counts signals in event-time tumbling windows and fires rules
//! early, [`policy`] turns fired rules into [`command`]s. [`engine`] wires
//! these together for one shard; it also builds [`partial`] aggregates that
//! the [`fleet`] stage merges across shards, and [`embedded`] runs both
//! stages in one process. [`peer`] is the key a peer is counted by;
//! [`time`] the calendar arithmetic of timestamps.
//!
//! Dependencies point one way: `command` knows nothing of `policy`, which
//! builds commands; `classify` knows nothing of the modules after it.

pub mod classify;
pub mod command;
pub mod context;
pub mod embedded;
pub mod engine;
pub mod envelope;
pub mod fleet;
pub mod partial;
pub mod peer;
pub mod policy;
pub mod prefix;
pub mod rules;
pub mod time;
pub mod window;

pub use engine::{
    Engine, EngineConfig, EngineConfigError, LineCounter, LineInput, LineReader, ReadLine,
    RecordInput, Stats, TextLine,
};
