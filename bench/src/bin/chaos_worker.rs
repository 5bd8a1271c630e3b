//! The worker process `bench/chaos.py` starts, signals and kills, and its bookkeeping.
//!
//! `chaos-worker BACKEND QUEUE MODE [N]`, with BACKEND `sqlite` (file from `CHAOS_SQLITE`),
//! `postgres` or `nats` (effects in PostgreSQL from `CHAOS_POSTGRES`, broker at `CHAOS_NATS`):
//!
//! - `setup N`: creates the tables, empties the effect log and enqueues N jobs keyed
//!   `QUEUE-i`;
//! - `work`: runs a worker (concurrency 4, lease `CHAOS_LEASE_MS`, default 2000) until a signal;
//!   each job logs its delivery, sleeps 0 to 20 ms, then records its effect (one row keyed by
//!   the job) in the same transaction as its deduplication key;
//! - `cleanup`: deletes the JetStream streams of a NATS run (SQL rows stay, keyed by QUEUE);
//! - `status`: prints `{"pending":..,"dead":..,"effects":..,"distinct":..,"deliveries":..}`.
//!
//! Shutdown settings come from `LASTCALL_*`.

use std::process::ExitCode;
use std::time::Duration;

use lastcall::worker::{Job, NatsQueue, NewJob, PgQueue, Queue, SqliteQueue, Worker};
use lastcall::Controller;
use sqlx::{PgPool, SqlitePool};

type Error = Box<dyn std::error::Error + Send + Sync>;

const EFFECTS_SQL: &str = "CREATE TABLE IF NOT EXISTS chaos_effects (queue TEXT NOT NULL, job_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chaos_deliveries (queue TEXT NOT NULL, job_key TEXT NOT NULL, attempt BIGINT NOT NULL);";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("chaos-worker: {err}");
            ExitCode::from(2)
        }
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn sqlite() -> Result<SqlitePool, Error> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(env("CHAOS_SQLITE", "/tmp/lastcall-chaos.sqlite3"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    Ok(sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(6)
        .connect_with(options)
        .await?)
}

async fn postgres() -> Result<PgPool, Error> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&env(
            "CHAOS_POSTGRES",
            "postgres://postgres@127.0.0.1:5432/test",
        ))
        .await?)
}

async fn nats(queue: &str, lease: Duration) -> Result<NatsQueue, Error> {
    let client = async_nats::connect(env("CHAOS_NATS", "127.0.0.1:4222")).await?;
    Ok(NatsQueue::open(client, queue, lease).await?)
}

async fn run() -> Result<ExitCode, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backend, queue, mode) = match args.as_slice() {
        [b, q, m, ..] => (b.as_str(), q.as_str(), m.as_str()),
        _ => return Err("usage: chaos-worker BACKEND QUEUE setup N|work|status|cleanup".into()),
    };
    let lease = Duration::from_millis(env("CHAOS_LEASE_MS", "2000").parse()?);
    match (backend, mode) {
        ("sqlite", "setup") => {
            let pool = sqlite().await?;
            SqliteQueue::migrate(&pool).await?;
            sqlx::raw_sql(EFFECTS_SQL).execute(&pool).await?;
            let q = SqliteQueue::new(pool.clone(), queue)?;
            let mut tx = pool.begin().await?;
            for i in 0..count(&args)? {
                q.enqueue_in(&mut tx, job(queue, i)).await?;
            }
            tx.commit().await?;
        }
        ("postgres", "setup") => {
            let pool = postgres().await?;
            PgQueue::migrate(&pool).await?;
            sqlx::raw_sql(EFFECTS_SQL).execute(&pool).await?;
            let q = PgQueue::new(pool.clone(), queue)?;
            let mut tx = pool.begin().await?;
            for i in 0..count(&args)? {
                q.enqueue_in(&mut tx, job(queue, i)).await?;
            }
            tx.commit().await?;
        }
        ("nats", "setup") => {
            let pool = postgres().await?;
            PgQueue::migrate(&pool).await?;
            sqlx::raw_sql(EFFECTS_SQL).execute(&pool).await?;
            let q = nats(queue, lease).await?;
            for i in 0..count(&args)? {
                q.enqueue(job(queue, i)).await?;
            }
        }
        ("sqlite", "work") => {
            let pool = sqlite().await?;
            let q = SqliteQueue::new(pool.clone(), queue)?.lease(lease);
            return work(q, move |job| sqlite_effect(pool.clone(), job)).await;
        }
        ("postgres", "work") => {
            let pool = postgres().await?;
            let q = PgQueue::new(pool.clone(), queue)?.lease(lease);
            return work(q, move |job| pg_effect(pool.clone(), job)).await;
        }
        ("nats", "work") => {
            let pool = postgres().await?;
            let q = nats(queue, lease).await?;
            return work(q, move |job| pg_effect(pool.clone(), job)).await;
        }
        ("sqlite", "status") => {
            let pool = sqlite().await?;
            let q = SqliteQueue::new(pool.clone(), queue)?;
            let (pending, dead) = (q.pending().await?, q.dead().await?);
            print_status(pending, dead, &effects_sqlite(&pool, queue).await?);
        }
        ("postgres", "status") => {
            let pool = postgres().await?;
            let q = PgQueue::new(pool.clone(), queue)?;
            let (pending, dead) = (q.pending().await?, q.dead().await?);
            print_status(pending, dead, &effects_pg(&pool, queue).await?);
        }
        ("nats", "status") => {
            let pool = postgres().await?;
            let q = nats(queue, lease).await?;
            let (pending, dead) = (q.pending().await?, q.dead().await?);
            print_status(pending, dead, &effects_pg(&pool, queue).await?);
        }
        ("nats", "cleanup") => nats(queue, lease).await?.delete().await?,
        (_, "cleanup") => {}
        _ => return Err(format!("unknown backend or mode: {backend} {mode}").into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn count(args: &[String]) -> Result<u64, Error> {
    Ok(args
        .get(3)
        .ok_or("setup needs a job count")?
        .parse::<u64>()?)
}

fn job(queue: &str, i: u64) -> NewJob {
    NewJob::new(i.to_string().into_bytes()).key(format!("{queue}-{i}"))
}

async fn work<Q, H, Fut>(queue: Q, handler: H) -> Result<ExitCode, Error>
where
    Q: Queue,
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
{
    let controller = Controller::from_env()?;
    Worker::new(queue, handler)
        .concurrency(4)
        .claim_wait(Duration::from_millis(500))
        .release_delay(Duration::from_millis(100))
        .spawn(&controller)?;
    println!("ready");
    Ok(controller.run().await)
}

fn pause() -> Duration {
    Duration::from_millis(fastrand::u64(0..=20))
}

async fn sqlite_effect(pool: SqlitePool, job: Job) -> Result<(), Error> {
    sqlx::query("INSERT INTO chaos_deliveries (queue, job_key, attempt) VALUES (?, ?, ?)")
        .bind(job.queue())
        .bind(&*job.dedup_key())
        .bind(i64::from(job.attempt()))
        .execute(&pool)
        .await?;
    tokio::time::sleep(pause()).await;
    let mut tx = pool.begin().await?;
    if SqliteQueue::mark_processed(&mut tx, &job).await? {
        sqlx::query("INSERT INTO chaos_effects (queue, job_key) VALUES (?, ?)")
            .bind(job.queue())
            .bind(&*job.dedup_key())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn pg_effect(pool: PgPool, job: Job) -> Result<(), Error> {
    sqlx::query("INSERT INTO chaos_deliveries (queue, job_key, attempt) VALUES ($1, $2, $3)")
        .bind(job.queue())
        .bind(&*job.dedup_key())
        .bind(i64::from(job.attempt()))
        .execute(&pool)
        .await?;
    tokio::time::sleep(pause()).await;
    let mut tx = pool.begin().await?;
    if PgQueue::mark_processed(&mut tx, &job).await? {
        sqlx::query("INSERT INTO chaos_effects (queue, job_key) VALUES ($1, $2)")
            .bind(job.queue())
            .bind(&*job.dedup_key())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `(effects, distinct effects, deliveries)`.
struct Effects(i64, i64, i64);

const EFFECTS_QUERY: &str = "SELECT
    (SELECT COUNT(*) FROM chaos_effects WHERE queue = $1),
    (SELECT COUNT(DISTINCT job_key) FROM chaos_effects WHERE queue = $1),
    (SELECT COUNT(*) FROM chaos_deliveries WHERE queue = $1)";

/// [`EFFECTS_QUERY`] in SQLite's placeholders: a constant, since sqlx 0.9 takes only
/// `&'static str` (or an `AssertSqlSafe`) as a query.
const EFFECTS_QUERY_SQLITE: &str = "SELECT
    (SELECT COUNT(*) FROM chaos_effects WHERE queue = ?1),
    (SELECT COUNT(DISTINCT job_key) FROM chaos_effects WHERE queue = ?1),
    (SELECT COUNT(*) FROM chaos_deliveries WHERE queue = ?1)";

async fn effects_sqlite(pool: &SqlitePool, queue: &str) -> Result<Effects, Error> {
    let (a, b, c): (i64, i64, i64) = sqlx::query_as(EFFECTS_QUERY_SQLITE)
        .bind(queue)
        .fetch_one(pool)
        .await?;
    Ok(Effects(a, b, c))
}

async fn effects_pg(pool: &PgPool, queue: &str) -> Result<Effects, Error> {
    let (a, b, c): (i64, i64, i64) = sqlx::query_as(EFFECTS_QUERY)
        .bind(queue)
        .fetch_one(pool)
        .await?;
    Ok(Effects(a, b, c))
}

fn print_status(pending: u64, dead: u64, effects: &Effects) {
    println!(
        "{{\"pending\":{pending},\"dead\":{dead},\"effects\":{},\"distinct\":{},\"deliveries\":{}}}",
        effects.0, effects.1, effects.2
    );
}
