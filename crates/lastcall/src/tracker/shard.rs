//! One lock-protected part of a tracker's active work: see [`Shard`].

use std::borrow::Cow;
use std::sync::PoisonError;

use slab::Slab;
use tokio::sync::Notify;

use super::sync::{Arc, AtomicUsize, Mutex, MutexGuard, Ordering};
use super::WorkKind;

/// Part of a tracker's active work, behind its own lock.
///
/// Each thread enters its work in one shard (`sync::thread_index`), so threads that start and
/// end work at the same time take different locks. Aligned so two shards never share a cache
/// line; a guard holds an `Arc` to its shard, whose count lives on the shard's own lines.
#[repr(align(128))]
pub(super) struct Shard {
    state: Mutex<State>,
    /// The tracker's idleness state, so a guard needs only its shard.
    pub(super) idle: Arc<Idleness>,
}

struct State {
    entries: Slab<Entry>,
    /// How many entries were ever inserted: two scans that find every shard empty with the
    /// same counts prove that all were empty at one moment (see [`Shard::entered_if_empty`]).
    entered: u64,
}

/// One piece of active work.
pub(super) struct Entry {
    pub(super) kind: WorkKind,
    pub(super) label: Cow<'static, str>,
    /// Nanoseconds on the coarse monotonic clock ([`crate::clock::read`]).
    pub(super) started: u64,
}

/// What the shards share: who is waiting for the tracker to be idle.
pub(super) struct Idleness {
    pub(super) notify: Notify,
    /// How many [`Tracker::wait_idle`](super::Tracker::wait_idle) futures are waiting. Guards
    /// only read it, so its cache line stays shared between cores instead of bouncing.
    pub(super) watchers: AtomicUsize,
}

/// One entry copied out of a shard for a snapshot: its label is a range of the snapshot's
/// text, so copying it allocates nothing.
pub(super) struct Copied {
    pub(super) kind: WorkKind,
    pub(super) started: u64,
    pub(super) label: std::ops::Range<usize>,
}

impl Shard {
    pub(super) fn new(idle: Arc<Idleness>) -> Shard {
        Shard {
            state: Mutex::new(State {
                entries: Slab::new(),
                entered: 0,
            }),
            idle,
        }
    }

    /// Enters `entry`; its key removes it.
    pub(super) fn insert(&self, entry: Entry) -> usize {
        let mut state = self.lock();
        state.entered += 1;
        state.entries.insert(entry)
    }

    /// Removes the entry under `key`, and says whether the shard is now empty.
    pub(super) fn remove(&self, key: usize) -> (Option<Entry>, bool) {
        let mut state = self.lock();
        let entry = state.entries.try_remove(key);
        (entry, state.entries.is_empty())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// How many entries were ever inserted, if none is active.
    ///
    /// Shards are scanned one after the other, so one scan finding each empty in turn does not
    /// prove they were all empty at once: work can start on a shard already scanned while work
    /// on a shard not yet scanned ends (a job that starts its follow-up before it finishes, on
    /// another thread). A second scan with the same counts does: no shard gained an entry
    /// between its two looks, so all were empty at the moment between the scans.
    pub(super) fn entered_if_empty(&self) -> Option<u64> {
        let state = self.lock();
        state.entries.is_empty().then_some(state.entered)
    }

    /// Calls `f` with the entry under `key`, under the lock.
    pub(super) fn with<R>(&self, key: usize, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.lock().entries.get(key).map(f)
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(super) fn set_kind(&self, key: usize, kind: WorkKind) {
        if let Some(entry) = self.lock().entries.get_mut(key) {
            entry.kind = kind;
        }
    }

    /// Appends every entry to `out`, their labels to `text`.
    ///
    /// Nothing allocates while the lock is held, so a snapshot taken at the deadline does not
    /// hold up the guards of this shard behind the allocator: the room is measured under the
    /// lock, reserved outside it, and the copy is retried if the shard grew in between.
    pub(super) fn copy_into(&self, out: &mut Vec<Copied>, text: &mut String) {
        loop {
            let (count, bytes) = {
                let state = self.lock();
                let entries = &state.entries;
                let bytes = entries.iter().map(|(_, e)| e.label.len()).sum::<usize>();
                if out.capacity() - out.len() >= entries.len()
                    && text.capacity() - text.len() >= bytes
                {
                    for (_, entry) in entries.iter() {
                        let start = text.len();
                        text.push_str(&entry.label);
                        out.push(Copied {
                            kind: entry.kind,
                            started: entry.started,
                            label: start..text.len(),
                        });
                    }
                    return;
                }
                (entries.len(), bytes)
            };
            out.reserve(count);
            text.reserve(bytes);
        }
    }

    /// The locks guard plain data and no code panics while holding them, so a poisoned lock
    /// is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Idleness {
    pub(super) fn new() -> Idleness {
        Idleness {
            notify: Notify::new(),
            watchers: AtomicUsize::new(0),
        }
    }

    /// Wakes the waiters after a shard became empty; they check every shard themselves.
    pub(super) fn shard_emptied(&self) {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}
