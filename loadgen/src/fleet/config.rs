//! What to simulate ([`FleetConfig`]) and what cannot be generated
//! ([`ConfigError`]): the limits a configuration is checked against before
//! any event is made.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::scenario::Scenario;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub instances: usize,
    pub seed: u64,
    /// Event time of the start of the simulation (epoch milliseconds).
    pub start_ms: i64,
    /// Events are generated in `[start_ms, start_ms + duration_ms)`.
    pub duration_ms: i64,
    /// Benign log lines (logins and their sessions, cron, systemd, sudo) per
    /// instance per minute, on average.
    pub benign_events_per_instance_per_min: f64,
    /// Background internet scanning: probes (one connection each, one to six
    /// lines, mostly evidence) per instance per minute, on average. This is
    /// what any instance with port 22 open to the world sees.
    pub scan_probes_per_instance_per_min: f64,
    pub scenarios: Vec<Scenario>,
}

impl Default for FleetConfig {
    /// Twenty instances for ten minutes with every kind of scenario; about a
    /// quarter of the lines are attack evidence.
    fn default() -> Self {
        let instances = 20;
        let duration_ms = 10 * 60_000;
        FleetConfig {
            instances,
            seed: 1,
            start_ms: 1_700_000_000_000,
            duration_ms,
            benign_events_per_instance_per_min: 30.0,
            scan_probes_per_instance_per_min: 1.0,
            scenarios: Scenario::default_mix(instances, duration_ms),
        }
    }
}

/// A configuration that cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const YEAR_MS: i64 = 366 * 86_400_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_START_MS: i64 = 253_402_300_799_999;

/// Generating more than this many events is refused (about 4 GB of lines).
pub const MAX_EVENTS: f64 = 20_000_000.0;

impl FleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.instances == 0 {
            return err("a fleet needs at least one instance".into());
        }
        if self.instances > 1_000_000 {
            return err(format!(
                "{} instances is more than 1,000,000",
                self.instances
            ));
        }
        if !(0..=MAX_START_MS).contains(&self.start_ms) {
            return err(format!(
                "start_ms must be between 0 and {MAX_START_MS} (year 9999)"
            ));
        }
        if !(0..=YEAR_MS).contains(&self.duration_ms) {
            return err("duration must be between 0 and 366 days".into());
        }
        for (what, rate) in [
            ("benign events", self.benign_events_per_instance_per_min),
            ("scan probes", self.scan_probes_per_instance_per_min),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return err(format!(
                    "{what} per instance per minute must be a finite number >= 0"
                ));
            }
        }
        let minutes = self.duration_ms as f64 / 60_000.0;
        let mut estimate = self.instances as f64
            * minutes
            * (self.benign_events_per_instance_per_min
                + 3.0 * self.scan_probes_per_instance_per_min);
        for (i, s) in self.scenarios.iter().enumerate() {
            if let Some(t) = s.target() {
                if t >= self.instances {
                    return err(format!(
                        "scenario {i} ({}) targets instance {t} of a fleet of {}",
                        s.name(),
                        self.instances
                    ));
                }
            }
            if !(-YEAR_MS..=YEAR_MS).contains(&s.offset_ms()) {
                return err(format!(
                    "scenario {i} ({}): offset_ms must be within 366 days",
                    s.name()
                ));
            }
            let rate_ok = |r: f64| r.is_finite() && r > 0.0;
            let attempts = match *s {
                Scenario::FastBruteForce {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::HostileUsernames {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::UserEnumeration {
                    usernames: attempts,
                    per_second,
                    ..
                }
                | Scenario::Ipv6Rotation {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::SkewedClock {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::BruteForceThenSuccess {
                    failures: attempts,
                    per_second,
                    ..
                } => {
                    if !rate_ok(per_second) {
                        return err(format!(
                            "scenario {i} ({}): per_second must be > 0",
                            s.name()
                        ));
                    }
                    f64::from(attempts)
                }
                Scenario::SlowBruteForce {
                    attempts,
                    interval_ms,
                    ..
                } => {
                    if !(1..=86_400_000).contains(&interval_ms) {
                        return err(format!(
                            "scenario {i} ({}): interval_ms must be between 1 and one day",
                            s.name()
                        ));
                    }
                    f64::from(attempts)
                }
                Scenario::Spray {
                    hosts, interval_ms, ..
                } => {
                    if !(1..=86_400_000).contains(&interval_ms) {
                        return err(format!(
                            "scenario {i} (spray): interval_ms must be between 1 and one day"
                        ));
                    }
                    if hosts > self.instances {
                        return err(format!(
                            "scenario {i} (spray): hosts must be at most the fleet size {}",
                            self.instances
                        ));
                    }
                    hosts as f64
                }
                Scenario::Botnet {
                    duration_ms,
                    addresses,
                    hosts,
                    attempts_per_address,
                    ..
                } => {
                    if !(0..=YEAR_MS).contains(&duration_ms) {
                        return err(format!(
                            "scenario {i} (botnet): duration_ms must be between 0 and 366 days"
                        ));
                    }
                    if addresses > 0 && (hosts == 0 || hosts > self.instances) {
                        return err(format!(
                            "scenario {i} (botnet): hosts must be between 1 and the fleet size {}",
                            self.instances
                        ));
                    }
                    f64::from(addresses) * f64::from(attempts_per_address)
                }
            };
            if let Scenario::SkewedClock { skew_ms, .. } = *s {
                if !(-86_400_000..=86_400_000).contains(&skew_ms) {
                    return err(format!(
                        "scenario {i} (skewed_clock): skew_ms must be within one day"
                    ));
                }
            }
            estimate += attempts * 6.0;
        }
        if estimate > MAX_EVENTS {
            return err(format!(
                "about {estimate:.0} events would be generated; the limit is {MAX_EVENTS:.0}"
            ));
        }
        Ok(())
    }
}
