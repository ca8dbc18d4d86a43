//! The dry-run sink: one JSON command per line on stdout.

use std::io::Write;

use sshwarden_pipeline::command::Command;

use super::{Delivered, DeliveryError};

pub struct StdoutSink;

impl StdoutSink {
    pub(super) fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let mut line = serde_json::to_vec(command).map_err(|e| DeliveryError(e.to_string()))?;
        line.push(b'\n');
        // One write of a whole line under the lock: lines from shard tasks never interleave.
        let mut out = std::io::stdout().lock();
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError(format!("stdout: {e}")))?;
        Ok(Delivered::New)
    }
}
