//! The one retry backoff: exponential with jitter, for every call that is
//! retried until it succeeds or is interrupted (reads, checkpoints,
//! deliveries).

use std::time::Duration;

/// Exponential backoff with full jitter, 100 ms to 10 s.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_wait(&mut self) -> Duration {
        let cap = 100u64.saturating_mul(1 << self.attempt.min(7)).min(10_000);
        self.attempt += 1;
        Duration::from_millis(cap / 2 + rand::random_range(0..=cap / 2))
    }
}
