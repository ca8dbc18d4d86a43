//! sshwarden's service and command line: everything of sshwarden that talks
//! to the world, around the pure core in `sshwarden-pipeline`.
//!
//! The modules, top to bottom (a module imports only from modules below it;
//! `scripts/check-layers` checks it):
//!
//! | module | what it is for |
//! |---|---|
//! | [`cli`] | the subcommands: `run` (hands its settings to the service), `scan`, `classify`, `demo`, `release`, `health`; the configuration reference test |
//! | [`service`] | the worker process: checks the source's settings, starts the SDK configuration, sink, metrics and HTTP, signals, and serves the source |
//! | [`source`] | where records come from: [`source::kinesis`] (leases, plan, readers, checkpoints), [`source::kafka`] (consumer group, partition readers, offsets); below them what both share: the [`source::Context`] the service hands over, the record → engine step, the worker id |
//! | [`sink`] | where commands go: stdout, Step Functions, direct; the fleet-wide blast-radius gate; delivery with retries; the sink probe |
//! | [`config`], [`metrics`] | settings (file → environment → flags); the Prometheus metrics |
//! | [`retry`], [`aws`], [`clock`] | the backoff; AWS SDK helpers; the wall clock |

pub mod aws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod retry;
pub mod service;
pub mod sink;
pub mod source;
