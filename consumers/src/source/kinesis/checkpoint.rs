//! Which sequence number a shard may checkpoint: the last record before the
//! oldest record still counted in an open window (DESIGN.md, checkpoint
//! rule). Records are numbered by position as they are read; the engine
//! reports the smallest position that an open window still holds.

use std::collections::VecDeque;

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
        let mut t = CheckpointTracker::new(Some("TRIM_HORIZON".into()));
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

    #[test]
    fn nothing_before_the_first_record() {
        let mut t = CheckpointTracker::new(Some("LATEST".into()));
        t.record(1, "s1".into());
        assert_eq!(t.advance(Some(1)), None);
        assert_eq!(t.last_read(), Some("s1"));
    }
}
