//! The wall clock (processing time), in one place so every reader stamps
//! records and commands the same way.

/// The wall clock in epoch milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
