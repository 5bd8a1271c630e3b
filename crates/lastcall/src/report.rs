//! What happened during one shutdown: see [`Report`].

use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tracker::ActiveWork;
use crate::{Budget, Exit, Phase, Signal, WorkKind};

/// The structured record of one shutdown: what triggered it, how each phase went, what was
/// left behind, and the exit code.
///
/// The controller logs it through `tracing` as one summary event (target `lastcall::report`),
/// records it through the `metrics` facade (feature `metrics`), and returns it from
/// [`Controller::run_with_report`](crate::Controller::run_with_report). It serializes to a
/// stable JSON shape: durations are milliseconds in fields ending in `_ms`, offsets are counted
/// from the trigger.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::{Controller, Exit};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().budget(Duration::from_secs(10)).build().unwrap();
/// controller.trigger().trigger("admin request");
/// let report = controller.run_with_report().await;
/// assert_eq!(report.exit, Exit::Clean);
/// let json = report.to_json();
/// assert!(json.contains("\"exit\":\"clean\""));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// What started the shutdown.
    pub trigger: TriggerCause,
    /// Signals and triggers that arrived after the first one; none of them started a flow.
    pub later_signals: Vec<LaterSignal>,
    /// The budget the shutdown ran under.
    pub budget: Budget,
    /// Each phase from [`Phase::NotReady`] to [`Phase::CloseDependencies`], in order.
    pub phases: Vec<PhaseReport>,
    /// Every stop-accepting, flush and close step, in the order they ran.
    pub steps: Vec<StepReport>,
    /// The work still active at the wait-for-work deadline, if any was (oldest first, at most
    /// 50 items; `count` covers all).
    pub work_at_deadline: Option<ActiveWork>,
    /// Requests or claims turned away while draining, as counted by [`Rejections`] (the HTTP
    /// layer's own and the application's).
    pub rejected_while_draining: u64,
    /// Connections `http::serve` closed at the shutdown before a first request, or with a
    /// request head half read (a slow or half-open client): no request was accepted on them,
    /// so they are not work cut. Only `http::serve` (feature `http`) counts them; `0` in
    /// reports written before the field existed.
    #[serde(default)]
    pub closed_without_request: u64,
    /// From the trigger to the end of the report.
    #[serde(with = "crate::millis::ms", rename = "total_ms")]
    pub total: Duration,
    /// The outcome.
    pub exit: Exit,
    /// The outcome's exit status.
    pub exit_code: u8,
    /// The restarts that failed before this shutdown (feature `restart`), each with its
    /// reason, oldest first; this process kept serving through each of them.
    #[serde(default)]
    pub restarts_failed: Vec<String>,
}

/// Counts requests or claims turned away because the service is draining; the total is the
/// report's [`rejected_while_draining`](Report::rejected_while_draining).
///
/// Made by [`Controller::rejections`](crate::Controller::rejections). The HTTP layer counts
/// its own rejections (`DrainPolicy::Reject`, feature `http`); this handle is for code that
/// turns work away itself. Clones count into the same total.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().ignore_env().drain_delay(Duration::ZERO).build().unwrap();
/// let rejections = controller.rejections();
/// rejections.record(); // a claim refused while draining
/// controller.trigger().trigger("example");
/// assert_eq!(controller.run_with_report().await.rejected_while_draining, 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Rejections {
    count: Arc<AtomicU64>,
}

/// What started a shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TriggerCause {
    /// An operating-system signal.
    Signal {
        /// The signal.
        signal: Signal,
    },
    /// [`Trigger::trigger`](crate::Trigger::trigger): an admin call or a planned stop.
    Requested {
        /// The reason given.
        reason: String,
    },
    /// [`Trigger::fatal`](crate::Trigger::fatal): the service cannot go on.
    Fatal {
        /// The reason given.
        reason: String,
    },
    /// A restart (feature `restart`): the successor said it was ready, and this process,
    /// the old generation, drains (with no drain delay: the listeners stay open in the
    /// successor).
    Restart {
        /// The successor's process id.
        successor: u32,
    },
}

/// A signal or trigger that arrived while a shutdown was already running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaterSignal {
    /// What arrived.
    pub cause: TriggerCause,
    /// When, counted from the first trigger.
    #[serde(with = "crate::millis::ms", rename = "at_ms")]
    pub at: Duration,
    /// The phase the shutdown was in.
    pub phase: Phase,
}

/// How one phase went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: Phase,
    /// When it started, counted from the trigger.
    #[serde(with = "crate::millis::ms", rename = "started_ms")]
    pub started: Duration,
    /// How long it took.
    #[serde(with = "crate::millis::ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Its deadline, counted from the trigger.
    #[serde(with = "crate::millis::ms", rename = "deadline_ms")]
    pub deadline: Duration,
    /// How it ended.
    pub outcome: PhaseOutcome,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PhaseOutcome {
    /// Everything in it finished in time.
    Completed,
    /// Its deadline passed with work still active (wait for work).
    DeadlineReached,
    /// At least one of its steps failed, timed out or panicked.
    StepsFailed,
}

/// How one stop-accepting, flush or close step went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's name, as registered.
    pub name: String,
    /// The phase it ran in.
    pub phase: Phase,
    /// The time it was given: `min(its timeout, time left in its phase)`.
    #[serde(with = "crate::millis::ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// How long it ran.
    #[serde(with = "crate::millis::ms", rename = "duration_ms")]
    pub duration: Duration,
    /// How it ended.
    pub outcome: StepOutcome,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepOutcome {
    /// It finished in time.
    Ok,
    /// It returned an error.
    Failed {
        /// The error and its sources, joined with `: `.
        error: String,
    },
    /// It did not finish within its timeout and was cancelled.
    TimedOut,
    /// It panicked.
    Panicked {
        /// The panic message, when it was a string.
        message: String,
    },
}

impl Report {
    /// The exit status for this shutdown.
    pub fn exit_code(&self) -> ExitCode {
        self.exit.into()
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The report of `phase`, if it ran.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseReport> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// The steps that did not end [`StepOutcome::Ok`].
    pub fn failed_steps(&self) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().filter(|s| s.outcome != StepOutcome::Ok)
    }
}

impl fmt::Display for Report {
    /// A human-readable summary, one line per phase and failed step.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "shutdown ({}) finished in {}ms: {}",
            self.trigger,
            self.total.as_millis(),
            self.exit
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "  {:<19} +{:>6}ms  took {:>6}ms  (deadline +{}ms)  {}",
                p.phase.as_str(),
                p.started.as_millis(),
                p.duration.as_millis(),
                p.deadline.as_millis(),
                p.outcome.as_str()
            )?;
        }
        for s in self.failed_steps() {
            writeln!(f, "  step {:?} ({}) {}", s.name, s.phase, s.outcome)?;
        }
        if let Some(work) = &self.work_at_deadline {
            writeln!(f, "  cut at the wait deadline: {work}")?;
        }
        if self.closed_without_request > 0 {
            writeln!(
                f,
                "  connections closed without a request: {}",
                self.closed_without_request
            )?;
        }
        for failed in &self.restarts_failed {
            writeln!(f, "  restart failed earlier: {failed}")?;
        }
        for later in &self.later_signals {
            writeln!(
                f,
                "  later: {} at +{}ms during {}",
                later.cause,
                later.at.as_millis(),
                later.phase
            )?;
        }
        Ok(())
    }
}

#[cfg_attr(
    not(any(feature = "metrics", feature = "opentelemetry")),
    allow(dead_code)
)]
impl Report {
    /// The trigger as metric labels: its kind (`signal`, `requested`, `fatal`) and its signal
    /// (`none` unless a signal).
    pub(crate) fn trigger_labels(&self) -> (&'static str, &'static str) {
        match &self.trigger {
            TriggerCause::Signal { signal } => ("signal", signal.as_str()),
            TriggerCause::Requested { .. } => ("requested", "none"),
            TriggerCause::Fatal { .. } => ("fatal", "none"),
            TriggerCause::Restart { .. } => ("restart", "none"),
        }
    }

    /// The work cut at the wait-for-work deadline, per kind: every kind, zero where none was.
    pub(crate) fn cut_by_kind(&self) -> impl Iterator<Item = (WorkKind, usize)> {
        let cut = self
            .work_at_deadline
            .as_ref()
            .map(|w| w.by_kind)
            .unwrap_or_default();
        WorkKind::ALL
            .into_iter()
            .map(move |kind| (kind, cut.get(kind)))
    }
}

impl Rejections {
    /// Counts one request or claim turned away.
    pub fn record(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The rejections counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejections")
            .field("count", &self.count())
            .finish()
    }
}

impl StepOutcome {
    /// The outcome's stable `snake_case` name, as in the report's `status` field and metric
    /// labels.
    pub const fn as_str(&self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Failed { .. } => "failed",
            StepOutcome::TimedOut => "timed_out",
            StepOutcome::Panicked { .. } => "panicked",
        }
    }
}

impl PhaseOutcome {
    /// The outcome's stable `snake_case` name, as used in reports and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            PhaseOutcome::Completed => "completed",
            PhaseOutcome::DeadlineReached => "deadline_reached",
            PhaseOutcome::StepsFailed => "steps_failed",
        }
    }
}

impl fmt::Display for TriggerCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerCause::Signal { signal } => write!(f, "{signal}"),
            TriggerCause::Requested { reason } => write!(f, "requested: {reason}"),
            TriggerCause::Fatal { reason } => write!(f, "fatal: {reason}"),
            TriggerCause::Restart { successor } => write!(f, "restart: successor pid {successor}"),
        }
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepOutcome::Ok => f.write_str("ok"),
            StepOutcome::Failed { error } => write!(f, "failed: {error}"),
            StepOutcome::TimedOut => f.write_str("timed out"),
            StepOutcome::Panicked { message } => write!(f, "panicked: {message}"),
        }
    }
}

/// Opens the report file for writing without blocking: a FIFO with no reader fails with
/// `ENXIO` at once, one whose reader has stalled fails the write with `EWOULDBLOCK`, instead
/// of holding the process.
pub(crate) fn open_report_file(
    path: &std::path::Path,
    open: ReportOpen,
) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    match open {
        ReportOpen::Replace => options.truncate(true),
        ReportOpen::Probe => options.append(true),
    };
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    options.open(path)
}

/// How [`open_report_file`] opens the file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReportOpen {
    /// To write a report: what the file held (the previous report) is replaced.
    Replace,
    /// At start-up, to check that it can be written: nothing in it changes.
    Probe,
}

/// Checks at start-up that `path` can take the report: a regular file (or none yet, created
/// now) that is empty or holds an earlier report, so a typo cannot overwrite a database and a
/// FIFO cannot hang the start or the exit.
pub(crate) fn check_report_file(path: &std::path::Path) -> Result<(), crate::error::ConfigError> {
    use crate::error::ConfigError;
    use std::io::Read;

    let refuse = |problem: &'static str| ConfigError::ReportFileRefused {
        path: path.to_owned(),
        problem,
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(refuse(if meta.is_dir() {
                "it is a directory"
            } else {
                "it is not a regular file (a FIFO, a socket or a device)"
            }))
        }
        Ok(meta) if meta.len() > 0 => {
            let mut head = [0u8; 16];
            let read = std::fs::File::open(path)
                .and_then(|mut file| file.read(&mut head))
                .map_err(|source| ConfigError::ReportFile {
                    path: path.to_owned(),
                    source,
                })?;
            let head = &head[..read];
            if !(head.starts_with(b"shutdown (") || head.starts_with(b"lastcall: ")) {
                return Err(refuse(
                    "it is not empty and does not hold an earlier report",
                ));
            }
        }
        _ => {}
    }
    open_report_file(path, ReportOpen::Probe)
        .map(drop)
        .map_err(|source| ConfigError::ReportFile {
            path: path.to_owned(),
            source,
        })
}
