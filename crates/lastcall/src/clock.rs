//! The coarse monotonic clock that work start times and connection idle times are read from:
//! see [`read`].
//!
//! On Linux `CLOCK_MONOTONIC_COARSE` is read through the vDSO: no system call and no
//! timestamp-counter read, a few nanoseconds, with the resolution of the kernel's tick (1 to
//! 4 ms), which is plenty for the age of a request or the idle time of a connection.

/// Nanoseconds on the coarse monotonic clock.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn read() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64),
        Err(_) => read_instant(),
    }
}

/// Nanoseconds on the monotonic clock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn read() -> u64 {
    read_instant()
}

/// Nanoseconds since the first call, on [`std::time::Instant`].
fn read_instant() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
