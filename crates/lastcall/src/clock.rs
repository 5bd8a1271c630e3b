//! A cached coarse clock for work start times: see [`now`].
//!
//! Reading a clock costs 10 to 30 ns on a virtual machine (more than the rest of a guard's
//! bookkeeping together), so guards read a cached value instead. One background thread,
//! `lastcall-clock`, refreshes it every [`TICK`] while guards are being created, and parks
//! itself after [`IDLE_AFTER`] without demand; the first guard after that refreshes the value
//! itself and wakes the thread. Under [`runtime::block_on`](crate::runtime::block_on) the main
//! thread ticks instead, and no thread is started (the `host` module). A cached time is at
//! most one tick old, so work ages are exact to about 10 ms.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

/// How often the cached value is refreshed while in demand.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// How long the ticker keeps ticking after it was last woken.
pub(crate) const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The cached time and whether the thread is keeping it fresh, on one cache line that the
/// hot path only reads.
#[repr(align(128))]
struct Cached {
    nanos: AtomicU64,
    ticking: AtomicBool,
}

static CACHED: Cached = Cached {
    nanos: AtomicU64::new(0),
    ticking: AtomicBool::new(false),
};

static TICKER: OnceLock<Option<Thread>> = OnceLock::new();

/// Nanoseconds on the coarse monotonic clock, at most one [`TICK`] old.
#[inline]
pub(crate) fn now() -> u64 {
    if CACHED.ticking.load(Ordering::Relaxed) {
        return CACHED.nanos.load(Ordering::Relaxed);
    }
    wake()
}

/// The slow path: read the clock, publish it, and make sure the ticker runs.
#[cold]
fn wake() -> u64 {
    let fresh = read();
    CACHED.nanos.fetch_max(fresh, Ordering::Relaxed);
    if !CACHED.ticking.swap(true, Ordering::AcqRel) {
        // Under `runtime::block_on` the main thread ticks (the `host` module).
        if crate::host::current().is_some_and(|host| host.tick()) {
            return fresh;
        }
        let ticker = TICKER.get_or_init(|| {
            std::thread::Builder::new()
                .name("lastcall-clock".into())
                .spawn(tick)
                .ok()
                .map(|handle| handle.thread().clone())
        });
        match ticker {
            Some(thread) => thread.unpark(),
            // No thread could be had: stay in slow mode, reading the clock on every call.
            None => CACHED.ticking.store(false, Ordering::Release),
        }
    }
    fresh
}

/// Refreshes the cached value: one tick.
pub(crate) fn refresh() {
    CACHED.nanos.fetch_max(read(), Ordering::Relaxed);
}

/// Ends a run of ticks: the next caller of [`now`] reads the clock itself and asks for ticks
/// again.
pub(crate) fn stop_ticking() {
    CACHED.ticking.store(false, Ordering::Release);
}

fn tick() {
    loop {
        let ticks = (IDLE_AFTER.as_nanos() / TICK.as_nanos()) as usize;
        for _ in 0..ticks {
            std::thread::sleep(TICK);
            refresh();
        }
        // Stop; the next caller of `now` finds `ticking` false, refreshes the value itself and
        // unparks this thread. An unpark that lands before `park` is not lost.
        stop_ticking();
        std::thread::park();
    }
}

/// Reads the coarse monotonic clock: no system call and no timestamp-counter read, a few
/// milliseconds of resolution.
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

/// Reads the monotonic clock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn read() -> u64 {
    read_instant()
}

/// Nanoseconds since the first call, on [`std::time::Instant`].
fn read_instant() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}
