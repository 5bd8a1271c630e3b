//! The shutdown's time budget and how it is split across phases: see [`Budget`] and [`Plan`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Origin, Setting};
use crate::Phase;

/// The part of the close-dependencies window kept back for writing the report and exiting, so
/// the flow never races the watchdog thread at the very end of the budget.
pub(crate) const EXIT_RESERVE: Duration = Duration::from_millis(50);

/// The shortest phase cap or reserve that may be set.
const MIN_RESERVE: Duration = Duration::from_millis(1);

/// The shortest close reserve: the 50 ms kept for the report and as much again for the steps.
const MIN_CLOSE: Duration = Duration::from_millis(100);

/// The budget from which unset reserves keep their full defaults; below it they shrink in
/// proportion, so together they never exceed 30 % of the budget (26.7 % exactly).
const FULL_RESERVES_FROM: Duration = Duration::from_secs(30);

/// The defaults of the stop-accepting cap and of the flush and close reserves, for a budget of
/// [`FULL_RESERVES_FROM`] or more.
const DEFAULT_STOP: Duration = Duration::from_secs(1);
const DEFAULT_FLUSH: Duration = Duration::from_secs(2);
const DEFAULT_CLOSE: Duration = Duration::from_secs(5);

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
/// others leave, and no phase can eat the time reserved for the phases after it. At `total` the
/// watchdog thread ends the process whatever state it is in.
///
/// Reserves that are not set scale with the budget ([`Budget::from_settings`]): each is
/// `min(its default, total × default / 30 s)`, so from 30 s up they are 1 s, 2 s and 5 s, and
/// below it they keep 26.7 % of the budget together, leaving waiting for work the largest
/// share. With no drain delay:
///
/// | budget | stop accepting | wait for work ends | flush | close |
/// |---|---|---|---|---|
/// | 1 s | 33 ms | 768 ms | 66 ms | 166 ms |
/// | 5 s | 166 ms | 3834 ms | 333 ms | 833 ms |
/// | 10 s | 333 ms | 7668 ms | 666 ms | 1666 ms |
/// | 30 s | 1 s | 23 s | 2 s | 5 s |
/// | 90 s | 1 s | 83 s | 2 s | 5 s |
///
/// Every duration is at most [`Budget::MAX_DURATION`] (a day), the budget at least
/// [`Budget::MIN_TOTAL`] (a second).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::{Budget, Phase};
///
/// let budget = Budget::new(Duration::from_secs(60)).with_drain_delay(Duration::from_secs(5));
/// let plan = budget.plan()?;
/// // 60 s - 2 s (flush) - 5 s (close) = 53 s from the trigger.
/// assert_eq!(plan.deadline(Phase::WaitForWork), Duration::from_secs(53));
/// # Ok::<(), lastcall::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The total deadline, counted from the trigger (`LASTCALL_BUDGET`, default 30 s).
    #[serde(with = "crate::millis::ms", rename = "total_ms")]
    pub total: Duration,
    /// How long to keep serving after readiness flips (`LASTCALL_DRAIN_DELAY`, default 0).
    #[serde(with = "crate::millis::ms", rename = "drain_delay_ms")]
    pub drain_delay: Duration,
    /// The cap for the stop-accepting phase (`LASTCALL_STOP_TIMEOUT`, default 1 s).
    #[serde(with = "crate::millis::ms", rename = "stop_accepting_ms")]
    pub stop_accepting: Duration,
    /// The time reserved for flushing telemetry (`LASTCALL_FLUSH_TIMEOUT`, default 2 s).
    #[serde(with = "crate::millis::ms", rename = "flush_telemetry_ms")]
    pub flush_telemetry: Duration,
    /// The time reserved for closing dependencies (`LASTCALL_CLOSE_TIMEOUT`, default 5 s).
    #[serde(with = "crate::millis::ms", rename = "close_dependencies_ms")]
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
    #[serde(with = "crate::millis::ms", rename = "start_ms")]
    pub start: Duration,
    /// The phase's deadline.
    #[serde(with = "crate::millis::ms", rename = "end_ms")]
    pub end: Duration,
}

impl Default for Budget {
    /// A 30 s budget with no drain delay and the full default reserves.
    fn default() -> Self {
        Budget::new(FULL_RESERVES_FROM)
    }
}

impl Budget {
    /// The longest any duration setting may be. A shutdown that needs more than a day is a
    /// batch job's, not a service's; a longer value is most often a unit mistake, and would
    /// overflow the clock's arithmetic at the first signal.
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

    /// The shortest budget: one second, split as the table above shows.
    pub const MIN_TOTAL: Duration = Duration::from_secs(1);

    /// A budget with the given total, no drain delay, and reserves scaled to it (see
    /// [`Budget::from_settings`]).
    pub fn new(total: Duration) -> Budget {
        Budget::from_settings(total, Duration::ZERO, None, None, None)
    }

    /// Resolves a budget from its settings, as [`Builder`](crate::Builder) does: a reserve that
    /// is `None` (not set) scales with the budget, `min(its default, total × default / 30 s)`
    /// rounded down to a millisecond, so that any budget works alone. Set reserves are kept as
    /// they are; [`Budget::plan`] then checks the whole.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lastcall::{Budget, Phase};
    ///
    /// let secs = Duration::from_secs;
    /// // Docker's default stop timeout is 10 s: a 9 s budget alone is valid, and waiting for
    /// // work gets the largest share.
    /// let budget = Budget::from_settings(secs(9), Duration::ZERO, None, None, None);
    /// assert_eq!(budget.close_dependencies, Duration::from_millis(1500));
    /// let plan = budget.plan()?;
    /// assert_eq!(plan.deadline(Phase::WaitForWork), Duration::from_millis(6900));
    ///
    /// // From 30 s up, the unset reserves are the full defaults; a set one is kept.
    /// let budget = Budget::from_settings(secs(60), secs(5), None, None, Some(secs(10)));
    /// assert_eq!((budget.flush_telemetry, budget.close_dependencies), (secs(2), secs(10)));
    /// # Ok::<(), lastcall::error::ConfigError>(())
    /// ```
    pub fn from_settings(
        total: Duration,
        drain_delay: Duration,
        stop_accepting: Option<Duration>,
        flush_telemetry: Option<Duration>,
        close_dependencies: Option<Duration>,
    ) -> Budget {
        let scaled = |default: Duration| {
            if total >= FULL_RESERVES_FROM {
                return default;
            }
            // Below 30 s, so the product fits: at most 5e9 ns × 3e10 ns.
            let nanos = default.as_nanos() * total.as_nanos() / FULL_RESERVES_FROM.as_nanos();
            Duration::from_millis((nanos / 1_000_000) as u64)
        };
        Budget {
            total,
            drain_delay,
            stop_accepting: stop_accepting.unwrap_or_else(|| scaled(DEFAULT_STOP)),
            flush_telemetry: flush_telemetry.unwrap_or_else(|| scaled(DEFAULT_FLUSH)),
            close_dependencies: close_dependencies.unwrap_or_else(|| scaled(DEFAULT_CLOSE)),
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
    /// zero); [`ConfigError::TooLong`] when a duration exceeds [`Budget::MAX_DURATION`];
    /// [`ConfigError::TooShort`] when the budget is under [`Budget::MIN_TOTAL`], a cap or
    /// reserve under a millisecond, or the close reserve under 100 ms (50 ms of it are kept for the report);
    /// and [`ConfigError::ReservesExceedBudget`] when the drain delay and the reserves leave no
    /// time to wait for work.
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
        for (setting, value) in [
            (Setting::Budget, self.total),
            (Setting::DrainDelay, self.drain_delay),
            (Setting::StopTimeout, self.stop_accepting),
            (Setting::FlushTimeout, self.flush_telemetry),
            (Setting::CloseTimeout, self.close_dependencies),
        ] {
            if value > Budget::MAX_DURATION {
                return Err(ConfigError::TooLong {
                    setting,
                    origin: origin(setting),
                    value,
                    maximum: Budget::MAX_DURATION,
                });
            }
        }
        for (setting, value, minimum) in [
            (Setting::Budget, self.total, Budget::MIN_TOTAL),
            (Setting::StopTimeout, self.stop_accepting, MIN_RESERVE),
            (Setting::FlushTimeout, self.flush_telemetry, MIN_RESERVE),
            (Setting::CloseTimeout, self.close_dependencies, MIN_CLOSE),
        ] {
            if value < minimum {
                return Err(ConfigError::TooShort {
                    setting,
                    origin: origin(setting),
                    value,
                    minimum,
                });
            }
        }
        // Each is at most a day, so the sum cannot overflow.
        let reserved =
            self.drain_delay + self.stop_accepting + self.flush_telemetry + self.close_dependencies;
        if reserved >= self.total {
            return Err(ConfigError::ReservesExceedBudget {
                total: self.total,
                drain_delay: self.drain_delay,
                stop_accepting: self.stop_accepting,
                flush_telemetry: self.flush_telemetry,
                close_dependencies: self.close_dependencies,
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
