//! The fixed order of a shutdown: see [`Phase`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// One step of the shutdown sequence, in the fixed order the controller runs them.
///
/// Phases only move forward. [`Phase::Running`] is the state before any trigger; every later
/// phase is entered exactly once per process, in declaration order, so `a < b` means "`a` comes
/// before `b`". Application code waits for a phase with
/// [`Shutdown::reached`](crate::Shutdown::reached).
///
/// # Examples
///
/// ```
/// use lastcall::Phase;
///
/// assert!(Phase::DrainDelay < Phase::StopAccepting);
/// assert_eq!(Phase::WaitForWork.as_str(), "wait_for_work");
/// assert_eq!(Phase::StopAccepting.next(), Some(Phase::WaitForWork));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No shutdown has been triggered: the service serves normally.
    Running,
    /// The shutdown was triggered: readiness answers 503, liveness stays 200.
    NotReady,
    /// A wait so load balancers stop routing here; requests are still served normally.
    DrainDelay,
    /// Listeners close, queue claims and schedulers stop; stop-accepting steps run.
    StopAccepting,
    /// In-flight requests, streams, jobs and tasks get until the wait deadline to finish.
    WaitForWork,
    /// Flush steps run (logs, metrics, traces, audit events), each with its own timeout.
    FlushTelemetry,
    /// Close steps run in order (brokers, caches, databases), each with its own timeout.
    CloseDependencies,
    /// The report is written and the exit code chosen.
    Exit,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 8] = [
        Phase::Running,
        Phase::NotReady,
        Phase::DrainDelay,
        Phase::StopAccepting,
        Phase::WaitForWork,
        Phase::FlushTelemetry,
        Phase::CloseDependencies,
        Phase::Exit,
    ];

    /// The phase's stable `snake_case` name, as used in reports, logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::NotReady => "not_ready",
            Phase::DrainDelay => "drain_delay",
            Phase::StopAccepting => "stop_accepting",
            Phase::WaitForWork => "wait_for_work",
            Phase::FlushTelemetry => "flush_telemetry",
            Phase::CloseDependencies => "close_dependencies",
            Phase::Exit => "exit",
        }
    }

    /// The phase after this one, or `None` after [`Phase::Exit`].
    pub const fn next(self) -> Option<Phase> {
        match self {
            Phase::Running => Some(Phase::NotReady),
            Phase::NotReady => Some(Phase::DrainDelay),
            Phase::DrainDelay => Some(Phase::StopAccepting),
            Phase::StopAccepting => Some(Phase::WaitForWork),
            Phase::WaitForWork => Some(Phase::FlushTelemetry),
            Phase::FlushTelemetry => Some(Phase::CloseDependencies),
            Phase::CloseDependencies => Some(Phase::Exit),
            Phase::Exit => None,
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(index: u8) -> Phase {
        Phase::ALL
            .get(usize::from(index))
            .copied()
            .unwrap_or(Phase::Exit)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
