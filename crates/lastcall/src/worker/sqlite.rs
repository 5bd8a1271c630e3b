//! The SQLite queue: a jobs table with leases, shared by every process on the file.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sql::{SqlCore, SqlReceipt, Statements};
use super::{check_name, Delivery, Job, NewJob, Queue, QueueError};

/// The schema [`SqliteQueue::migrate`] applies, for projects that run their own migrations.
///
/// Needs the `sqlite` feature.
pub const SQLITE_SCHEMA: &str = include_str!("../../migrations/sqlite/0001_lastcall_jobs.sql");

/// A job queue in a SQLite database (feature `sqlite`): the embedded default.
///
/// Needs the `sqlite` feature.
///
/// Jobs live in `lastcall_jobs` (see [`SqliteQueue::migrate`]); a claim sets a lease
/// (`lease_until`) and a token in one `UPDATE ... RETURNING`, which SQLite's single writer
/// makes atomic across processes. Times are unix milliseconds from SQLite's clock (the host's). A claim finds nothing waits for an enqueue in this process
/// or the next poll ([`SqliteQueue::poll_interval`], default 200 ms), whichever comes first; it
/// never spins. Open the pool in WAL mode with a busy timeout when several processes share
/// the file.
///
/// # Examples
///
/// ```
/// use lastcall::worker::{NewJob, Queue, SqliteQueue};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// SqliteQueue::migrate(&pool).await?;
/// let queue = SqliteQueue::new(pool, "emails")?;
/// let id = queue.enqueue(NewJob::new(b"hello".to_vec())).await?;
/// assert_eq!(queue.pending().await?, 1);
/// # let _ = id; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    core: SqlCore<Sqlite>,
    poll: Duration,
    enqueued: Arc<Notify>,
}

/// The time now in unix milliseconds, from SQLite's clock (fixed for one statement).
macro_rules! now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// SQLite's statements; see [`Statements`] for their parameters.
static STATEMENTS: Statements = Statements {
    enqueue: concat!(
        "INSERT INTO lastcall_jobs (queue, payload, dedup_key, run_at, created_at)
         VALUES (?1, ?2, ?3, ",
        now!(),
        " + ?4, ",
        now!(),
        ") RETURNING id"
    ),
    claim: concat!(
        "UPDATE lastcall_jobs
            SET attempts = attempts + 1, lease_until = ",
        now!(),
        " + ?2, lease_token = ?3
          WHERE id = (SELECT id FROM lastcall_jobs
                       WHERE queue = ?1 AND run_at <= ",
        now!(),
        "
                         AND (lease_until IS NULL OR lease_until <= ",
        now!(),
        ")
                       ORDER BY run_at, id LIMIT 1)
         RETURNING id, payload, attempts, dedup_key"
    ),
    renew: concat!(
        "UPDATE lastcall_jobs SET lease_until = ",
        now!(),
        " + ?1
          WHERE id = ?2 AND lease_token = ?3 RETURNING id"
    ),
    ack: "DELETE FROM lastcall_jobs WHERE id = ?1 AND lease_token = ?2 RETURNING id",
    unclaim: concat!(
        "UPDATE lastcall_jobs
            SET run_at = ",
        now!(),
        " + ?1, lease_until = NULL, lease_token = NULL,
                last_error = COALESCE(?2, last_error), attempts = attempts - ?3
          WHERE id = ?4 AND lease_token = ?5 RETURNING id"
    ),
    bury: concat!(
        "INSERT INTO lastcall_dead_jobs
                (id, queue, payload, dedup_key, attempts, last_error, created_at, died_at)
         SELECT id, queue, payload, dedup_key, attempts, ?1, created_at, ",
        now!(),
        "
           FROM lastcall_jobs WHERE id = ?2 AND lease_token = ?3 RETURNING id"
    ),
    delete: "DELETE FROM lastcall_jobs WHERE id = ?1 AND lease_token = ?2 RETURNING id",
    mark_processed: concat!(
        "INSERT INTO lastcall_processed_jobs (dedup_key, processed_at) VALUES (?1, ",
        now!(),
        ")
         ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key"
    ),
    pending: "SELECT COUNT(*) FROM lastcall_jobs WHERE queue = ?1",
    dead: "SELECT COUNT(*) FROM lastcall_dead_jobs WHERE queue = ?1",
};

impl SqliteQueue {
    /// Creates the queue's tables and index if they are missing ([`SQLITE_SCHEMA`]).
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the statements fail.
    pub async fn migrate(pool: &SqlitePool) -> Result<(), QueueError> {
        sqlx::raw_sql(SQLITE_SCHEMA)
            .execute(pool)
            .await
            .map_err(|e| QueueError::backend("*", "migrate", e))?;
        Ok(())
    }

    /// The queue `name` in `pool`'s database, with a 30 s lease.
    ///
    /// # Errors
    ///
    /// [`QueueError::Invalid`] if the name is empty, longer than 64 bytes, or has characters
    /// other than `[A-Za-z0-9_-]`.
    pub fn new(pool: SqlitePool, name: &str) -> Result<SqliteQueue, QueueError> {
        check_name(name)?;
        Ok(SqliteQueue {
            core: SqlCore {
                pool,
                name: name.into(),
                lease: Duration::from_secs(30),
                sql: &STATEMENTS,
            },
            poll: Duration::from_millis(200),
            enqueued: Arc::new(Notify::new()),
        })
    }

    /// How long a claim lasts unless renewed (default 30 s, at least 100 ms).
    pub fn lease(mut self, lease: Duration) -> SqliteQueue {
        self.core.lease = lease;
        self
    }

    /// How often an idle claim looks for jobs enqueued by other processes (default 200 ms).
    pub fn poll_interval(mut self, poll: Duration) -> SqliteQueue {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The pool the queue uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.core.pool
    }

    /// Enqueues a job inside the caller's transaction, so the job exists exactly when the
    /// caller's own writes do (an order and the job that confirms it). Returns the job's id.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the insert fails.
    pub async fn enqueue_in(
        &self,
        conn: &mut SqliteConnection,
        job: NewJob,
    ) -> Result<i64, QueueError> {
        let id = self.core.enqueue_in(conn, job).await?;
        self.enqueued.notify_one();
        Ok(id)
    }

    /// Records that `job`'s effect is applied, inside the caller's transaction; returns `false`
    /// when it already was (a redelivery), in which case the caller skips the effect.
    ///
    /// This is what turns at-least-once delivery into exactly-once effects: the effect and
    /// this row commit together or not at all. It covers effects inside this database only;
    /// an email sent or an API called before the commit can still happen twice.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the insert fails.
    pub async fn mark_processed(
        conn: &mut SqliteConnection,
        job: &Job,
    ) -> Result<bool, QueueError> {
        SqlCore::<Sqlite>::mark_processed(&STATEMENTS, conn, job).await
    }
}

impl Queue for SqliteQueue {
    type Receipt = SqlReceipt;

    fn name(&self) -> &str {
        &self.core.name
    }

    fn lease(&self) -> Duration {
        self.core.lease
    }

    async fn enqueue(&self, job: NewJob) -> Result<String, QueueError> {
        let id = self.core.enqueue(job).await?;
        self.enqueued.notify_one();
        Ok(id)
    }

    async fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery<SqlReceipt>>, QueueError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the claim, so an enqueue right after it still wakes this one.
            let enqueued = self.enqueued.notified();
            tokio::pin!(enqueued);
            enqueued.as_mut().enable();
            if let Some(delivery) = self.core.try_claim().await? {
                return Ok(Some(delivery));
            }
            let now = tokio::time::Instant::now();
            if now >= until || stop.is_cancelled() {
                return Ok(None);
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = &mut enqueued => {}
                _ = tokio::time::sleep_until((now + self.poll).min(until)) => {}
            }
        }
    }

    async fn renew(&self, receipt: &SqlReceipt) -> Result<(), QueueError> {
        self.core.renew(receipt).await
    }

    async fn ack(&self, receipt: SqlReceipt) -> Result<(), QueueError> {
        self.core.ack(receipt).await
    }

    async fn retry(
        &self,
        receipt: SqlReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError> {
        self.core
            .unclaim("retry", receipt, delay, Some(error), false)
            .await?;
        self.enqueued.notify_one();
        Ok(())
    }

    async fn release(&self, receipt: SqlReceipt, delay: Duration) -> Result<(), QueueError> {
        self.core
            .unclaim("release", receipt, delay, None, true)
            .await?;
        self.enqueued.notify_one();
        Ok(())
    }

    async fn dead_letter(&self, receipt: SqlReceipt, error: &str) -> Result<(), QueueError> {
        self.core.dead_letter(receipt, error).await
    }

    async fn pending(&self) -> Result<u64, QueueError> {
        self.core.pending().await
    }

    async fn dead(&self) -> Result<u64, QueueError> {
        self.core.dead().await
    }
}
