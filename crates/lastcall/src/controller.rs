//! The one shutdown flow of a process: see [`Controller`].

use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::health::{HealthState, Readiness};
use crate::report::{PhaseOutcome, PhaseReport, Rejections, Report, StepReport, TriggerCause};
use crate::shutdown::Shared;
use crate::step::{run_steps, Step, StepResult};
use crate::tracker::ActiveWork;
use crate::{Exit, Health, Phase, Shutdown, Tracker, Trigger};

/// How many active items a report lists (its `count` covers all of them).
const REPORTED_ITEMS: usize = 50;

/// Owns the shutdown flow: waits for the first trigger, then runs every phase in order within
/// the budget, and returns the exit code.
///
/// Build one per process with [`Controller::builder`], hand [`Shutdown`] views to the
/// components (listeners, workers, schedulers), register the steps to run while stopping
/// ([`on_stop_accepting`](Controller::on_stop_accepting), [`flush`](Controller::flush),
/// [`close`](Controller::close)), then await [`run`](Controller::run) at the end of `main`.
///
/// The flow, once triggered by a listened-for signal or a [`Trigger`]:
///
/// 1. **not ready**: readiness answers 503 from this instant;
/// 2. **drain delay**: keep serving while balancers move away;
/// 3. **stop accepting**: [`Shutdown::reached`]`(StopAccepting)` resolves, stop-accepting steps run;
/// 4. **wait for work**: until the [`Tracker`] is empty, at most until the wait deadline;
/// 5. **flush telemetry**: flush steps, in order, each bounded;
/// 6. **close dependencies**: close steps, in order, each bounded;
/// 7. **exit**: the [`Report`] is logged and recorded, the exit code returned.
///
/// However many signals arrive, exactly one flow runs and every step runs at most once (steps
/// are `FnOnce`). Signals are heard on a thread of their own, and the watchdog thread ends the
/// process at the end of the budget even if the async runtime is blocked, and even after
/// `run` has returned (see [`Builder::continue_after_run`](crate::Builder::continue_after_run)).
///
/// # Examples
///
/// ```no_run
/// use std::process::ExitCode;
/// use std::time::Duration;
/// use lastcall::{Controller, Phase};
///
/// #[tokio::main]
/// async fn main() -> ExitCode {
///     let controller = match Controller::builder().build() {
///         Ok(controller) => controller,
///         Err(err) => {
///             eprintln!("lastcall: {err}");
///             return err.exit_code();
///         }
///     };
///     let shutdown = controller.shutdown();
///     tokio::spawn(async move {
///         loop {
///             tokio::select! {
///                 _ = shutdown.reached(Phase::StopAccepting) => break,
///                 _ = tokio::time::sleep(Duration::from_millis(100)) => {
///                     let _job = shutdown.tracker().job("tick");
///                     // ... do one unit of work while holding the guard ...
///                 }
///             }
///         }
///     });
///     controller.close("database", Duration::from_secs(3), || async {
///         // pool.close().await
///     });
///     controller.run().await
/// }
/// ```
pub struct Controller {
    shared: Arc<Shared>,
    steps: Mutex<Vec<Step>>,
    manual_readiness: bool,
    listener: crate::signal::Listener,
    /// The restart's state (feature `restart`); the shared state hears its signal through
    /// the same `Arc`, as a [`SignalHook`](crate::shutdown::SignalHook).
    #[cfg(all(feature = "restart", unix))]
    restart: Arc<crate::restart::State>,
}

impl Controller {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listener: crate::signal::Listener,
        manual_readiness: bool,
        #[cfg(all(feature = "restart", unix))] restart: Arc<crate::restart::State>,
    ) -> Controller {
        Controller {
            shared,
            steps: Mutex::new(Vec::new()),
            manual_readiness,
            listener,
            #[cfg(all(feature = "restart", unix))]
            restart,
        }
    }

    /// A view of the shutdown for components: phases, tracker, health.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            shared: self.shared.clone(),
        }
    }

    /// A handle that starts the shutdown from code.
    pub fn trigger(&self) -> Trigger {
        Trigger {
            shared: self.shared.clone(),
        }
    }

    /// The work tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.shared.tracker
    }

    /// The health state.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// The handle that changes readiness before a shutdown: ready after a manual start
    /// ([`Builder::manual_readiness`](crate::Builder::manual_readiness)), out of rotation while a dependency is down. See
    /// [`Readiness`].
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.shared.health.clone())
    }

    /// The handle that counts requests or claims turned away while draining, into the
    /// report's `rejected_while_draining`. See [`Rejections`].
    pub fn rejections(&self) -> Rejections {
        self.shared.rejections()
    }

    /// Registers a listener to hand to the new process at a restart, under `name` (its
    /// `LISTEN_FDNAMES` name, which the new process looks up with
    /// [`systemd::listener_named`](crate::systemd::listener_named)). Call it once per
    /// listener, right after binding (or inheriting) it; the listener itself is not taken.
    /// Needs the `restart` feature.
    ///
    /// lastcall keeps a duplicate of the fd until the shutdown begins, then lets it go, so a
    /// listener `serve` closes at stop-accepting really closes.
    ///
    /// # Errors
    ///
    /// [`RestartError::Listener`](crate::restart::RestartError::Listener) when the name is
    /// empty, longer than 255 bytes, not ASCII or holds a `:`, or the fd cannot be duplicated.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lastcall::systemd::Inherited;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let controller = lastcall::Controller::from_env()?;
    /// // Inherited at a restart (or from systemd), bound on the first start.
    /// let listener = match lastcall::systemd::listener_named("http")? {
    ///     Some(Inherited::Tcp(tcp)) => tokio::net::TcpListener::from_std(tcp)?,
    ///     _ => lastcall::http::listen(([127, 0, 0, 1], 3000).into())?,
    /// };
    /// controller.restart_listener("http", &listener)?;
    /// # Ok(()) }
    /// ```
    #[cfg(all(feature = "restart", unix))]
    pub fn restart_listener(
        &self,
        name: &str,
        listener: &impl std::os::fd::AsFd,
    ) -> Result<(), crate::restart::RestartError> {
        crate::restart::register(self.restart_state(), name, listener)
    }

    /// A handle that restarts the service from code, as the restart signal does. Needs the
    /// `restart` feature.
    #[cfg(all(feature = "restart", unix))]
    pub fn restarter(&self) -> crate::restart::Restarter {
        crate::restart::Restarter::new(self.shared.clone(), self.restart_state().clone())
    }

    #[cfg(all(feature = "restart", unix))]
    fn restart_state(&self) -> &Arc<crate::restart::State> {
        &self.restart
    }

    /// Registers a step for the stop-accepting phase: close a listener, stop claiming jobs,
    /// stop a scheduler.
    ///
    /// Steps of a phase run one after the other in registration order. Each gets
    /// `min(timeout, time left in the phase)`; a zero `timeout` means "whatever the phase has
    /// left". A step that fails, times out or panics is recorded in the report, makes the exit
    /// code [`Exit::CleanupFailed`], and does not stop the steps after it. The closure is
    /// called once, when the step's turn comes.
    pub fn on_stop_accepting<F, Fut>(&self, name: impl Into<String>, timeout: Duration, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        self.register(Step::new(Phase::StopAccepting, name, timeout, f));
    }

    /// Registers a step for the flush-telemetry phase: logs, metrics, traces, audit events.
    /// Runs as described in [`Controller::on_stop_accepting`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastcall::Controller;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = Controller::builder().build().unwrap();
    /// controller.flush("audit log", Duration::from_millis(500), || async {
    ///     // audit.flush().await
    /// });
    /// # }
    /// ```
    pub fn flush<F, Fut>(&self, name: impl Into<String>, timeout: Duration, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        self.register(Step::new(Phase::FlushTelemetry, name, timeout, f));
    }

    /// Registers a step for the close-dependencies phase: brokers, caches, databases, in the
    /// order registered. Runs as described in [`Controller::on_stop_accepting`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastcall::Controller;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = Controller::builder().build().unwrap();
    /// controller.close("broker", Duration::from_secs(2), || async {
    ///     Ok::<(), std::io::Error>(())
    /// });
    /// controller.close("database", Duration::from_secs(3), || async {});
    /// # }
    /// ```
    pub fn close<F, Fut>(&self, name: impl Into<String>, timeout: Duration, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        self.register(Step::new(Phase::CloseDependencies, name, timeout, f));
    }

    /// Waits for the first trigger, runs the shutdown, logs the report and returns the exit
    /// code to return from `main`.
    ///
    /// Unless [`Builder::manual_readiness`](crate::Builder::manual_readiness) was set, the service is marked ready when this
    /// starts waiting.
    ///
    /// The hard deadline outlives this call: once the shutdown is triggered the process is
    /// gone by the end of the budget, so return from `main` soon after (whatever still runs
    /// then, a server's own graceful end or a runtime's drop, is bounded by the budget and
    /// ends with status 5 if it is still running). A program that goes on after its shutdown
    /// says so with [`Builder::continue_after_run`](crate::Builder::continue_after_run).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future mid-shutdown abandons the remaining phases (the
    /// watchdog still ends the process at the deadline). Await it to the end.
    pub async fn run(self) -> ExitCode {
        self.run_with_report().await.exit_code()
    }

    /// As [`Controller::run`], but returns the whole [`Report`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`Controller::run`].
    pub async fn run_with_report(self) -> Report {
        let shared = self.shared.clone();
        if !self.manual_readiness {
            shared.health.advance(HealthState::Ready);
        }
        shared.token_ref(Phase::NotReady).cancelled().await;
        let first = shared.first().expect(
            "the not-ready token is cancelled only by the first trigger, after it is recorded",
        );
        let t0 = first.at;
        let mut steps =
            std::mem::take(&mut *self.steps.lock().unwrap_or_else(PoisonError::into_inner));
        let mut take_steps = |phase: Phase| -> Vec<Step> {
            let (mut these, rest): (Vec<Step>, Vec<Step>) = std::mem::take(&mut steps)
                .into_iter()
                .partition(|s| s.phase == phase);
            steps = rest;
            // Stable: hand-back steps first, then the rest in registration order.
            these.sort_by_key(|s| !s.first);
            these
        };
        let mut flow = Flow {
            t0,
            shared: &shared,
            phases: Vec::with_capacity(6),
            steps: Vec::new(),
        };

        flow.record(Phase::NotReady, t0, PhaseOutcome::Completed);

        let started = flow.begin(Phase::DrainDelay);
        // After a restart the listeners stay open in the successor, which accepts: there is
        // no balancer to wait for.
        let drained = match shared.restarting() {
            true => started,
            false => flow.deadline(Phase::DrainDelay, started),
        };
        // No timer for a zero drain delay: tokio rounds a deadline up to its next millisecond
        // tick, so even an elapsed one would hold stop-accepting back by up to a millisecond.
        if drained > started {
            tokio::time::sleep_until(drained).await;
        }
        flow.record(Phase::DrainDelay, started, PhaseOutcome::Completed);

        flow.run_phase(Phase::StopAccepting, take_steps(Phase::StopAccepting))
            .await;

        let started = flow.begin(Phase::WaitForWork);
        let wait_deadline = flow.deadline(Phase::WaitForWork, started);
        let work_at_deadline =
            match tokio::time::timeout_at(wait_deadline, shared.tracker.wait_idle()).await {
                Ok(()) => {
                    flow.record(Phase::WaitForWork, started, PhaseOutcome::Completed);
                    None
                }
                Err(_) => {
                    let active = shared.tracker.active().keep_oldest(REPORTED_ITEMS);
                    tracing::warn!(
                        count = active.count,
                        oldest_ms = active.oldest.map_or(0, |d| d.as_millis() as u64),
                        active = %active,
                        "wait-for-work deadline reached with work still active"
                    );
                    flow.record(Phase::WaitForWork, started, PhaseOutcome::DeadlineReached);
                    Some(active)
                }
            };

        // The figures so far go out before the telemetry is flushed, so they leave the process
        // with it; what the last two phases add is recorded at exit.
        let so_far = flow.report(&first.cause, work_at_deadline.clone());
        #[cfg(feature = "metrics")]
        crate::metrics::record_before_flush(&so_far);
        #[cfg(feature = "metrics")]
        let before_flush = crate::metrics::Counted::of(&so_far);
        shared.write_report_file(&format_args!(
            "lastcall: shutdown in progress; the figures as the flush phase began:\n{so_far}"
        ));
        shared.set_report_so_far(so_far);

        flow.run_phase(Phase::FlushTelemetry, take_steps(Phase::FlushTelemetry))
            .await;
        flow.run_phase(
            Phase::CloseDependencies,
            take_steps(Phase::CloseDependencies),
        )
        .await;

        shared.enter(Phase::Exit);
        shared.health.advance(HealthState::Stopped);

        let report = flow.report(&first.cause, work_at_deadline);
        // The report file first: it is opened non-blocking and cannot hold the exit, while
        // a log subscriber writing to a stalled pipe can (the deadline still holds then).
        shared.write_report_file(&report);
        log(&report);
        shared.flow_ended();
        #[cfg(feature = "metrics")]
        crate::metrics::record_at_exit(&report, before_flush);
        report
    }

    /// Registers a close-dependencies step that runs before the ordinary close steps, whatever
    /// the registration order: workers hand their jobs back through connections the ordinary
    /// steps close.
    pub(crate) fn close_first<F, Fut>(&self, name: impl Into<String>, timeout: Duration, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: StepResult,
    {
        let mut step = Step::new(Phase::CloseDependencies, name, timeout, f);
        step.first = true;
        self.register(step);
    }

    fn register(&self, step: Step) {
        if self.shared.phase() >= step.phase {
            tracing::warn!(step = %step.name, phase = %step.phase, "step registered after its phase began; it will not run");
        }
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(step);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.listener.stop();
    }
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("phase", &self.shared.phase())
            .field("budget", self.shared.plan.budget())
            .finish_non_exhaustive()
    }
}

/// The bookkeeping of one running flow.
struct Flow<'a> {
    t0: Instant,
    shared: &'a Shared,
    phases: Vec<PhaseReport>,
    steps: Vec<StepReport>,
}

impl Flow<'_> {
    fn begin(&self, phase: Phase) -> Instant {
        let now = Instant::now();
        self.shared.enter(phase);
        tracing::info!(
            phase = %phase,
            since_trigger_ms = (now - self.t0).as_millis() as u64,
            deadline_ms = (self.deadline(phase, now) - self.t0).as_millis() as u64,
            "shutdown phase started"
        );
        now
    }

    /// When a phase that started at `started` must end: `min(started + cap, deadline)`.
    fn deadline(&self, phase: Phase, started: Instant) -> Instant {
        let plan = &self.shared.plan;
        (started + plan.cap(phase)).min(self.t0 + plan.deadline(phase))
    }

    fn record(&mut self, phase: Phase, started: Instant, outcome: PhaseOutcome) {
        self.phases.push(PhaseReport {
            phase,
            started: started - self.t0,
            duration: started.elapsed(),
            deadline: self.deadline(phase, started) - self.t0,
            outcome,
        });
    }

    /// The report of the flow so far; its exit is the one the phases so far lead to.
    fn report(&self, trigger: &TriggerCause, work_at_deadline: Option<ActiveWork>) -> Report {
        let cleanup_failed = self
            .steps
            .iter()
            .any(|s| s.outcome != crate::report::StepOutcome::Ok);
        let exit = if work_at_deadline.is_some() {
            Exit::WorkCut
        } else if cleanup_failed {
            Exit::CleanupFailed
        } else if matches!(trigger, TriggerCause::Fatal { .. }) {
            Exit::Fatal
        } else {
            Exit::Clean
        };
        Report {
            trigger: trigger.clone(),
            later_signals: self.shared.later_signals(),
            budget: *self.shared.plan.budget(),
            phases: self.phases.clone(),
            steps: self.steps.clone(),
            work_at_deadline,
            rejected_while_draining: self.shared.rejected(),
            closed_without_request: self.shared.closed_without_request(),
            restarts_failed: self.shared.restarts_failed(),
            total: self.t0.elapsed(),
            exit,
            exit_code: exit.code(),
        }
    }

    async fn run_phase(&mut self, phase: Phase, steps: Vec<Step>) {
        let started = self.begin(phase);
        let deadline = self.deadline(phase, started);
        let ok = run_steps(self.shared, steps, deadline, &mut self.steps).await;
        let outcome = if ok {
            PhaseOutcome::Completed
        } else {
            PhaseOutcome::StepsFailed
        };
        self.record(phase, started, outcome);
    }
}

/// Logs the report as one summary event.
fn log(report: &Report) {
    // Serializing the report costs more than the rest of the exit phase: skip it when no
    // subscriber would record the event.
    if !tracing::enabled!(target: "lastcall::report", tracing::Level::WARN) {
        return;
    }
    let json = report.to_json();
    if report.exit.is_clean() {
        tracing::info!(
            target: "lastcall::report",
            exit_code = report.exit_code,
            trigger = %report.trigger,
            total_ms = report.total.as_millis() as u64,
            report = %json,
            "shutdown finished: {}", report.exit.describe()
        );
    } else {
        tracing::warn!(
            target: "lastcall::report",
            exit_code = report.exit_code,
            trigger = %report.trigger,
            total_ms = report.total.as_millis() as u64,
            report = %json,
            "shutdown finished: {}", report.exit.describe()
        );
    }
}
