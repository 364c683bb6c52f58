//! Wall-clock time as the broker stamps it (record timestamps, segment ages, producer
//! expiry). A leaf: imports nothing from the crate.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
