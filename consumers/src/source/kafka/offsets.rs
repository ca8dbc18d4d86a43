//! Pure pieces of the Kafka source: which offset a partition may commit
//! (docs/design.md, the checkpoint rule; docs/fleet.md, partials not yet
//! acknowledged), what the commit's metadata carries, and
//! what a message holds (a subscription payload or raw lines).
//!
//! A partition's engine numbers records by position = offset + 1 (position
//! 0 is never used), so the engine's low-water position names the oldest
//! message still counted in an open window. Kafka commits the *next* offset
//! to read: committing that message's offset makes the next owner re-read it
//! and rebuild the window.

use crate::config::KafkaFormat;

/// The engine position of the message at `offset`.
pub fn position(offset: i64) -> u64 {
    u64::try_from(offset).map_or(0, |o| o + 1)
}

/// The offset a partition may commit, tracked as messages are processed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitTracker {
    /// The offset after the last message whose commands were delivered.
    delivered_next: Option<i64>,
    /// What the group holds (or was last sent).
    committed: Option<i64>,
}

impl CommitTracker {
    /// `committed`: the group's committed offset when the partition was
    /// assigned (`None`: none yet).
    pub fn new(committed: Option<i64>) -> Self {
        CommitTracker {
            delivered_next: None,
            committed,
        }
    }

    /// The message at `offset` was processed and its commands delivered.
    pub fn delivered(&mut self, offset: i64) {
        self.delivered_next = Some(offset + 1);
    }

    /// The offset after the last delivered message (the reader's position).
    #[cfg(test)]
    pub fn next_offset(&self) -> Option<i64> {
        self.delivered_next
    }

    /// The offset to commit now, when it moved past what the group holds:
    /// the offset after the last delivered message, held back to the oldest
    /// message still counted in an open window (`low_water`, an engine
    /// position). Never moves backwards.
    pub fn to_commit(&self, low_water: Option<u64>) -> Option<i64> {
        let held = self.commit_point(low_water)?;
        match self.committed {
            Some(c) if held <= c => None,
            _ => Some(held),
        }
    }

    /// The offset the checkpoint rule allows now, moved or not (for the
    /// final, synchronous commit when a partition is revoked); never before
    /// what the group holds.
    pub fn commit_point(&self, low_water: Option<u64>) -> Option<i64> {
        let next = self.delivered_next?;
        let held = low_water
            .and_then(|lw| i64::try_from(lw.saturating_sub(1)).ok())
            .map_or(next, |oldest_open| oldest_open.min(next));
        Some(self.committed.map_or(held, |c| c.max(held)))
    }

    /// The group now holds `offset`.
    pub fn committed(&mut self, offset: i64) {
        if self.committed.is_none_or(|c| offset > c) {
            self.committed = Some(offset);
        }
    }

    #[cfg(test)]
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed
    }
}

/// The position a partition's commit must stay before, for its stage: the
/// oldest message still counted in an open window (`open`, the engine's or
/// the fleet stage's low water) or in a partial emitted but not yet
/// acknowledged by the broker (`pending`), whichever is older (the outbox
/// adds its commands' holds to it).
pub fn held_position(open: Option<u64>, pending: impl IntoIterator<Item = u64>) -> Option<u64> {
    pending.into_iter().chain(open).min()
}

const METADATA_PREFIX: &str = "sshwarden:event_time=";

/// Commit metadata: the engine's event time when the offset was committed,
/// so the next owner knows which windows were already closed (and their
/// commands delivered), as the Kinesis lease's checkpoint carries it.
pub fn commit_metadata(event_time_ms: Option<i64>) -> String {
    match event_time_ms {
        Some(t) => format!("{METADATA_PREFIX}{t}"),
        None => String::new(),
    }
}

/// The event time in a commit's metadata; `None` for anything else (a commit
/// by another tool, or none).
pub fn parse_commit_metadata(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(METADATA_PREFIX)?.parse().ok()
}

/// What one message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Payload,
    Lines,
}

/// Gzip (`1f 8b`) or a JSON object is a subscription payload; anything else
/// is lines. A fixed format is taken as given: a corrupt payload is then
/// counted as one, not read as text.
pub fn content(format: KafkaFormat, data: &[u8]) -> Content {
    match format {
        KafkaFormat::Payloads => Content::Payload,
        KafkaFormat::Lines => Content::Lines,
        KafkaFormat::Auto => {
            let first = data.iter().find(|b| !b.is_ascii_whitespace());
            if data.starts_with(&[0x1f, 0x8b]) || first == Some(&b'{') {
                Content::Payload
            } else {
                Content::Lines
            }
        }
    }
}

/// The instance a message of lines is counted against: its key, when the
/// key looks like an EC2 instance id or any other non-empty UTF-8 text
/// without control characters.
pub fn instance_from_key(key: Option<&[u8]>) -> Option<&str> {
    let k = std::str::from_utf8(key?).ok()?.trim();
    (!k.is_empty() && !k.chars().any(char::is_control)).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stay_before_the_oldest_open_window() {
        let mut t = CommitTracker::new(Some(10));
        assert_eq!(t.to_commit(None), None, "nothing delivered yet");
        for o in 10..15 {
            t.delivered(o);
        }
        // the message at offset 12 (position 13) is still in an open window
        assert_eq!(t.to_commit(Some(position(12))), Some(12));
        t.committed(12);
        assert_eq!(t.to_commit(Some(position(12))), None, "nothing new");
        assert_eq!(t.to_commit(None), Some(15), "all windows closed");
        // an open window older than the commit never moves it back
        t.committed(15);
        assert_eq!(t.to_commit(Some(position(11))), None);
        assert_eq!(t.committed_offset(), Some(15));
    }

    #[test]
    fn a_window_holding_the_newest_message_holds_the_commit_at_it() {
        let mut t = CommitTracker::new(None);
        t.delivered(0);
        assert_eq!(t.to_commit(Some(position(0))), Some(0), "offset 0 is held");
        t.committed(0);
        assert_eq!(t.to_commit(Some(position(0))), None);
        t.delivered(1);
        assert_eq!(t.to_commit(Some(position(1))), Some(1));
        assert_eq!(t.next_offset(), Some(2));
    }

    #[test]
    fn a_partial_not_yet_acknowledged_holds_the_commit_at_its_oldest_message() {
        let mut t = CommitTracker::new(None);
        for o in 0..10 {
            t.delivered(o);
        }
        // Its window closed (the engine holds nothing), its partial counts
        // the messages from offset 3 (position 4) and is not acknowledged.
        assert_eq!(held_position(None, [position(3)]), Some(position(3)));
        assert_eq!(t.to_commit(held_position(None, [position(3)])), Some(3));
        // Acknowledged: nothing holds the commit any more.
        assert_eq!(t.to_commit(held_position(None, [])), Some(10));
        // The older of an open window and the pending partials holds it.
        assert_eq!(
            held_position(Some(position(6)), [position(8), position(5)]),
            Some(position(5))
        );
        assert_eq!(
            held_position(Some(position(2)), [position(5)]),
            Some(position(2))
        );
    }

    #[test]
    fn metadata_round_trip() {
        assert_eq!(
            parse_commit_metadata(&commit_metadata(Some(1_700_000_000_123))),
            Some(1_700_000_000_123)
        );
        assert_eq!(commit_metadata(None), "");
        assert_eq!(parse_commit_metadata(""), None);
        assert_eq!(parse_commit_metadata("something else"), None);
        assert_eq!(parse_commit_metadata("sshwarden:event_time=x"), None);
    }

    #[test]
    fn content_detection() {
        let auto = KafkaFormat::Auto;
        assert_eq!(content(auto, &[0x1f, 0x8b, 8, 0]), Content::Payload);
        assert_eq!(
            content(auto, b" {\"messageType\":\"DATA_MESSAGE\"}"),
            Content::Payload
        );
        assert_eq!(
            content(
                auto,
                b"Nov 29 10:00:00 h sshd[1]: Invalid user a from 192.0.2.1 port 1"
            ),
            Content::Lines
        );
        assert_eq!(content(auto, b""), Content::Lines);
        assert_eq!(content(KafkaFormat::Payloads, b"text"), Content::Payload);
        assert_eq!(content(KafkaFormat::Lines, &[0x1f, 0x8b]), Content::Lines);
    }

    #[test]
    fn instance_keys() {
        assert_eq!(
            instance_from_key(Some(b"i-0123456789abcdef0")),
            Some("i-0123456789abcdef0")
        );
        assert_eq!(instance_from_key(None), None);
        assert_eq!(instance_from_key(Some(b" ")), None);
        assert_eq!(instance_from_key(Some(&[0xff, 0xfe])), None);
        assert_eq!(instance_from_key(Some(b"i-1\ni-2")), None);
    }
}
