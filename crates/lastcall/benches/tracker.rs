//! Tracker guard enter+drop, against `tokio_util::task::TaskTracker::token()` + drop as the
//! peer, single-threaded and with two threads contending, side by side in one run.
//!
//! `cargo bench -p lastcall --bench tracker`; figures in `BENCHMARKS.md`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion};
use lastcall::{Tracker, WorkKind};
use tokio_util::task::TaskTracker;

/// Runs `op` `iters` times on each of `threads` threads, started together, and returns the
/// wall time: criterion divides it by `iters`, so the figure is the time for every thread to
/// do one enter+drop while the others do the same.
fn contended<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    op();
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().expect("bench thread");
    }
    start.elapsed()
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
    let mut group = c.benchmark_group("guard_enter_drop/2_threads");
    let tracker = Tracker::new();
    group.bench_function("lastcall::Tracker", |b| {
        b.iter_custom(|iters| {
            let tracker = tracker.clone();
            contended(2, iters, move || {
                drop(black_box(tracker.track(WorkKind::Request, "GET /orders/7")))
            })
        })
    });
    let peer = TaskTracker::new();
    group.bench_function("tokio_util::TaskTracker", |b| {
        b.iter_custom(|iters| {
            let peer = peer.clone();
            contended(2, iters, move || drop(black_box(peer.token())))
        })
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::single_thread, super::two_threads);
}
criterion_main!(group::benches);
