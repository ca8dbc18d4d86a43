//! sshwarden's service and command line: everything of sshwarden that talks
//! to the world, around the pure core in `sshwarden-pipeline`.
//!
//! The modules, top to bottom (a module imports only from modules below it;
//! `scripts/check-layers` checks it):
//!
//! | module | what it is for |
//! |---|---|
//! | [`cli`] | the subcommands: `run` (hands its settings to a source), `scan`, `classify`, `demo`, `release`, `health`; the configuration reference test |
//! | [`source`] | where records come from: [`source::kinesis`] (leases, plan, readers, checkpoints), [`source::kafka`] (consumer group, partition readers, offsets) |
//! | [`service`] | what every source starts with: SDK configuration, sink, metrics and HTTP, signals, worker id, clock, the record → engine → deliver step both readers share (`record`), delivery with retries |
//! | [`sink`] | where commands go: stdout, Step Functions, direct; the fleet-wide blast-radius gate; the sink probe |
//! | [`config`], [`metrics`] | settings (file → environment → flags; `RunOptions` is both the `run` flags and the `[run]` section, each default a constant stated in the help); the Prometheus metrics |
//! | [`retry`], [`aws`] | the one backoff; AWS SDK helpers |

pub mod aws;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod retry;
pub mod service;
pub mod sink;
pub mod source;
