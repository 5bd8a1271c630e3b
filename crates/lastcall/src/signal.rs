//! Which operating-system signals start the shutdown: see [`Signal`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A termination signal the controller can listen for.
///
/// The default set is [`Signal::Terminate`] and [`Signal::Interrupt`]. On platforms without
/// unix signals only [`Signal::Interrupt`] (Ctrl+C) is available; asking for another one is a
/// configuration error.
///
/// Parsing accepts `SIGTERM`, `TERM` and `term` alike:
///
/// ```
/// use lastcall::Signal;
///
/// assert_eq!("SIGHUP".parse::<Signal>(), Ok(Signal::Hangup));
/// assert_eq!("int".parse::<Signal>(), Ok(Signal::Interrupt));
/// assert_eq!("usr2".parse::<Signal>(), Ok(Signal::User2));
/// assert_eq!(Signal::Terminate.to_string(), "SIGTERM");
/// assert!("SIGKILL".parse::<Signal>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGINT`: Ctrl+C in a terminal.
    #[serde(rename = "SIGINT")]
    Interrupt,
    /// `SIGTERM`: the polite stop sent by Kubernetes, systemd, Docker and `kill`.
    #[serde(rename = "SIGTERM")]
    Terminate,
    /// `SIGHUP`: the terminal went away.
    #[serde(rename = "SIGHUP")]
    Hangup,
    /// `SIGQUIT`: Ctrl+\ in a terminal.
    #[serde(rename = "SIGQUIT")]
    Quit,
    /// `SIGUSR1`: user-defined.
    #[serde(rename = "SIGUSR1")]
    User1,
    /// `SIGUSR2`: user-defined; the restart signal of nginx's binary upgrade, unicorn and puma.
    #[serde(rename = "SIGUSR2")]
    User2,
}

/// The error returned when a string names no signal lastcall can listen for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError(());

impl Signal {
    /// The signals listened for unless configured otherwise.
    pub const DEFAULT: [Signal; 2] = [Signal::Terminate, Signal::Interrupt];

    /// The conventional name, such as `"SIGTERM"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
            Signal::User1 => "SIGUSR1",
            Signal::User2 => "SIGUSR2",
        }
    }

    /// The signal's number on Linux, used for the `128 + n` convention.
    pub const fn number(self) -> i32 {
        match self {
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Quit => 3,
            Signal::Terminate => 15,
            Signal::User1 => 10,
            Signal::User2 => 12,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2")
    }
}

impl std::error::Error for ParseSignalError {}

impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        match name {
            "INT" => Ok(Signal::Interrupt),
            "TERM" => Ok(Signal::Terminate),
            "HUP" => Ok(Signal::Hangup),
            "QUIT" => Ok(Signal::Quit),
            "USR1" => Ok(Signal::User1),
            "USR2" => Ok(Signal::User2),
            _ => Err(ParseSignalError(())),
        }
    }
}

impl Signal {
    /// Every signal lastcall can listen for.
    #[cfg(unix)]
    const ALL: [Signal; 6] = [
        Signal::Hangup,
        Signal::Interrupt,
        Signal::Quit,
        Signal::Terminate,
        Signal::User1,
        Signal::User2,
    ];

    /// The signal's number on this system, which is [`Signal::number`] on Linux; `SIGUSR1` and
    /// `SIGUSR2` have other numbers on other unix systems.
    #[cfg(unix)]
    fn raw(self) -> i32 {
        match self {
            Signal::Hangup => libc::SIGHUP,
            Signal::Interrupt => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Terminate => libc::SIGTERM,
            Signal::User1 => libc::SIGUSR1,
            Signal::User2 => libc::SIGUSR2,
        }
    }

    /// The signal with this number on this system, if lastcall can listen for it.
    #[cfg(unix)]
    fn from_raw(raw: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.raw() == raw)
    }
}

/// The listener of a controller's signals: on unix a thread, `lastcall-signals`, that hears
/// them however busy or blocked the async runtime is; elsewhere a task waiting for Ctrl+C.
pub(crate) struct Listener {
    #[cfg(unix)]
    handle: signal_hook::iterator::Handle,
    #[cfg(not(unix))]
    task: tokio::task::JoinHandle<()>,
}

/// Why a listener could not be installed.
pub(crate) enum ListenError {
    /// The handler for this signal could not be installed.
    Signal(Signal, std::io::Error),
    /// The listener's thread could not be started.
    #[cfg_attr(not(unix), allow(dead_code))]
    Thread(std::io::Error),
}

type OnSignal = std::sync::Arc<dyn Fn(Signal) + Send + Sync>;

impl Listener {
    /// Stops listening: the thread ends (or the task is aborted). Signals delivered later are
    /// ignored, as they were by tokio's handlers before: the handler stays installed.
    pub(crate) fn stop(&self) {
        #[cfg(unix)]
        self.handle.close();
        #[cfg(not(unix))]
        self.task.abort();
    }
}

/// Installs the handlers and starts the thread that calls `on_signal` for every delivery.
///
/// The thread is the whole reason signals still start the shutdown when every worker of the
/// runtime is blocked (a handler in `std::thread::sleep`, a stuck synchronous call): the
/// trigger, the readiness flip and the hard deadline then need no task to run. `signal-hook`'s
/// `Signals` shares tokio's handler registry, so tokio's own signal streams in the same process
/// keep working.
///
/// Registration happens here, synchronously, so a signal that arrives between building the
/// controller and running it is not lost.
#[cfg(unix)]
pub(crate) fn listen(signals: &[Signal], on_signal: OnSignal) -> Result<Listener, ListenError> {
    let numbers: Vec<i32> = signals.iter().map(|s| s.raw()).collect();
    // It fails only for the signals that cannot be handled (SIGKILL, SIGSEGV...), none of
    // which a `Signal` names; the first is named should the system refuse anyway.
    let mut delivered = signal_hook::iterator::Signals::new(&numbers)
        .map_err(|e| ListenError::Signal(signals[0], e))?;
    let handle = delivered.handle();
    std::thread::Builder::new()
        .name("lastcall-signals".into())
        .spawn(move || {
            // Ends when the controller closes the handle.
            for number in delivered.forever() {
                if let Some(signal) = Signal::from_raw(number) {
                    on_signal(signal);
                }
            }
        })
        .map_err(ListenError::Thread)?;
    Ok(Listener { handle })
}

/// Installs the Ctrl+C listener, the only signal outside unix.
#[cfg(not(unix))]
pub(crate) fn listen(signals: &[Signal], on_signal: OnSignal) -> Result<Listener, ListenError> {
    if let Some(&sig) = signals.iter().find(|s| **s != Signal::Interrupt) {
        return Err(ListenError::Signal(
            sig,
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only SIGINT (Ctrl+C) exists on this platform",
            ),
        ));
    }
    Ok(Listener {
        task: tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                on_signal(Signal::Interrupt);
            }
        }),
    })
}

/// What a repeated interrupt does while a shutdown is already running.
///
/// # Examples
///
/// ```
/// use lastcall::signal::ForceExit;
///
/// assert_eq!("second-interrupt".parse::<ForceExit>(), Ok(ForceExit::SecondInterrupt));
/// assert_eq!(ForceExit::default(), ForceExit::Never);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForceExit {
    /// Later signals are logged and recorded, and the shutdown carries on. A second `SIGTERM`
    /// from an impatient orchestrator or an extra Ctrl+C never cuts in-flight work.
    #[default]
    Never,
    /// A `SIGINT` received while the shutdown is running (the second Ctrl+C) ends the process
    /// at once with status 130, after printing what was still active.
    SecondInterrupt,
}

/// The error returned when a string is not a [`ForceExit`] policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseForceExitError(());

impl std::str::FromStr for ForceExit {
    type Err = ParseForceExitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "never" | "off" | "false" | "0" => Ok(ForceExit::Never),
            "second-interrupt" | "on" | "true" | "1" => Ok(ForceExit::SecondInterrupt),
            _ => Err(ParseForceExitError(())),
        }
    }
}

impl fmt::Display for ParseForceExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected \"never\" or \"second-interrupt\"")
    }
}

impl std::error::Error for ParseForceExitError {}
