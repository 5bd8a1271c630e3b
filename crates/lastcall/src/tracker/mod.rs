//! In-flight work, counted by RAII guards: see [`Tracker`].

mod shard;
mod sync;
mod work;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use self::shard::{Copied, Entry, Idleness, Shard};
use self::sync::{Arc, Ordering};
pub use self::work::{ActiveWork, KindCounts, WorkItem, WorkKind};
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
/// The tracker sits on every request's path. Its work is split into shards, each behind its
/// own `std::sync::Mutex`, and each thread enters its work in one of them, so cores starting
/// and ending work at the same time take different locks. A guard costs one read of the coarse
/// monotonic clock (its start time, exact to a few milliseconds), a lock round-trip to enter
/// and one to leave, and its shard's `Arc` count up and down; a label is stored as given, so a
/// `&'static str` costs nothing and a `String` is moved in (`BENCHMARKS.md` has the figures).
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
    shard: Arc<Shard>,
    key: usize,
}

/// What every handle of one tracker shares.
struct Inner {
    /// A power of two, so a thread's index picks its shard with a mask.
    shards: Box<[Arc<Shard>]>,
    idle: Arc<Idleness>,
}

impl Tracker {
    /// A tracker with no active work.
    pub fn new() -> Tracker {
        let count = sync::shard_count();
        let idle = Arc::new(Idleness::new());
        let shards = (0..count)
            .map(|_| Arc::new(Shard::new(idle.clone())))
            .collect();
        Tracker {
            inner: Arc::new(Inner { shards, idle }),
        }
    }

    /// Starts tracking one piece of work; it ends when the returned guard is dropped.
    ///
    /// The label names the work in reports (`GET /orders/7`, `orders:job-42`). A `&'static str`
    /// costs nothing; a `String` is moved in without copying.
    pub fn track(&self, kind: WorkKind, label: impl Into<Cow<'static, str>>) -> WorkGuard {
        let shards = &self.inner.shards;
        let shard = &shards[sync::thread_index() & (shards.len() - 1)];
        let key = shard.insert(Entry {
            kind,
            label: label.into(),
            started: crate::clock::read(),
        });
        WorkGuard {
            shard: shard.clone(),
            key,
        }
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
        self.inner.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether no work is active.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// A snapshot of the active work: count, oldest age, counts per kind and every item,
    /// oldest first.
    ///
    /// The watchdog calls it at the hard deadline, so it holds each shard's lock only to copy
    /// the entries into room reserved beforehand (see `Shard::copy_into`): the labels are
    /// allocated after the lock is released.
    pub fn active(&self) -> ActiveWork {
        let now = crate::clock::read();
        let (mut copied, mut text) = (Vec::new(), String::new());
        for shard in self.inner.shards.iter() {
            shard.copy_into(&mut copied, &mut text);
        }
        copied.sort_by_key(|c| c.started);
        let mut by_kind = KindCounts::default();
        let items: Vec<WorkItem> = copied
            .into_iter()
            .map(
                |Copied {
                     kind,
                     started,
                     label,
                 }| {
                    *by_kind.get_mut(kind) += 1;
                    WorkItem {
                        kind,
                        label: text[label].to_owned(),
                        age: Duration::from_nanos(now.saturating_sub(started)),
                    }
                },
            )
            .collect();
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
            let idle = &inner.idle;
            idle.watchers.fetch_add(1, Ordering::SeqCst);
            let _unwatch = Unwatch(idle);
            loop {
                let notified = idle.notify.notified();
                tokio::pin!(notified);
                // Registered before the check, so a guard dropped right after the check still
                // wakes this waiter.
                notified.as_mut().enable();
                if inner.is_empty() {
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
            .field("shards", &self.inner.shards.len())
            .field(
                "watchers",
                &self.inner.idle.watchers.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl WorkGuard {
    /// The kind of work this guard tracks.
    pub fn kind(&self) -> WorkKind {
        self.shard
            .with(self.key, |e| e.kind)
            .expect("an entry stays in its shard until its guard drops")
    }

    /// Changes the kind of the tracked work, keeping its label and start time: a request whose
    /// response turned out to be a stream.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn set_kind(&self, kind: WorkKind) {
        self.shard.set_kind(self.key, kind);
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let (entry, now_empty) = self.shard.remove(self.key);
        // The label may own a heap string: free it outside the lock.
        drop(entry);
        if now_empty {
            self.shard.idle.shard_emptied();
        }
    }
}

impl fmt::Debug for WorkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WorkGuard");
        self.shard.with(self.key, |e| {
            d.field("kind", &e.kind).field("label", &e.label);
        });
        d.finish()
    }
}

impl Inner {
    /// Whether no work was active at one moment during the call (see
    /// `Shard::entered_if_empty`).
    fn is_empty(&self) -> bool {
        let scan = || -> Option<u64> {
            self.shards
                .iter()
                .map(|s| s.entered_if_empty())
                .sum::<Option<u64>>()
        };
        // Counts only grow, so equal sums mean equal counts, shard by shard.
        scan().is_some_and(|first| scan() == Some(first))
    }
}

/// Decrements the watcher count when a [`Tracker::wait_idle`] future ends or is dropped.
struct Unwatch<'a>(&'a Idleness);

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(all(test, lastcall_loom))]
mod loom;
