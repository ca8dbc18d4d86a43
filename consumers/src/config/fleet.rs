//! The `[fleet]` section: how the fleet stage builds and merges partials
//! (docs/fleet.md). Only read by `run` with `--fleet-stream` or `--fleet-topic`.

use serde::Deserialize;
use sshwarden_pipeline::fleet::{FleetConfig, FleetStage};
use sshwarden_pipeline::partial::PartialConfig;
use sshwarden_pipeline::policy::PolicyConfig;

/// `[fleet]` as written; every key has its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSettings {
    /// The partials' window: every fleet rule's window is a multiple of it.
    pub partial_window_secs: u64,
    /// A shard sends a partial once early when a local count reaches this
    /// percentage of a fleet rule's threshold (0: only when its window closes).
    pub early_percent: u32,
    /// Exact distinct values per set before the sketch.
    pub max_exact: usize,
    /// Open partials a shard keeps before it sends and lets go of the oldest.
    pub max_open_partials: usize,
    /// Source networks the fleet stage holds at once.
    pub max_networks: usize,
}

impl Default for FleetSettings {
    fn default() -> Self {
        let p = PartialConfig::default();
        let f = FleetConfig::default();
        FleetSettings {
            partial_window_secs: (p.window_ms / 1000) as u64,
            early_percent: p.early_percent,
            max_exact: p.max_exact,
            max_open_partials: p.max_open,
            max_networks: f.max_networks,
        }
    }
}

impl FleetSettings {
    /// Both stages' settings for shards that run `shards`, checked as the
    /// stages will check them (so a bad `[fleet]` fails at start, not in a
    /// reader).
    pub fn configs(
        &self,
        shards: &PolicyConfig,
        allowed_lateness_ms: i64,
    ) -> anyhow::Result<(PartialConfig, FleetConfig)> {
        let window_ms = i64::try_from(self.partial_window_secs)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| anyhow::anyhow!("[fleet] partial_window_secs is too large"))?;
        let fleet = FleetConfig {
            partial_window_ms: window_ms,
            max_exact: self.max_exact,
            max_networks: self.max_networks,
            allowed_lateness_ms,
            ..FleetConfig::for_shards(shards)
        };
        let partials = PartialConfig {
            window_ms,
            early_percent: self.early_percent,
            max_exact: self.max_exact,
            max_open: self.max_open_partials,
            fleet_rules: fleet.policy.rules.clone(),
            shard: String::new(),
        };
        partials
            .validate()
            .map_err(|e| anyhow::anyhow!("[fleet]: {e}"))?;
        FleetStage::new(fleet.clone()).map_err(|e| anyhow::anyhow!("[fleet]: {e}"))?;
        Ok((partials, fleet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file's commented `[fleet]` states the defaults.
    #[test]
    fn the_example_file_states_the_defaults() {
        let text = include_str!("../../../sshwarden.example.toml");
        let section: String = text
            .lines()
            .skip_while(|l| *l != "# [fleet]")
            .skip(1)
            .map_while(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(section.contains("partial_window_secs ="), "{section}");
        let parsed: FleetSettings = toml::from_str(&section).expect("the example's [fleet]");
        assert_eq!(parsed, FleetSettings::default());
    }

    #[test]
    fn a_partial_window_that_does_not_divide_the_fleet_rules_is_refused() {
        let policy = PolicyConfig::default();
        let ok = FleetSettings {
            partial_window_secs: 60,
            ..FleetSettings::default()
        };
        let (p, f) = ok.configs(&policy, 60_000).unwrap();
        assert_eq!((p.window_ms, f.partial_window_ms), (60_000, 60_000));
        let bad = FleetSettings {
            partial_window_secs: 7 * 60,
            ..FleetSettings::default()
        };
        let e = bad.configs(&policy, 60_000).unwrap_err().to_string();
        assert!(e.contains("multiple of the partial window"), "{e}");
        let bad = FleetSettings {
            early_percent: 101,
            ..FleetSettings::default()
        };
        assert!(bad.configs(&policy, 60_000).is_err());
        let bad = FleetSettings {
            partial_window_secs: 0,
            ..FleetSettings::default()
        };
        assert!(bad.configs(&policy, 60_000).is_err());
    }
}
