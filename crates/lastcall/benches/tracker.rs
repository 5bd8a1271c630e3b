//! Tracker guard enter+drop, against `tokio_util::task::TaskTracker::token()` + drop as the
//! peer, single-threaded and with two threads contending, side by side in one run.
//!
//! `2_threads` is wall time, which is only a contention figure when both threads really run at
//! once; on a machine shared with other work they often take turns. `2_threads_cpu` is each
//! thread's own CPU time, which a cache line bouncing between cores inflates (the stall is
//! spent on the CPU) and taking turns does not: the peer's figure there shows whether the
//! threads overlapped.
//!
//! `2_threads_own` is the control: the same two threads, each with a tracker of its own, so
//! they share nothing. What it costs over `1_thread` is the machine's (two cores busy at once
//! on a shared host), not the tracker's; `2_threads` over `2_threads_own` is what sharing one
//! tracker costs.
//!
//! `cargo bench -p lastcall --bench tracker`; figures in `BENCHMARKS.md`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use lastcall::{Tracker, WorkKind};
use tokio_util::task::TaskTracker;

/// Which time [`contended`] returns.
#[derive(Clone, Copy)]
enum Clock {
    /// The wall time until every thread is done.
    Wall,
    /// The largest CPU time one thread spent.
    ThreadCpu,
}

/// Runs an op `iters` times on each of `threads` threads, started together, and returns the
/// time `clock` measures: criterion divides it by `iters`, so the figure is the time for
/// every thread to do one enter+drop while the others do the same. Each thread makes its op
/// with `make` before the start, so an op can own what it works on.
fn contended<M, F>(threads: usize, iters: u64, clock: Clock, make: M) -> Duration
where
    M: Fn() -> F + Send + Sync + 'static,
    F: FnMut(),
{
    let make = Arc::new(make);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (make, barrier) = (make.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut op = make();
                barrier.wait();
                let start = thread_cpu();
                for _ in 0..iters {
                    op();
                }
                thread_cpu() - start
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let cpu = handles
        .into_iter()
        .map(|handle| handle.join().expect("bench thread"))
        .max()
        .unwrap_or_default();
    match clock {
        Clock::Wall => start.elapsed(),
        Clock::ThreadCpu => cpu,
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("the thread CPU clock is readable");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard_enter_drop/1_thread");
    let tracker = Tracker::new();
    group.bench_function("lastcall::Tracker", |b| {
        b.iter(|| drop(black_box(tracker.track(WorkKind::Request, "GET /orders/7"))))
    });
    let peer = TaskTracker::new();
    group.bench_function("tokio_util::TaskTracker", |b| {
        b.iter(|| drop(black_box(peer.token())))
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    for (group, clock) in [
        ("2_threads", Clock::Wall),
        ("2_threads_cpu", Clock::ThreadCpu),
    ] {
        let mut group = c.benchmark_group(format!("guard_enter_drop/{group}"));
        let tracker = Tracker::new();
        group.bench_function("lastcall::Tracker", |b| {
            b.iter_custom(|iters| {
                let tracker = tracker.clone();
                contended(2, iters, clock, move || {
                    let tracker = tracker.clone();
                    move || drop(black_box(tracker.track(WorkKind::Request, "GET /orders/7")))
                })
            })
        });
        let peer = TaskTracker::new();
        group.bench_function("tokio_util::TaskTracker", |b| {
            b.iter_custom(|iters| {
                let peer = peer.clone();
                contended(2, iters, clock, move || {
                    let peer = peer.clone();
                    move || drop(black_box(peer.token()))
                })
            })
        });
        group.finish();
    }
}

/// The control: two threads at once, each on a tracker of its own (wall time).
fn two_threads_own(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard_enter_drop/2_threads_own");
    group.bench_function("lastcall::Tracker", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, Clock::Wall, || {
                let tracker = Tracker::new();
                move || drop(black_box(tracker.track(WorkKind::Request, "GET /orders/7")))
            })
        })
    });
    group.bench_function("tokio_util::TaskTracker", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, Clock::Wall, || {
                let peer = TaskTracker::new();
                move || drop(black_box(peer.token()))
            })
        })
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(
        benches,
        super::single_thread,
        super::two_threads,
        super::two_threads_own
    );
}
criterion_main!(group::benches);
