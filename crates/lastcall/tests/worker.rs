//! Workers, leases and the scheduler against the real queues on this machine.
//!
//! Every scenario runs once per adapter: SQLite (a file in the temp dir), PostgreSQL
//! (`LCTEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`) and NATS
//! JetStream (`LCTEST_NATS`, default `127.0.0.1:4222`). A test whose service is
//! unreachable prints a notice and passes, unless `LCTEST_REQUIRE_SERVICES=1`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lastcall::report::PhaseOutcome;
use lastcall::schedule::Scheduler;
use lastcall::worker::{
    Job, NatsQueue, NewJob, PgQueue, Queue, QueueError, Retry, SqliteQueue, Worker,
};
use lastcall::{Controller, Exit, Phase};
use nix::sys::signal::Signal;

use super::support::{self, Child, Stderr};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A controller whose wait-for-work phase ends 2.5 s after the trigger, with a 1 s
/// close phase for the hand-back.
fn controller() -> Controller {
    Controller::builder()
        .continue_after_run()
        .ignore_env()
        .watchdog(false)
        .budget(ms(4_000))
        .drain_delay(Duration::ZERO)
        .stop_timeout(ms(200))
        .flush_timeout(ms(200))
        .close_timeout(ms(1_000))
        .build()
        .unwrap()
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unreachable(service: &str, error: impl std::fmt::Display) {
    if std::env::var("LCTEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{service} is required (LCTEST_REQUIRE_SERVICES=1) but unreachable: {error}");
    }
    eprintln!("notice: skipping, {service} is unreachable: {error}");
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// Where a scenario's queue lives: what the worker fixture process needs to open it, and what
/// to remove afterwards.
struct Backend {
    /// `(backend, target)` for the worker fixture process.
    fixture: (&'static str, String),
    cleanup: Cleanup,
}

enum Cleanup {
    /// A shared server whose queue names are unique: nothing to remove.
    Nothing,
    /// A database file and its WAL files, once the pool is closed.
    SqliteFile(sqlx::SqlitePool, PathBuf),
    /// The queue's streams.
    NatsStreams(Box<NatsQueue>),
}

impl Backend {
    async fn cleanup(self) {
        match self.cleanup {
            Cleanup::Nothing => {}
            Cleanup::SqliteFile(pool, path) => {
                pool.close().await;
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::NatsStreams(queue) => queue.delete().await.unwrap(),
        }
    }
}

// --- adapters -------------------------------------------------------------------------

async fn sqlite(lease: Duration) -> Option<(SqliteQueue, Backend)> {
    let path = std::env::temp_dir().join(format!("{}.db", unique("lastcall_worker")));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    SqliteQueue::migrate(&pool).await.unwrap();
    let queue = SqliteQueue::new(pool.clone(), "jobs")
        .unwrap()
        .lease(lease)
        .poll_interval(ms(50));
    let backend = Backend {
        fixture: ("sqlite", path.display().to_string()),
        cleanup: Cleanup::SqliteFile(pool, path),
    };
    Some((queue, backend))
}

fn postgres_url() -> String {
    std::env::var("LCTEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn postgres_pool(options: sqlx::postgres::PgConnectOptions) -> Option<sqlx::PgPool> {
    match sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
    {
        Ok(pool) => {
            PgQueue::migrate(&pool).await.unwrap();
            Some(pool)
        }
        Err(error) => {
            unreachable(&format!("PostgreSQL at {}", postgres_url()), error);
            None
        }
    }
}

async fn postgres(lease: Duration) -> Option<(PgQueue, Backend)> {
    let pool = postgres_pool(postgres_url().parse().unwrap()).await?;
    let queue = PgQueue::new(pool, &unique("jobs"))
        .unwrap()
        .lease(lease)
        .poll_interval(ms(200));
    let backend = Backend {
        fixture: ("postgres", postgres_url()),
        cleanup: Cleanup::Nothing,
    };
    Some((queue, backend))
}

fn nats_address() -> String {
    std::env::var("LCTEST_NATS").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

async fn nats(lease: Duration) -> Option<(NatsQueue, Backend)> {
    let address = nats_address();
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(address.as_str());
    let client = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => {
            unreachable(&format!("NATS at {address}"), error);
            return None;
        }
        Err(_) => {
            unreachable(&format!("NATS at {address}"), "connect timed out");
            return None;
        }
    };
    let queue = NatsQueue::open(client, &unique("jobs"), lease)
        .await
        .unwrap();
    let backend = Backend {
        fixture: ("nats", address),
        cleanup: Cleanup::NatsStreams(Box::new(queue.clone())),
    };
    Some((queue, backend))
}

// --- scenarios ------------------------------------------------------------------------

/// What handlers saw: one entry per run, `id@attempt`, and the finished ids.
#[derive(Clone, Default)]
struct Log {
    started: Arc<Mutex<Vec<String>>>,
    done: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn start(&self, job: &Job) {
        self.started
            .lock()
            .unwrap()
            .push(format!("{}@{}", job.id(), job.attempt()));
    }
    fn finish(&self, job: &Job) {
        self.done.lock().unwrap().push(job.id().to_owned());
    }
    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
    fn done(&self) -> Vec<String> {
        self.done.lock().unwrap().clone()
    }
}

/// A handler that logs its start, sleeps `ms`, and logs its end.
fn sleeper(
    log: &Log,
    for_ms: u64,
) -> impl Fn(Job) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static {
    let log = log.clone();
    move |job: Job| {
        let log = log.clone();
        Box::pin(async move {
            log.start(&job);
            tokio::time::sleep(ms(for_ms)).await;
            log.finish(&job);
        })
    }
}

async fn shutdown_mid_job_finishes_and_acks<Q: Queue + Clone>(queue: Q, backend: Backend) {
    let controller = controller();
    let log = Log::default();
    let worker = Worker::new(queue.clone(), sleeper(&log, 800))
        .claim_wait(ms(500))
        .spawn(&controller)
        .unwrap();
    let id = queue.enqueue(NewJob::new(b"one".to_vec())).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || async {
        !log.started().is_empty()
    })
    .await;
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    assert_eq!(report.exit, Exit::Clean, "{}", report.to_json());
    assert_eq!(log.done(), vec![id], "the job ran to its end once");
    assert_eq!(worker.stats().succeeded, 1);
    assert_eq!(worker.stats().released, 0);
    assert_eq!(
        queue.pending().await.unwrap(),
        0,
        "the job was acked, not left behind"
    );
    backend.cleanup().await;
}

async fn a_job_past_the_deadline_is_released_and_a_second_worker_completes_it<Q: Queue + Clone>(
    queue: Q,
    backend: Backend,
) {
    let first = controller();
    let stuck = Log::default();
    let worker = Worker::new(queue.clone(), sleeper(&stuck, 600_000))
        .claim_wait(ms(500))
        .release_delay(ms(100))
        .spawn(&first)
        .unwrap();
    let id = queue.enqueue(NewJob::new(b"slow".to_vec())).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || async {
        !stuck.started().is_empty()
    })
    .await;
    first.trigger().trigger("test");
    let report = first.run_with_report().await;
    assert_eq!(report.exit, Exit::WorkCut, "{}", report.to_json());
    let cut = report
        .work_at_deadline
        .expect("the job was active at the deadline");
    let label = format!("{}#{id}", queue.name());
    assert!(
        cut.items.iter().any(|item| item.label == label),
        "the report names {label}: {:?}",
        cut.items
    );
    assert_eq!(worker.stats().released, 1);
    assert!(stuck.done().is_empty());
    assert_eq!(
        queue.pending().await.unwrap(),
        1,
        "the job is back in the queue"
    );

    let second = controller();
    let log = Log::default();
    let _worker = Worker::new(queue.clone(), sleeper(&log, 10))
        .claim_wait(ms(500))
        .spawn(&second)
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the second worker to finish the job",
        || async { !log.done().is_empty() },
    )
    .await;
    assert_eq!(log.done(), vec![id]);
    second.trigger().trigger("test");
    assert_eq!(second.run_with_report().await.exit, Exit::Clean);
    assert_eq!(queue.pending().await.unwrap(), 0);
    backend.cleanup().await;
}

async fn lease_renewal_keeps_a_long_job_from_being_claimed_twice<Q: Queue + Clone>(
    queue: Q,
    backend: Backend,
) {
    // The lease is 1 s; the job runs 3.5 s; a second worker polls the queue all along.
    let controller = controller();
    let log = Log::default();
    let a = Worker::new(queue.clone(), sleeper(&log, 3_500))
        .claim_wait(ms(300))
        .spawn(&controller)
        .unwrap();
    let b = Worker::new(queue.clone(), sleeper(&log, 3_500))
        .claim_wait(ms(300))
        .spawn(&controller)
        .unwrap();
    let id = queue.enqueue(NewJob::new(b"long".to_vec())).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the long job to finish",
        || async { !log.done().is_empty() },
    )
    .await;
    // Past one more lease: a lost lease would show as a second start by now.
    tokio::time::sleep(ms(1_200)).await;
    assert_eq!(
        log.started(),
        vec![format!("{id}@1")],
        "claimed exactly once"
    );
    assert_eq!(a.stats().claimed + b.stats().claimed, 1);
    assert_eq!(a.stats().lease_lost + b.stats().lease_lost, 0);
    controller.trigger().trigger("test");
    assert_eq!(controller.run_with_report().await.exit, Exit::Clean);
    assert_eq!(queue.pending().await.unwrap(), 0);
    backend.cleanup().await;
}

async fn failures_retry_with_backoff_then_dead_letter<Q: Queue + Clone>(
    queue: Q,
    backend: Backend,
) {
    let controller = controller();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let worker = Worker::new(queue.clone(), move |job: Job| {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if job.attempt() == 2 {
                panic!("attempt 2 panics");
            }
            Err::<(), _>(format!("attempt {} fails", job.attempt()))
        }
    })
    .claim_wait(ms(300))
    .retry(Retry::new(3).base(ms(20)).max(ms(100)))
    .spawn(&controller)
    .unwrap();
    queue
        .enqueue(NewJob::new(b"doomed".to_vec()))
        .await
        .unwrap();
    // The worker counts a dead letter once the queue has taken it: wait for both, or the
    // count can be read between the two (seen on NATS, whose dead-letter call is the slowest).
    eventually(
        Duration::from_secs(15),
        "the job to be dead-lettered and counted",
        || async { queue.dead().await.unwrap() == 1 && worker.stats().dead == 1 },
    )
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "three attempts, no more");
    let stats = worker.stats();
    assert_eq!((stats.retried, stats.dead), (2, 1), "{stats:?}");
    assert_eq!(queue.pending().await.unwrap(), 0);

    // The panic did not kill the worker: it still takes jobs.
    queue.enqueue(NewJob::new(b"after".to_vec())).await.unwrap();
    eventually(Duration::from_secs(10), "the next job to run", || async {
        runs.load(Ordering::SeqCst) >= 4
    })
    .await;
    controller.trigger().trigger("test");
    controller.run_with_report().await;
    backend.cleanup().await;
}

async fn a_worker_killed_mid_job_leaves_it_to_be_redelivered_after_the_lease<Q: Queue + Clone>(
    queue: Q,
    backend: Backend,
) {
    let (kind, target) = backend.fixture.clone();
    let id = queue
        .enqueue(NewJob::new(b"orphan".to_vec()))
        .await
        .unwrap();
    let mut command = support::command(
        &support::example("worker_fixture"),
        &[kind, &target, queue.name(), "1000", "600000"],
        &[("LASTCALL_BUDGET", "10s")],
    );
    let mut child = Child::spawn(&mut command, Stderr::Read);
    let started = format!("started {id} attempt 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.next_line(deadline, &started) != started {}
    child.signal(Signal::SIGKILL);
    child.wait();
    let killed = Instant::now();

    let controller = controller();
    let log = Log::default();
    let _worker = Worker::new(queue.clone(), sleeper(&log, 10))
        .claim_wait(ms(300))
        .spawn(&controller)
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the job to be redelivered",
        || async { !log.done().is_empty() },
    )
    .await;
    assert_eq!(
        log.started(),
        vec![format!("{id}@2")],
        "the second delivery"
    );
    // The lease (1 s) ran out first: the kill itself handed nothing back.
    assert!(
        killed.elapsed() >= ms(500),
        "redelivered after {:?}",
        killed.elapsed()
    );
    controller.trigger().trigger("test");
    assert_eq!(controller.run_with_report().await.exit, Exit::Clean);
    assert_eq!(queue.pending().await.unwrap(), 0);
    backend.cleanup().await;
}

macro_rules! adapter_tests {
    ($adapter:ident, $open:ident) => {
        mod $adapter {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_mid_job_finishes_and_acks_the_job() {
                if let Some((queue, backend)) = $open(ms(1_000)).await {
                    super::shutdown_mid_job_finishes_and_acks(queue, backend).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_job_past_the_deadline_is_released_and_a_second_worker_completes_it() {
                if let Some((queue, backend)) = $open(ms(2_000)).await {
                    super::a_job_past_the_deadline_is_released_and_a_second_worker_completes_it(
                        queue, backend,
                    )
                    .await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lease_renewal_keeps_a_long_job_from_being_claimed_twice() {
                if let Some((queue, backend)) = $open(ms(1_000)).await {
                    super::lease_renewal_keeps_a_long_job_from_being_claimed_twice(queue, backend)
                        .await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failures_retry_with_backoff_then_dead_letter() {
                if let Some((queue, backend)) = $open(ms(1_000)).await {
                    super::failures_retry_with_backoff_then_dead_letter(queue, backend).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_worker_killed_mid_job_leaves_it_to_be_redelivered_after_the_lease() {
                if let Some((queue, backend)) = $open(ms(1_000)).await {
                    super::a_worker_killed_mid_job_leaves_it_to_be_redelivered_after_the_lease(
                        queue, backend,
                    )
                    .await;
                }
            }
        }
    };
}

adapter_tests!(sqlite_queue, sqlite);
adapter_tests!(postgres_queue, postgres);
adapter_tests!(nats_queue, nats);

// --- the idempotency helper -------------------------------------------------------------

#[tokio::test]
async fn sqlite_mark_processed_applies_an_effect_once_per_key() {
    let (queue, _backend) = sqlite(ms(1_000)).await.unwrap();
    let pool = queue.pool().clone();
    sqlx::query("CREATE TABLE effects (key TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let job = Job::new("jobs", "7", Vec::new(), 1, Some("confirm-7".into()));
    for delivery in 0..3 {
        let mut tx = pool.begin().await.unwrap();
        if SqliteQueue::mark_processed(&mut tx, &job).await.unwrap() {
            sqlx::query("INSERT INTO effects (key) VALUES ('confirm-7')")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        // The first delivery rolls back (a crash before commit): its mark goes with it.
        if delivery == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    let effects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(effects, 1);
}

#[tokio::test]
async fn postgres_mark_processed_applies_an_effect_once_per_key() {
    let Some((queue, _backend)) = postgres(ms(1_000)).await else {
        return;
    };
    let pool = queue.pool().clone();
    let key = unique("confirm");
    let job = Job::new(queue.name(), "7", Vec::new(), 1, Some(key));
    let mut marked = Vec::new();
    for delivery in 0..3 {
        let mut tx = pool.begin().await.unwrap();
        marked.push(PgQueue::mark_processed(&mut tx, &job).await.unwrap());
        if delivery == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    assert_eq!(
        marked,
        vec![true, true, false],
        "rolled back, applied, redelivery skipped"
    );
}

// --- handlers with state ----------------------------------------------------------------

/// The handler a new user writes, exactly as written (no type annotations): the pool as the
/// worker's state, an `async move` body, `?` on a sqlx call, `Ok(())`. With `Worker::new` and a
/// captured pool this was four compile errors; it must compile, and its effect must land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_with_a_pool_as_state_compiles_as_written_and_applies_its_effect() {
    let (queue, backend) = sqlite(ms(1_000)).await.unwrap();
    let pool = queue.pool().clone();
    sqlx::query("CREATE TABLE sent (job TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let controller = controller();
    let worker = Worker::with_state(queue.clone(), pool.clone(), |pool, job| async move {
        sqlx::query("INSERT INTO sent (job) VALUES (?)")
            .bind(job.id())
            .execute(&pool)
            .await?;
        Ok(())
    })
    .claim_wait(ms(300))
    .spawn(&controller)
    .unwrap();
    let id = queue.enqueue(NewJob::new(b"one".to_vec())).await.unwrap();
    eventually(Duration::from_secs(15), "the job to be acked", || async {
        worker.stats().succeeded == 1
    })
    .await;
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    assert_eq!(report.exit, Exit::Clean, "{}", report.to_json());
    let sent: Vec<String> = sqlx::query_scalar("SELECT job FROM sent")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(sent, vec![id], "the handler's row, once");
    assert_eq!(queue.pending().await.unwrap(), 0);
    backend.cleanup().await;
}

/// `?` in a handler with state is a failed attempt like any other: a query on a table that
/// does not exist is retried, then dead-lettered with sqlx's error, and the worker lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_from_question_mark_in_a_handler_with_state_retries_then_dead_letters() {
    let (queue, backend) = sqlite(ms(1_000)).await.unwrap();
    let pool = queue.pool().clone();
    let controller = controller();
    let worker = Worker::with_state(queue.clone(), pool.clone(), |pool, job| async move {
        sqlx::query("INSERT INTO no_such_table (job) VALUES (?)")
            .bind(job.id())
            .execute(&pool)
            .await?;
        Ok(())
    })
    .claim_wait(ms(300))
    .retry(Retry::new(2).base(ms(20)).max(ms(100)))
    .spawn(&controller)
    .unwrap();
    queue
        .enqueue(NewJob::new(b"doomed".to_vec()))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "the job to be dead-lettered",
        || async { queue.dead().await.unwrap() == 1 },
    )
    .await;
    let stats = worker.stats();
    assert_eq!(
        (stats.succeeded, stats.retried, stats.dead),
        (0, 1, 1),
        "{stats:?}"
    );
    let error: String = sqlx::query_scalar("SELECT last_error FROM lastcall_dead_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        error.contains("no_such_table"),
        "the dead letter keeps sqlx's error: {error}"
    );
    controller.trigger().trigger("test");
    controller.run_with_report().await;
    backend.cleanup().await;
}

// --- what the SQL adapters share ----------------------------------------------------------

/// Claims the one job after `corrupt` set its `attempts` to -5 (so the claim makes it -4):
/// both SQL adapters must refuse it the same way, naming the column, instead of handing the
/// worker a count it would misread.
async fn a_corrupt_attempts_count_is_an_error_naming_the_column<Q: Queue>(
    queue: Q,
    corrupt: impl Future<Output = ()>,
) {
    corrupt.await;
    let stop = tokio_util::sync::CancellationToken::new();
    let Err(error) = queue.claim(ms(100), &stop).await else {
        panic!("the corrupt job was claimed");
    };
    let text = format!("{error}");
    assert!(
        matches!(error, QueueError::Backend { op: "claim", .. }),
        "{error:?}"
    );
    assert!(
        text.contains("\"attempts\"") && text.contains("-4"),
        "{text}"
    );
}

#[tokio::test]
async fn sqlite_refuses_a_corrupt_attempts_count_naming_the_column() {
    let (queue, backend) = sqlite(ms(1_000)).await.unwrap();
    let id = queue.enqueue(NewJob::new(b"x".to_vec())).await.unwrap();
    let pool = queue.pool().clone();
    let corrupt = async move {
        sqlx::query("UPDATE lastcall_jobs SET attempts = -5 WHERE id = ?")
            .bind(id.parse::<i64>().unwrap())
            .execute(&pool)
            .await
            .unwrap();
    };
    a_corrupt_attempts_count_is_an_error_naming_the_column(queue, corrupt).await;
    backend.cleanup().await;
}

#[tokio::test]
async fn postgres_refuses_a_corrupt_attempts_count_naming_the_column() {
    let Some((queue, _backend)) = postgres(ms(1_000)).await else {
        return;
    };
    let id = queue.enqueue(NewJob::new(b"x".to_vec())).await.unwrap();
    let pool = queue.pool().clone();
    let corrupt = async move {
        sqlx::query("UPDATE lastcall_jobs SET attempts = -5 WHERE id = $1")
            .bind(id.parse::<i64>().unwrap())
            .execute(&pool)
            .await
            .unwrap();
    };
    a_corrupt_attempts_count_is_an_error_naming_the_column(queue.clone(), corrupt).await;
    sqlx::query("DELETE FROM lastcall_jobs WHERE queue = $1")
        .bind(queue.name())
        .execute(queue.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_claim_sleeps_until_a_delayed_job_falls_due() {
    let Some((queue, _backend)) = postgres(ms(1_000)).await else {
        return;
    };
    let id = queue
        .enqueue(NewJob::new(b"later".to_vec()).delay(ms(300)))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let Ok(Some(delivery)) = queue.claim(Duration::from_secs(10), &stop).await else {
        panic!("the claim did not wait for the delayed job");
    };
    assert_eq!(delivery.job.id(), id);
    queue.ack(delivery.receipt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clones_claim_without_waiting_for_each_others_sleep() {
    // The pool's connections carry a name of their own, so the test can see when the queue's
    // LISTEN connection is up, without sleeping.
    let app = unique("lastcall_claims");
    let Ok(options) = postgres_url().parse::<sqlx::postgres::PgConnectOptions>() else {
        panic!("LCTEST_POSTGRES is not a PostgreSQL URL");
    };
    let Some(pool) = postgres_pool(options.application_name(&app)).await else {
        return;
    };
    // One claim asleep for up to a minute: nothing is due and no notification comes.
    let queue = PgQueue::new(pool.clone(), &unique("jobs"))
        .unwrap()
        .poll_interval(Duration::from_secs(60));
    let stop = tokio_util::sync::CancellationToken::new();
    let sleeper = tokio::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        async move { queue.claim(Duration::from_secs(60), &stop).await }
    });
    eventually(Duration::from_secs(10), "the queue to LISTEN", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&app)
        .fetch_one(&pool)
        .await
        .unwrap();
        listening == 1
    })
    .await;
    // A clone's short claims each end on their own time, not when the sleeper wakes.
    let other = queue.clone();
    let started = Instant::now();
    let short = async {
        for _ in 0..3 {
            assert!(other.claim(ms(100), &stop).await.unwrap().is_none());
        }
    };
    tokio::time::timeout(Duration::from_secs(20), short)
        .await
        .expect("the clone's claims waited for the sleeping claim");
    // And an enqueue wakes the sleeper at once, long before its minute is up.
    let id = other.enqueue(NewJob::new(b"wake".to_vec())).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(20), sleeper)
        .await
        .expect("the sleeping claim was woken by the notification")
        .unwrap()
        .unwrap()
        .expect("it claimed the job");
    assert_eq!(woken.job.id(), id);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    other.ack(woken.receipt).await.unwrap();
}

#[tokio::test]
async fn bad_queue_settings_are_rejected_when_the_worker_starts() {
    let (queue, _backend) = sqlite(ms(1_000)).await.unwrap();
    let controller = controller();
    let zero = Worker::new(queue.clone(), |_job: Job| async {})
        .concurrency(0)
        .spawn(&controller)
        .unwrap_err();
    assert!(zero.to_string().contains("worker.concurrency"), "{zero}");
    let short = Worker::new(queue.clone().lease(ms(10)), |_job: Job| async {})
        .spawn(&controller)
        .unwrap_err();
    assert!(short.to_string().contains("lease"), "{short}");
    let name = SqliteQueue::new(queue.pool().clone(), "no spaces").unwrap_err();
    assert!(
        matches!(
            name,
            QueueError::Invalid {
                setting: "name",
                ..
            }
        ),
        "{name}"
    );
}

// --- the scheduler --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_task_running_at_the_trigger_completes_and_no_new_run_starts() {
    let controller = controller();
    let scheduler = Scheduler::new(&controller);
    let log = Log::default();
    let task_log = log.clone();
    let task = scheduler
        .every("report", ms(100), move || {
            let log = task_log.clone();
            async move {
                let job = Job::new("tick", "0", Vec::new(), 1, None);
                log.start(&job);
                tokio::time::sleep(ms(700)).await;
                log.finish(&job);
            }
        })
        .unwrap();
    eventually(Duration::from_secs(5), "the task to start", || async {
        !log.started().is_empty()
    })
    .await;
    controller.trigger().trigger("test");
    let report = controller.run_with_report().await;
    assert_eq!(report.exit, Exit::Clean, "{}", report.to_json());
    assert_eq!(
        report.phase(Phase::WaitForWork).unwrap().outcome,
        PhaseOutcome::Completed
    );
    assert_eq!(log.done().len(), 1, "the running task finished");
    tokio::time::sleep(ms(400)).await;
    assert_eq!(log.started().len(), 1, "no run started after the trigger");
    let stats = task.stats();
    assert_eq!(stats.runs, 1);
    assert!(
        stats.skipped >= 1,
        "ticks missed during the 700 ms run were skipped: {stats:?}"
    );
    scheduler.stopped().await;
}

#[tokio::test]
async fn bad_schedules_are_rejected_when_registered() {
    let controller = controller();
    let scheduler = Scheduler::new(&controller);
    let zero = scheduler
        .every("zero", Duration::ZERO, || async {})
        .unwrap_err();
    assert!(zero.to_string().contains("interval is 0"), "{zero}");
    let cron = scheduler
        .cron("bad", "every tuesday", || async {})
        .unwrap_err();
    assert!(cron.to_string().contains("every tuesday"), "{cron}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_task_fires_on_its_schedule_and_stops_with_the_shutdown() {
    let controller = controller();
    let scheduler = Scheduler::new(&controller);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let task = scheduler
        .cron("every second", "* * * * * *", move || {
            let runs = counted.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    eventually(Duration::from_secs(5), "two runs", || async {
        runs.load(Ordering::SeqCst) >= 2
    })
    .await;
    controller.trigger().trigger("test");
    assert_eq!(controller.run_with_report().await.exit, Exit::Clean);
    scheduler.stopped().await;
    let after = runs.load(Ordering::SeqCst);
    tokio::time::sleep(ms(1_200)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        after,
        "no run after the shutdown"
    );
    assert_eq!(u64::from(after), task.stats().runs);
}
