//! Synthetic fleet traffic for sshwarden, with ground truth.
//!
//! [`fleet`] simulates EC2 instances writing sshd and system logs (benign
//! logins, cron, systemd, background internet scanning) while configurable
//! attack [`Scenario`]s run against them, deterministically from a seed;
//! [`fleet::day`] simulates a realistic day ([`DayConfig`]): scanners on
//! port 22 at the rate exposed hosts see, benign mistakes, and labelled
//! incidents. Two truths come out. [`incident`] says, per incident, what
//! happened and what a careful operator would do (blocks, notifications,
//! quarantines), and [`incident_score`] judges a detector's commands by it:
//! incidents detected or missed, time to detect, false responses. [`rule_truth`]
//! is the engine's rule-level check: which per-instance window rule must fire
//! in which window (every generated event ([`event`]) says what it is
//! evidence of), which addresses must never be counted.
//! [`encode`] turns the events into gzip-compressed CloudWatch Logs
//! subscription payloads (what Kinesis delivers) or raw `auth.log` text.
//! [`sshd`] holds the message shapes. [`score`] scores a detector's command
//! output against the rule-level truth, with end-to-end detection latency. With the
//! `aws` feature (default), [`writer`] puts the traffic into Kinesis
//! (PutRecords) or CloudWatch Logs (PutLogEvents) within their limits.
//!
//! Used by the benchmarks, the `demo` subcommand and the end-to-end tests.

pub mod encode;
pub mod event;
pub mod fleet;
pub mod incident;
pub mod incident_score;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rule_truth;
pub mod score;
pub mod sshd;
#[cfg(feature = "kinesis-writer")]
pub mod writer;

#[cfg(test)]
mod tests;

pub use encode::{
    auth_log, encode_records, subscription_records, RecordOptions, SubscriptionRecord,
};
pub use event::GeneratedEvent;
pub use fleet::day::{Day, DayConfig};
pub use fleet::{ConfigError, Fleet, FleetConfig, InstanceInfo, Scenario};
pub use incident::{Incident, IncidentKind, IncidentTruth, Response};
pub use incident_score::{IncidentJudge, IncidentReport};
pub use rule_truth::{DetectionKey, ExpectedDetection, GroundTruth, Score, TruthRules};
pub use score::{CommandScorer, DetectionReport, LatencySummary, WrittenLog, WrittenMark};
