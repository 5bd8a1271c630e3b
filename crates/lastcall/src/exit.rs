//! The exit-code contract: see [`Exit`].

use std::fmt;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// How a process ended, and the exit status that says so.
///
/// The codes are a documented contract, one per outcome, so a supervisor (Kubernetes,
/// systemd, a deploy script, `lastcall check`) can tell what happened from the status alone.
/// When several things went wrong the most serious wins, in this order: work cut, cleanup
/// failed, fatal trigger.
///
/// | outcome | code |
/// |---|---|
/// | [`Exit::Clean`] | 0 |
/// | [`Exit::Fatal`] | 1 |
/// | [`Exit::WorkCut`] | 3 |
/// | [`Exit::CleanupFailed`] | 4 |
/// | [`Exit::HardDeadline`] | 5 |
/// | [`Exit::Config`] | 78 (`EX_CONFIG`) |
/// | [`Exit::Forced`] | 130 (`128 + SIGINT`) |
///
/// # Examples
///
/// ```
/// use lastcall::Exit;
///
/// assert_eq!(Exit::Clean.code(), 0);
/// assert_eq!(Exit::Forced.code(), 130);
/// let status: std::process::ExitCode = Exit::WorkCut.into();
/// # let _ = status;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Exit {
    /// Every phase finished in time and every step succeeded.
    Clean,
    /// The shutdown itself was clean, but it was triggered by a fatal error
    /// ([`Trigger::fatal`](crate::Trigger::fatal)).
    Fatal,
    /// Work was still active at the wait-for-work deadline and was cut.
    WorkCut,
    /// A stop-accepting, flush or close step failed, timed out or panicked.
    CleanupFailed,
    /// The hard deadline passed (the budget ran out, for instance because the runtime was
    /// blocked) and the watchdog thread ended the process.
    HardDeadline,
    /// The configuration was rejected at startup.
    Config,
    /// A repeated interrupt forced an immediate exit (opt-in, see
    /// [`ForceExit`](crate::builder::ForceExit)).
    Forced,
}

impl Exit {
    /// The process exit status for this outcome.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Fatal => 1,
            Exit::WorkCut => 3,
            Exit::CleanupFailed => 4,
            Exit::HardDeadline => 5,
            Exit::Config => 78,
            Exit::Forced => 130,
        }
    }

    /// The outcome for an exit status, if the status is one of the contract's codes.
    ///
    /// ```
    /// use lastcall::Exit;
    ///
    /// assert_eq!(Exit::from_code(4), Some(Exit::CleanupFailed));
    /// assert_eq!(Exit::from_code(2), None);
    /// ```
    pub const fn from_code(code: u8) -> Option<Exit> {
        Some(match code {
            0 => Exit::Clean,
            1 => Exit::Fatal,
            3 => Exit::WorkCut,
            4 => Exit::CleanupFailed,
            5 => Exit::HardDeadline,
            78 => Exit::Config,
            130 => Exit::Forced,
            _ => return None,
        })
    }

    /// The outcome's stable `snake_case` name, as used in reports and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Exit::Clean => "clean",
            Exit::Fatal => "fatal",
            Exit::WorkCut => "work_cut",
            Exit::CleanupFailed => "cleanup_failed",
            Exit::HardDeadline => "hard_deadline",
            Exit::Config => "config",
            Exit::Forced => "forced",
        }
    }

    /// Whether this is [`Exit::Clean`].
    pub const fn is_clean(self) -> bool {
        matches!(self, Exit::Clean)
    }

    /// A short lowercase description, as printed in logs.
    pub const fn describe(self) -> &'static str {
        match self {
            Exit::Clean => "clean shutdown",
            Exit::Fatal => "clean shutdown after a fatal error",
            Exit::WorkCut => "work was cut at the wait deadline",
            Exit::CleanupFailed => "a cleanup step failed",
            Exit::HardDeadline => "hard deadline reached",
            Exit::Config => "bad configuration",
            Exit::Forced => "forced by a repeated interrupt",
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (exit {})", self.describe(), self.code())
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}
