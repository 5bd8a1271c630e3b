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
        }
    }

    /// The signal's number on Linux, used for the `128 + n` convention.
    pub const fn number(self) -> i32 {
        match self {
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Quit => 3,
            Signal::Terminate => 15,
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
        f.write_str("expected one of SIGTERM, SIGINT, SIGHUP, SIGQUIT")
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
            _ => Err(ParseSignalError(())),
        }
    }
}

/// One installed listener: a task, or a signal stream the host polls on the main thread (see
/// the `host` module).
pub(crate) enum Listener {
    Task(tokio::task::JoinHandle<()>),
    #[cfg(unix)]
    Hosted(std::sync::Arc<crate::host::Host>, u64),
}

impl Listener {
    /// Stops listening.
    pub(crate) fn stop(&self) {
        match self {
            Listener::Task(task) => task.abort(),
            #[cfg(unix)]
            Listener::Hosted(host, id) => host.unlisten(*id),
        }
    }
}

/// Installs one listener per signal and calls `on_signal` for every delivery: polled by the
/// host when one runs (no task of lastcall's is then left on the runtime for its teardown),
/// else a task each. The controller's drop stops them.
///
/// Registration happens here, synchronously, so a signal that arrives between building the
/// controller and running it is not lost.
#[cfg(unix)]
pub(crate) fn listen(
    signals: &[Signal],
    on_signal: std::sync::Arc<dyn Fn(Signal) + Send + Sync>,
) -> Result<Vec<Listener>, (Signal, std::io::Error)> {
    use tokio::signal::unix::{signal, SignalKind};

    let mut streams = Vec::with_capacity(signals.len());
    for &sig in signals {
        let kind = match sig {
            Signal::Interrupt => SignalKind::interrupt(),
            Signal::Terminate => SignalKind::terminate(),
            Signal::Hangup => SignalKind::hangup(),
            Signal::Quit => SignalKind::quit(),
        };
        streams.push((sig, signal(kind).map_err(|e| (sig, e))?));
    }
    let host = crate::host::current();
    Ok(streams
        .into_iter()
        .map(|(sig, stream)| {
            let mut stream = match &host {
                Some(host) => match host.listen(sig, stream, on_signal.clone()) {
                    Ok(id) => return Listener::Hosted(host.clone(), id),
                    Err(stream) => stream,
                },
                None => stream,
            };
            let on_signal = on_signal.clone();
            Listener::Task(tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    on_signal(sig);
                }
            }))
        })
        .collect())
}

/// Installs the Ctrl+C listener, the only signal outside unix.
#[cfg(not(unix))]
pub(crate) fn listen(
    signals: &[Signal],
    on_signal: std::sync::Arc<dyn Fn(Signal) + Send + Sync>,
) -> Result<Vec<Listener>, (Signal, std::io::Error)> {
    if let Some(&sig) = signals.iter().find(|s| **s != Signal::Interrupt) {
        return Err((
            sig,
            std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only SIGINT (Ctrl+C) exists on this platform",
            ),
        ));
    }
    Ok(signals
        .iter()
        .map(|_| {
            let on_signal = on_signal.clone();
            Listener::Task(tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    on_signal(Signal::Interrupt);
                }
            }))
        })
        .collect())
}
