//! The PostgreSQL queue: a jobs table with leases, claimed with `FOR UPDATE SKIP LOCKED`,
//! woken by `LISTEN`/`NOTIFY`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sql::{SqlCore, SqlReceipt, Statements};
use super::{check_name, Delivery, Job, NewJob, Queue, QueueError};

/// The schema [`PgQueue::migrate`] applies, for projects that run their own migrations.
///
/// Needs the `postgres` feature.
pub const POSTGRES_SCHEMA: &str = include_str!("../../migrations/postgres/0001_lastcall_jobs.sql");

/// A job queue in a PostgreSQL database (feature `postgres`).
///
/// Needs the `postgres` feature.
///
/// Jobs live in `lastcall_jobs` (see [`PgQueue::migrate`]). A claim takes the oldest due row
/// with `FOR UPDATE SKIP LOCKED`, so many workers claim in parallel without waiting on each
/// other, and sets its lease and token in the same statement. Times come from the database's
/// clock. An idle claim sleeps until a notification (every enqueue, retry and release sends
/// `NOTIFY lastcall_jobs` with the queue's name when its transaction commits; one task per
/// queue and its clones listens, from the first claim on, and wakes every claim asleep), the
/// next delayed job falls due or, at the latest, [`PgQueue::poll_interval`] (default 1 s, for
/// leases that expire); it never spins, and no claim waits for another's sleep.
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
    core: SqlCore<Postgres>,
    poll: Duration,
    wakeups: Arc<Wakeups>,
}

/// The notifications for one queue, passed from its listening task to the claims asleep.
#[derive(Debug)]
struct Wakeups {
    notify: Notify,
    /// Whether the listening task was started (by the first claim).
    listening: AtomicBool,
    /// Ends the listening task; cancelled when the queue's last clone is dropped.
    stop: CancellationToken,
}

/// PostgreSQL's statements; see [`Statements`] for their parameters.
static STATEMENTS: Statements = Statements {
    enqueue: "WITH job AS (
                INSERT INTO lastcall_jobs (queue, payload, dedup_key, run_at)
                VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') RETURNING id)
              SELECT id FROM job, pg_notify('lastcall_jobs', $1)",
    claim: "UPDATE lastcall_jobs
               SET attempts = attempts + 1,
                   lease_until = now() + $2 * interval '1 millisecond',
                   lease_token = $3
             WHERE id = (SELECT id FROM lastcall_jobs
                          WHERE queue = $1 AND run_at <= now()
                            AND (lease_until IS NULL OR lease_until <= now())
                          ORDER BY run_at, id
                          LIMIT 1
                          FOR UPDATE SKIP LOCKED)
            RETURNING id, payload, attempts::bigint AS attempts, dedup_key",
    renew: "UPDATE lastcall_jobs SET lease_until = now() + $1 * interval '1 millisecond'
             WHERE id = $2 AND lease_token = $3 RETURNING id",
    ack: "DELETE FROM lastcall_jobs WHERE id = $1 AND lease_token = $2 RETURNING id",
    unclaim: "WITH job AS (
                UPDATE lastcall_jobs
                   SET run_at = now() + $1 * interval '1 millisecond', lease_until = NULL,
                       lease_token = NULL, last_error = COALESCE($2, last_error),
                       attempts = attempts - $3
                 WHERE id = $4 AND lease_token = $5 RETURNING queue)
              SELECT pg_notify('lastcall_jobs', queue) FROM job",
    bury: "INSERT INTO lastcall_dead_jobs
                  (id, queue, payload, dedup_key, attempts, last_error, created_at)
           SELECT id, queue, payload, dedup_key, attempts, $1, created_at
             FROM lastcall_jobs WHERE id = $2 AND lease_token = $3 RETURNING id",
    delete: "DELETE FROM lastcall_jobs WHERE id = $1 AND lease_token = $2 RETURNING id",
    mark_processed: "INSERT INTO lastcall_processed_jobs (dedup_key) VALUES ($1)
                     ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key",
    pending: "SELECT COUNT(*) FROM lastcall_jobs WHERE queue = $1",
    dead: "SELECT COUNT(*) FROM lastcall_dead_jobs WHERE queue = $1",
};

/// The channel enqueues, retries and releases notify, with the queue's name as the payload.
const CHANNEL: &str = "lastcall_jobs";

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
            core: SqlCore {
                pool,
                name: name.into(),
                lease: Duration::from_secs(30),
                sql: &STATEMENTS,
            },
            poll: Duration::from_secs(1),
            wakeups: Arc::new(Wakeups {
                notify: Notify::new(),
                listening: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// How long a claim lasts unless renewed (default 30 s, at least 100 ms).
    pub fn lease(mut self, lease: Duration) -> PgQueue {
        self.core.lease = lease;
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
        &self.core.pool
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
        self.core.enqueue_in(conn, job).await
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
        SqlCore::<Postgres>::mark_processed(&STATEMENTS, conn, job).await
    }

    /// How long until the next job of this queue falls due (a delayed job, a retry, an
    /// expiring lease), if any does.
    async fn next_due(&self) -> Result<Option<Duration>, QueueError> {
        let ms: Option<f64> = sqlx::query_scalar(
            // EXTRACT is NUMERIC since PostgreSQL 14: cast, or decoding fails whenever a job is
            // leased or delayed.
            "SELECT (EXTRACT(EPOCH FROM MIN(GREATEST(run_at, COALESCE(lease_until, run_at))) - now()) * 1000)::float8
               FROM lastcall_jobs WHERE queue = $1",
        )
        .bind(&*self.core.name)
        .fetch_one(&self.core.pool)
        .await
        .map_err(|e| self.core.err("claim", e))?;
        Ok(ms.map(|ms| Duration::from_millis(ms.max(0.0) as u64)))
    }

    /// Starts the queue's listening task, once.
    fn listen(&self) {
        if self.wakeups.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(listen(
            self.core.pool.clone(),
            self.core.name.clone(),
            Arc::downgrade(&self.wakeups),
            self.wakeups.stop.clone(),
            self.poll,
        ));
    }
}

/// Listens on [`CHANNEL`] and wakes the queue's sleeping claims for each notification naming
/// it, until the queue is dropped. A lost connection is reconnected after `retry`; meanwhile
/// the claims still poll.
async fn listen(
    pool: PgPool,
    name: Arc<str>,
    wakeups: Weak<Wakeups>,
    stop: CancellationToken,
    retry: Duration,
) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match connected.await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(queue = %name, error = %e, "LISTEN failed; polling");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                note = listener.recv() => match note {
                    Ok(note) if note.payload() == &*name => match wakeups.upgrade() {
                        Some(wakeups) => wakeups.notify.notify_waiters(),
                        None => return,
                    },
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Queue for PgQueue {
    type Receipt = SqlReceipt;

    fn name(&self) -> &str {
        &self.core.name
    }

    fn lease(&self) -> Duration {
        self.core.lease
    }

    async fn enqueue(&self, job: NewJob) -> Result<String, QueueError> {
        self.core.enqueue(job).await
    }

    async fn claim(
        &self,
        wait: Duration,
        stop: &CancellationToken,
    ) -> Result<Option<Delivery<SqlReceipt>>, QueueError> {
        let until = tokio::time::Instant::now() + wait;
        self.listen();
        loop {
            // Registered before the claim, so a notification right after it still wakes this
            // one.
            let woken = self.wakeups.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(delivery) = self.core.try_claim().await? {
                return Ok(Some(delivery));
            }
            let now = tokio::time::Instant::now();
            if now >= until || stop.is_cancelled() {
                return Ok(None);
            }
            let due = self.next_due().await?.unwrap_or(self.poll);
            // A millisecond past the due time, so the next claim sees the job as due.
            let wake = (now + due.min(self.poll) + Duration::from_millis(1)).min(until);
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(wake) => {}
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
            .await
    }

    async fn release(&self, receipt: SqlReceipt, delay: Duration) -> Result<(), QueueError> {
        self.core
            .unclaim("release", receipt, delay, None, true)
            .await
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
