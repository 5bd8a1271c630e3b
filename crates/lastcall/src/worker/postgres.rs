//! The PostgreSQL queue: a jobs table with leases, claimed with `FOR UPDATE SKIP LOCKED`,
//! woken by `LISTEN`/`NOTIFY`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use sqlx::Row;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::sql::{token, SqlReceipt};
use super::{check_name, Delivery, Job, NewJob, Queue, QueueError};

/// The schema [`PgQueue::migrate`] applies, for projects that run their own migrations.
pub const POSTGRES_SCHEMA: &str = include_str!("../../migrations/postgres/0001_lastcall_jobs.sql");

/// The channel enqueues notify, with the queue's name as the payload.
const CHANNEL: &str = "lastcall_jobs";

/// A job queue in a PostgreSQL database (feature `postgres`).
///
/// Jobs live in `lastcall_jobs` (see [`PgQueue::migrate`]). A claim takes the oldest due row
/// with `FOR UPDATE SKIP LOCKED`, so many workers claim in parallel without waiting on each
/// other, and sets its lease and token in the same statement. Times come from the database's
/// clock. An idle claim sleeps on `LISTEN lastcall_jobs` (every enqueue, retry and release
/// sends `NOTIFY` with the queue's name when its transaction commits) and otherwise wakes when
/// the next delayed job falls due or, at the latest, after [`PgQueue::poll_interval`]
/// (default 1 s, for leases that expire); it never spins.
///
/// # Examples
///
/// ```no_run
/// use lastcall::worker::{NewJob, PgQueue, Queue};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://127.0.0.1/test").await?;
/// PgQueue::migrate(&pool).await?;
/// let queue = PgQueue::new(pool, "emails")?;
/// queue.enqueue(NewJob::new(b"hello".to_vec())).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgQueue {
    pool: PgPool,
    name: Arc<str>,
    lease: Duration,
    poll: Duration,
    listener: Arc<Mutex<Option<PgListener>>>,
}

impl PgQueue {
    /// Creates the queue's tables and index if they are missing ([`POSTGRES_SCHEMA`]), under
    /// an advisory lock so processes starting together do not race.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the statements fail.
    pub async fn migrate(pool: &PgPool) -> Result<(), QueueError> {
        let err = |e| QueueError::backend("*", "migrate", e);
        let mut tx = pool.begin().await.map_err(err)?;
        // "lastcall" as a number: one migration at a time across processes.
        sqlx::query("SELECT pg_advisory_xact_lock(x'6c61737463616c6c'::bigint)")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::raw_sql(POSTGRES_SCHEMA)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// The queue `name` in `pool`'s database, with a 30 s lease.
    ///
    /// # Errors
    ///
    /// [`QueueError::Invalid`] if the name is empty, longer than 64 bytes, or has characters
    /// other than `[A-Za-z0-9_-]`.
    pub fn new(pool: PgPool, name: &str) -> Result<PgQueue, QueueError> {
        check_name(name)?;
        Ok(PgQueue {
            pool,
            name: name.into(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            listener: Arc::new(Mutex::new(None)),
        })
    }

    /// How long a claim lasts unless renewed (default 30 s, at least 100 ms).
    pub fn lease(mut self, lease: Duration) -> PgQueue {
        self.lease = lease;
        self
    }

    /// The longest an idle claim sleeps without a notification (default 1 s): the bound on
    /// noticing a lease that expired.
    pub fn poll_interval(mut self, poll: Duration) -> PgQueue {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The pool the queue uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues a job inside the caller's transaction, so the job exists exactly when the
    /// caller's own writes do; workers are notified when it commits. Returns the job's id.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the insert fails.
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        job: NewJob,
    ) -> Result<i64, QueueError> {
        let id: i64 = sqlx::query_scalar(
            "WITH job AS (
                INSERT INTO lastcall_jobs (queue, payload, dedup_key, run_at)
                VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING id)
             SELECT id FROM job, pg_notify($5, $1)",
        )
        .bind(&*self.name)
        .bind(job.payload())
        .bind(job.key_ref())
        .bind(job.delay_ref().as_secs_f64())
        .bind(CHANNEL)
        .fetch_one(conn)
        .await
        .map_err(|e| self.err("enqueue", e))?;
        Ok(id)
    }

    /// Records that `job`'s effect is applied, inside the caller's transaction; returns `false`
    /// when it already was (a redelivery), in which case the caller skips the effect.
    ///
    /// The effect and this row commit together or not at all, which turns at-least-once
    /// delivery into exactly-once effects for effects inside this database. An email sent or
    /// an API called before the commit can still happen twice.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the insert fails.
    pub async fn mark_processed(conn: &mut PgConnection, job: &Job) -> Result<bool, QueueError> {
        let done = sqlx::query(
            "INSERT INTO lastcall_processed_jobs (dedup_key) VALUES ($1)
             ON CONFLICT (dedup_key) DO NOTHING",
        )
        .bind(&*job.dedup_key())
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
        self.count(
            "SELECT COUNT(*) FROM lastcall_jobs WHERE queue = $1",
            "pending",
        )
        .await
    }

    /// Jobs of this queue in the dead letters.
    ///
    /// # Errors
    ///
    /// [`QueueError::Backend`] if the query fails.
    pub async fn dead(&self) -> Result<u64, QueueError> {
        self.count(
            "SELECT COUNT(*) FROM lastcall_dead_jobs WHERE queue = $1",
            "dead",
        )
        .await
    }

    async fn count(&self, sql: &'static str, op: &'static str) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(&*self.name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(op, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn err(&self, op: &'static str, e: sqlx::Error) -> QueueError {
        QueueError::backend(&self.name, op, e)
    }

    async fn try_claim(&self) -> Result<Option<Delivery<SqlReceipt>>, QueueError> {
        let token = token();
        let row = sqlx::query(
            "UPDATE lastcall_jobs
                SET attempts = attempts + 1,
                    lease_until = now() + make_interval(secs => $1),
                    lease_token = $2
              WHERE id = (SELECT id FROM lastcall_jobs
                           WHERE queue = $3 AND run_at <= now()
                             AND (lease_until IS NULL OR lease_until <= now())
                           ORDER BY run_at, id
                           LIMIT 1
                           FOR UPDATE SKIP LOCKED)
             RETURNING id, payload, attempts, dedup_key",
        )
        .bind(self.lease.as_secs_f64())
        .bind(token)
        .bind(&*self.name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err("claim", e))?;
        let Some(row) = row else { return Ok(None) };
        let decode = |e| self.err("claim", e);
        let id: i64 = row.try_get("id").map_err(decode)?;
        let attempts: i32 = row.try_get("attempts").map_err(decode)?;
        let job = Job::new(
            self.name.clone(),
            id.to_string(),
            row.try_get("payload").map_err(decode)?,
            u32::try_from(attempts).unwrap_or(0),
            row.try_get("dedup_key").map_err(decode)?,
        );
        Ok(Some(Delivery {
            job,
            receipt: SqlReceipt { id, token },
        }))
    }

    /// How long until the next job of this queue falls due (a delayed job, a retry, an
    /// expiring lease), if any does.
    async fn next_due(&self) -> Result<Option<Duration>, QueueError> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM MIN(GREATEST(run_at, COALESCE(lease_until, run_at))) - now()) * 1000
               FROM lastcall_jobs WHERE queue = $1",
        )
        .bind(&*self.name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.err("claim", e))?;
        Ok(ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
    }

    /// Sleeps until a notification for this queue, `until`, or `stop`, whichever comes first.
    async fn sleep(&self, until: tokio::time::Instant, stop: &CancellationToken) {
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => *listener = Some(l),
                    Err(e) => {
                        tracing::warn!(queue = %self.name, error = %e, "LISTEN failed; polling")
                    }
                },
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "LISTEN connection failed; polling")
                }
            }
        }
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline);
        loop {
            let Some(l) = listener.as_mut() else {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = &mut deadline => {}
                }
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut deadline => return,
                note = l.recv() => match note {
                    Ok(note) if note.payload() == &*self.name => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(queue = %self.name, error = %e, "LISTEN connection lost; reconnecting");
                        *listener = None;
                        return;
                    }
                },
            }
        }
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
            "WITH job AS (
                UPDATE lastcall_jobs
                   SET run_at = now() + make_interval(secs => $1), lease_until = NULL,
                       lease_token = NULL, last_error = COALESCE($2, last_error),
                       attempts = attempts - $3
                 WHERE id = $4 AND lease_token = $5 RETURNING queue)
             SELECT pg_notify($6, queue) FROM job",
        )
        .bind(delay.as_secs_f64())
        .bind(error)
        .bind(i32::from(refund))
        .bind(receipt.id)
        .bind(receipt.token)
        .bind(CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(op, e))?;
        match done {
            Some(_) => Ok(()),
            None => Err(receipt.lost(&self.name)),
        }
    }
}

impl Queue for PgQueue {
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
            if let Some(delivery) = self.try_claim().await? {
                return Ok(Some(delivery));
            }
            let now = tokio::time::Instant::now();
            if now >= until || stop.is_cancelled() {
                return Ok(None);
            }
            let due = self.next_due().await?.unwrap_or(self.poll);
            // A millisecond past the due time, so the next claim sees the job as due.
            let wake = (now + due.min(self.poll) + Duration::from_millis(1)).min(until);
            self.sleep(wake, stop).await;
        }
    }

    async fn renew(&self, receipt: &SqlReceipt) -> Result<(), QueueError> {
        let done = sqlx::query(
            "UPDATE lastcall_jobs SET lease_until = now() + make_interval(secs => $1)
              WHERE id = $2 AND lease_token = $3",
        )
        .bind(self.lease.as_secs_f64())
        .bind(receipt.id)
        .bind(receipt.token)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("renew", e))?;
        receipt.matched(&self.name, done.rows_affected())
    }

    async fn ack(&self, receipt: SqlReceipt) -> Result<(), QueueError> {
        let done = sqlx::query("DELETE FROM lastcall_jobs WHERE id = $1 AND lease_token = $2")
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
        let moved = sqlx::query(
            "WITH job AS (
                DELETE FROM lastcall_jobs WHERE id = $1 AND lease_token = $2
                RETURNING id, queue, payload, dedup_key, attempts, created_at)
             INSERT INTO lastcall_dead_jobs (id, queue, payload, dedup_key, attempts, last_error, created_at)
             SELECT id, queue, payload, dedup_key, attempts, $3, created_at FROM job",
        )
        .bind(receipt.id)
        .bind(receipt.token)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err("dead_letter", e))?;
        receipt.matched(&self.name, moved.rows_affected())
    }
}
