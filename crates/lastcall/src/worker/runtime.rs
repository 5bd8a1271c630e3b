//! The claim loop and the per-job supervisor: see [`Worker`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{Delivery, Job, Queue, QueueError, Retry};
use crate::spawned::Spawned;
use crate::step::{BoxError, StepResult};
use crate::{Controller, Phase, Shutdown, WorkGuard};

/// Claims jobs from a [`Queue`] with a fixed concurrency and runs a handler for each, in step
/// with the shutdown (see the [module docs](super)).
///
/// The handler gets the [`Job`] and returns `()` or `Result<(), E>`; an error or a panic is a
/// failed attempt, retried per [`Retry`]. A handler that needs a pool or a client gets it
/// through [`Worker::with_state`].
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lastcall::worker::{Retry, SqliteQueue, Worker};
/// use lastcall::Controller;
///
/// let controller = Controller::from_env()?;
/// let pool = sqlx::SqlitePool::connect("sqlite:jobs.db?mode=rwc").await?;
/// SqliteQueue::migrate(&pool).await?;
/// let queue = SqliteQueue::new(pool, "emails")?;
///
/// let worker = Worker::new(queue, |job| async move {
///     println!("sending {}", String::from_utf8_lossy(job.payload()));
///     Ok::<(), std::io::Error>(())
/// })
/// .concurrency(4)
/// .retry(Retry::new(5))
/// .spawn(&controller)?;
///
/// let code = controller.run().await;
/// println!("{:?}", worker.stats());
/// # let _ = code; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker<Q, H> {
    queue: Q,
    handler: H,
    concurrency: usize,
    claim_wait: Duration,
    retry: Retry,
    release_delay: Duration,
    handback_timeout: Duration,
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStats {
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs that succeeded and were acked.
    pub succeeded: u64,
    /// Failed attempts scheduled for a retry.
    pub retried: u64,
    /// Jobs moved to the dead letters.
    pub dead: u64,
    /// Jobs handed back at shutdown: claimed after the worker stopped, or cut at the wait
    /// deadline.
    pub released: u64,
    /// Jobs whose lease was lost while they ran (they were aborted, not acked).
    pub lease_lost: u64,
    /// Queue operations that failed (claims, acks, renewals, ...).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
    lease_lost: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            claimed: get(&self.claimed),
            succeeded: get(&self.succeeded),
            retried: get(&self.retried),
            dead: get(&self.dead),
            released: get(&self.released),
            lease_lost: get(&self.lease_lost),
            errors: get(&self.errors),
        }
    }
}

/// A running worker: its statistics, and a future for its end.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    counters: Arc<Counters>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl WorkerHandle {
    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// Resolves once the worker has stopped claiming and every job it claimed has been acked,
    /// retried, dead-lettered or released.
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

struct Inner<Q, H> {
    queue: Q,
    handler: H,
    shutdown: Shutdown,
    retry: Retry,
    release_delay: Duration,
    counters: Arc<Counters>,
}

impl<Q: Queue> Worker<Q, ()> {
    /// A worker whose handler gets a clone of `state` (a pool, a client, an `Arc` of both)
    /// with each job, and returns `Result<(), BoxError>`, so `?` works on any error.
    ///
    /// This is the handler most services write: `Worker::new`'s `Fn(Job)` handler cannot move
    /// a captured pool into an `async move` body (the closure runs once per job), and its
    /// generic result leaves the error type of `?` and `Ok(())` for the caller to spell.
    /// The state is cloned once per job, as axum's `State` is per request; a sqlx pool is an
    /// `Arc` inside, so the clone is cheap.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use lastcall::worker::sqlx::{self, SqlitePool};
    /// use lastcall::worker::{SqliteQueue, Worker};
    /// use lastcall::Controller;
    ///
    /// let controller = Controller::from_env()?;
    /// let pool = SqlitePool::connect("sqlite:jobs.db?mode=rwc").await?;
    /// SqliteQueue::migrate(&pool).await?;
    /// let queue = SqliteQueue::new(pool.clone(), "emails")?;
    ///
    /// Worker::with_state(queue, pool.clone(), |pool, job| async move {
    ///     sqlx::query("INSERT INTO sent (job) VALUES (?)")
    ///         .bind(job.id())
    ///         .execute(&pool)
    ///         .await?;
    ///     Ok(())
    /// })
    /// .concurrency(4)
    /// .spawn(&controller)?;
    ///
    /// let code = controller.run().await;
    /// pool.close().await;
    /// # let _ = code; Ok(()) }
    /// ```
    pub fn with_state<S, H, Fut>(
        queue: Q,
        state: S,
        handler: H,
    ) -> Worker<Q, impl Fn(Job) -> Fut + Send + Sync + 'static>
    where
        S: Clone + Send + Sync + 'static,
        H: Fn(S, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Worker::new(queue, move |job| handler(state.clone(), job))
    }
}

impl<Q, H, Fut> Worker<Q, H>
where
    Q: Queue,
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: StepResult,
{
    /// A worker that runs `handler` for each job claimed from `queue`; one job at a time
    /// until [`Worker::concurrency`] says otherwise.
    pub fn new(queue: Q, handler: H) -> Worker<Q, H> {
        Worker {
            queue,
            handler,
            concurrency: 1,
            claim_wait: Duration::from_secs(1),
            retry: Retry::default(),
            release_delay: Duration::from_secs(1),
            handback_timeout: Duration::from_secs(5),
        }
    }

    /// How many jobs run at once (default 1).
    pub fn concurrency(mut self, n: usize) -> Worker<Q, H> {
        self.concurrency = n;
        self
    }

    /// The longest one claim waits for a job before the worker asks again (default 1 s).
    /// Adapters that cannot interrupt a claim (JetStream's pull request) may hold the shutdown
    /// this long once, to hand back what the claim returns.
    pub fn claim_wait(mut self, wait: Duration) -> Worker<Q, H> {
        self.claim_wait = wait;
        self
    }

    /// How failed jobs are retried (default [`Retry::default`]).
    pub fn retry(mut self, retry: Retry) -> Worker<Q, H> {
        self.retry = retry;
        self
    }

    /// How long a job handed back at shutdown waits before another worker may claim it
    /// (default 1 s).
    pub fn release_delay(mut self, delay: Duration) -> Worker<Q, H> {
        self.release_delay = delay;
        self
    }

    /// The bound of the worker's hand-back step in the close-dependencies phase, which waits
    /// for the releases and acks still under way (default 5 s; the phase's time left bounds it
    /// too).
    pub fn handback_timeout(mut self, timeout: Duration) -> Worker<Q, H> {
        self.handback_timeout = timeout;
        self
    }

    /// Checks the settings, starts the claim loop on the current tokio runtime, and registers
    /// the worker with the controller's shutdown.
    ///
    /// # Errors
    ///
    /// [`QueueError::Invalid`] naming the setting when the concurrency or claim wait is zero,
    /// the retry policy is inconsistent, or no tokio runtime is running.
    pub fn spawn(self, controller: &Controller) -> Result<WorkerHandle, QueueError> {
        let name = self.queue.name().to_owned();
        let invalid = |setting: &'static str, value: String, expected: &'static str| {
            Err(QueueError::Invalid {
                queue: name.clone(),
                setting,
                value,
                expected,
            })
        };
        super::check_lease(&name, self.queue.lease())?;
        if self.concurrency == 0 {
            return invalid("worker.concurrency", "0".into(), "at least 1");
        }
        if self.claim_wait.is_zero() {
            return invalid(
                "worker.claim_wait",
                "0s".into(),
                "a positive duration such as 1s",
            );
        }
        if let Err((setting, value, expected)) = self.retry.check() {
            return invalid(setting, value, expected);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return invalid(
                "runtime",
                "none".into(),
                "call Worker::spawn from inside a tokio runtime",
            );
        }
        let counters = Arc::new(Counters::default());
        let tasks = TaskTracker::new();
        let inner = Arc::new(Inner {
            queue: self.queue,
            handler: self.handler,
            shutdown: controller.shutdown(),
            retry: self.retry,
            release_delay: self.release_delay,
            counters: counters.clone(),
        });
        tasks.spawn(claim_loop(
            inner,
            tasks.clone(),
            self.concurrency,
            self.claim_wait,
        ));
        tasks.close();
        let waiting = tasks.clone();
        controller.close_first(
            format!("worker {name}: hand back jobs"),
            self.handback_timeout,
            move || async move { waiting.wait().await },
        );
        Ok(WorkerHandle { counters, tasks })
    }
}

async fn claim_loop<Q, H, Fut>(
    inner: Arc<Inner<Q, H>>,
    tasks: TaskTracker,
    concurrency: usize,
    wait: Duration,
) where
    Q: Queue,
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: StepResult,
{
    let stop = inner.shutdown.token(Phase::StopAccepting);
    let permits = Arc::new(Semaphore::new(concurrency));
    let name = inner.queue.name().to_owned();
    let mut error_pause = Duration::from_millis(50);
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
        };
        let claim = inner.queue.claim(wait, &stop);
        tokio::pin!(claim);
        let claimed = tokio::select! {
            biased;
            claimed = &mut claim => claimed,
            _ = stop.cancelled() => {
                // The queue returns promptly unless a job may already be on its way; until
                // then the shutdown waits for this claim so such a job is handed back.
                let _claim = inner.shutdown.tracker().task(format!("{name}: claim in flight"));
                claim.await
            }
        };
        match claimed {
            Ok(Some(delivery)) => {
                Counters::bump(&inner.counters.claimed);
                error_pause = Duration::from_millis(50);
                if stop.is_cancelled() {
                    let label = delivery.job.label();
                    let guard = inner.shutdown.tracker().job(label.clone());
                    release(
                        &inner,
                        label,
                        delivery.receipt,
                        guard,
                        "claimed after the worker stopped",
                    )
                    .await;
                    continue;
                }
                let guard = inner.shutdown.tracker().job(delivery.job.label());
                tasks.spawn(supervise(inner.clone(), delivery, guard, permit));
            }
            Ok(None) => {}
            Err(error) => {
                Counters::bump(&inner.counters.errors);
                tracing::warn!(queue = %name, error = %error, retry_in_ms = error_pause.as_millis() as u64, "claim failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(error_pause) => {}
                }
                error_pause = (error_pause * 2).min(Duration::from_secs(2));
            }
        }
    }
    tracing::debug!(queue = %name, "worker stopped claiming");
}

async fn supervise<Q, H, Fut>(
    inner: Arc<Inner<Q, H>>,
    delivery: Delivery<Q::Receipt>,
    guard: WorkGuard,
    _permit: OwnedSemaphorePermit,
) where
    Q: Queue,
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: StepResult,
{
    let Delivery { job, receipt } = delivery;
    let label = job.label();
    let attempt = job.attempt();
    let queue = &inner.queue;
    let handler = inner.clone();
    // On a task of its own, so a panic in the handler is a failure and the job can be cut.
    let mut run = Spawned::spawn(async move { (handler.handler)(job).await });
    let every = queue.lease() / 3;
    let mut renew = tokio::time::interval_at(Instant::now() + every, every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cut = inner.shutdown.cut();
    tokio::pin!(cut);
    let outcome: Result<(), String> = loop {
        tokio::select! {
            biased;
            ran = &mut run => break ran.into_result("job"),
            _ = &mut cut => {
                run.abort();
                let _ = run.await;
                release(&inner, label, receipt, guard, "cut at the wait-for-work deadline").await;
                return;
            }
            _ = renew.tick() => {
                match tokio::time::timeout(every, queue.renew(&receipt)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(QueueError::LeaseLost { .. })) => {
                        run.abort();
                        Counters::bump(&inner.counters.lease_lost);
                        tracing::warn!(job = %label, "lease lost while the job ran: aborted it; the queue delivers it again");
                        return;
                    }
                    Ok(Err(error)) => {
                        Counters::bump(&inner.counters.errors);
                        tracing::warn!(job = %label, error = %error, "lease renewal failed; trying again");
                    }
                    Err(_) => {
                        Counters::bump(&inner.counters.errors);
                        tracing::warn!(job = %label, "lease renewal timed out; trying again");
                    }
                }
            }
        }
    };
    let counters = &inner.counters;
    let result = match outcome {
        Ok(()) => queue.ack(receipt).await.map(|()| {
            Counters::bump(&counters.succeeded);
        }),
        Err(error) if inner.retry.gives_up(attempt) => {
            tracing::warn!(job = %label, attempt, error = %error, "job failed for the last time: dead-lettered");
            queue.dead_letter(receipt, &error).await.map(|()| {
                Counters::bump(&counters.dead);
            })
        }
        Err(error) => {
            let delay = inner.retry.delay(attempt);
            tracing::info!(job = %label, attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "job failed: retrying");
            queue.retry(receipt, delay, &error).await.map(|()| {
                Counters::bump(&counters.retried);
            })
        }
    };
    if let Err(error) = result {
        Counters::bump(&counters.errors);
        if matches!(error, QueueError::LeaseLost { .. }) {
            Counters::bump(&counters.lease_lost);
        }
        tracing::warn!(job = %label, error = %error, "could not settle the job; the queue delivers it again after its lease");
    }
    drop(guard);
}

/// Hands a job back at shutdown; `guard` keeps it in the tracker until the queue has it.
async fn release<Q, H>(
    inner: &Inner<Q, H>,
    label: String,
    receipt: Q::Receipt,
    guard: WorkGuard,
    why: &'static str,
) where
    Q: Queue,
{
    match inner.queue.release(receipt, inner.release_delay).await {
        Ok(()) => {
            Counters::bump(&inner.counters.released);
            tracing::warn!(job = %label, why, "job handed back to the queue");
        }
        Err(error) => {
            Counters::bump(&inner.counters.errors);
            tracing::warn!(job = %label, why, error = %error, "could not hand the job back; the queue delivers it again after its lease");
        }
    }
    drop(guard);
}
