//! Scheduled tasks that stop firing at shutdown: see [`Scheduler`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::spawned::Spawned;
use crate::step::StepResult;
use crate::{Controller, Phase, Shutdown};

/// Runs named tasks on an interval or a cron expression, in step with the shutdown.
///
/// - The same task never overlaps itself: the next run is scheduled once the current one ends.
/// - Ticks missed while a run took long are skipped (and counted), not queued.
/// - At **stop accepting** no task fires again. A run already under way is a
///   [`WorkKind::Task`](crate::WorkKind::Task) in the tracker (label: the task's name), so the
///   wait-for-work phase waits for it; at the wait deadline it is cut and named in the report.
/// - A run that fails or panics is logged and counted; the task keeps its schedule.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::schedule::Scheduler;
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let controller = Controller::builder().build()?;
/// let scheduler = Scheduler::new(&controller);
/// let cleanup = scheduler.every("expire-sessions", Duration::from_secs(1), || async {
///     // DELETE FROM sessions WHERE expires_at < now()
/// })?;
/// controller.trigger().trigger("example");
/// controller.run().await;
/// assert_eq!(cleanup.stats().runs, 0); // stopped before its first tick
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Scheduler {
    shutdown: Shutdown,
    tasks: TaskTracker,
}

/// When a task fires.
#[derive(Debug, Clone)]
enum When {
    Every(Duration),
    #[cfg(feature = "cron")]
    Cron(Box<cron::Schedule>),
}

/// What a scheduled task has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskStats {
    /// Runs started.
    pub runs: u64,
    /// Runs that returned an error or panicked.
    pub failed: u64,
    /// Ticks skipped because a run was still going (or the process was busy).
    pub skipped: u64,
    /// Runs cut at the wait-for-work deadline.
    pub cut: u64,
}

#[derive(Debug, Default)]
struct Counters {
    runs: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    cut: AtomicU64,
}

/// A scheduled task: its statistics.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    counters: Arc<Counters>,
}

impl TaskHandle {
    /// What the task has done so far.
    pub fn stats(&self) -> TaskStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TaskStats {
            runs: get(&self.counters.runs),
            failed: get(&self.counters.failed),
            skipped: get(&self.counters.skipped),
            cut: get(&self.counters.cut),
        }
    }
}

/// Why a task could not be scheduled.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::schedule::{ScheduleError, Scheduler};
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// let err = Scheduler::new(&controller)
///     .every("tick", Duration::ZERO, || async {})
///     .unwrap_err();
/// assert!(matches!(err, ScheduleError::ZeroPeriod { .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// An interval of zero.
    #[error("scheduled task {task}: the interval is 0; give a positive duration such as 1s")]
    ZeroPeriod {
        /// The task's name.
        task: String,
    },
    /// A cron expression that does not parse.
    #[error("scheduled task {task}: cron expression {expr:?} is not valid ({reason}); expected 6 or 7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */5 * * * *\"")]
    Cron {
        /// The task's name.
        task: String,
        /// The expression given.
        expr: String,
        /// The parser's message.
        reason: String,
    },
    /// A cron expression that never fires again.
    #[error("scheduled task {task}: cron expression {expr:?} has no future time")]
    CronNeverFires {
        /// The task's name.
        task: String,
        /// The expression given.
        expr: String,
    },
    /// Called outside a tokio runtime.
    #[error("scheduled task {task}: no tokio runtime; schedule tasks from inside one")]
    NoRuntime {
        /// The task's name.
        task: String,
    },
}

impl Scheduler {
    /// A scheduler whose tasks stop with `controller`'s shutdown.
    pub fn new(controller: &Controller) -> Scheduler {
        let tasks = TaskTracker::new();
        tasks.close();
        Scheduler {
            shutdown: controller.shutdown(),
            tasks,
        }
    }

    /// Runs `f` every `period`, the first time one period from now.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::ZeroPeriod`], or [`ScheduleError::NoRuntime`] outside a tokio runtime.
    pub fn every<F, Fut>(
        &self,
        name: impl Into<String>,
        period: Duration,
        f: F,
    ) -> Result<TaskHandle, ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        let name = name.into();
        if period.is_zero() {
            return Err(ScheduleError::ZeroPeriod { task: name });
        }
        self.start(name, When::Every(period), f)
    }

    /// Runs `f` at the times of a cron expression (UTC; seconds first: `"0 */5 * * * *"` is
    /// every five minutes).
    ///
    /// Needs the `cron` feature.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] if the expression does not parse,
    /// [`ScheduleError::CronNeverFires`] if it has no future time, [`ScheduleError::NoRuntime`]
    /// outside a tokio runtime.
    #[cfg(feature = "cron")]
    pub fn cron<F, Fut>(
        &self,
        name: impl Into<String>,
        expr: &str,
        f: F,
    ) -> Result<TaskHandle, ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        let name = name.into();
        let schedule: cron::Schedule =
            expr.parse()
                .map_err(|e: cron::error::Error| ScheduleError::Cron {
                    task: name.clone(),
                    expr: expr.to_owned(),
                    reason: e.to_string(),
                })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(ScheduleError::CronNeverFires {
                task: name,
                expr: expr.to_owned(),
            });
        }
        self.start(name, When::Cron(Box::new(schedule)), f)
    }

    /// Resolves once every task has stopped firing and no run is under way.
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }

    fn start<F, Fut>(&self, name: String, when: When, f: F) -> Result<TaskHandle, ScheduleError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ScheduleError::NoRuntime { task: name });
        };
        let counters = Arc::new(Counters::default());
        let task = run_task(
            self.shutdown.clone(),
            name,
            when,
            Arc::new(f),
            counters.clone(),
        );
        self.tasks.spawn_on(task, &runtime);
        Ok(TaskHandle { counters })
    }
}

impl When {
    /// The first tick strictly after `after`, and how many ticks at or before `now` were
    /// skipped on the way.
    fn next(&self, after: Instant, now: Instant) -> Option<(Instant, u64)> {
        match self {
            When::Every(period) => {
                let mut next = after + *period;
                let mut skipped = 0;
                if next <= now {
                    let behind = (now - next).as_nanos() / period.as_nanos();
                    skipped = u64::try_from(behind).unwrap_or(u64::MAX).saturating_add(1);
                    next += period.saturating_mul(u32::try_from(skipped).unwrap_or(u32::MAX));
                }
                Some((next, skipped))
            }
            #[cfg(feature = "cron")]
            When::Cron(schedule) => {
                let wall_now = chrono::Utc::now();
                let wall_after = wall_now - chrono::Duration::from_std(now - after).ok()?;
                for (skipped, at) in (0u64..).zip(schedule.after(&wall_after)) {
                    if at > wall_now {
                        let wait = (at - wall_now).to_std().ok()?;
                        return Some((now + wait, skipped));
                    }
                }
                None
            }
        }
    }
}

async fn run_task<F, Fut>(
    shutdown: Shutdown,
    name: String,
    when: When,
    f: Arc<F>,
    counters: Arc<Counters>,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: StepResult,
{
    let stop = shutdown.token(Phase::StopAccepting);
    let cut = shutdown.cut();
    tokio::pin!(cut);
    let mut last = Instant::now();
    loop {
        let Some((at, skipped)) = when.next(last, Instant::now()) else {
            tracing::info!(task = %name, "scheduled task has no further time");
            return;
        };
        if skipped > 0 {
            counters.skipped.fetch_add(skipped, Ordering::Relaxed);
            tracing::debug!(task = %name, skipped, "ticks skipped while the last run was going");
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(at) => {}
        }
        last = at;
        let _guard = shutdown.tracker().task(name.clone());
        counters.runs.fetch_add(1, Ordering::Relaxed);
        let run_f = f.clone();
        let mut run = Spawned::spawn(async move { run_f().await });
        let outcome = tokio::select! {
            ran = &mut run => ran,
            _ = &mut cut => {
                run.abort();
                counters.cut.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(task = %name, "scheduled task cut at the wait-for-work deadline");
                return;
            }
        };
        if let Err(error) = outcome.into_result("scheduled run") {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task = %name, error = %error, "scheduled task failed");
        }
    }
    tracing::debug!(task = %name, "scheduled task stopped firing");
}
