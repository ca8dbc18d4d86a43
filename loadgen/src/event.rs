//! The generated log event: one line of one instance's log as CloudWatch
//! Logs would hold it, with what it is evidence of.
//!
//! Its own module because both sides use it: the generator ([`crate::fleet`])
//! makes events, the truth ([`crate::rule_truth`]), the encoders and the writers
//! read them. It depends on neither.

use std::net::IpAddr;

use serde::Serialize;
use sshwarden_pipeline::classify::Signal;

/// One log event as CloudWatch Logs would hold it, with its ground truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedEvent {
    /// The instance id, which is also the log stream.
    pub instance: String,
    /// Event time (epoch milliseconds).
    pub time_ms: i64,
    /// The whole log line, syslog prefix included.
    pub line: String,
    /// A CloudWatch-style event id: 56 decimal digits, unique in the fleet.
    pub id: String,
    /// The signal this line counts for against its instance, if any (mirrors
    /// the classifier; see [`crate::sshd`]).
    pub signal: Option<Signal>,
    /// The peer that really sent what the line reports (for benign lines too);
    /// `None` for lines about no connection.
    pub source: Option<IpAddr>,
    /// Index of the scenario that produced the line; `None` for benign
    /// traffic and background scanning.
    pub scenario: Option<usize>,
}
