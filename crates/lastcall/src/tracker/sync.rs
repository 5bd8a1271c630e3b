//! The synchronisation types the tracker is built on: std's, or loom's when the loom model
//! runs (`bench/loom.sh`), so the model checks the production code and not a copy of it.

#[cfg(not(all(test, lastcall_loom)))]
pub(super) use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(all(test, lastcall_loom))]
pub(super) use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

/// A small number fixed per thread, so a thread keeps using the same shard (and its cache
/// lines) while threads spread over the shards round-robin.
#[cfg(not(all(test, lastcall_loom)))]
pub(super) fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    // A thread being torn down (a guard dropped by a thread-local's destructor) uses shard 0.
    INDEX.try_with(|index| *index).unwrap_or(0)
}

/// Under loom every modelled thread gets its own index, counted afresh in each execution, so
/// the model explores guards on different shards.
#[cfg(all(test, lastcall_loom))]
pub(super) fn thread_index() -> usize {
    loom::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    loom::thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

/// How many shards a tracker has: more than cores, so threads that block (and a runtime's
/// extra threads) rarely share one; a power of two.
#[cfg(not(all(test, lastcall_loom)))]
pub(super) fn shard_count() -> usize {
    let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
    (parallelism * 4).clamp(4, 256).next_power_of_two()
}

/// Two shards under loom: enough for work on different shards, few enough to explore.
#[cfg(all(test, lastcall_loom))]
pub(super) fn shard_count() -> usize {
    2
}
