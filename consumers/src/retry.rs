//! The service's retry backoff: the workspace's one backoff
//! (`sshwarden-retry`) with the bounds every retry loop of the service uses
//! (reads, checkpoints, deliveries): first bound 100 ms, doubling, at most
//! 10 s, equal jitter (a throttled read always pauses at least half the
//! bound, as Kinesis asks).

use std::time::Duration;

pub use sshwarden_retry::{Backoff, Jitter};

/// A fresh backoff for one retry loop.
pub fn backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        Jitter::Equal,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounds_run_from_100_ms_to_10_s() {
        let mut b = super::backoff();
        let mut bounds = Vec::new();
        for _ in 0..9 {
            let bound = b.ceiling();
            let wait = b.next_wait();
            assert!(wait >= bound / 2 && wait <= bound, "{wait:?} vs {bound:?}");
            bounds.push(bound.as_millis());
        }
        assert_eq!(
            bounds,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }
}
