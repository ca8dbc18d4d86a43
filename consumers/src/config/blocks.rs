//! The `block` action's settings (`sshwarden::sink::block` applies them):
//! the blocks table, the reserved range of network ACL rule numbers, which
//! traffic a deny stops, the ban time and its growth, the allowlist.

use ipnet::IpNet;

/// Which traffic a deny entry stops.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BlockPorts {
    /// Every protocol and port.
    #[default]
    All,
    /// TCP 22 only.
    Ssh,
}

/// Which network ACLs a block goes into.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AclScope {
    /// Those of the subnets of the instances the source tried.
    #[default]
    Subnets,
    /// Every ACL of those instances' VPCs.
    Vpc,
}

pub const DEFAULT_BLOCKS_TABLE: &str = "sshwarden-blocks";
/// Ten slots right below rule 100, the allow-all rule of a default ACL.
pub const DEFAULT_RULE_FIRST: i32 = 90;
pub const DEFAULT_RULE_COUNT: i32 = 10;
pub const DEFAULT_BAN_SECS: i64 = 3_600;
pub const DEFAULT_BAN_FACTOR: u32 = 2;
pub const DEFAULT_MAX_BAN_SECS: i64 = 7 * 86_400;
pub const DEFAULT_LOOKBACK_SECS: i64 = 7 * 86_400;
pub const DEFAULT_SWEEP_SECS: u64 = 60;

/// How blocks are placed and how long they last.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockSettings {
    /// The blocks table (created when absent).
    pub table: String,
    /// The reserved inbound rule numbers: `rule_first ..= rule_first + rule_count - 1`.
    pub rule_first: i32,
    pub rule_count: i32,
    pub ports: BlockPorts,
    pub scope: AclScope,
    /// Network ACLs (`acl-…`) that every block goes into instead of those
    /// `scope` picks; each must be in the attacked instances' VPC (the
    /// block state machine: the protected VPC).
    pub acls: Vec<String>,
    pub ban_secs: i64,
    pub ban_factor: u32,
    pub max_ban_secs: i64,
    pub lookback_secs: i64,
    /// Never blocked (nor any CIDR overlapping one): CIDRs or addresses.
    pub allowlist: Vec<String>,
    /// How often each worker lifts the bans that ended (0: never; then run
    /// `sshwarden blocks sweep` from a schedule).
    pub sweep_secs: u64,
}

impl Default for BlockSettings {
    fn default() -> Self {
        BlockSettings {
            table: DEFAULT_BLOCKS_TABLE.into(),
            rule_first: DEFAULT_RULE_FIRST,
            rule_count: DEFAULT_RULE_COUNT,
            ports: BlockPorts::All,
            scope: AclScope::Subnets,
            acls: Vec::new(),
            ban_secs: DEFAULT_BAN_SECS,
            ban_factor: DEFAULT_BAN_FACTOR,
            max_ban_secs: DEFAULT_MAX_BAN_SECS,
            lookback_secs: DEFAULT_LOOKBACK_SECS,
            allowlist: Vec::new(),
            sweep_secs: DEFAULT_SWEEP_SECS,
        }
    }
}

/// `acl-` and 8 or 17 lowercase hex digits.
fn is_acl_id(s: &str) -> bool {
    s.strip_prefix("acl-").is_some_and(|h| {
        matches!(h.len(), 8 | 17)
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl BlockSettings {
    /// The allowlist as networks.
    pub fn allowlist_nets(&self) -> anyhow::Result<Vec<IpNet>> {
        self.allowlist
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("blocks: allowlist entry {s:?} is not a CIDR or an address")
                    })
            })
            .collect()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.allowlist_nets()?;
        if let Some(a) = self.acls.iter().find(|a| !is_acl_id(a)) {
            anyhow::bail!("blocks: acls entry {a:?} is not a network ACL id (acl-<hex>)");
        }
        let last = self.rule_first.saturating_add(self.rule_count) - 1;
        if self.rule_first < 1 || self.rule_count < 1 || last > 32_766 {
            anyhow::bail!(
                "blocks: the reserved rule numbers {}..={last} must lie within 1..=32766",
                self.rule_first
            );
        }
        if self.ban_secs < 1 || self.max_ban_secs < self.ban_secs || self.ban_factor < 1 {
            anyhow::bail!("blocks: ban_secs must be positive, max_ban_secs at least ban_secs, ban_factor at least 1");
        }
        if self.lookback_secs < 0 {
            anyhow::bail!("blocks: lookback_secs must not be negative");
        }
        Ok(())
    }

    /// The count and length of a new ban, given the previous ban's count
    /// and start (epoch seconds), if the prefix has one on record.
    pub fn escalate(&self, previous: Option<(u32, i64)>, now_s: i64) -> (u32, i64) {
        let count = match previous {
            Some((n, last)) if n > 0 && last >= now_s - self.lookback_secs => n.saturating_add(1),
            _ => 1,
        };
        let mut secs = self.ban_secs;
        for _ in 1..count {
            secs = secs.saturating_mul(i64::from(self.ban_factor));
            if secs >= self.max_ban_secs {
                break;
            }
        }
        (count, secs.min(self.max_ban_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(count: u32, last: i64) -> (u32, i64) {
        (count, last)
    }

    #[test]
    fn ban_time_doubles_within_the_look_back_up_to_the_maximum() {
        let s = BlockSettings::default();
        let now = 1_800_000_000;
        assert_eq!(s.escalate(None, now), (1, 3_600));
        assert_eq!(s.escalate(Some(record(1, now - 7_200)), now), (2, 7_200));
        assert_eq!(s.escalate(Some(record(2, now - 7_200)), now), (3, 14_400));
        // Past the look-back the count starts again.
        assert_eq!(
            s.escalate(Some(record(5, now - DEFAULT_LOOKBACK_SECS - 1)), now),
            (1, 3_600)
        );
        // 2^20 h is far past the cap.
        assert_eq!(
            s.escalate(Some(record(20, now)), now),
            (21, DEFAULT_MAX_BAN_SECS)
        );
        assert_eq!(
            s.escalate(Some(record(u32::MAX, now)), now).1,
            DEFAULT_MAX_BAN_SECS
        );
    }

    /// The example file's commented `[blocks]` states the defaults.
    #[test]
    fn the_example_file_states_the_defaults() {
        let text = include_str!("../../../sshwarden.example.toml");
        let section: String = text
            .lines()
            .skip_while(|l| *l != "# [blocks]")
            .skip(1)
            .map_while(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with("allowlist") && !l.starts_with(' '))
            .map(|l| format!("{}\n", l))
            .collect();
        assert!(section.contains("table ="), "{section}");
        let parsed: BlockSettings = toml::from_str(&section).expect("the example's [blocks]");
        let d = BlockSettings::default();
        assert_eq!(
            (
                parsed.table,
                parsed.rule_first,
                parsed.rule_count,
                parsed.ports
            ),
            (d.table, d.rule_first, d.rule_count, d.ports)
        );
        assert_eq!(
            (
                parsed.ban_secs,
                parsed.ban_factor,
                parsed.max_ban_secs,
                parsed.lookback_secs,
                parsed.sweep_secs
            ),
            (
                d.ban_secs,
                d.ban_factor,
                d.max_ban_secs,
                d.lookback_secs,
                d.sweep_secs
            )
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(BlockSettings::default().validate().is_ok());
        let listed = BlockSettings {
            acls: vec!["acl-0123456789abcdef0".into(), "acl-01234567".into()],
            ..Default::default()
        };
        assert!(listed.validate().is_ok());
        let bad = [
            BlockSettings {
                rule_first: 0,
                ..Default::default()
            },
            BlockSettings {
                rule_first: 32_760,
                ..Default::default()
            },
            BlockSettings {
                max_ban_secs: 10,
                ..Default::default()
            },
            BlockSettings {
                ban_factor: 0,
                ..Default::default()
            },
            BlockSettings {
                acls: vec!["sg-0123456789abcdef0".into()],
                ..Default::default()
            },
            BlockSettings {
                acls: vec!["acl-0123".into()],
                ..Default::default()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
