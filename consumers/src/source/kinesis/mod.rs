//! The Kinesis source (`sshwarden run`, `--source kinesis`): consumes a
//! stream of CloudWatch Logs subscription payloads with shard leases in
//! DynamoDB (the Kinesis Client Library's model), one reader task per owned
//! shard, and delivers commands to the configured sink.
//!
//! [`coordinator`] runs the worker (leases, shard sync, drain); [`plan`]
//! decides which leases to take; [`lease`] is the table; [`reader`] reads one
//! shard; [`checkpoint`] says how far a shard may checkpoint.

pub mod checkpoint;
pub mod coordinator;
pub mod lease;
pub mod plan;
pub mod reader;

pub use coordinator::KinesisWorker;
