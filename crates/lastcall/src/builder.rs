//! Configuration from code and from `LASTCALL_*` variables, checked once: see [`Builder`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, Origin, Setting};
use crate::shutdown::Shared;
pub use crate::signal::{ForceExit, ParseForceExitError};
use crate::{Budget, Controller, Signal};

/// Builds a [`Controller`]: settings from code, then `LASTCALL_*` environment variables over
/// them, all checked in [`Builder::build`].
///
/// | variable | setting | default |
/// |---|---|---|
/// | `LASTCALL_BUDGET` | [`Builder::budget`] | `30s` |
/// | `LASTCALL_DRAIN_DELAY` | [`Builder::drain_delay`] | `0s` |
/// | `LASTCALL_STOP_TIMEOUT` | [`Builder::stop_timeout`] | `1s`, less under a 30 s budget |
/// | `LASTCALL_FLUSH_TIMEOUT` | [`Builder::flush_timeout`] | `2s`, less under a 30 s budget |
/// | `LASTCALL_CLOSE_TIMEOUT` | [`Builder::close_timeout`] | `5s`, less under a 30 s budget |
/// | `LASTCALL_SIGNALS` | [`Builder::signals`] | `SIGTERM,SIGINT` |
/// | `LASTCALL_FORCE_EXIT` | [`Builder::force_exit`] | `never` |
/// | `LASTCALL_REPORT_FILE` | [`Builder::report_file`] | none |
/// | `LASTCALL_RESTART_SIGNAL` | `Builder::restart_signal`, `Builder::without_restart_signal` (feature `restart`) | `SIGHUP` |
/// | `LASTCALL_RESTART_TIMEOUT` | `Builder::restart_timeout` (feature `restart`) | `30s` |
/// | `LASTCALL_PID_FILE` | `Builder::pid_file` (feature `restart`) | none |
///
/// Durations are human durations (`25s`, `1500ms`, `1m 30s`), at most a day. Reserves that are
/// not set scale with the budget ([`Budget::from_settings`]), so a budget alone always works.
/// An unknown `LASTCALL_*` variable within three edits of a setting is an error (a typo that
/// would silently change nothing); any other unknown name, and a near miss of the prefix
/// (`lastcall_budget`), is logged as a warning. Declare your own with [`Builder::allow_env`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::{Controller, Signal};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), lastcall::error::ConfigError> {
/// let controller = Controller::builder()
///     .budget(Duration::from_secs(25))
///     .drain_delay(Duration::from_secs(5))
///     .signals([Signal::Terminate, Signal::Interrupt, Signal::Quit])
///     .build()?;
/// # drop(controller);
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until built"]
pub struct Builder {
    budget: Budget,
    origins: BTreeMap<Setting, Origin>,
    signals: Vec<Signal>,
    force: ForceExit,
    watchdog: bool,
    continue_after_run: bool,
    manual_readiness: bool,
    env: EnvSource,
    allowed: Vec<String>,
    report_file: Option<std::path::PathBuf>,
    #[cfg_attr(not(all(feature = "restart", unix)), allow(dead_code))]
    restart_signal: Option<Signal>,
    #[cfg_attr(not(all(feature = "restart", unix)), allow(dead_code))]
    restart_timeout: Duration,
    #[cfg_attr(not(all(feature = "restart", unix)), allow(dead_code))]
    pid_file: Option<std::path::PathBuf>,
}

/// Variables of lastcall's own restart handshake, set for a successor by its predecessor:
/// known, so never reported as unknown, and not settings.
const PROTOCOL_VARIABLES: [&str; 2] = ["LASTCALL_RESTART_FD", "LASTCALL_RESTART_PARENT"];

enum EnvSource {
    Process,
    Vars(Vec<(String, OsString)>),
    Ignore,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            budget: Budget::default(),
            origins: BTreeMap::new(),
            signals: Signal::DEFAULT.to_vec(),
            force: ForceExit::Never,
            watchdog: true,
            continue_after_run: false,
            manual_readiness: false,
            env: EnvSource::Process,
            allowed: Vec::new(),
            report_file: None,
            restart_signal: Some(Signal::Hangup),
            restart_timeout: Duration::from_secs(30),
            pid_file: None,
        }
    }

    /// The total deadline, counted from the trigger (`LASTCALL_BUDGET`, default 30 s). Set it
    /// to the platform's grace period minus a margin.
    pub fn budget(mut self, total: Duration) -> Builder {
        self.budget.total = total;
        self.set(Setting::Budget)
    }

    /// How long to keep serving after readiness flips, so balancers stop routing here
    /// (`LASTCALL_DRAIN_DELAY`, default 0). A few seconds behind a balancer; 0 in tests.
    pub fn drain_delay(mut self, delay: Duration) -> Builder {
        self.budget.drain_delay = delay;
        self.set(Setting::DrainDelay)
    }

    /// The cap for the stop-accepting phase (`LASTCALL_STOP_TIMEOUT`, default 1 s, scaled down
    /// under a 30 s budget).
    pub fn stop_timeout(mut self, cap: Duration) -> Builder {
        self.budget.stop_accepting = cap;
        self.set(Setting::StopTimeout)
    }

    /// The time reserved for flushing telemetry (`LASTCALL_FLUSH_TIMEOUT`, default 2 s, scaled
    /// down under a 30 s budget).
    pub fn flush_timeout(mut self, reserve: Duration) -> Builder {
        self.budget.flush_telemetry = reserve;
        self.set(Setting::FlushTimeout)
    }

    /// The time reserved for closing dependencies (`LASTCALL_CLOSE_TIMEOUT`, default 5 s,
    /// scaled down under a 30 s budget).
    pub fn close_timeout(mut self, reserve: Duration) -> Builder {
        self.budget.close_dependencies = reserve;
        self.set(Setting::CloseTimeout)
    }

    /// The signals that start the shutdown (`LASTCALL_SIGNALS`, default `SIGTERM,SIGINT`). On
    /// unix the set must include `SIGTERM`: left to its default action it kills the process at
    /// once. A signal not in the set keeps its default action too (`SIGHUP` and `SIGQUIT` end
    /// the process at once, dropping requests in flight): add the ones your platform sends.
    pub fn signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Builder {
        self.signals = dedup(signals);
        self.set(Setting::Signals)
    }

    /// What a repeated interrupt does (`LASTCALL_FORCE_EXIT`, default [`ForceExit::Never`]).
    pub fn force_exit(mut self, policy: ForceExit) -> Builder {
        self.force = policy;
        self.set(Setting::ForceExit)
    }

    /// A file the report's human-readable summary is written to at exit (`LASTCALL_REPORT_FILE`),
    /// at most 4096 bytes: set it to `/dev/termination-log` on Kubernetes and `kubectl describe
    /// pod` shows how the last shutdown went after the process is gone. The watchdog and the
    /// forced exit write their last words there too. Checked when the controller is built.
    pub fn report_file(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.report_file = Some(path.into());
        self.set(Setting::ReportFile)
    }

    /// The signal that restarts the service (`LASTCALL_RESTART_SIGNAL`, default `SIGHUP`, the
    /// convention of systemd's `ExecReload=` and `Type=notify-reload`; `SIGUSR2` is nginx's,
    /// unicorn's and puma's). It must not be one of [`Builder::signals`]. See
    /// [`restart`](crate::restart). Needs the `restart` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// use lastcall::{Controller, Signal};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let controller = Controller::builder()
    ///     .restart_signal(Signal::User2)
    ///     .continue_after_run()
    ///     .build()
    ///     .expect("SIGUSR2 is not a shutdown signal");
    /// # drop(controller); }
    /// ```
    #[cfg(all(feature = "restart", unix))]
    pub fn restart_signal(mut self, signal: Signal) -> Builder {
        self.restart_signal = Some(signal);
        self.set(Setting::RestartSignal)
    }

    /// No signal restarts the service (`LASTCALL_RESTART_SIGNAL=off`): the restart signal keeps
    /// its default action, or is left to the service's own handler (a `SIGHUP` that reloads a
    /// configuration), and [`Controller::restarter`](crate::Controller::restarter) still
    /// restarts from code. Needs the `restart` feature.
    #[cfg(all(feature = "restart", unix))]
    pub fn without_restart_signal(mut self) -> Builder {
        self.restart_signal = None;
        self.set(Setting::RestartSignal)
    }

    /// How long a restart waits for the new process to say it is ready before it is stopped
    /// and this process goes on serving (`LASTCALL_RESTART_TIMEOUT`, default 30 s). Needs the
    /// `restart` feature.
    #[cfg(all(feature = "restart", unix))]
    pub fn restart_timeout(mut self, timeout: Duration) -> Builder {
        self.restart_timeout = timeout;
        self.set(Setting::RestartTimeout)
    }

    /// A PID file (`LASTCALL_PID_FILE`): written at start-up with this process's id, and
    /// rewritten atomically with the new process's id when a restart succeeds (a failed one
    /// leaves it as it was). Needs the `restart` feature.
    #[cfg(all(feature = "restart", unix))]
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Builder {
        self.pid_file = Some(path.into());
        self.set(Setting::PidFile)
    }

    /// Whether a watchdog thread ends the process at the hard deadline (default `true`).
    ///
    /// Turn it off only where ending the process is not yours to do, such as a controller
    /// embedded in a host that enforces its own deadline. To keep the deadline during the
    /// shutdown but not after it, use [`Builder::continue_after_run`].
    pub fn watchdog(mut self, enabled: bool) -> Builder {
        self.watchdog = enabled;
        self
    }

    /// Declares a program that goes on after its shutdown: the hard deadline ends when
    /// [`Controller::run`] returns, instead of holding until the process is gone.
    ///
    /// By default the deadline is a promise about the process: once triggered, the process is
    /// gone by the end of the budget, whatever runs after `run` (code after it, a runtime whose
    /// drop waits for a stuck `spawn_blocking` task). At the end of the budget a process still
    /// alive prints what was still running and exits with status 5 ([`Exit::HardDeadline`](crate::Exit::HardDeadline)).
    /// That is what an orchestrator's grace period needs, and what a test or an in-process
    /// supervisor that runs a service's shutdown and then carries on must opt out of.
    ///
    /// Each controller's deadline is its own: with two controllers in one process, each armed
    /// by its own trigger, the first deadline to pass ends the process, unless that controller
    /// was built with this setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use lastcall::Controller;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // A test: shut the service down, then check what it did.
    /// let controller = Controller::builder().continue_after_run().build().unwrap();
    /// controller.trigger().trigger("test");
    /// let report = controller.run_with_report().await;
    /// assert!(report.exit.is_clean());
    /// // ... the test binary goes on, and no deadline will end it.
    /// # }
    /// ```
    pub fn continue_after_run(mut self) -> Builder {
        self.continue_after_run = true;
        self
    }

    /// Leaves readiness at [`HealthState::Starting`](crate::health::HealthState::Starting) until the
    /// application calls [`Readiness::set_ready`](crate::health::Readiness::set_ready) (from
    /// [`Controller::readiness`]). By default
    /// [`Controller::run`] marks the service ready when it starts waiting for a trigger.
    pub fn manual_readiness(mut self) -> Builder {
        self.manual_readiness = true;
        self
    }

    /// Reads the `LASTCALL_*` settings from these pairs instead of the process environment.
    pub fn env_vars<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Builder
    where
        K: Into<String>,
        V: Into<OsString>,
    {
        self.env = EnvSource::Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Ignores `LASTCALL_*` environment variables: only code sets the configuration.
    pub fn ignore_env(mut self) -> Builder {
        self.env = EnvSource::Ignore;
        self
    }

    /// Declares a `LASTCALL_*` variable that your application reads itself, so the builder
    /// does not reject it as unknown.
    pub fn allow_env(mut self, name: impl Into<String>) -> Builder {
        self.allowed.push(name.into());
        self
    }

    /// Checks the configuration, installs the signal handlers and returns the controller.
    ///
    /// Signal handlers are installed here, not in [`Controller::run`], so a signal that
    /// arrives while the application is still starting is not lost.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting, the bad value and what would be valid: an
    /// unparsable or zero duration, reserves that leave no time to wait for work, an unknown
    /// `LASTCALL_*` variable, an empty signal set, a signal that cannot be listened for, or no
    /// tokio runtime.
    pub fn build(mut self) -> Result<Controller, ConfigError> {
        self.apply_env()?;
        if self.signals.is_empty() {
            return Err(ConfigError::NoSignals {
                origin: self.origin(Setting::Signals),
            });
        }
        #[cfg(unix)]
        if !self.signals.contains(&Signal::Terminate) {
            // Left to its default action, SIGTERM (what every orchestrator sends) would kill
            // the process at once, dropping the requests in flight.
            return Err(ConfigError::SigtermNotHandled {
                signals: self.signals.clone(),
                origin: self.origin(Setting::Signals),
            });
        }
        #[cfg(all(feature = "restart", unix))]
        if let Some(restart) = self.restart_signal.filter(|s| self.signals.contains(s)) {
            return Err(ConfigError::RestartSignalConflict {
                restart,
                restart_origin: self.origin(Setting::RestartSignal),
                signals: self.signals.clone(),
                signals_origin: self.origin(Setting::Signals),
            });
        }
        #[cfg(all(feature = "restart", unix))]
        if self.restart_timeout.is_zero() {
            return Err(ConfigError::Zero {
                setting: Setting::RestartTimeout,
                origin: self.origin(Setting::RestartTimeout),
            });
        }
        let set = |setting, value| (self.origin(setting) != Origin::Default).then_some(value);
        let budget = Budget::from_settings(
            self.budget.total,
            self.budget.drain_delay,
            set(Setting::StopTimeout, self.budget.stop_accepting),
            set(Setting::FlushTimeout, self.budget.flush_telemetry),
            set(Setting::CloseTimeout, self.budget.close_dependencies),
        );
        let origins = self.origins.clone();
        let plan = budget.validate(&|s| origins.get(&s).copied().unwrap_or(Origin::Default))?;
        if let Some(path) = &self.report_file {
            // Checked (and created) now, so a path that cannot take the report fails at
            // startup, not when the report is due.
            crate::report::check_report_file(path)?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let watchdog =
            match self.watchdog {
                true => Some(crate::watchdog::Watchdog::start().map_err(|source| {
                    ConfigError::Thread {
                        name: "lastcall-watchdog",
                        source,
                    }
                })?),
                false => None,
            };
        let shared = Arc::new(Shared::new(
            plan,
            self.force,
            watchdog,
            self.continue_after_run,
            runtime,
            self.report_file.clone(),
        ));
        #[allow(unused_mut)]
        let mut listened = self.signals.clone();
        #[cfg(all(feature = "restart", unix))]
        let restart = {
            let state = crate::restart::State::start(
                crate::restart::Config {
                    signal: self.restart_signal,
                    timeout: self.restart_timeout,
                    pid_file: self.pid_file.clone(),
                },
                &shared,
            )?;
            let _ = shared.signal_hook.set(state.clone());
            listened.extend(self.restart_signal);
            state
        };
        let on_signal = {
            let shared = shared.clone();
            Arc::new(move |signal| shared.on_signal(signal))
        };
        let listener = crate::signal::listen(&listened, on_signal).map_err(|e| match e {
            crate::signal::ListenError::Signal(signal, source) => {
                ConfigError::Signal { signal, source }
            }
            crate::signal::ListenError::Thread(source) => ConfigError::Thread {
                name: "lastcall-signals",
                source,
            },
        })?;
        tracing::debug!(
            budget = ?plan.budget(),
            signals = ?self.signals,
            force_exit = ?self.force,
            "shutdown controller ready"
        );
        Ok(Controller::new(
            shared,
            listener,
            self.manual_readiness,
            #[cfg(all(feature = "restart", unix))]
            restart,
        ))
    }

    fn set(mut self, setting: Setting) -> Builder {
        self.origins.insert(setting, Origin::Code);
        self
    }

    fn origin(&self, setting: Setting) -> Origin {
        self.origins
            .get(&setting)
            .copied()
            .unwrap_or(Origin::Default)
    }

    fn apply_env(&mut self) -> Result<(), ConfigError> {
        let vars: Vec<(String, OsString)> =
            match std::mem::replace(&mut self.env, EnvSource::Ignore) {
                EnvSource::Ignore => return Ok(()),
                EnvSource::Vars(vars) => vars,
                EnvSource::Process => std::env::vars_os()
                    .map(|(k, v)| (k.to_string_lossy().into_owned(), v))
                    .collect(),
            };
        let mut vars = vars;
        // Sorted, so the first error reported does not depend on the environment's order.
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut settings = Vec::new();
        for (name, value) in vars {
            if !name.starts_with("LASTCALL_") {
                if let Some(meant) = Setting::prefix_near_miss(&name) {
                    tracing::warn!(
                        variable = %name,
                        meant = meant.env_name(),
                        "{name} is not read: did you mean {}? (names are case-sensitive)",
                        meant.env_name()
                    );
                }
                continue;
            }
            match Setting::from_env_name(&name) {
                Some(setting) => settings.push((setting, name, value)),
                None if self.allowed.contains(&name) => {}
                None if PROTOCOL_VARIABLES.contains(&name.as_str()) => {}
                // A near miss of a setting is a typo that would silently change nothing.
                None => match Setting::closest(&name) {
                    Some(meant) => {
                        return Err(ConfigError::UnknownVariable {
                            suggestion: Some(meant.env_name()),
                            name,
                        })
                    }
                    // Any other name is a neighbour's (a CI's `LASTCALL_SRC`, a tool's own
                    // variable), not a reason to refuse to start.
                    None => tracing::warn!(
                        variable = %name,
                        "{name} is not a lastcall setting and is ignored; declare it with \
                         Builder::allow_env if the application reads it"
                    ),
                },
            }
        }
        for (setting, name, value) in settings {
            let Some(value) = value.to_str() else {
                return Err(ConfigError::NotUnicode { name });
            };
            self.apply(setting, value)?;
            self.origins.insert(setting, Origin::Env);
        }
        Ok(())
    }

    fn apply(&mut self, setting: Setting, value: &str) -> Result<(), ConfigError> {
        let duration = |value: &str| {
            humantime::parse_duration(value.trim()).map_err(|source| ConfigError::Unparsable {
                setting,
                value: value.to_owned(),
                source,
            })
        };
        match setting {
            Setting::Budget => self.budget.total = duration(value)?,
            Setting::DrainDelay => self.budget.drain_delay = duration(value)?,
            Setting::StopTimeout => self.budget.stop_accepting = duration(value)?,
            Setting::FlushTimeout => self.budget.flush_telemetry = duration(value)?,
            Setting::CloseTimeout => self.budget.close_dependencies = duration(value)?,
            Setting::Signals => {
                let parsed: Result<Vec<Signal>, _> = value
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect();
                self.signals = dedup(parsed.map_err(|_| ConfigError::Invalid {
                    setting,
                    value: value.to_owned(),
                    expected: "a comma-separated list of SIGTERM, SIGINT, SIGHUP, SIGQUIT",
                })?);
            }
            Setting::ReportFile => {
                if value.trim().is_empty() {
                    return Err(ConfigError::Invalid {
                        setting,
                        value: value.to_owned(),
                        expected: "a file path, such as /dev/termination-log",
                    });
                }
                self.report_file = Some(value.into());
            }
            #[cfg(all(feature = "restart", unix))]
            Setting::RestartSignal => {
                self.restart_signal = match value.trim().to_ascii_lowercase().as_str() {
                    "off" | "none" => None,
                    _ => Some(value.parse().map_err(|_| ConfigError::Invalid {
                        setting,
                        value: value.to_owned(),
                        expected: "one of SIGHUP, SIGUSR2, SIGUSR1, SIGQUIT, SIGINT, SIGTERM \
                                   (and not one of LASTCALL_SIGNALS), or off",
                    })?),
                };
            }
            #[cfg(all(feature = "restart", unix))]
            Setting::RestartTimeout => self.restart_timeout = duration(value)?,
            #[cfg(all(feature = "restart", unix))]
            Setting::PidFile => {
                if value.trim().is_empty() {
                    return Err(ConfigError::Invalid {
                        setting,
                        value: value.to_owned(),
                        expected: "a file path, such as /run/orders.pid",
                    });
                }
                self.pid_file = Some(value.into());
            }
            #[cfg(not(all(feature = "restart", unix)))]
            Setting::RestartSignal | Setting::RestartTimeout | Setting::PidFile => {
                return Err(ConfigError::RestartUnsupported { setting });
            }
            Setting::ForceExit => {
                self.force = value.parse().map_err(|_| ConfigError::Invalid {
                    setting,
                    value: value.to_owned(),
                    expected: "\"never\" or \"second-interrupt\"",
                })?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("budget", &self.budget)
            .field("signals", &self.signals)
            .field("force", &self.force)
            .field("watchdog", &self.watchdog)
            .field("continue_after_run", &self.continue_after_run)
            .field("manual_readiness", &self.manual_readiness)
            .finish_non_exhaustive()
    }
}

fn dedup(signals: impl IntoIterator<Item = Signal>) -> Vec<Signal> {
    let mut out = Vec::new();
    for s in signals {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

impl Controller {
    /// A builder with the default configuration, which reads `LASTCALL_*` variables when built.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The controller configured by defaults and `LASTCALL_*` variables alone.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn from_env() -> Result<Controller, crate::error::ConfigError> {
        Builder::new().build()
    }
}
