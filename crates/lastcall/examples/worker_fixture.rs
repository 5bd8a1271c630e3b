//! Not a tutorial: the worker process the worker tests (`tests/worker.rs`) start and kill.
//!
//! `worker_fixture BACKEND TARGET QUEUE LEASE_MS JOB_MS`, where BACKEND is `sqlite` (TARGET a
//! database file), `postgres` (TARGET a URL) or `nats` (TARGET a server address). It runs one
//! worker whose handler prints `started ID attempt N`, sleeps JOB_MS and prints `done ID`;
//! it prints `ready` once the worker claims. Shutdown settings come from `LASTCALL_*`.

use std::process::ExitCode;
use std::time::Duration;

use lastcall::worker::{NatsQueue, PgQueue, Queue, SqliteQueue, Worker};
use lastcall::Controller;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("worker_fixture: {err}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, target, queue, lease_ms, job_ms] = args.as_slice() else {
        return Err("usage: worker_fixture BACKEND TARGET QUEUE LEASE_MS JOB_MS".into());
    };
    let lease = Duration::from_millis(lease_ms.parse()?);
    let job = Duration::from_millis(job_ms.parse()?);
    let controller = Controller::from_env()?;
    match backend.as_str() {
        "sqlite" => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(target)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = sqlx::SqlitePool::connect_with(options).await?;
            let queue = SqliteQueue::new(pool, queue)?.lease(lease);
            start(&controller, queue, job)?;
        }
        "postgres" => {
            let pool = sqlx::PgPool::connect(target).await?;
            let queue = PgQueue::new(pool, queue)?.lease(lease);
            start(&controller, queue, job)?;
        }
        "nats" => {
            let client = async_nats::connect(target.as_str()).await?;
            let queue = NatsQueue::open(client, queue, lease).await?;
            start(&controller, queue, job)?;
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    }
    println!("ready");
    Ok(controller.run().await)
}

fn start<Q: Queue>(controller: &Controller, queue: Q, job: Duration) -> Result<(), Error> {
    Worker::new(queue, move |job_to_run: lastcall::worker::Job| async move {
        println!(
            "started {} attempt {}",
            job_to_run.id(),
            job_to_run.attempt()
        );
        tokio::time::sleep(job).await;
        println!("done {}", job_to_run.id());
    })
    .claim_wait(Duration::from_millis(500))
    .spawn(controller)?;
    Ok(())
}
