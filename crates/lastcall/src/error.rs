//! Errors returned by lastcall.
//!
//! Configuration is checked once, when the [`Controller`](crate::Controller) is built, so a bad
//! setting stops the process at startup instead of surprising it at shutdown. Failures *during*
//! a shutdown are not errors: they are recorded in the [`Report`](crate::report::Report) and reflected
//! in the [`Exit`] code.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use humantime::format_duration;

use crate::{Exit, Signal};

/// A setting of the controller, named in configuration errors.
///
/// Each setting can be given in code (a [`Builder`](crate::Builder) method) or through its
/// environment variable; environment variables override code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// `LASTCALL_BUDGET`, [`Builder::budget`](crate::Builder::budget).
    Budget,
    /// `LASTCALL_DRAIN_DELAY`, [`Builder::drain_delay`](crate::Builder::drain_delay).
    DrainDelay,
    /// `LASTCALL_STOP_TIMEOUT`, [`Builder::stop_timeout`](crate::Builder::stop_timeout).
    StopTimeout,
    /// `LASTCALL_FLUSH_TIMEOUT`, [`Builder::flush_timeout`](crate::Builder::flush_timeout).
    FlushTimeout,
    /// `LASTCALL_CLOSE_TIMEOUT`, [`Builder::close_timeout`](crate::Builder::close_timeout).
    CloseTimeout,
    /// `LASTCALL_SIGNALS`, [`Builder::signals`](crate::Builder::signals).
    Signals,
    /// `LASTCALL_FORCE_EXIT`, [`Builder::force_exit`](crate::Builder::force_exit).
    ForceExit,
    /// `LASTCALL_REPORT_FILE`, [`Builder::report_file`](crate::Builder::report_file).
    ReportFile,
    /// `LASTCALL_RESTART_SIGNAL`, `Builder::restart_signal` (feature `restart`).
    RestartSignal,
    /// `LASTCALL_RESTART_TIMEOUT`, `Builder::restart_timeout` (feature `restart`).
    RestartTimeout,
    /// `LASTCALL_PID_FILE`, `Builder::pid_file` (feature `restart`).
    PidFile,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A [`Builder`](crate::Builder) method.
    Code,
    /// The setting's environment variable.
    Env,
}

/// A configuration the controller refuses to run with.
///
/// Every variant names the setting, the bad value and what would be valid. Print it and exit
/// with [`ConfigError::exit_code`] (78, [`Exit::Config`]).
///
/// # Examples
///
/// ```
/// use lastcall::{error::{ConfigError, Setting}, Controller};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = Controller::builder()
///     .env_vars([("LASTCALL_BUDGET", "soon")])
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, ConfigError::Unparsable { setting: Setting::Budget, .. }));
/// assert!(err.to_string().contains("LASTCALL_BUDGET=\"soon\""));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An environment variable's value is not a duration.
    #[error("{}={value:?} is not a duration: {source}; use a number and a unit, like \"30s\" or \"1500ms\"", setting.env_name())]
    Unparsable {
        /// The setting.
        setting: Setting,
        /// The value as given.
        value: String,
        /// Why it did not parse.
        #[source]
        source: humantime::DurationError,
    },
    /// An environment variable's value is not one of the accepted words.
    #[error("{}={value:?} is not valid: expected {expected}", setting.env_name())]
    Invalid {
        /// The setting.
        setting: Setting,
        /// The value as given.
        value: String,
        /// What would be valid.
        expected: &'static str,
    },
    /// A `LASTCALL_*` environment variable's value is not valid unicode.
    #[error("{name} is not valid unicode; set it to a plain ASCII value")]
    NotUnicode {
        /// The variable's name.
        name: String,
    },
    /// A `LASTCALL_*` environment variable that no setting reads but that is within three
    /// edits of one: a typo that would silently change nothing. Other unknown `LASTCALL_*`
    /// names are only warned about.
    #[error("unknown variable {name}{}; the variables read are {}", suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default(), Setting::ALL.map(Setting::env_name).join(", "))]
    UnknownVariable {
        /// The variable's name.
        name: String,
        /// The closest known name, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A duration that must be positive is zero.
    #[error("{} is zero; it must be greater than zero (for example \"{}\")", Named(*setting, *origin), setting.example())]
    Zero {
        /// The setting.
        setting: Setting,
        /// Where the value came from.
        origin: Origin,
    },
    /// A duration is below its minimum.
    #[error("{} is {}; it must be at least {}", Named(*setting, *origin), format_duration(*value), format_duration(*minimum))]
    TooShort {
        /// The setting.
        setting: Setting,
        /// Where the value came from.
        origin: Origin,
        /// The value given.
        value: Duration,
        /// The smallest value accepted.
        minimum: Duration,
    },
    /// A duration is beyond the longest accepted, [`Budget::MAX_DURATION`](crate::Budget::MAX_DURATION)
    /// (a day): most often a unit mistake.
    #[error("{} is {}; it must be at most {} (is the unit right? for example \"{}\")", Named(*setting, *origin), format_duration(*value), format_duration(*maximum), setting.example())]
    TooLong {
        /// The setting.
        setting: Setting,
        /// Where the value came from.
        origin: Origin,
        /// The value given.
        value: Duration,
        /// The largest value accepted.
        maximum: Duration,
    },
    /// The drain delay and the phase reserves add up to the whole budget or more, leaving no
    /// time to wait for in-flight work.
    #[error(
        "the reserves leave no time to wait for work: LASTCALL_DRAIN_DELAY ({}) + LASTCALL_STOP_TIMEOUT ({}) + LASTCALL_FLUSH_TIMEOUT ({}) + LASTCALL_CLOSE_TIMEOUT ({}) = {} is not less than {} ({}); raise the budget above {} or lower the reserves",
        format_duration(*drain_delay), format_duration(*stop_accepting),
        format_duration(*flush_telemetry), format_duration(*close_dependencies),
        format_duration(*reserved), Named(Setting::Budget, *budget_origin), format_duration(*total),
        format_duration(*reserved)
    )]
    ReservesExceedBudget {
        /// The whole budget.
        total: Duration,
        /// The drain delay.
        drain_delay: Duration,
        /// The stop-accepting reserve.
        stop_accepting: Duration,
        /// The flush-telemetry reserve.
        flush_telemetry: Duration,
        /// The close-dependencies reserve.
        close_dependencies: Duration,
        /// The sum of the drain delay and the reserves.
        reserved: Duration,
        /// Where the total budget came from.
        budget_origin: Origin,
    },
    /// The set of signals is empty, so nothing but code could start the shutdown.
    #[error("{} is empty; list at least one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2", Named(Setting::Signals, *origin))]
    NoSignals {
        /// Where the empty set came from.
        origin: Origin,
    },
    /// The signal set leaves `SIGTERM` to its default action, which kills the process at once:
    /// every orchestrator's stop would drop the requests in flight.
    #[error("{} is {}, which leaves SIGTERM to its default action: the stop every orchestrator sends would kill the process at once; add SIGTERM (for example \"SIGTERM,{}\")", Named(Setting::Signals, *origin), signals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","), signals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","))]
    SigtermNotHandled {
        /// The signals configured.
        signals: Vec<Signal>,
        /// Where the set came from.
        origin: Origin,
    },
    /// The report file cannot be opened for writing.
    #[error("{}={} cannot be written: {source}; point it at a writable file (Kubernetes: /dev/termination-log)", Setting::ReportFile.env_name(), path.display())]
    ReportFile {
        /// The path.
        path: std::path::PathBuf,
        /// Why it cannot be opened.
        #[source]
        source: std::io::Error,
    },
    /// The report file is not one the report may be written to.
    #[error("{}={} is refused: {problem}; point it at a new or empty regular file, or one that holds an earlier report (Kubernetes: /dev/termination-log)", Setting::ReportFile.env_name(), path.display())]
    ReportFileRefused {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A thread of lastcall's (the signal listener, the watchdog) could not be started.
    #[error("cannot start the {name} thread: {source}; the process is out of threads or memory")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Installing a signal handler failed.
    #[error("cannot listen for {signal}: {source}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The restart signal is also one of the signals that start the shutdown: one signal
    /// cannot mean both.
    #[error("{} is {restart}, which is also in {} ({}): one signal cannot both restart and stop the service; remove {restart} from {} or set {} to a signal not in it", Named(Setting::RestartSignal, *restart_origin), Named(Setting::Signals, *signals_origin), signals.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","), Setting::Signals.env_name(), Setting::RestartSignal.env_name())]
    RestartSignalConflict {
        /// The restart signal.
        restart: Signal,
        /// Where the restart signal came from.
        restart_origin: Origin,
        /// The signals that start the shutdown.
        signals: Vec<Signal>,
        /// Where that set came from.
        signals_origin: Origin,
    },
    /// A restart setting was given to a program built without the `restart` feature.
    #[error("{setting} is set, but this program was built without lastcall's `restart` feature (unix only); unset {setting} or build with the feature")]
    RestartUnsupported {
        /// The setting given.
        setting: Setting,
    },
    /// The restart handshake variables a predecessor passed are unusable (they are set by
    /// lastcall for its successor, never by hand).
    #[error("{variable}={value:?} is not a usable restart handshake: {problem}; this variable is set by lastcall for the new process at a restart, unset it")]
    RestartHandshake {
        /// `LASTCALL_RESTART_FD` or `LASTCALL_RESTART_PARENT`.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The PID file cannot be written at start-up.
    #[error("{}={} cannot be written: {source}; point it at a writable path", Setting::PidFile.env_name(), path.display())]
    PidFile {
        /// The path.
        path: std::path::PathBuf,
        /// Why it cannot be written.
        #[source]
        source: std::io::Error,
    },
    /// The controller was built outside a tokio runtime, so it cannot listen for signals.
    #[error(
        "Builder::build must be called inside a tokio runtime (for example from #[tokio::main])"
    )]
    NoRuntime,
}

impl ConfigError {
    /// The exit status for a configuration error: 78 ([`Exit::Config`]).
    pub fn exit_code(&self) -> ExitCode {
        Exit::Config.into()
    }

    /// The setting at fault, where there is one.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            ConfigError::Unparsable { setting, .. }
            | ConfigError::Invalid { setting, .. }
            | ConfigError::Zero { setting, .. }
            | ConfigError::TooShort { setting, .. }
            | ConfigError::TooLong { setting, .. } => Some(*setting),
            ConfigError::ReservesExceedBudget { .. } => Some(Setting::Budget),
            ConfigError::NoSignals { .. }
            | ConfigError::SigtermNotHandled { .. }
            | ConfigError::Signal { .. } => Some(Setting::Signals),
            ConfigError::ReportFile { .. } | ConfigError::ReportFileRefused { .. } => {
                Some(Setting::ReportFile)
            }
            ConfigError::RestartSignalConflict { .. } => Some(Setting::RestartSignal),
            ConfigError::RestartUnsupported { setting } => Some(*setting),
            ConfigError::PidFile { .. } => Some(Setting::PidFile),
            ConfigError::RestartHandshake { .. } => None,
            ConfigError::NotUnicode { .. }
            | ConfigError::UnknownVariable { .. }
            | ConfigError::Thread { .. }
            | ConfigError::NoRuntime => None,
        }
    }
}

impl Setting {
    /// Every setting.
    pub const ALL: [Setting; 11] = [
        Setting::Budget,
        Setting::DrainDelay,
        Setting::StopTimeout,
        Setting::FlushTimeout,
        Setting::CloseTimeout,
        Setting::Signals,
        Setting::ForceExit,
        Setting::ReportFile,
        Setting::RestartSignal,
        Setting::RestartTimeout,
        Setting::PidFile,
    ];

    /// The environment variable that sets it.
    pub const fn env_name(self) -> &'static str {
        match self {
            Setting::Budget => "LASTCALL_BUDGET",
            Setting::DrainDelay => "LASTCALL_DRAIN_DELAY",
            Setting::StopTimeout => "LASTCALL_STOP_TIMEOUT",
            Setting::FlushTimeout => "LASTCALL_FLUSH_TIMEOUT",
            Setting::CloseTimeout => "LASTCALL_CLOSE_TIMEOUT",
            Setting::Signals => "LASTCALL_SIGNALS",
            Setting::ForceExit => "LASTCALL_FORCE_EXIT",
            Setting::ReportFile => "LASTCALL_REPORT_FILE",
            Setting::RestartSignal => "LASTCALL_RESTART_SIGNAL",
            Setting::RestartTimeout => "LASTCALL_RESTART_TIMEOUT",
            Setting::PidFile => "LASTCALL_PID_FILE",
        }
    }

    /// The setting an environment variable sets, if `name` is one of lastcall's.
    ///
    /// ```
    /// use lastcall::error::Setting;
    ///
    /// assert_eq!(Setting::from_env_name("LASTCALL_BUDGET"), Some(Setting::Budget));
    /// assert_eq!(Setting::from_env_name("LASTCALL_BUDGT"), None);
    /// ```
    pub fn from_env_name(name: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.env_name() == name)
    }

    /// The setting whose variable name is within three edits of `name`, the closest first:
    /// what a misspelt `LASTCALL_*` variable most likely meant.
    ///
    /// ```
    /// use lastcall::error::Setting;
    ///
    /// assert_eq!(Setting::closest("LASTCALL_BUGDET"), Some(Setting::Budget));
    /// assert_eq!(Setting::closest("LASTCALL_DEMO_DB"), None);
    /// ```
    pub fn closest(name: &str) -> Option<Setting> {
        Setting::ALL
            .into_iter()
            .map(|s| (edit_distance(name, s.env_name()), s))
            .filter(|(d, _)| *d <= 3)
            .min_by_key(|(d, _)| *d)
            .map(|(_, s)| s)
    }

    /// The setting a variable outside the `LASTCALL_` prefix was most likely meant to be:
    /// another case (`lastcall_budget`), a missing or doubled letter in the prefix
    /// (`LASTCAL_BUDGET`), an extra separator (`LAST_CALL_BUDGET`). Such a variable is not
    /// read; the builder warns about it.
    ///
    /// ```
    /// use lastcall::error::Setting;
    ///
    /// assert_eq!(Setting::prefix_near_miss("lastcall_budget"), Some(Setting::Budget));
    /// assert_eq!(Setting::prefix_near_miss("LAST_CALL_DRAIN_DELAY"), Some(Setting::DrainDelay));
    /// assert_eq!(Setting::prefix_near_miss("LASTCAL_BUDGET"), Some(Setting::Budget));
    /// assert_eq!(Setting::prefix_near_miss("PATH"), None);
    /// ```
    pub fn prefix_near_miss(name: &str) -> Option<Setting> {
        if name.starts_with("LASTCALL_") {
            return None;
        }
        let upper = name.to_ascii_uppercase();
        Setting::ALL
            .into_iter()
            .map(|s| (edit_distance(&upper, s.env_name()), s))
            .filter(|(d, _)| *d <= 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, s)| s)
    }

    /// The [`Builder`](crate::Builder) method that sets it.
    pub const fn method(self) -> &'static str {
        match self {
            Setting::Budget => "Builder::budget",
            Setting::DrainDelay => "Builder::drain_delay",
            Setting::StopTimeout => "Builder::stop_timeout",
            Setting::FlushTimeout => "Builder::flush_timeout",
            Setting::CloseTimeout => "Builder::close_timeout",
            Setting::Signals => "Builder::signals",
            Setting::ForceExit => "Builder::force_exit",
            Setting::ReportFile => "Builder::report_file",
            Setting::RestartSignal => "Builder::restart_signal",
            Setting::RestartTimeout => "Builder::restart_timeout",
            Setting::PidFile => "Builder::pid_file",
        }
    }

    const fn example(self) -> &'static str {
        match self {
            Setting::Budget => "30s",
            Setting::DrainDelay => "5s",
            Setting::StopTimeout => "1s",
            Setting::FlushTimeout => "2s",
            Setting::CloseTimeout => "5s",
            Setting::Signals => "SIGTERM,SIGINT",
            Setting::ForceExit => "never",
            Setting::ReportFile => "/dev/termination-log",
            Setting::RestartSignal => "SIGHUP",
            Setting::RestartTimeout => "30s",
            Setting::PidFile => "/run/orders.pid",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.env_name())
    }
}

/// A setting named the way its user set it.
struct Named(Setting, Origin);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Origin::Env => f.write_str(self.0.env_name()),
            Origin::Code => write!(f, "{} (set by {})", self.0.env_name(), self.0.method()),
            Origin::Default => write!(f, "{} (default)", self.0.env_name()),
        }
    }
}

/// A TLS certificate or key that [`TlsListener::from_pem_files`](crate::http::TlsListener::from_pem_files)
/// refuses, at startup. Needs the `tls` feature.
///
/// Each variant names the file and says how to fix it. A service that stops on it should
/// exit 78 (`EX_CONFIG`), as for a [`ConfigError`].
///
/// # Examples
///
/// ```
/// use lastcall::error::TlsConfigError;
/// use lastcall::http::TlsListener;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let err = TlsListener::from_pem_files(tcp, "/nonexistent/cert.pem", "/nonexistent/key.pem")
///     .unwrap_err();
/// assert!(matches!(err, TlsConfigError::Certificates { .. }));
/// assert!(err.to_string().contains("/nonexistent/cert.pem"));
/// # Ok(()) }
/// ```
#[cfg(feature = "tls")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The certificate file cannot be read, or is not PEM.
    #[error("cannot read the TLS certificate chain from {}: {source}; point it at a PEM file with the server's certificate first, then its intermediates", path.display())]
    Certificates {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" section); point it at the server's certificate chain, not its key", path.display())]
    NoCertificate {
        /// The certificate file.
        path: std::path::PathBuf,
    },
    /// The key file cannot be read, or holds no private key.
    #[error("cannot read a TLS private key from {}: {source}; point it at a PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1), unencrypted", path.display())]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refuses the pair: the key is not the certificate's, or of a kind the `ring`
    /// provider does not support.
    #[error("the TLS certificate {} and key {} are refused: {source}; check that the key is the one the certificate was issued for", cert.display(), key.display())]
    Refused {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// Levenshtein distance; the names are short, so the quadratic table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_typos_get_a_suggestion() {
        assert_eq!(Setting::closest("LASTCALL_BUDGT"), Some(Setting::Budget));
        assert_eq!(Setting::closest("LASTCALL_DRAIN"), None);
        assert_eq!(
            Setting::closest("LASTCALL_DRAINDELAY"),
            Some(Setting::DrainDelay)
        );
    }
}
