//! Synthetic fleet traffic for sshwarden, with ground truth.
//!
//! [`fleet`] simulates EC2 instances writing sshd and system logs (benign
//! logins, cron, systemd, background internet scanning) while configurable
//! attack [`Scenario`]s run against them, deterministically from a seed.
//! Every generated event ([`event`]) says what it is evidence of, and the generator
//! computes the [`GroundTruth`] ([`truth`]): which default rule must fire for
//! which instance in which window, which addresses must never be counted.
//! [`encode`] turns the events into gzip-compressed CloudWatch Logs
//! subscription payloads (what Kinesis delivers) or raw `auth.log` text.
//! [`sshd`] holds the message shapes. [`score`] scores a detector's command
//! output against the truth, with end-to-end detection latency. With the
//! `aws` feature (default), [`writer`] puts the traffic into Kinesis
//! (PutRecords) or CloudWatch Logs (PutLogEvents) within their limits.
//!
//! Used by the benchmarks, the `demo` subcommand and the end-to-end tests.

pub mod encode;
pub mod event;
pub mod fleet;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod score;
pub mod sshd;
pub mod truth;
#[cfg(feature = "aws")]
pub mod writer;

#[cfg(test)]
mod tests;

pub use encode::{
    auth_log, encode_records, subscription_records, RecordOptions, SubscriptionRecord,
};
pub use event::GeneratedEvent;
pub use fleet::{ConfigError, Fleet, FleetConfig, InstanceInfo, Scenario};
pub use score::{CommandScorer, DetectionReport, LatencySummary, WrittenLog, WrittenMark};
pub use truth::{DetectionKey, ExpectedDetection, GroundTruth, Score, TruthRules};
