//! The adapters' wall clock. The core reads none: wall time reaches the engine only as
//! recorded input (ticks), and everything else here uses it for timestamps and deadlines.

/// Now, in µs since the Unix epoch (0 if the system clock is before it).
pub fn wall_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
