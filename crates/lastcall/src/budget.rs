//! The shutdown's time budget and how it is split across phases: see [`Budget`] and [`Plan`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Origin, Setting};
use crate::Phase;

/// The part of the close-dependencies window kept back for writing the report and exiting, so
/// the flow never races the watchdog thread at the very end of the budget.
pub(crate) const EXIT_RESERVE: Duration = Duration::from_millis(50);

/// One total deadline, counted from the trigger, and the time reserved for each phase.
///
/// The budget is the platform's grace period minus a margin (Kubernetes'
/// `terminationGracePeriodSeconds`, systemd's `TimeoutStopSec`). Phases run in order and each
/// ends at a fixed offset from the trigger, computed by [`Budget::plan`]:
///
/// | phase | cap once started | deadline (from the trigger) |
/// |---|---|---|
/// | drain delay | `drain_delay` | `drain_delay` |
/// | stop accepting | `stop_accepting` | `drain_delay + stop_accepting` |
/// | wait for work | the rest | `total - flush_telemetry - close_dependencies` |
/// | flush telemetry | `flush_telemetry` | `total - close_dependencies` |
/// | close dependencies | `close_dependencies` - 50 ms | `total` - 50 ms (kept to write the report) |
///
/// A phase ends at `min(its start + cap, its deadline)`. Waiting for work gets whatever the
/// others leave, and no phase can eat the time reserved for the phases after it. At `total` the watchdog thread ends the process whatever state it is in.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::{Budget, Phase};
///
/// let budget = Budget::new(Duration::from_secs(25)).with_drain_delay(Duration::from_secs(5));
/// let plan = budget.plan()?;
/// // 25 s - 2 s (flush) - 5 s (close) = 18 s from the trigger.
/// assert_eq!(plan.deadline(Phase::WaitForWork), Duration::from_secs(18));
/// # Ok::<(), lastcall::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The total deadline, counted from the trigger (`LASTCALL_BUDGET`, default 30 s).
    #[serde(with = "crate::report::millis", rename = "total_ms")]
    pub total: Duration,
    /// How long to keep serving after readiness flips (`LASTCALL_DRAIN_DELAY`, default 0).
    #[serde(with = "crate::report::millis", rename = "drain_delay_ms")]
    pub drain_delay: Duration,
    /// The cap for the stop-accepting phase (`LASTCALL_STOP_TIMEOUT`, default 1 s).
    #[serde(with = "crate::report::millis", rename = "stop_accepting_ms")]
    pub stop_accepting: Duration,
    /// The time reserved for flushing telemetry (`LASTCALL_FLUSH_TIMEOUT`, default 2 s).
    #[serde(with = "crate::report::millis", rename = "flush_telemetry_ms")]
    pub flush_telemetry: Duration,
    /// The time reserved for closing dependencies (`LASTCALL_CLOSE_TIMEOUT`, default 5 s).
    #[serde(with = "crate::report::millis", rename = "close_dependencies_ms")]
    pub close_dependencies: Duration,
}

/// The phase windows a [`Budget`] yields, as offsets from the trigger.
///
/// # Examples
///
/// ```
/// use lastcall::Budget;
///
/// let plan = Budget::default().plan()?;
/// for window in plan.windows() {
///     assert!(window.start <= window.end);
///     assert!(window.end <= plan.budget().total);
/// }
/// # Ok::<(), lastcall::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    budget: Budget,
}

/// When a phase may run: from `start` (if every earlier phase used all of its time) to `end`
/// (its deadline), both counted from the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The phase.
    pub phase: Phase,
    /// The latest moment the phase starts.
    #[serde(with = "crate::report::millis", rename = "start_ms")]
    pub start: Duration,
    /// The phase's deadline.
    #[serde(with = "crate::report::millis", rename = "end_ms")]
    pub end: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            total: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            stop_accepting: Duration::from_secs(1),
            flush_telemetry: Duration::from_secs(2),
            close_dependencies: Duration::from_secs(5),
        }
    }
}

impl Budget {
    /// A budget with the given total and the default phase reserves.
    pub fn new(total: Duration) -> Budget {
        Budget {
            total,
            ..Budget::default()
        }
    }

    /// Sets the drain delay.
    pub fn with_drain_delay(mut self, delay: Duration) -> Budget {
        self.drain_delay = delay;
        self
    }

    /// Sets the stop-accepting cap.
    pub fn with_stop_accepting(mut self, cap: Duration) -> Budget {
        self.stop_accepting = cap;
        self
    }

    /// Sets the time reserved for flushing telemetry.
    pub fn with_flush_telemetry(mut self, reserve: Duration) -> Budget {
        self.flush_telemetry = reserve;
        self
    }

    /// Sets the time reserved for closing dependencies.
    pub fn with_close_dependencies(mut self, reserve: Duration) -> Budget {
        self.close_dependencies = reserve;
        self
    }

    /// Checks the budget and returns its phase windows.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] when the total or a phase cap is zero (the drain delay may be
    /// zero), [`ConfigError::TooShort`] when the close reserve does not exceed the 50 ms kept
    /// for the report, and [`ConfigError::ReservesExceedBudget`] when the drain delay and the
    /// reserves leave no time to wait for work.
    pub fn plan(&self) -> Result<Plan, ConfigError> {
        self.validate(&|_| Origin::Code)
    }

    pub(crate) fn validate(&self, origin: &dyn Fn(Setting) -> Origin) -> Result<Plan, ConfigError> {
        for (setting, value) in [
            (Setting::Budget, self.total),
            (Setting::StopTimeout, self.stop_accepting),
            (Setting::FlushTimeout, self.flush_telemetry),
            (Setting::CloseTimeout, self.close_dependencies),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero {
                    setting,
                    origin: origin(setting),
                });
            }
        }
        if self.close_dependencies <= EXIT_RESERVE {
            return Err(ConfigError::TooShort {
                setting: Setting::CloseTimeout,
                origin: origin(Setting::CloseTimeout),
                value: self.close_dependencies,
                minimum: EXIT_RESERVE,
            });
        }
        let reserved = self
            .drain_delay
            .saturating_add(self.stop_accepting)
            .saturating_add(self.flush_telemetry)
            .saturating_add(self.close_dependencies);
        if reserved >= self.total {
            return Err(ConfigError::ReservesExceedBudget {
                budget: *self,
                reserved,
                budget_origin: origin(Setting::Budget),
            });
        }
        Ok(Plan { budget: *self })
    }
}

impl Plan {
    /// The budget this plan was made from.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The deadline of `phase`, counted from the trigger.
    ///
    /// [`Phase::Running`] and [`Phase::NotReady`] end at once; [`Phase::Exit`] ends at the
    /// total budget, where the watchdog fires.
    pub fn deadline(&self, phase: Phase) -> Duration {
        self.window(phase).end
    }

    /// The window of `phase`.
    pub fn window(&self, phase: Phase) -> Window {
        let b = &self.budget;
        let stop_end = b.drain_delay + b.stop_accepting;
        let wait_end = b.total - b.flush_telemetry - b.close_dependencies;
        let flush_end = b.total - b.close_dependencies;
        let close_end = b.total - EXIT_RESERVE;
        let (start, end) = match phase {
            Phase::Running | Phase::NotReady => (Duration::ZERO, Duration::ZERO),
            Phase::DrainDelay => (Duration::ZERO, b.drain_delay),
            Phase::StopAccepting => (b.drain_delay, stop_end),
            Phase::WaitForWork => (stop_end, wait_end),
            Phase::FlushTelemetry => (wait_end, flush_end),
            Phase::CloseDependencies => (flush_end, close_end),
            Phase::Exit => (close_end, b.total),
        };
        Window { phase, start, end }
    }

    /// The most time `phase` may take once it starts: its reserve (the drain delay, the
    /// stop-accepting cap, the flush reserve, the close reserve less the 50 ms kept for the
    /// report), or for waiting for work, everything up to its deadline.
    ///
    /// A phase ends at `min(its start + cap, its deadline)`, so a phase that starts early
    /// still gets no more than its cap, and one that starts late still ends by its deadline.
    pub fn cap(&self, phase: Phase) -> Duration {
        let b = &self.budget;
        match phase {
            Phase::Running | Phase::NotReady => Duration::ZERO,
            Phase::DrainDelay => b.drain_delay,
            Phase::StopAccepting => b.stop_accepting,
            Phase::FlushTelemetry => b.flush_telemetry,
            Phase::CloseDependencies => b.close_dependencies - EXIT_RESERVE,
            // Waiting for work takes whatever the earlier phases left, up to its deadline.
            Phase::WaitForWork | Phase::Exit => self.deadline(phase),
        }
    }

    /// The windows of every phase from [`Phase::NotReady`] to [`Phase::Exit`], in order.
    pub fn windows(&self) -> impl Iterator<Item = Window> + '_ {
        Phase::ALL[1..].iter().map(|&phase| self.window(phase))
    }
}
