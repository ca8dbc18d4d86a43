//! Where records come from: a Kinesis stream ([`kinesis`]) or, with the
//! `kafka` feature, a Kafka topic ([`kafka`]). Each source builds on
//! [`crate::service`] and delivers through [`crate::sink`]; neither source
//! imports the other.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kinesis;
