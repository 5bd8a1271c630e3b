//! In-flight work, counted by RAII guards: see [`Tracker`].

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spin::mutex::{SpinMutex, SpinMutexGuard};
use tokio::sync::Notify;

use crate::future::Idle;

/// Counts in-flight work (requests, streams, jobs, tasks) through RAII guards, and tells the
/// shutdown when the last one has ended.
///
/// [`Tracker::track`] returns a [`WorkGuard`]; the work is active exactly as long as the guard
/// lives. There is no `increment`/`decrement` pair to get wrong: a guard is counted once when
/// created and uncounted once when dropped, so double counting cannot be written.
///
/// At any moment [`Tracker::active`] tells how many pieces of work are active, the oldest one's
/// age and every label. [`Tracker::wait_idle`] resolves the moment the last guard drops: the
/// dropping thread wakes the waiter, there is no polling loop.
///
/// # Cost
///
/// The tracker sits on every request's path. Its state is split into cache-line-aligned
/// shards, one chosen per thread, so cores entering and leaving work at the same time do not
/// fight over one cache line. A guard points at its shard without a reference count (shard
/// sets are recycled, never freed, see below), and its start time is a coarse clock read (a
/// few nanoseconds through the vDSO), so creating and dropping a guard costs two uncontended
/// lock round-trips, a slot written in place and that read: less than `tokio_util::task::TaskTracker`'s counter alone, which
/// does four atomic operations (see `BENCHMARKS.md`). A guard is two words.
///
/// Ages are exact to the coarse clock's tick (1 to 4 ms), which is what a shutdown report
/// needs.
///
/// # Memory
///
/// A tracker's shards (about 128 bytes per shard, four shards per core) are never freed:
/// when the last handle to a tracker is dropped and its work has ended, a later
/// [`Tracker::new`] reuses them. A process therefore holds as many shard sets as it ever had
/// trackers alive at once.
///
/// # Examples
///
/// ```
/// use lastcall::{Tracker, WorkKind};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracker = Tracker::new();
/// let guard = tracker.track(WorkKind::Request, "GET /orders/7");
/// assert_eq!(tracker.len(), 1);
///
/// let idle = tracker.wait_idle();
/// drop(guard); // the request finished
/// idle.await; // resolves at once
/// assert!(tracker.is_empty());
/// # }
/// ```
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

/// Proof that one piece of work is active; dropping it ends the work.
///
/// Hold it for as long as the work runs: inside the response future for a request, beside the
/// body for a stream, in the task for a job. It is `Send`, so it can be dropped on any thread.
///
/// # Examples
///
/// ```
/// use lastcall::Tracker;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracker = Tracker::new();
/// let guard = tracker.job("confirm-order 42");
/// tokio::spawn(async move {
///     // The guard moves into the task, so the job counts until the task ends.
///     let _guard = guard;
/// })
/// .await
/// .unwrap();
/// assert!(tracker.is_empty());
/// # }
/// ```
#[must_use = "the work is tracked only while the guard is alive"]
pub struct WorkGuard {
    // Two words, so a guard is returned in registers rather than through memory.
    shard: &'static Shard,
    key: usize,
}

/// What kind of work a guard tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkKind {
    /// An HTTP or RPC request, until its response has been sent.
    Request,
    /// A long-lived stream: Server-Sent Events, a WebSocket, a streaming RPC.
    Stream,
    /// A job claimed from a queue.
    Job,
    /// A scheduled or background task.
    Task,
    /// An open client connection, from accept until it is closed.
    Connection,
}

/// A snapshot of the active work, as returned by [`Tracker::active`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveWork {
    /// How many pieces of work were active.
    pub count: usize,
    /// The age of the oldest one.
    #[serde(with = "crate::report::millis_opt", rename = "oldest_ms")]
    pub oldest: Option<Duration>,
    /// The count per kind.
    pub by_kind: KindCounts,
    /// The active work, oldest first; possibly fewer than `count` (see
    /// [`ActiveWork::keep_oldest`]).
    pub items: Vec<WorkItem>,
}

/// Active work counted per [`WorkKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Requests.
    pub request: usize,
    /// Streams.
    pub stream: usize,
    /// Jobs.
    pub job: usize,
    /// Tasks.
    pub task: usize,
    /// Connections.
    pub connection: usize,
}

/// One piece of active work in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// Its kind.
    pub kind: WorkKind,
    /// Its label, such as `GET /orders/7` or a job id.
    pub label: String,
    /// How long it had been active when the snapshot was taken.
    #[serde(with = "crate::report::millis", rename = "age_ms")]
    pub age: Duration,
}

/// The handles' shared part; dropping the last one retires the shard set for reuse.
struct Inner {
    set: &'static ShardSet,
}

/// A tracker's shards and the state they share. Leaked on creation and recycled through
/// [`RETIRED`], so a guard can hold a plain `&'static` to it instead of a reference count that
/// every core would increment.
struct ShardSet {
    shards: Box<[Shard]>,
    common: &'static Common,
}

/// State every shard shares; written only while someone waits for idleness.
struct Common {
    idle: Notify,
    /// How many [`Tracker::wait_idle`] futures are pending. Guards only read it, so the cache
    /// line stays shared between cores instead of bouncing.
    watchers: AtomicUsize,
    /// A copy of the owning shutdown's phase (`Phase as u8`), so a guard's holder can read it
    /// without holding a reference-counted [`Shutdown`](crate::Shutdown): written once per
    /// phase, read-only otherwise.
    phase: AtomicU8,
}

/// One lock-protected part of the active set. Aligned so two shards never share a cache line.
///
/// A spin lock rather than `std::sync::Mutex`: the critical sections are a slot insert or
/// remove (a few instructions, allocating only when the slots grow), each thread has its own
/// shard so the lock is almost never contended, and its release is a plain store instead of a
/// locked exchange. That is a third of a guard's cost (see `BENCHMARKS.md`).
#[repr(align(128))]
struct Shard {
    entries: SpinMutex<Slots>,
    /// The set's common state, so a guard needs only its shard.
    common: &'static Common,
}

struct Entry {
    kind: WorkKind,
    label: Label,
    /// Nanoseconds on the coarse monotonic clock, from [`crate::clock::read`].
    started: u64,
}

/// A shard's entries: a vector of slots with a free list threaded through the vacant ones,
/// so a key stays valid until its entry is removed.
///
/// What the `slab` crate does, written out because the hot path needs `insert` inlined: called
/// out of line, it reads a just-built [`Entry`] back from the caller's stack with loads wider
/// than the stores that wrote it, which the CPU cannot forward, and that stall alone made a
/// guard slower than `TaskTracker`'s four atomic operations (see `BENCHMARKS.md`).
#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    /// The first vacant slot; `slots.len()` when none is.
    free: usize,
    len: usize,
}

enum Slot {
    Occupied(Entry),
    /// Vacant; holds the next vacant slot.
    Vacant(usize),
}

impl Slots {
    #[inline(always)]
    fn insert(&mut self, entry: Entry) -> usize {
        self.len += 1;
        let key = self.free;
        if let Some(slot) = self.slots.get_mut(key) {
            if let Slot::Vacant(next) = *slot {
                self.free = next;
                *slot = Slot::Occupied(entry);
                return key;
            }
        }
        // No vacant slot (`free` never names an occupied one): grow.
        let key = self.slots.len();
        self.slots.push(Slot::Occupied(entry));
        self.free = key + 1;
        key
    }

    #[inline(always)]
    fn remove(&mut self, key: usize) -> Option<Entry> {
        let slot = self.slots.get_mut(key)?;
        if !matches!(slot, Slot::Occupied(_)) {
            return None;
        }
        let Slot::Occupied(entry) = std::mem::replace(slot, Slot::Vacant(self.free)) else {
            return None;
        };
        self.free = key;
        self.len -= 1;
        Some(entry)
    }

    fn get(&self, key: usize) -> Option<&Entry> {
        match self.slots.get(key) {
            Some(Slot::Occupied(entry)) => Some(entry),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut Entry> {
        match self.slots.get_mut(key) {
            Some(Slot::Occupied(entry)) => Some(entry),
            _ => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(|slot| match slot {
            Slot::Occupied(entry) => Some(entry),
            Slot::Vacant(_) => None,
        })
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Shard sets whose tracker is gone, kept for the next [`Tracker::new`].
static RETIRED: Mutex<Vec<&'static ShardSet>> = Mutex::new(Vec::new());

impl Tracker {
    /// A tracker with no active work.
    pub fn new() -> Tracker {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let count = (parallelism * 4).clamp(4, 256).next_power_of_two();
        let reused = {
            let mut retired = RETIRED.lock().unwrap_or_else(PoisonError::into_inner);
            // A retired set has no handle left, so no new guard can enter it; once it is empty
            // no guard refers to it either, and it can serve a new tracker.
            retired
                .iter()
                .position(|set| set.shards.len() == count && set.is_empty())
                .map(|i| retired.swap_remove(i))
        };
        if let Some(set) = reused {
            set.common.phase.store(0, Ordering::Release);
        }
        let set = reused.unwrap_or_else(|| {
            let common: &'static Common = Box::leak(Box::new(Common {
                idle: Notify::new(),
                watchers: AtomicUsize::new(0),
                phase: AtomicU8::new(0),
            }));
            Box::leak(Box::new(ShardSet {
                shards: (0..count)
                    .map(|_| Shard {
                        entries: SpinMutex::new(Slots::default()),
                        common,
                    })
                    .collect(),
                common,
            }))
        });
        Tracker {
            inner: Arc::new(Inner { set }),
        }
    }

    /// Starts tracking one piece of work; it ends when the returned guard is dropped.
    ///
    /// The label names the work in reports (`GET /orders/7`, `orders:job-42`). A `&'static str`
    /// costs nothing; a `String` is moved in without copying.
    pub fn track(&self, kind: WorkKind, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        self.track_label(kind, Label::from_cow(label.into()))
    }

    /// [`Tracker::track`] with a label built by the caller, such as [`Label::joined`].
    #[inline]
    pub(crate) fn track_label(&self, kind: WorkKind, label: Label) -> WorkGuard {
        let shards = &self.inner.set.shards;
        let shard = &shards[shard_index() & (shards.len() - 1)];
        let entry = Entry {
            kind,
            label,
            started: crate::clock::read(),
        };
        let key = lock(&shard.entries).insert(entry);
        WorkGuard { shard, key }
    }

    /// Tracks a request: shorthand for [`Tracker::track`] with [`WorkKind::Request`].
    pub fn request(&self, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        self.track(WorkKind::Request, label)
    }

    /// Tracks a stream: shorthand for [`Tracker::track`] with [`WorkKind::Stream`].
    pub fn stream(&self, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        self.track(WorkKind::Stream, label)
    }

    /// Tracks a job: shorthand for [`Tracker::track`] with [`WorkKind::Job`].
    pub fn job(&self, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        self.track(WorkKind::Job, label)
    }

    /// Tracks a task: shorthand for [`Tracker::track`] with [`WorkKind::Task`].
    pub fn task(&self, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        self.track(WorkKind::Task, label)
    }

    /// How many pieces of work are active.
    pub fn len(&self) -> usize {
        self.inner
            .set
            .shards
            .iter()
            .map(|s| lock(&s.entries).len())
            .sum()
    }

    /// Whether no work is active.
    pub fn is_empty(&self) -> bool {
        self.inner.set.is_empty()
    }

    /// A snapshot of the active work: count, oldest age, counts per kind and every item,
    /// oldest first.
    pub fn active(&self) -> ActiveWork {
        let now = crate::clock::read();
        let mut items = Vec::new();
        for shard in self.inner.set.shards.iter() {
            let entries = lock(&shard.entries);
            items.extend(entries.iter().map(|e| WorkItem {
                kind: e.kind,
                label: e.label.as_str().to_owned(),
                age: Duration::from_nanos(now.saturating_sub(e.started)),
            }));
        }
        items.sort_by_key(|i| std::cmp::Reverse(i.age));
        let mut by_kind = KindCounts::default();
        for item in &items {
            *by_kind.get_mut(item.kind) += 1;
        }
        ActiveWork {
            count: items.len(),
            oldest: items.first().map(|i| i.age),
            by_kind,
            items,
        }
    }

    /// Waits until no work is active.
    ///
    /// Resolves at once if the tracker is already empty; otherwise the thread that drops the
    /// last guard wakes it. Work started after it resolved is not waited for.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future unregisters it and loses nothing.
    pub fn wait_idle(&self) -> Idle {
        let inner = self.inner.clone();
        Idle::new(async move {
            let common = inner.set.common;
            common.watchers.fetch_add(1, Ordering::SeqCst);
            let _unwatch = Unwatch(common);
            loop {
                let notified = common.idle.notified();
                tokio::pin!(notified);
                // Registered before the check, so a guard dropped right after the check still
                // wakes this waiter.
                notified.as_mut().enable();
                if inner.set.is_empty() {
                    return;
                }
                notified.await;
            }
        })
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("len", &self.len())
            .field("shards", &self.inner.set.shards.len())
            .finish()
    }
}

impl WorkGuard {
    /// The kind of work this guard tracks.
    pub fn kind(&self) -> WorkKind {
        lock(&self.shard.entries)
            .get(self.key)
            .map_or(WorkKind::Task, |e| e.kind)
    }
}

impl WorkGuard {
    /// The phase of the shutdown whose tracker handed out this guard (`Running` for a tracker
    /// of your own).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn phase(&self) -> crate::Phase {
        crate::Phase::from_index(self.shard.common.phase.load(Ordering::Acquire))
    }

    /// Changes the kind of the tracked work, keeping its label and start time: a request whose
    /// response turned out to be a stream.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn set_kind(&self, kind: WorkKind) {
        if let Some(entry) = lock(&self.shard.entries).get_mut(self.key) {
            entry.kind = kind;
        }
    }
}

impl Drop for WorkGuard {
    #[inline]
    fn drop(&mut self) {
        let (entry, now_empty) = {
            let mut entries = lock(&self.shard.entries);
            let entry = entries.remove(self.key);
            (entry, entries.is_empty())
        };
        // The label may own a heap string: free it outside the lock.
        drop(entry);
        let common = self.shard.common;
        if now_empty && common.watchers.load(Ordering::SeqCst) > 0 {
            common.idle.notify_waiters();
        }
    }
}

impl fmt::Debug for WorkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = lock(&self.shard.entries);
        let mut d = f.debug_struct("WorkGuard");
        if let Some(e) = entries.get(self.key) {
            d.field("kind", &e.kind).field("label", &e.label.as_str());
        }
        d.finish()
    }
}

impl WorkKind {
    /// Every kind, in the order reports list them.
    #[cfg_attr(
        not(any(feature = "metrics", feature = "opentelemetry")),
        allow(dead_code)
    )]
    pub(crate) const ALL: [WorkKind; 5] = [
        WorkKind::Request,
        WorkKind::Stream,
        WorkKind::Job,
        WorkKind::Task,
        WorkKind::Connection,
    ];

    /// The kind's stable `snake_case` name, as used in reports and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkKind::Request => "request",
            WorkKind::Stream => "stream",
            WorkKind::Job => "job",
            WorkKind::Task => "task",
            WorkKind::Connection => "connection",
        }
    }
}

impl fmt::Display for WorkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ActiveWork {
    /// Keeps only the `n` oldest items; `count`, `oldest` and `by_kind` still describe all.
    pub fn keep_oldest(mut self, n: usize) -> ActiveWork {
        self.items.truncate(n);
        self
    }

    /// Whether nothing was active.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Display for ActiveWork {
    /// One line: the count, the oldest age and the labels, as the watchdog prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} active", self.count)?;
        if let Some(oldest) = self.oldest {
            write!(f, ", oldest {}ms", oldest.as_millis())?;
        }
        for (i, item) in self.items.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(
                f,
                "{} {:?} ({}ms)",
                item.kind,
                item.label,
                item.age.as_millis()
            )?;
        }
        if self.items.len() < self.count {
            write!(f, ", and {} more", self.count - self.items.len())?;
        }
        Ok(())
    }
}

impl KindCounts {
    /// The count for one kind.
    pub fn get(&self, kind: WorkKind) -> usize {
        match kind {
            WorkKind::Request => self.request,
            WorkKind::Stream => self.stream,
            WorkKind::Job => self.job,
            WorkKind::Task => self.task,
            WorkKind::Connection => self.connection,
        }
    }

    fn get_mut(&mut self, kind: WorkKind) -> &mut usize {
        match kind {
            WorkKind::Request => &mut self.request,
            WorkKind::Stream => &mut self.stream,
            WorkKind::Job => &mut self.job,
            WorkKind::Task => &mut self.task,
            WorkKind::Connection => &mut self.connection,
        }
    }
}

impl ShardSet {
    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(&s.entries).is_empty())
    }
}

impl Tracker {
    /// Mirrors the shutdown's phase for [`WorkGuard::phase`].
    pub(crate) fn set_phase(&self, phase: crate::Phase) {
        self.inner
            .set
            .common
            .phase
            .fetch_max(phase as u8, Ordering::AcqRel);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        RETIRED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.set);
    }
}

/// Decrements the watcher count when a [`Tracker::wait_idle`] future ends or is dropped.
struct Unwatch<'a>(&'a Common);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The shard this thread uses, fixed per thread so a thread keeps hitting its own cache line.
#[inline]
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // usize::MAX until the thread's first guard picks the next shard round-robin.
        static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    INDEX
        .try_with(|cell| {
            let mut index = cell.get();
            if index == usize::MAX {
                index = NEXT.fetch_add(1, Ordering::Relaxed);
                cell.set(index);
            }
            index
        })
        .unwrap_or(0)
}

/// Locks a shard.
#[inline]
fn lock(entries: &SpinMutex<Slots>) -> SpinMutexGuard<'_, Slots> {
    entries.lock()
}

/// A work item's label as the tracker stores it: a short label built from parts (a request's
/// method and target) is kept inline, because a heap allocation and its free would cost a
/// request more than the rest of its tracking (see `BENCHMARKS.md`).
pub(crate) enum Label {
    /// A `&'static str`, borrowed for free.
    Static(&'static str),
    /// A label given as a `String`, moved in without copying.
    Owned(String),
    /// A label of at most [`Label::INLINE`] bytes, copied in.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Inline { len: u8, bytes: [u8; Label::INLINE] },
}

impl Label {
    /// The longest label kept inline; with the tag and the length the label is 40 bytes.
    const INLINE: usize = 38;

    fn from_cow(label: Cow<'static, str>) -> Label {
        match label {
            Cow::Borrowed(s) => Label::Static(s),
            Cow::Owned(s) => Label::Owned(s),
        }
    }

    /// `first`, a space and `second` (`GET /orders/7`), inline when short enough.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn joined(first: &str, second: &str) -> Label {
        let len = first.len() + 1 + second.len();
        if len <= Label::INLINE {
            let mut bytes = [0; Label::INLINE];
            bytes[..first.len()].copy_from_slice(first.as_bytes());
            bytes[first.len()] = b' ';
            bytes[first.len() + 1..len].copy_from_slice(second.as_bytes());
            Label::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut label = String::with_capacity(len);
            label.push_str(first);
            label.push(' ');
            label.push_str(second);
            Label::Owned(label)
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Label::Static(s) => s,
            Label::Owned(s) => s,
            // Two `&str`s joined by a space at character boundaries: always UTF-8.
            Label::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(label: &'static str) -> Entry {
        Entry {
            kind: WorkKind::Task,
            label: Label::Static(label),
            started: 0,
        }
    }

    #[test]
    fn slots_reuse_vacant_keys_and_remove_each_entry_once() {
        let mut slots = Slots::default();
        let keys: Vec<usize> = ["a", "b", "c"].map(|l| slots.insert(entry(l))).into();
        assert_eq!(keys, [0, 1, 2]);
        assert_eq!(
            slots.remove(1).map(|e| e.label.as_str().to_owned()),
            Some("b".into())
        );
        assert!(slots.remove(1).is_none(), "a key is removed once");
        assert!(slots.remove(7).is_none(), "a key never handed out");
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.insert(entry("d")), 1, "the vacant slot is reused");
        assert_eq!(slots.insert(entry("e")), 3, "then the slots grow");
        let mut labels: Vec<&str> = slots.iter().map(|e| e.label.as_str()).collect();
        labels.sort();
        assert_eq!(labels, ["a", "c", "d", "e"]);
        assert_eq!(slots.get(1).map(|e| e.label.as_str()), Some("d"));
        for key in [0, 1, 2, 3] {
            assert!(slots.remove(key).is_some());
        }
        assert!(slots.is_empty());
        assert!(slots.get(0).is_none() && slots.get_mut(3).is_none());
    }

    proptest::proptest! {
        /// Any sequence of inserts and removes leaves the slots holding exactly what a map of
        /// key to label holds, keys unique while occupied, and vacant slots are reused: the
        /// vector never grows past the most entries held at once.
        #[test]
        fn slots_match_a_map_under_any_sequence(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..24), 0..200)) {
            const LABELS: [&str; 4] = ["a", "b", "c", "d"];
            let mut slots = Slots::default();
            let mut model = std::collections::HashMap::new();
            let mut peak = 0;
            for (i, (insert, n)) in ops.into_iter().enumerate() {
                if insert {
                    let label = LABELS[i % LABELS.len()];
                    let key = slots.insert(entry(label));
                    proptest::prop_assert!(model.insert(key, label).is_none(), "key {} handed out twice", key);
                } else {
                    let removed = slots.remove(n).map(|e| e.label.as_str().to_owned());
                    proptest::prop_assert_eq!(removed.as_deref(), model.remove(&n));
                }
                proptest::prop_assert_eq!(slots.len(), model.len());
                proptest::prop_assert_eq!(slots.is_empty(), model.is_empty());
                peak = peak.max(model.len());
                proptest::prop_assert!(slots.slots.len() <= peak, "{} slots for at most {} entries", slots.slots.len(), peak);
            }
            let mut held: Vec<&str> = slots.iter().map(|e| e.label.as_str()).collect();
            let mut expected: Vec<&str> = model.values().copied().collect();
            held.sort();
            expected.sort();
            proptest::prop_assert_eq!(held, expected);
        }
    }

    #[test]
    fn joined_labels_read_back_whole_inline_or_not() {
        let tracker = Tracker::new();
        // 38 bytes fit inline, 39 do not; multi-byte characters stay whole either way.
        let inline = "/".repeat(Label::INLINE - 4);
        let spilled = "/".repeat(Label::INLINE - 3);
        let cases = [
            ("GET", inline.as_str()),
            ("GET", spilled.as_str()),
            ("PUT", "/caf\u{e9}/\u{1f980}"),
            ("", ""),
        ];
        let guards: Vec<_> = cases
            .iter()
            .map(|(a, b)| tracker.track_label(WorkKind::Request, Label::joined(a, b)))
            .collect();
        assert!(matches!(
            Label::joined("GET", &inline),
            Label::Inline { .. }
        ));
        assert!(matches!(Label::joined("GET", &spilled), Label::Owned(_)));
        let mut labels: Vec<String> = tracker
            .active()
            .items
            .into_iter()
            .map(|i| i.label)
            .collect();
        labels.sort();
        let mut expected: Vec<String> = cases.iter().map(|(a, b)| format!("{a} {b}")).collect();
        expected.sort();
        assert_eq!(labels, expected);
        drop(guards);
        assert!(tracker.is_empty());
    }
}
