//! The SQLite queue: a jobs table with leases, shared by every process on the file.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sql::{token, SqlReceipt};
use super::{check_name, millis, now_ms, Delivery, Job, NewJob, Queue, QueueError};

/// The schema [`SqliteQueue::migrate`] applies, for projects that run their own migrations.
pub const SQLITE_SCHEMA: &str = include_str!("../../migrations/sqlite/0001_lastcall_jobs.sql");

/// A job queue in a SQLite database (feature `sqlite`): the embedded default.
///
/// Jobs live in `lastcall_jobs` (see [`SqliteQueue::migrate`]); a claim sets a lease
/// (`lease_until`) and a token in one `UPDATE ... RETURNING`, which SQLite's single writer
/// makes atomic across processes. A claim finds nothing waits for an enqueue in this process
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
    pool: SqlitePool,
    name: Arc<str>,
    lease: Duration,
    poll: Duration,
    enqueued: Arc<Notify>,
}

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
            pool,
            name: name.into(),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            enqueued: Arc::new(Notify::new()),
        })
    }

    /// How long a claim lasts unless renewed (default 30 s, at least 100 ms).
    pub fn lease(mut self, lease: Duration) -> SqliteQueue {
        self.lease = lease;
        self
    }

    /// How often an idle claim looks for jobs enqueued by other processes (default 200 ms).
    pub fn poll_interval(mut self, poll: Duration) -> SqliteQueue {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The pool the queue uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO lastcall_jobs (queue, payload, dedup_key, run_at, created_at)
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&*self.name)
        .bind(job.payload())
        .bind(job.key_ref())
        .bind(now.saturating_add(millis(job.delay_ref())))
        .bind(now)
        .fetch_one(conn)
        .await
        .map_err(|e| self.err("enqueue", e))?;
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
        let done = sqlx::query(
            "INSERT INTO lastcall_processed_jobs (dedup_key, processed_at) VALUES (?, ?)
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(&*job.dedup_key())
        .bind(now_ms())
        .execute(conn)
        .await
        .map_err(|e| QueueError::backend(job.queue(), "mark_processed", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Jobs waiting or running in this queue (dead letters excluded).
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the query fails.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lastcall_jobs WHERE queue = ?")
            .bind(&*self.name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("pending", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Jobs of this queue in the dead letters.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the query fails.
    pub async fn dead(&self) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lastcall_dead_jobs WHERE queue = ?")
            .bind(&*self.name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err("dead", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn err(&self, op: &'static str, e: sqlx::Error) -> QueueError {
        QueueError::backend(&self.name, op, e)
    }

    async fn try_claim(&self) -> Result<Option<Delivery<SqlReceipt>>, QueueError> {
        let now = now_ms();
        let token = token();
        let row = sqlx::query(
            "UPDATE lastcall_jobs
                SET attempts = attempts + 1, lease_until = ?1, lease_token = ?2
              WHERE id = (SELECT id FROM lastcall_jobs
                           WHERE queue = ?3 AND run_at <= ?4
                             AND (lease_until IS NULL OR lease_until <= ?4)
                           ORDER BY run_at, id LIMIT 1)
             RETURNING id, payload, attempts, dedup_key",
        )
        .bind(now.saturating_add(millis(self.lease)))
        .bind(token)
        .bind(&*self.name)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err("claim", e))?;
        let Some(row) = row else { return Ok(None) };
        let decode = |e| self.err("claim", e);
        let id: i64 = row.try_get("id").map_err(decode)?;
        let attempts: i64 = row.try_get("attempts").map_err(decode)?;
        let job = Job::new(
            self.name.clone(),
            id.to_string(),
            row.try_get("payload").map_err(decode)?,
            u32::try_from(attempts).unwrap_or(u32::MAX),
            row.try_get("dedup_key").map_err(decode)?,
        );
        Ok(Some(Delivery {
            job,
            receipt: SqlReceipt { id, token },
        }))
    }

    /// Makes a claimed job runnable after `delay`; `refund` takes the claim's attempt back.
    async fn unclaim(
        &self,
        op: &'static str,
        receipt: SqlReceipt,
        delay: Duration,
        error: Option<&str>,
        refund: bool,
    ) -> Result<(), QueueError> {
        let done = sqlx::query(
            "UPDATE lastcall_jobs
                SET run_at = ?1, lease_until = NULL, lease_token = NULL,
                    last_error = COALESCE(?2, last_error), attempts = attempts - ?3
              WHERE id = ?4 AND lease_token = ?5",
        )
        .bind(now_ms().saturating_add(millis(delay)))
        .bind(error)
        .bind(i64::from(refund))
        .bind(receipt.id)
        .bind(receipt.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(op, e))?;
        receipt.matched(&self.name, done.rows_affected())?;
        self.enqueued.notify_one();
        Ok(())
    }
}

impl Queue for SqliteQueue {
    type Receipt = SqlReceipt;

    fn name(&self) -> &str {
        &self.name
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn enqueue(&self, job: NewJob) -> Result<String, QueueError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("enqueue", e))?;
        self.enqueue_in(&mut conn, job)
            .await
            .map(|id| id.to_string())
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
            if let Some(delivery) = self.try_claim().await? {
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
        let done = sqlx::query(
            "UPDATE lastcall_jobs SET lease_until = ? WHERE id = ? AND lease_token = ?",
        )
        .bind(now_ms().saturating_add(millis(self.lease)))
        .bind(receipt.id)
        .bind(receipt.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("renew", e))?;
        receipt.matched(&self.name, done.rows_affected())
    }

    async fn ack(&self, receipt: SqlReceipt) -> Result<(), QueueError> {
        let done = sqlx::query("DELETE FROM lastcall_jobs WHERE id = ? AND lease_token = ?")
            .bind(receipt.id)
            .bind(receipt.token)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err("ack", e))?;
        receipt.matched(&self.name, done.rows_affected())
    }

    async fn retry(
        &self,
        receipt: SqlReceipt,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError> {
        self.unclaim("retry", receipt, delay, Some(error), false)
            .await
    }

    async fn release(&self, receipt: SqlReceipt, delay: Duration) -> Result<(), QueueError> {
        self.unclaim("release", receipt, delay, None, true).await
    }

    async fn dead_letter(&self, receipt: SqlReceipt, error: &str) -> Result<(), QueueError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.err("dead_letter", e))?;
        let moved = sqlx::query(
            "INSERT INTO lastcall_dead_jobs
                    (id, queue, payload, dedup_key, attempts, last_error, created_at, died_at)
             SELECT id, queue, payload, dedup_key, attempts, ?, created_at, ?
               FROM lastcall_jobs WHERE id = ? AND lease_token = ?",
        )
        .bind(error)
        .bind(now_ms())
        .bind(receipt.id)
        .bind(receipt.token)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err("dead_letter", e))?;
        receipt.matched(&self.name, moved.rows_affected())?;
        sqlx::query("DELETE FROM lastcall_jobs WHERE id = ?")
            .bind(receipt.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err("dead_letter", e))?;
        tx.commit().await.map_err(|e| self.err("dead_letter", e))
    }
}
