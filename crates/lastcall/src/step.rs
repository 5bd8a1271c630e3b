//! Named, bounded shutdown steps (stop accepting, flush telemetry, close dependencies): see
//! [`StepResult`] and [`Controller::close`](crate::Controller::close).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::report::{StepOutcome, StepReport};
use crate::shutdown::Shared;
pub use crate::spawned::{BoxError, StepResult};
use crate::spawned::{Ran, Spawned};
use crate::Phase;

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// A registered step, not yet run.
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) phase: Phase,
    pub(crate) timeout: Duration,
    /// Runs before the phase's ordinary steps: a worker handing its jobs back to the queue
    /// must finish before the connections that hand-back needs are closed.
    pub(crate) first: bool,
    pub(crate) start: Box<dyn FnOnce() -> BoxFuture + Send>,
}

impl Step {
    pub(crate) fn new<F, Fut>(
        phase: Phase,
        name: impl Into<String>,
        timeout: Duration,
        f: F,
    ) -> Step
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        Step {
            name: name.into(),
            phase,
            timeout,
            first: false,
            start: Box::new(move || Box::pin(async move { f().await.into_step_result() })),
        }
    }
}

/// Runs `steps` one after the other, each bounded by `min(its timeout, time left before
/// deadline)`. A step that fails, times out or panics is recorded and the next one still runs.
/// Returns whether every step succeeded.
pub(crate) async fn run_steps(
    shared: &Shared,
    steps: Vec<Step>,
    deadline: Instant,
    out: &mut Vec<StepReport>,
) -> bool {
    let mut all_ok = true;
    for step in steps {
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        let timeout = if step.timeout.is_zero() {
            left
        } else {
            step.timeout.min(left)
        };
        shared.set_current_step(Some((step.phase, step.name.clone())));
        tracing::debug!(step = %step.name, phase = %step.phase, timeout_ms = timeout.as_millis() as u64, "step started");
        let start = step.start;
        // The closure runs inside the task too, so a panic while it builds its future is
        // caught like one in the future.
        let mut task = Spawned::spawn(async move { start().await });
        let outcome = match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ran::Ok) => StepOutcome::Ok,
            Ok(Ran::Failed(error)) => StepOutcome::Failed { error },
            Ok(Ran::Panicked(message)) => StepOutcome::Panicked { message },
            Ok(Ran::Cancelled) => StepOutcome::Failed {
                error: "the step's task was cancelled".into(),
            },
            Err(_elapsed) => {
                task.abort();
                StepOutcome::TimedOut
            }
        };
        let duration = started.elapsed();
        shared.set_current_step(None);
        if outcome == StepOutcome::Ok {
            tracing::debug!(step = %step.name, phase = %step.phase, duration_ms = duration.as_millis() as u64, "step finished");
        } else {
            all_ok = false;
            tracing::warn!(step = %step.name, phase = %step.phase, duration_ms = duration.as_millis() as u64, outcome = %outcome, "step did not succeed");
        }
        out.push(StepReport {
            name: step.name,
            phase: step.phase,
            timeout,
            duration,
            outcome,
        });
    }
    all_ok
}
