//! The one retry backoff of the workspace, after AWS's "Exponential Backoff
//! And Jitter": the n-th wait (from 0) has the bound `min(cap, base · 2^n)`
//! and is drawn at random below it, so callers that failed together do not
//! retry together, and a run of failures waits at most `cap` each.
//!
//! - [`Jitter::Full`]: uniform in `[0, bound]` (the load generator's writers:
//!   many concurrent callers, spreading them matters most);
//! - [`Jitter::Equal`]: uniform in `[bound / 2, bound]` (the service's reads,
//!   checkpoints and deliveries: after a throttle, Kinesis wants a real
//!   pause, and the half bound guarantees one).
//!
//! Its own crate because both the service (`sshwarden-consumers`: reads,
//! checkpoints, deliveries) and the load generator's writers
//! (`sshwarden-loadgen`) retry with it, and neither may depend on the other
//! for it: `pipeline` is pure decision logic and has no business retrying.
//!
//! Written here rather than taken from a crate such as `backon`: its
//! exponential backoff adds a random amount within the current delay on top
//! of it (waits in `[d, 2d)`, past the cap), which is neither of the two
//! draws below, and it exposes no bound, which the readers' pacing tests
//! assert against ([`Backoff::ceiling`]).

use std::time::Duration;

use rand::Rng;

/// Where below its bound a wait is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, bound]`.
    Full,
    /// Uniform in `[bound / 2, bound]`: never less than half the bound.
    Equal,
}

/// Exponential backoff with jitter between `base` and `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// The first bound is `base`; each failure doubles it, up to `cap`.
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Backoff {
            base,
            cap,
            jitter,
            attempt: 0,
        }
    }

    /// The bound of the next wait: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^20 · base is past any cap worth having; the shift stays in range.
        self.base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap)
    }

    /// The next wait (thread-local randomness).
    pub fn next_wait(&mut self) -> Duration {
        self.next_wait_with(&mut rand::rng())
    }

    /// The next wait, drawn from `rng` (seeded in tests).
    pub fn next_wait_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let floor = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => nanos / 2,
        };
        Duration::from_nanos(rng.random_range(floor..=nanos))
    }

    /// After a success: the next failure waits at most `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn the_bound_doubles_up_to_the_cap() {
        let mut b = Backoff::new(BASE, CAP, Jitter::Full);
        let mut rng = StdRng::seed_from_u64(1);
        let mut bounds = Vec::new();
        for _ in 0..12 {
            bounds.push(b.ceiling().as_millis());
            b.next_wait_with(&mut rng);
        }
        assert_eq!(
            bounds,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000, 10_000]
        );
        for _ in 0..100 {
            b.next_wait_with(&mut rng);
        }
        assert_eq!(b.ceiling(), CAP, "many failures stay at the cap");
        b.reset();
        assert_eq!(b.ceiling(), BASE);
    }

    /// The fractions `wait / bound` of 4000 draws after `attempt` failures.
    fn draws(jitter: Jitter, attempt: u32, rng: &mut StdRng) -> Vec<f64> {
        let mut b = Backoff::new(BASE, CAP, jitter);
        for _ in 0..attempt {
            b.next_wait_with(rng);
        }
        let bound = b.ceiling();
        (0..4000)
            .map(|_| {
                let w = b.clone().next_wait_with(rng);
                assert!(
                    w <= bound,
                    "{jitter:?} attempt {attempt}: {w:?} > {bound:?}"
                );
                w.as_secs_f64() / bound.as_secs_f64()
            })
            .collect()
    }

    fn below(draws: &[f64], x: f64) -> f64 {
        draws.iter().filter(|&&d| d < x).count() as f64 / draws.len() as f64
    }

    /// Full jitter: each wait lies in [0, bound], and over many draws the
    /// waits fill the whole range: a backoff that always returns 0, always
    /// the bound, or only its upper half (equal jitter) fails here.
    #[test]
    fn full_jitter_spreads_waits_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for attempt in [0u32, 3, 7, 30] {
            let d = draws(Jitter::Full, attempt, &mut rng);
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            // Uniform on [0, 1]: mean 1/2, a tenth below 0.1, half below 0.5.
            assert!((mean - 0.5).abs() < 0.03, "attempt {attempt}: mean {mean}");
            assert!((below(&d, 0.1) - 0.1).abs() < 0.03, "attempt {attempt}");
            assert!((below(&d, 0.5) - 0.5).abs() < 0.03, "attempt {attempt}");
            assert!(
                below(&d, 0.99) < 1.0,
                "attempt {attempt}: no wait comes near the bound"
            );
        }
    }

    /// Equal jitter: never under half the bound, and spread over the upper
    /// half: a backoff that always waits the bound, or half of it, fails.
    #[test]
    fn equal_jitter_spreads_waits_over_the_upper_half() {
        let mut rng = StdRng::seed_from_u64(0xe9a1);
        for attempt in [0u32, 3, 7, 30] {
            let d = draws(Jitter::Equal, attempt, &mut rng);
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            assert_eq!(
                below(&d, 0.5),
                0.0,
                "attempt {attempt}: under half the bound"
            );
            assert!((mean - 0.75).abs() < 0.02, "attempt {attempt}: mean {mean}");
            assert!((below(&d, 0.6) - 0.2).abs() < 0.03, "attempt {attempt}");
            assert!(
                below(&d, 0.99) < 1.0,
                "attempt {attempt}: no wait comes near the bound"
            );
        }
    }

    #[test]
    fn thread_randomness_stays_in_bounds() {
        let mut b = Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(200),
            Jitter::Full,
        );
        for n in 0..12u32 {
            let bound = Duration::from_millis((10u64 << n).min(200));
            assert!(b.next_wait() <= bound, "wait {n}");
        }
    }
}
