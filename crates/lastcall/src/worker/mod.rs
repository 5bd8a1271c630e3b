//! Queue workers that stop claiming at shutdown and never lose or double-apply a job.
//!
//! A [`Worker`] claims jobs from a [`Queue`] with a fixed concurrency and runs a handler for
//! each. It plugs into the shutdown like this:
//!
//! - **stop accepting**: the worker stops claiming. A claim already under way that returns a
//!   job after that point hands the job straight back ([`Queue::release`]).
//! - **wait for work**: each running job is a [`WorkKind::Job`](crate::WorkKind::Job) in the
//!   tracker (label `queue#id`), so the phase lasts until the last job ends. Its lease keeps
//!   being renewed ([`Queue::renew`]) all the while, so no second worker takes it.
//! - **the wait deadline**: a job still running is cut, released with a short delay so another
//!   worker retries it, and named in the report's `work_at_deadline`.
//! - **close dependencies**: the worker's hand-back step runs before every ordinary close step,
//!   so releases and acks still have their connections.
//!
//! Failures (an error or a panic in the handler) are retried with exponential backoff and
//! jitter ([`Retry`]) up to a maximum number of attempts, then dead-lettered with the last
//! error. A process killed with SIGKILL leaves its job leased; the lease expires and the job is
//! delivered again.
//!
//! Delivery is at least once. For exactly-once *effects*, record each job's deduplication key
//! in the same transaction as its effect: `SqliteQueue::mark_processed` and
//! `PgQueue::mark_processed` do that (features `sqlite` and `postgres`).
//!
//! Adapters (one per cargo feature): `sqlite` (`SqliteQueue`), `postgres` (`PgQueue`),
//! `nats` (`NatsQueue`, JetStream).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::step::BoxError;

mod retry;
mod runtime;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "nats")]
pub use nats::{NatsQueue, NatsReceipt};
#[cfg(feature = "postgres")]
pub use postgres::{PgQueue, POSTGRES_SCHEMA};
pub use retry::Retry;
pub use runtime::{Worker, WorkerHandle, WorkerStats};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlReceipt;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteQueue, SQLITE_SCHEMA};

/// The sqlx (0.9) that `SqliteQueue` and `PgQueue` speak, so a service can name the `Pool`
/// they take without matching versions by hand: `lastcall::worker::sqlx::SqlitePool`.
///
/// Needs the `sqlite` or the `postgres` feature.
///
/// # Examples
///
/// ```no_run
/// use lastcall::worker::sqlx::SqlitePool;
/// use lastcall::worker::SqliteQueue;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SqlitePool::connect("sqlite:jobs.db?mode=rwc").await?;
/// let queue = SqliteQueue::new(pool, "emails")?;
/// # let _ = queue; Ok(()) }
/// ```
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[doc(no_inline)]
pub use sqlx;

/// A job as a worker's handler sees it.
///
/// # Examples
///
/// ```
/// use lastcall::worker::Job;
///
/// let job = Job::new("emails", "42", b"{\"to\":\"a@example.com\"}".to_vec(), 1, None);
/// assert_eq!(job.label(), "emails#42");
/// assert_eq!(job.dedup_key(), "emails#42");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Job {
    queue: Arc<str>,
    id: String,
    payload: Vec<u8>,
    attempt: u32,
    key: Option<String>,
}

impl Job {
    /// A job, as an adapter builds it from what it claimed. `attempt` counts deliveries,
    /// starting at 1; `key` is the deduplication key given at enqueue, if any.
    pub fn new(
        queue: impl Into<Arc<str>>,
        id: impl Into<String>,
        payload: Vec<u8>,
        attempt: u32,
        key: Option<String>,
    ) -> Job {
        Job {
            queue: queue.into(),
            id: id.into(),
            payload,
            attempt,
            key,
        }
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The job's id within its queue (a row id, a stream sequence).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The payload, as enqueued.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Which delivery this is: 1 the first time, 2 after one failure or lost lease, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The key that identifies this job's effect: the key given at enqueue, or `queue#id`.
    pub fn dedup_key(&self) -> Cow<'_, str> {
        match &self.key {
            Some(key) => Cow::Borrowed(key),
            None => Cow::Owned(self.label()),
        }
    }

    /// `queue#id`, the label the job has in the tracker and the report.
    pub fn label(&self) -> String {
        format!("{}#{}", self.queue, self.id)
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("queue", &self.queue)
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A job to enqueue.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::worker::NewJob;
///
/// let job = NewJob::new(b"order 7".to_vec())
///     .key("confirm-order-7")
///     .delay(Duration::from_secs(5));
/// assert_eq!(job.key_ref(), Some("confirm-order-7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    payload: Vec<u8>,
    key: Option<String>,
    delay: Duration,
}

impl NewJob {
    /// A job with this payload, runnable at once.
    pub fn new(payload: impl Into<Vec<u8>>) -> NewJob {
        NewJob {
            payload: payload.into(),
            key: None,
            delay: Duration::ZERO,
        }
    }

    /// The deduplication key of the job's effect (see [`Job::dedup_key`]).
    pub fn key(mut self, key: impl Into<String>) -> NewJob {
        self.key = Some(key.into());
        self
    }

    /// Not runnable before this delay has passed.
    pub fn delay(mut self, delay: Duration) -> NewJob {
        self.delay = delay;
        self
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The deduplication key, if one was set.
    pub fn key_ref(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The delay before the job is runnable.
    pub fn delay_ref(&self) -> Duration {
        self.delay
    }
}

/// A claimed job and the receipt that acks, renews or releases it.
#[derive(Debug)]
pub struct Delivery<R> {
    /// The job, for the handler.
    pub job: Job,
    /// The adapter's proof of the claim (a lease token, a JetStream message).
    pub receipt: R,
}

/// A job queue a [`Worker`] claims from: the contract every adapter implements.
///
/// Claims are leases: a claimed job is invisible to other workers until its lease expires,
/// and becomes visible again if the worker neither acks, renews nor releases it (a process
/// killed with SIGKILL). Every method is bounded; none may spin.
pub trait Queue: Send + Sync + 'static {
    /// The proof of a claim, handed back to ack, renew, retry, release or dead-letter it.
    type Receipt: Send + Sync + 'static;

    /// The queue's name, used in labels, logs and the report.
    fn name(&self) -> &str;

    /// How long a claim lasts unless renewed (the visibility timeout). Workers renew at a third
    /// of it.
    fn lease(&self) -> Duration;

    /// Enqueues a job; returns its id.
    fn enqueue(&self, job: NewJob) -> impl Future<Output = Result<String, QueueError>> + Send;

    /// Waits up to `wait` for a runnable job and claims it.
    ///
    /// When `stop` is cancelled the implementation returns `Ok(None)` as soon as it is sure no
    /// job was claimed for this call. A job it did claim must be returned, never dropped: the
    /// worker releases it at once.
    fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<Option<Delivery<Self::Receipt>>, QueueError>> + Send;

    /// Extends the lease by [`Queue::lease`] from now. [`QueueError::LeaseLost`] if the job
    /// was claimed by someone else meanwhile.
    fn renew(&self, receipt: &Self::Receipt)
        -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The job succeeded: remove it.
    fn ack(&self, receipt: Self::Receipt) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The job failed with `error`: make it runnable again after `delay`. The attempt counts.
    fn retry(
        &self,
        receipt: Self::Receipt,
        delay: Duration,
        error: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The job was not run to the end through no fault of its own (shutdown): make it runnable
    /// again after `delay`. Where the backend allows, the attempt does not count.
    fn release(
        &self,
        receipt: Self::Receipt,
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The job failed for the last time: move it to the dead letters with `error`.
    fn dead_letter(
        &self,
        receipt: Self::Receipt,
        error: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// How many jobs of this queue are waiting or running (dead letters excluded).
    fn pending(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// How many jobs of this queue are in the dead letters.
    fn dead(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;
}

/// What a queue operation can fail with.
///
/// # Examples
///
/// ```
/// use lastcall::worker::QueueError;
///
/// let err = QueueError::LeaseLost { queue: "emails".into(), job: "42".into() };
/// assert!(matches!(err, QueueError::LeaseLost { .. }));
/// assert_eq!(err.to_string(), "queue emails: the lease on job 42 was lost (the job was claimed again after its lease expired)");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The backend (database, broker) failed the operation.
    #[error("queue {queue}: {op} failed: {source}")]
    Backend {
        /// The queue's name.
        queue: String,
        /// The operation: `claim`, `ack`, `renew`, ...
        op: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// The lease expired and the job was claimed again; this worker must not ack it.
    #[error("queue {queue}: the lease on job {job} was lost (the job was claimed again after its lease expired)")]
    LeaseLost {
        /// The queue's name.
        queue: String,
        /// The job's id.
        job: String,
    },
    /// A setting the queue cannot work with, found when it was built.
    #[error("queue {queue}: {setting} = {value:?} is not valid: {expected}")]
    Invalid {
        /// The queue's name.
        queue: String,
        /// The setting: `name`, `lease`, ...
        setting: &'static str,
        /// The value given.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
}

impl QueueError {
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres", feature = "nats")),
        allow(dead_code)
    )]
    pub(crate) fn backend(
        queue: &str,
        op: &'static str,
        source: impl Into<BoxError>,
    ) -> QueueError {
        QueueError::Backend {
            queue: queue.to_owned(),
            op,
            source: source.into(),
        }
    }
}

/// Milliseconds in a duration, saturating.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "nats")),
    allow(dead_code)
)]
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Wall-clock unix milliseconds: queue messages are shared by processes, so times stored in
/// them (a NATS job's not-before) come from a clock they share.
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

/// Checks a queue name: 1 to 64 characters of `[A-Za-z0-9_-]`, so it is valid as a table key,
/// a NATS subject token and a stream name alike.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "nats")),
    allow(dead_code)
)]
pub(crate) fn check_name(name: &str) -> Result<(), QueueError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(QueueError::Invalid {
            queue: name.to_owned(),
            setting: "name",
            value: name.to_owned(),
            expected: "1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
        })
    }
}

/// Checks a lease: at least 100 ms, so renewing at a third of it is not a busy loop.
pub(crate) fn check_lease(queue: &str, lease: Duration) -> Result<(), QueueError> {
    if lease >= Duration::from_millis(100) {
        Ok(())
    } else {
        Err(QueueError::Invalid {
            queue: queue.to_owned(),
            setting: "lease",
            value: humantime::format_duration(lease).to_string(),
            expected: "at least 100ms (the worker renews it at a third of its length)",
        })
    }
}
