//! What the SQLite and PostgreSQL queues share: the queue logic, over one table of statements
//! per dialect, and the one decoder of a claimed row: see [`SqlCore`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::{millis, Delivery, Job, NewJob, QueueError};

/// The proof of a claim on a SQL queue: the row and the token of the claim holding its lease.
/// An ack, renewal or release matches both, so a worker whose lease expired and was claimed
/// again cannot settle someone else's claim.
///
/// Needs the `sqlite` or the `postgres` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlReceipt {
    pub(crate) id: i64,
    pub(crate) token: i64,
}

/// The statements of one SQL dialect. Both dialects take the same parameters in the same
/// order (listed per statement), keep their times on the database's side, and return a row
/// exactly when the statement found its job, so [`SqlCore`] runs either without knowing which.
pub(crate) struct Statements {
    /// `(queue, payload, dedup_key, delay_ms)` → `id`.
    pub(crate) enqueue: &'static str,
    /// `(queue, lease_ms, token)` → `id, payload, attempts, dedup_key`, the job claimed.
    pub(crate) claim: &'static str,
    /// `(lease_ms, id, token)`.
    pub(crate) renew: &'static str,
    /// `(id, token)`.
    pub(crate) ack: &'static str,
    /// `(delay_ms, last_error or NULL, attempts to take back (0 or 1), id, token)`.
    pub(crate) unclaim: &'static str,
    /// `(last_error, id, token)`: copies the job into the dead letters.
    pub(crate) bury: &'static str,
    /// `(id, token)`: then deletes it, in the same transaction.
    pub(crate) delete: &'static str,
    /// `(dedup_key)`: records an effect as applied, returning a row unless it already was.
    pub(crate) mark_processed: &'static str,
    /// `(queue)` → the count of jobs waiting or running.
    pub(crate) pending: &'static str,
    /// `(queue)` → the count of dead letters.
    pub(crate) dead: &'static str,
}

/// A SQL queue's settings and logic, whatever the database: `DB` is sqlx's database type.
pub(crate) struct SqlCore<DB: Database> {
    pub(crate) pool: Pool<DB>,
    pub(crate) name: Arc<str>,
    pub(crate) lease: Duration,
    pub(crate) sql: &'static Statements,
}

// By hand: a derive would ask for `DB: Clone + Debug`, which sqlx's database types are not.
impl<DB: Database> Clone for SqlCore<DB> {
    fn clone(&self) -> Self {
        SqlCore {
            pool: self.pool.clone(),
            name: self.name.clone(),
            lease: self.lease,
            sql: self.sql,
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlCore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlCore")
            .field("pool", &self.pool)
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl SqlReceipt {
    /// The job's row id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The error for a statement that no longer finds this claim: the lease expired and the
    /// job was claimed again.
    fn lost(&self, queue: &str) -> QueueError {
        QueueError::LeaseLost {
            queue: queue.to_owned(),
            job: self.id.to_string(),
        }
    }
}

impl<DB> SqlCore<DB>
where
    DB: Database,
    <DB as Database>::Arguments: IntoArguments<DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<<DB as Database>::Row>,
    usize: ColumnIndex<<DB as Database>::Row>,
{
    pub(crate) fn err(&self, op: &'static str, e: sqlx::Error) -> QueueError {
        QueueError::backend(&self.name, op, e)
    }

    /// Enqueues `job` through `conn` (the caller's transaction, or a pooled connection).
    pub(crate) async fn enqueue_in<'c, E>(&self, conn: E, job: NewJob) -> Result<i64, QueueError>
    where
        E: Executor<'c, Database = DB>,
    {
        let row = sqlx::query(self.sql.enqueue)
            .bind(&*self.name)
            .bind(job.payload())
            .bind(job.key_ref())
            .bind(millis(job.delay_ref()))
            .fetch_one(conn)
            .await
            .map_err(|e| self.err("enqueue", e))?;
        row.try_get(0usize).map_err(|e| self.err("enqueue", e))
    }

    pub(crate) async fn enqueue(&self, job: NewJob) -> Result<String, QueueError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.err("enqueue", e))?;
        self.enqueue_in(&mut *conn, job)
            .await
            .map(|id| id.to_string())
    }

    /// Claims the oldest due job, if there is one, without waiting.
    pub(crate) async fn try_claim(&self) -> Result<Option<Delivery<SqlReceipt>>, QueueError> {
        let token = fastrand::i64(..);
        let row = sqlx::query(self.sql.claim)
            .bind(&*self.name)
            .bind(millis(self.lease))
            .bind(token)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("claim", e))?;
        row.map(|row| self.delivery(&row, token)).transpose()
    }

    /// The one decoder of a claimed row.
    ///
    /// An `attempts` that is not a delivery count (1 or more, within `u32`) is an error that
    /// names the column, rather than a count the retry policy would misread: `u32::MAX`
    /// dead-letters a job that never ran, `0` retries one forever.
    fn delivery(
        &self,
        row: &<DB as Database>::Row,
        token: i64,
    ) -> Result<Delivery<SqlReceipt>, QueueError> {
        let decode = |e| self.err("claim", e);
        let id: i64 = row.try_get("id").map_err(decode)?;
        let attempts: i64 = row.try_get("attempts").map_err(decode)?;
        let attempt = u32::try_from(attempts)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                self.err(
                    "claim",
                    sqlx::Error::ColumnDecode {
                        index: "\"attempts\"".into(),
                        source: format!(
                            "job {id} has attempts = {attempts}, not a delivery count (1 to {})",
                            u32::MAX
                        )
                        .into(),
                    },
                )
            })?;
        let job = Job::new(
            self.name.clone(),
            id.to_string(),
            row.try_get("payload").map_err(decode)?,
            attempt,
            row.try_get("dedup_key").map_err(decode)?,
        );
        Ok(Delivery {
            job,
            receipt: SqlReceipt { id, token },
        })
    }

    pub(crate) async fn renew(&self, receipt: &SqlReceipt) -> Result<(), QueueError> {
        let found = sqlx::query(self.sql.renew)
            .bind(millis(self.lease))
            .bind(receipt.id)
            .bind(receipt.token)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("renew", e))?;
        self.found(found, receipt)
    }

    pub(crate) async fn ack(&self, receipt: SqlReceipt) -> Result<(), QueueError> {
        let found = sqlx::query(self.sql.ack)
            .bind(receipt.id)
            .bind(receipt.token)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err("ack", e))?;
        self.found(found, &receipt)
    }

    /// Makes a claimed job runnable after `delay`; `refund` takes the claim's attempt back.
    pub(crate) async fn unclaim(
        &self,
        op: &'static str,
        receipt: SqlReceipt,
        delay: Duration,
        error: Option<&str>,
        refund: bool,
    ) -> Result<(), QueueError> {
        let found = sqlx::query(self.sql.unclaim)
            .bind(millis(delay))
            .bind(error)
            .bind(i64::from(refund))
            .bind(receipt.id)
            .bind(receipt.token)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(op, e))?;
        self.found(found, &receipt)
    }

    /// Moves a claimed job to the dead letters: copied, then deleted, in one transaction.
    pub(crate) async fn dead_letter(
        &self,
        receipt: SqlReceipt,
        error: &str,
    ) -> Result<(), QueueError> {
        let err = |e| self.err("dead_letter", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let copied = sqlx::query(self.sql.bury)
            .bind(error)
            .bind(receipt.id)
            .bind(receipt.token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        self.found(copied, &receipt)?;
        // Keyed on the token too: the job cannot have been claimed again in between.
        let deleted = sqlx::query(self.sql.delete)
            .bind(receipt.id)
            .bind(receipt.token)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        self.found(deleted, &receipt)?;
        tx.commit().await.map_err(err)
    }

    /// Records `job`'s effect as applied through `conn`; `false` if it already was.
    pub(crate) async fn mark_processed<'c, E>(
        sql: &Statements,
        conn: E,
        job: &Job,
    ) -> Result<bool, QueueError>
    where
        E: Executor<'c, Database = DB>,
    {
        let row = sqlx::query(sql.mark_processed)
            .bind(&*job.dedup_key())
            .fetch_optional(conn)
            .await
            .map_err(|e| QueueError::backend(job.queue(), "mark_processed", e))?;
        Ok(row.is_some())
    }

    pub(crate) async fn pending(&self) -> Result<u64, QueueError> {
        self.count(self.sql.pending, "pending").await
    }

    pub(crate) async fn dead(&self) -> Result<u64, QueueError> {
        self.count(self.sql.dead, "dead").await
    }

    async fn count(&self, sql: &'static str, op: &'static str) -> Result<u64, QueueError> {
        let row = sqlx::query(sql)
            .bind(&*self.name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(op, e))?;
        let n: i64 = row.try_get(0usize).map_err(|e| self.err(op, e))?;
        // COUNT(*) is never negative.
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `Ok` when a statement keyed on `receipt`'s claim found its row, else the lease is lost.
    fn found(
        &self,
        row: Option<<DB as Database>::Row>,
        receipt: &SqlReceipt,
    ) -> Result<(), QueueError> {
        match row {
            Some(_) => Ok(()),
            None => Err(receipt.lost(&self.name)),
        }
    }
}
