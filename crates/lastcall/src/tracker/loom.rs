//! The tracker's wake-up protocol under the loom model checker, which runs every interleaving
//! of the threads below (up to `LOOM_MAX_PREEMPTIONS` preemptions): `bash bench/loom.sh`.

use loom::future::block_on;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

use super::Tracker;

#[test]
fn wait_idle_is_woken_by_the_last_guard_dropped_on_another_thread() {
    loom::model(|| {
        let tracker = Tracker::new();
        let guard = tracker.request("GET /orders/7");
        let dropper = thread::spawn(move || drop(guard));
        // Deadlocks (and loom reports it) if the drop can slip between the waiter's check and
        // its registration.
        block_on(tracker.wait_idle());
        assert!(tracker.is_empty());
        dropper.join().expect("the dropper does not panic");
    });
}

#[test]
fn wait_idle_does_not_resolve_while_work_is_handed_between_shards() {
    loom::model(|| {
        let tracker = Tracker::new();
        let ended = Arc::new(AtomicBool::new(false));
        // The main thread enters its work in shard 0, the relay in shard 1.
        let first = tracker.job("first");
        let relay = thread::spawn({
            let tracker = tracker.clone();
            move || {
                let second = tracker.job("second");
                drop(first);
                second
            }
        });
        let waiter = thread::spawn({
            let (tracker, ended) = (tracker.clone(), ended.clone());
            move || {
                block_on(tracker.wait_idle());
                assert!(
                    ended.load(Ordering::SeqCst),
                    "the wait resolved while a job was active"
                );
            }
        });
        let second = relay.join().expect("the relay does not panic");
        // Started before the second ends, on the other shard: some job is active throughout.
        let third = tracker.job("third");
        drop(second);
        ended.store(true, Ordering::SeqCst);
        drop(third);
        waiter.join().expect("the waiter does not panic");
    });
}
