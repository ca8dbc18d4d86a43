//! Checkpoints: what a lease's `checkpoint` attribute says ([`Checkpoint`],
//! the one place that knows its stored strings), and which sequence number
//! a shard may checkpoint ([`CheckpointTracker`]): the last record before
//! the oldest record still counted in an open window (docs/design.md, the
//! checkpoint rule). Records are numbered by position as they are read; the engine
//! reports the smallest position that an open window still holds.

use std::collections::VecDeque;
use std::fmt;

use anyhow::Context;

const TRIM_HORIZON: &str = "TRIM_HORIZON";
const LATEST: &str = "LATEST";
const AT_TIMESTAMP: &str = "AT_TIMESTAMP";
const SHARD_END: &str = "SHARD_END";

/// Where a shard's reading stands, as the lease table's `checkpoint`
/// attribute holds it (the Kinesis Client Library's strings, plus
/// `AT_TIMESTAMP:<epoch ms>`): an initial position that says where to start,
/// the sequence number of the last record checkpointed, or the shard's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// `TRIM_HORIZON`: the oldest record still in the shard.
    TrimHorizon,
    /// `LATEST`: only what arrives after the reader starts.
    Latest,
    /// `AT_TIMESTAMP:<epoch ms>`: the first record at or after this arrival time.
    AtTimestamp(i64),
    /// A sequence number: after this record.
    After(String),
    /// `SHARD_END`: every record read; the children may start.
    ShardEnd,
}

impl Checkpoint {
    /// The stored form, read. An `AT_TIMESTAMP` without epoch milliseconds is an error.
    pub fn parse(stored: &str) -> anyhow::Result<Checkpoint> {
        Ok(match stored {
            TRIM_HORIZON => Checkpoint::TrimHorizon,
            LATEST => Checkpoint::Latest,
            SHARD_END => Checkpoint::ShardEnd,
            other if other.starts_with(AT_TIMESTAMP) => other
                .strip_prefix(AT_TIMESTAMP)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|ms| ms.parse().ok())
                .map(Checkpoint::AtTimestamp)
                .with_context(|| {
                    format!("unknown initial position {other:?} in the lease table")
                })?,
            sequence => Checkpoint::After(sequence.to_owned()),
        })
    }

    /// `--start-position`: `trim-horizon`, `latest` or `at-timestamp:RFC3339`
    /// (the stored spellings are accepted too).
    pub fn from_start_position(arg: &str) -> anyhow::Result<Checkpoint> {
        match arg {
            "trim-horizon" | TRIM_HORIZON => Ok(Checkpoint::TrimHorizon),
            "latest" | LATEST => Ok(Checkpoint::Latest),
            other => {
                let ts = other
                    .strip_prefix("at-timestamp:")
                    .with_context(|| format!("--start-position {other:?}: expected trim-horizon, latest or at-timestamp:RFC3339"))?;
                let ms = sshwarden_pipeline::time::parse_rfc3339_ms(ts)
                    .with_context(|| format!("--start-position: {ts:?} is not an RFC 3339 time"))?;
                Ok(Checkpoint::AtTimestamp(ms))
            }
        }
    }

    /// Says where to start, not how far reading got.
    pub fn is_initial(&self) -> bool {
        matches!(
            self,
            Checkpoint::TrimHorizon | Checkpoint::Latest | Checkpoint::AtTimestamp(_)
        )
    }
}

/// The stored form.
impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::TrimHorizon => f.write_str(TRIM_HORIZON),
            Checkpoint::Latest => f.write_str(LATEST),
            Checkpoint::AtTimestamp(ms) => write!(f, "{AT_TIMESTAMP}:{ms}"),
            Checkpoint::After(sequence) => f.write_str(sequence),
            Checkpoint::ShardEnd => f.write_str(SHARD_END),
        }
    }
}

/// A stored checkpoint that says where to start, not how far reading got
/// (an `AT_TIMESTAMP` that does not parse still counts as one).
pub fn is_initial_position(stored: &str) -> bool {
    stored == TRIM_HORIZON || stored == LATEST || stored.starts_with(AT_TIMESTAMP)
}

/// A stored checkpoint that marks a finished shard.
pub fn is_shard_end(stored: &str) -> bool {
    stored == SHARD_END
}

#[derive(Debug, Default)]
pub struct CheckpointTracker {
    /// (position, sequence number) of records read and not yet checkpointable.
    read: VecDeque<(u64, String)>,
    /// The newest sequence number that may be checkpointed.
    safe: Option<String>,
    /// What the lease table holds.
    written: Option<String>,
}

impl CheckpointTracker {
    pub fn new(written: Option<String>) -> Self {
        CheckpointTracker {
            written: written.clone(),
            safe: written,
            ..CheckpointTracker::default()
        }
    }

    /// A record was read and processed (its commands delivered).
    pub fn record(&mut self, position: u64, sequence: String) {
        self.read.push_back((position, sequence));
    }

    /// Advances past every record before `low_water` (all of them when no
    /// window is open). Returns the sequence number to write, when it moved.
    pub fn advance(&mut self, low_water: Option<u64>) -> Option<&str> {
        while let Some((pos, _)) = self.read.front() {
            if low_water.is_some_and(|lw| *pos >= lw) {
                break;
            }
            if let Some((_, seq)) = self.read.pop_front() {
                self.safe = Some(seq);
            }
        }
        match (&self.safe, &self.written) {
            (Some(s), Some(w)) if s == w => None,
            (Some(s), _) => Some(s),
            (None, _) => None,
        }
    }

    /// The newest sequence number that may be checkpointed (or the initial
    /// position when no record may be yet).
    pub fn safe(&self) -> Option<&str> {
        self.safe.as_deref()
    }

    /// The table now holds `sequence`.
    pub fn written(&mut self, sequence: String) {
        self.written = Some(sequence);
    }

    #[cfg(test)]
    pub fn pending_records(&self) -> usize {
        self.read.len()
    }

    /// The last sequence number read (for re-acquiring an expired iterator).
    pub fn last_read(&self) -> Option<&str> {
        self.read
            .back()
            .map(|(_, s)| s.as_str())
            .or(self.safe.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_while_a_window_is_open() {
        let mut t = CheckpointTracker::new(Some(Checkpoint::TrimHorizon.to_string()));
        for p in 1..=5 {
            t.record(p, format!("s{p}"));
        }
        assert_eq!(t.advance(Some(3)), Some("s2"));
        t.written("s2".into());
        assert_eq!(t.advance(Some(3)), None, "nothing new");
        assert_eq!(t.last_read(), Some("s5"));
        assert_eq!(t.advance(None), Some("s5"));
        assert_eq!(t.pending_records(), 0);
    }

    /// The stored strings are the Kinesis Client Library's (and ours for
    /// timestamps): a lease table written by an earlier version reads the same.
    #[test]
    fn checkpoints_keep_their_stored_form() {
        for (stored, parsed) in [
            ("TRIM_HORIZON", Checkpoint::TrimHorizon),
            ("LATEST", Checkpoint::Latest),
            (
                "AT_TIMESTAMP:1700000000000",
                Checkpoint::AtTimestamp(1_700_000_000_000),
            ),
            ("SHARD_END", Checkpoint::ShardEnd),
            (
                "4959033827149025660855969",
                Checkpoint::After("4959033827149025660855969".into()),
            ),
        ] {
            assert_eq!(Checkpoint::parse(stored).unwrap(), parsed);
            assert_eq!(parsed.to_string(), stored);
            assert_eq!(parsed.is_initial(), is_initial_position(stored), "{stored}");
        }
        assert!(Checkpoint::parse("AT_TIMESTAMP:soon").is_err());
        assert!(is_initial_position("AT_TIMESTAMP:soon"));
        assert_eq!(
            Checkpoint::from_start_position("at-timestamp:2023-11-14T22:13:20Z").unwrap(),
            Checkpoint::AtTimestamp(1_700_000_000_000)
        );
        assert_eq!(
            Checkpoint::from_start_position("trim-horizon").unwrap(),
            Checkpoint::TrimHorizon
        );
        assert_eq!(
            Checkpoint::from_start_position("LATEST").unwrap(),
            Checkpoint::Latest
        );
        assert!(Checkpoint::from_start_position("earliest").is_err());
        assert!(is_shard_end("SHARD_END") && !is_shard_end("TRIM_HORIZON"));
    }

    #[test]
    fn nothing_before_the_first_record() {
        let mut t = CheckpointTracker::new(Some(Checkpoint::Latest.to_string()));
        t.record(1, "s1".into());
        assert_eq!(t.advance(Some(1)), None);
        assert_eq!(t.last_read(), Some("s1"));
    }
}
