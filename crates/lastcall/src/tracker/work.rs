//! The work a tracker counts and the snapshots it takes of it: [`WorkKind`], [`ActiveWork`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// A snapshot of the active work, as returned by [`Tracker::active`](crate::Tracker::active).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveWork {
    /// How many pieces of work were active.
    pub count: usize,
    /// The age of the oldest one.
    #[serde(with = "crate::millis::ms_opt", rename = "oldest_ms")]
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
    #[serde(with = "crate::millis::ms", rename = "age_ms")]
    pub age: Duration,
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

    pub(super) fn get_mut(&mut self, kind: WorkKind) -> &mut usize {
        match kind {
            WorkKind::Request => &mut self.request,
            WorkKind::Stream => &mut self.stream,
            WorkKind::Job => &mut self.job,
            WorkKind::Task => &mut self.task,
            WorkKind::Connection => &mut self.connection,
        }
    }
}
