//! The handles onto a running shutdown: [`Shutdown`] observes it, [`Trigger`] starts it.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::budget::Plan;
use crate::future::PhaseReached;
use crate::health::HealthState;
use crate::report::{LaterSignal, Rejections, TriggerCause};
use crate::signal::ForceExit;
use crate::watchdog::{LastWords, Watchdog};
use crate::{Exit, Health, Phase, Signal, Tracker};

/// Hears the listened-for signals that are not shutdown signals: the restart (feature
/// `restart`) implements it, so the shutdown knows nothing of it.
pub(crate) trait SignalHook: Send + Sync + 'static {
    /// Handles `signal` if it is this hook's, and says whether it was.
    fn on_signal(self: Arc<Self>, shared: &Arc<Shared>, signal: Signal) -> bool;
}

/// A cloneable view of the shutdown, for the components that must react to it.
///
/// It observes: which phase the shutdown is in, futures that resolve when a phase is reached,
/// the work [`Tracker`] and the [`Health`] state. It cannot start the shutdown; that is what a
/// [`Trigger`] is for, so a component that only needs to stop accepting cannot end the process.
///
/// # Examples
///
/// ```
/// use lastcall::{Controller, Phase};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// let shutdown = controller.shutdown();
///
/// let listener = tokio::spawn({
///     let shutdown = shutdown.clone();
///     async move {
///         // accept connections until the listener must close
///         shutdown.reached(Phase::StopAccepting).await;
///     }
/// });
///
/// controller.trigger().trigger("test");
/// controller.run().await;
/// listener.await.unwrap();
/// assert_eq!(shutdown.phase(), Phase::Exit);
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) shared: Arc<Shared>,
}

/// Starts the shutdown from code: a fatal error, an admin endpoint, the end of a batch.
///
/// Cloneable, and every clone fires through `&self`; only the first trigger in the process,
/// whether a signal or a call, starts the flow. Later ones are recorded in the report's
/// `later_signals` and change nothing.
///
/// # Examples
///
/// ```
/// use lastcall::{Controller, Exit};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// let trigger = controller.trigger();
/// tokio::spawn(async move {
///     // a background task hit an unrecoverable error
///     trigger.fatal("database schema is newer than this binary");
/// });
/// let report = controller.run_with_report().await;
/// assert_eq!(report.exit, Exit::Fatal);
/// # }
/// ```
#[derive(Clone)]
pub struct Trigger {
    pub(crate) shared: Arc<Shared>,
}

/// The state every handle shares.
pub(crate) struct Shared {
    pub(crate) tracker: Tracker,
    pub(crate) health: Health,
    pub(crate) plan: Plan,
    pub(crate) force: ForceExit,
    /// Ends the process at the end of the budget; `None` when turned off.
    watchdog: Option<Watchdog>,
    /// Disarm the watchdog when the flow ends ([`Builder::continue_after_run`](crate::Builder::continue_after_run)).
    continue_after_run: bool,
    /// The runtime the controller was built on, for the number of tasks still alive when the
    /// deadline ends the process.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Where the report's summary goes at exit, if anywhere.
    pub(crate) report_file: Option<std::path::PathBuf>,
    phase: AtomicU8,
    /// One token per phase, cancelled when the phase is entered.
    tokens: [CancellationToken; 8],
    fired: Mutex<Fired>,
    rejected: Rejections,
    /// Connections `http::serve` closed at the shutdown before their first request or with a
    /// request head half read: shared with every `serve` of this shutdown, which count into it.
    closed_without_request: Arc<AtomicUsize>,
    /// The step running now, so the watchdog can name the dependency that hung.
    current_step: Mutex<Option<(Phase, String)>>,
    /// Called synchronously as each phase is entered, with the end of the budget.
    observers: Mutex<Vec<PhaseObserver>>,
    /// The report up to the end of waiting for work, set as the flush-telemetry phase begins.
    so_far: Mutex<Option<crate::report::Report>>,
    /// Why each failed restart failed, for the report.
    restarts_failed: Mutex<Vec<String>>,
    /// What hears the signals that do not start a shutdown (the restart's, feature
    /// `restart`), set once when the controller is built.
    pub(crate) signal_hook: std::sync::OnceLock<Arc<dyn SignalHook>>,
}

/// A callback run as each phase is entered: the phase, and the instant the budget ends.
#[cfg_attr(not(all(feature = "systemd", unix)), allow(dead_code))]
pub(crate) type PhaseObserver = Box<dyn Fn(Phase, Option<tokio::time::Instant>) + Send + Sync>;

#[derive(Default)]
struct Fired {
    first: Option<First>,
    later: Vec<LaterSignal>,
}

#[derive(Clone)]
pub(crate) struct First {
    pub(crate) cause: TriggerCause,
    pub(crate) at: tokio::time::Instant,
    pub(crate) at_std: std::time::Instant,
}

impl Shutdown {
    /// The phase the shutdown is in; [`Phase::Running`] until it is triggered.
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.phase() > Phase::Running
    }

    /// Resolves once the shutdown has reached `phase` (at once if it already has).
    ///
    /// `reached(Phase::NotReady)` resolves when the shutdown is triggered,
    /// `reached(Phase::StopAccepting)` when listeners must close.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits, and a new call resolves the same way.
    pub fn reached(&self, phase: Phase) -> PhaseReached {
        PhaseReached::new(
            phase,
            self.shared.tokens[phase.index()].clone().cancelled_owned(),
        )
    }

    /// Resolves when work still in flight must stop: the wait-for-work phase is over, because
    /// its deadline has passed (or because every piece of tracked work had already ended).
    /// For code that holds a [`WorkGuard`](crate::WorkGuard), that is the moment it is cut.
    /// The same as `reached(Phase::FlushTelemetry)`, by name.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastcall::Controller;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let controller = Controller::builder().ignore_env().continue_after_run().build().unwrap();
    /// let shutdown = controller.shutdown();
    /// tokio::spawn(async move {
    ///     let _job = shutdown.tracker().job("report");
    ///     tokio::select! {
    ///         _ = tokio::time::sleep(Duration::from_secs(60)) => {} // finished
    ///         _ = shutdown.cut() => {}                             // cut at the deadline
    ///     }
    /// });
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Shutdown::reached`].
    pub fn cut(&self) -> PhaseReached {
        self.reached(Phase::FlushTelemetry)
    }

    /// A cancellation token cancelled when the shutdown reaches `phase`, for code that takes a
    /// [`CancellationToken`]. Cancelling it yourself does not affect the shutdown.
    pub fn token(&self, phase: Phase) -> CancellationToken {
        self.shared.tokens[phase.index()].child_token()
    }

    /// The work tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.shared.tracker
    }

    /// The health state.
    pub fn health(&self) -> &Health {
        &self.shared.health
    }

    /// The phase windows of this shutdown's budget.
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    /// The instant `phase` must end by, once the shutdown has been triggered.
    pub fn deadline(&self, phase: Phase) -> Option<tokio::time::Instant> {
        let first = self.shared.first()?;
        Some(first.at + self.shared.plan.deadline(phase))
    }

    /// Counts one request or claim turned away because the service is draining; the total is
    /// reported as `rejected_while_draining`.
    #[deprecated(note = "use Controller::rejections().record(): Shutdown is the observer's view")]
    pub fn record_rejection(&self) {
        self.shared.rejected.record();
    }

    /// The rejection counter, for the HTTP layer, which counts what it turns away.
    #[cfg(feature = "http")]
    pub(crate) fn rejections(&self) -> crate::report::Rejections {
        self.shared.rejections()
    }

    /// The shutdown's report as it stood when the flush-telemetry phase began: the trigger,
    /// the phases up to waiting for work, the stop-accepting steps, the work cut at the
    /// deadline, the rejections, and the exit the shutdown is heading for. `None` before then.
    ///
    /// For flush steps that ship the shutdown's own figures with the last batch of telemetry
    /// (as `otel::Flush` does, feature `opentelemetry`): once the process has exited, nobody
    /// scrapes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastcall::Controller;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = Controller::builder().ignore_env().drain_delay(Duration::ZERO).build().unwrap();
    /// let shutdown = controller.shutdown();
    /// controller.flush("ship figures", Duration::from_secs(1), move || async move {
    ///     let so_far = shutdown.report_so_far().expect("set before the flush phase");
    ///     println!("waited {:?} for work", so_far.phases.last().map(|p| p.duration));
    /// });
    /// controller.trigger().trigger("example");
    /// controller.run().await;
    /// # }
    /// ```
    pub fn report_so_far(&self) -> Option<crate::report::Report> {
        lock(&self.shared.so_far).clone()
    }

    /// The counter `http::serve` adds a connection to when the shutdown closes it before its
    /// first request; reported as `closed_without_request`.
    #[cfg(feature = "http")]
    pub(crate) fn closed_without_request(&self) -> Arc<AtomicUsize> {
        self.shared.closed_without_request.clone()
    }
}

impl Trigger {
    /// Starts the shutdown for `reason` (an admin call, a planned stop). Returns whether this
    /// call started it; `false` means a shutdown was already running.
    pub fn trigger(&self, reason: impl Into<String>) -> bool {
        self.shared.fire(TriggerCause::Requested {
            reason: reason.into(),
        })
    }

    /// Starts the shutdown because the service cannot go on. The shutdown runs as usual, but
    /// the exit code is [`Exit::Fatal`](crate::Exit::Fatal) even when it is clean.
    pub fn fatal(&self, reason: impl Into<String>) -> bool {
        self.shared.fire(TriggerCause::Fatal {
            reason: reason.into(),
        })
    }
}

impl Shared {
    pub(crate) fn new(
        plan: Plan,
        force: ForceExit,
        watchdog: Option<Watchdog>,
        continue_after_run: bool,
        runtime: tokio::runtime::Handle,
        report_file: Option<std::path::PathBuf>,
    ) -> Shared {
        let tokens: [CancellationToken; 8] = Default::default();
        tokens[Phase::Running.index()].cancel();
        Shared {
            tracker: Tracker::new(),
            health: Health::new(),
            plan,
            force,
            watchdog,
            continue_after_run,
            runtime,
            report_file,
            phase: AtomicU8::new(Phase::Running as u8),
            tokens,
            fired: Mutex::new(Fired::default()),
            rejected: Rejections::default(),
            closed_without_request: Arc::default(),
            current_step: Mutex::new(None),
            observers: Mutex::new(Vec::new()),
            so_far: Mutex::new(None),
            restarts_failed: Mutex::new(Vec::new()),
            signal_hook: std::sync::OnceLock::new(),
        }
    }

    /// Runs `observer` as each later phase is entered, on the thread that enters it, before
    /// anything else can happen (the process may exit right after the last phase).
    #[cfg_attr(not(all(feature = "systemd", unix)), allow(dead_code))]
    pub(crate) fn observe(&self, observer: PhaseObserver) {
        lock(&self.observers).push(observer);
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_index(self.phase.load(Ordering::Acquire))
    }

    /// Starts the flow if nothing has yet; otherwise records a later trigger. Returns whether
    /// this call started it.
    ///
    /// Called on the signal thread for signals: the readiness flip and the hard deadline come
    /// first and take no lock a blocked task could hold; logging comes last, because a
    /// subscriber writing to a stalled pipe blocks.
    pub(crate) fn fire(self: &Arc<Self>, cause: TriggerCause) -> bool {
        let mut fired = lock(&self.fired);
        if let Some(first) = &fired.first {
            let phase = self.phase();
            let at = first.at_std.elapsed();
            fired.later.push(LaterSignal {
                cause: cause.clone(),
                at,
                phase,
            });
            drop(fired);
            tracing::warn!(
                cause = %cause,
                phase = %phase,
                since_trigger_ms = at.as_millis() as u64,
                "shutdown already in progress; this trigger starts nothing"
            );
            return false;
        }
        let first = First {
            cause,
            at: tokio::time::Instant::now(),
            at_std: std::time::Instant::now(),
        };
        let deadline = first.at_std + self.plan.budget().total;
        let cause = first.cause.clone();
        fired.first = Some(first);
        drop(fired);
        self.health.advance(HealthState::Draining);
        if let Some(watchdog) = &self.watchdog {
            watchdog.arm(self.clone(), deadline);
        }
        self.enter(Phase::NotReady);
        tracing::info!(
            cause = %cause,
            budget_ms = self.plan.budget().total.as_millis() as u64,
            "shutdown triggered"
        );
        true
    }

    /// Called for every delivery of a listened-for signal.
    pub(crate) fn on_signal(self: &Arc<Self>, signal: Signal) {
        if let Some(hook) = self.signal_hook.get() {
            if hook.clone().on_signal(self, signal) {
                return;
            }
        }
        let started = self.fire(TriggerCause::Signal { signal });
        if !started && signal == Signal::Interrupt && self.force == ForceExit::SecondInterrupt {
            crate::watchdog::forced_exit(self.clone());
        }
    }

    pub(crate) fn first(&self) -> Option<First> {
        lock(&self.fired).first.clone()
    }

    /// Records a failed restart for the report.
    #[cfg_attr(not(all(feature = "restart", unix)), allow(dead_code))]
    pub(crate) fn restart_failed(&self, reason: String) {
        lock(&self.restarts_failed).push(reason);
    }

    pub(crate) fn restarts_failed(&self) -> Vec<String> {
        lock(&self.restarts_failed).clone()
    }

    /// Whether the shutdown was started by a successful restart: the listeners stay open in
    /// the successor, so there is nothing to drain away from and no backlog to take.
    pub(crate) fn restarting(&self) -> bool {
        lock(&self.fired)
            .first
            .as_ref()
            .is_some_and(|first| matches!(first.cause, TriggerCause::Restart { .. }))
    }

    pub(crate) fn later_signals(&self) -> Vec<LaterSignal> {
        lock(&self.fired).later.clone()
    }

    /// The flow has ended: the hard deadline keeps holding until the process is gone, unless
    /// the program said it goes on after `run`.
    pub(crate) fn flow_ended(&self) {
        if self.continue_after_run {
            if let Some(watchdog) = &self.watchdog {
                watchdog.disarm();
            }
        }
    }

    /// Moves to `phase` and wakes everything waiting for it or an earlier phase.
    pub(crate) fn enter(&self, phase: Phase) {
        let before = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        // Observers first: the tokens wake the flow, which enters the next phase at once, and
        // the trigger enters not-ready on the signal thread, so observers told after the
        // wake-up could hear the phases out of order.
        if before < phase as u8 {
            let observers = lock(&self.observers);
            if !observers.is_empty() {
                let end = self
                    .first()
                    .map(|first| first.at + self.plan.budget().total);
                for observer in observers.iter() {
                    observer(phase, end);
                }
            }
        }
        for token in &self.tokens[..=phase.index()] {
            token.cancel();
        }
    }

    pub(crate) fn token_ref(&self, phase: Phase) -> &CancellationToken {
        &self.tokens[phase.index()]
    }

    pub(crate) fn set_report_so_far(&self, report: crate::report::Report) {
        *lock(&self.so_far) = Some(report);
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.count()
    }

    pub(crate) fn rejections(&self) -> Rejections {
        self.rejected.clone()
    }

    pub(crate) fn closed_without_request(&self) -> u64 {
        self.closed_without_request.load(Ordering::Relaxed) as u64
    }

    pub(crate) fn set_current_step(&self, step: Option<(Phase, String)>) {
        *lock(&self.current_step) = step;
    }

    pub(crate) fn current_step(&self) -> Option<(Phase, String)> {
        lock(&self.current_step).clone()
    }

    /// Writes `summary` to the report file, if one is configured: at most 4096 bytes, the
    /// limit Kubernetes reads from a termination log.
    ///
    /// The file is opened non-blocking, so a FIFO nobody reads (or that nobody opened) fails
    /// at once instead of holding the exit; the builder refuses anything but a regular file.
    pub(crate) fn write_report_file(&self, summary: &dyn fmt::Display) {
        let Some(path) = &self.report_file else {
            return;
        };
        // Formatted only here, so a process without a report file never pays for it.
        let summary = summary.to_string();
        let mut end = summary.len().min(4096);
        while !summary.is_char_boundary(end) {
            end -= 1;
        }
        let written = crate::report::open_report_file(path, crate::report::ReportOpen::Replace)
            .and_then(|mut file| std::io::Write::write_all(&mut file, &summary.as_bytes()[..end]));
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "cannot write the report file");
        }
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("health", &self.shared.health.state())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("phase", &self.shared.phase())
            .finish()
    }
}

/// The locks here guard plain data and no code panics while holding them, so a poisoned lock
/// is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many active items the last words list.
const LISTED: usize = 20;

impl LastWords for Shared {
    fn budget(&self) -> Duration {
        self.plan.budget().total
    }

    fn say(&self, exit: Exit, why: &str) {
        let shared = self;
        let phase = shared.phase();
        let active = shared.tracker.active().keep_oldest(LISTED);
        let step = shared
            .current_step()
            .map(|(p, name)| format!("; step {name:?} ({p}) was running"))
            .unwrap_or_default();
        let after_flow = if phase == crate::Phase::Exit {
            let tasks = shared.runtime.metrics().num_alive_tasks();
            format!(
            " after the shutdown flow had finished ({tasks} tasks alive on the runtime; what runs after Controller::run, such \
             as a spawn_blocking task the runtime's drop waits for or a thread that was not \
             joined, is not tracked and cannot be named)"
        )
        } else {
            String::new()
        };
        // Written straight to stderr first: a buffered or asynchronous log writer may never get to
        // run again, and these are the process's last words.
        let line = format!(
            "lastcall: {why} during {phase}{after_flow}{step}; {active}; exiting with status {}\n",
            exit.code()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        shared.write_report_file(&line);
        tracing::error!(
            target: "lastcall::watchdog",
            exit_code = exit.code(),
            phase = %phase,
            active = %active,
            "{why}{after_flow}; exiting"
        );
    }
}
