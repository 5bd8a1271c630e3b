//! systemd integration (feature `systemd`, Linux): the notify protocol and socket activation.
//!
//! With `Type=notify`, systemd learns from the service itself when it is ready and how its
//! shutdown goes. [`notify`] connects a [`Controller`] to that protocol:
//!
//! | when | message |
//! |---|---|
//! | the health becomes ready ([`Readiness::set_ready`](crate::health::Readiness::set_ready)) | `READY=1`, `STATUS=ready` |
//! | the shutdown is triggered | `STOPPING=1`, `STATUS=shutting down: not_ready` |
//! | each later phase begins | `STATUS=shutting down: <phase>` |
//! | each phase, then every second until exit | `EXTEND_TIMEOUT_USEC=<time left in the budget>` |
//!
//! `EXTEND_TIMEOUT_USEC` keeps systemd's stop timeout (`TimeoutStopSec`) from killing a service
//! that is still draining inside its budget, and never asks for more than the budget has left:
//! past it, lastcall's own watchdog ends the process. Without `NOTIFY_SOCKET` (not started by
//! systemd, or `NotifyAccess=none`) [`notify`] does nothing.
//!
//! [`listener`] takes a listening socket passed by socket activation (`LISTEN_FDS`), so a
//! restart never refuses a connection: systemd keeps the socket open and queues connections
//! while the new process starts; [`listeners`] and [`listener_named`] take several, by their
//! `LISTEN_FDNAMES` names. lastcall's own restart (feature `restart`) passes its listeners to
//! the new process the same way, so a service written for socket activation needs nothing
//! more. `deploy/systemd/` has unit files that use both.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::health::HealthState;
use crate::{Controller, Phase, Shutdown};

/// How often `EXTEND_TIMEOUT_USEC` is renewed during a shutdown.
const EXTEND_EVERY: Duration = Duration::from_secs(1);

/// What the systemd integration can fail with, at startup.
///
/// Needs the `systemd` feature (and a unix target).
///
/// # Examples
///
/// ```
/// use lastcall::systemd::SystemdError;
///
/// let err = SystemdError::NoRuntime;
/// assert!(err.to_string().contains("tokio runtime"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SystemdError {
    /// `NOTIFY_SOCKET` is set but a message could not be sent to it.
    #[error("systemd: cannot send to NOTIFY_SOCKET={socket:?}: {source}; check the unit's NotifyAccess= or unset NOTIFY_SOCKET")]
    Notify {
        /// The value of `NOTIFY_SOCKET`.
        socket: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// `LISTEN_FDS` passed a socket that is not a usable TCP listener.
    #[error("systemd: the socket passed as fd 3 (LISTEN_FDS) is not a TCP listener: {source}; give the .socket unit a ListenStream= line")]
    Listener {
        /// Why the socket was not usable.
        #[source]
        source: std::io::Error,
    },
    /// An inherited listener could not be made ready for tokio (set non-blocking).
    #[error("systemd: the socket passed as fd {fd} (LISTEN_FDS, name {name:?}) cannot be used: {source}")]
    Inherited {
        /// The fd number.
        fd: usize,
        /// Its `LISTEN_FDNAMES` name.
        name: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// [`notify`] was called outside a tokio runtime.
    #[error("systemd: no tokio runtime; call lastcall::systemd::notify from inside one")]
    NoRuntime,
}

/// Reports the controller's readiness and shutdown to systemd over `NOTIFY_SOCKET`; returns
/// whether systemd is listening (`false`, and nothing happens, when `NOTIFY_SOCKET` is unset).
///
/// Needs the `systemd` feature (and a unix target).
///
/// Call it once, after building the controller and before marking the service ready.
///
/// # Errors
///
/// [`SystemdError::Notify`] when `NOTIFY_SOCKET` is set but unusable (the first message, a
/// `STATUS=starting`, is sent at once so this shows at startup), [`SystemdError::NoRuntime`]
/// outside a tokio runtime.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let controller = lastcall::Controller::from_env()?;
/// lastcall::systemd::notify(&controller)?;
/// // ... start serving ...
/// controller.readiness().set_ready(); // READY=1
/// let code = controller.run().await;
/// # let _ = code; Ok(()) }
/// ```
pub fn notify(controller: &Controller) -> Result<bool, SystemdError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SystemdError::NoRuntime)?;
    sd_notify::notify(false, &[NotifyState::Status("starting")]).map_err(|source| {
        SystemdError::Notify {
            socket: socket.to_string_lossy().into_owned(),
            source,
        }
    })?;
    let shutdown = controller.shutdown();
    // Phase messages go out synchronously as each phase is entered: the last ones come
    // microseconds before the process exits, too late for a task to be scheduled.
    // After a restart the successor is the main process: this one's stop is not the
    // service's (under NotifyAccess=main systemd would ignore it anyway).
    let observed = shutdown.clone();
    shutdown.shared.observe(Box::new(move |phase, end| {
        if !observed.shared.restarting() {
            announce(phase, end);
        }
    }));
    runtime.spawn(report(shutdown));
    Ok(true)
}

/// A listening socket passed to this process (`LISTEN_FDS`), by socket activation or by a
/// lastcall restart.
///
/// # Examples
///
/// ```no_run
/// use lastcall::systemd::Inherited;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// for (name, listener) in lastcall::systemd::listeners()? {
///     match listener {
///         Inherited::Tcp(tcp) => println!("{name}: TCP {}", tcp.local_addr()?),
///         Inherited::Unix(unix) => println!("{name}: Unix {:?}", unix.local_addr()?),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Inherited {
    /// A TCP listener, non-blocking.
    Tcp(std::net::TcpListener),
    /// A Unix stream listener, non-blocking.
    Unix(std::os::unix::net::UnixListener),
}

/// Takes every listening socket passed to this process (`LISTEN_FDS`), each with its name
/// from `LISTEN_FDNAMES` (`"unknown"` when it has none), in order; empty when the process was
/// not given any.
///
/// The sockets are made non-blocking, so a blocking fd handed in works under tokio. Passed fds
/// that are not TCP or Unix stream sockets are closed. The fds can be taken once per process:
/// a later call (or [`listener`], [`listener_named`]) finds none. `LISTEN_PID`, when set, must
/// be this process's id (otherwise the fds are not for it); when absent the fds are taken.
///
/// # Errors
///
/// [`SystemdError::Inherited`] when a passed listener cannot be set non-blocking.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let inherited = lastcall::systemd::listeners()?;
/// println!("{} listeners passed in", inherited.len());
/// # Ok(()) }
/// ```
pub fn listeners() -> Result<Vec<(String, Inherited)>, SystemdError> {
    take_all()
}

/// Takes the passed listening socket named `name` in `LISTEN_FDNAMES`; `Ok(None)` when there
/// is none of that name. The other passed fds are closed, as [`listeners`] takes them all:
/// call [`listeners`] to use several.
///
/// # Errors
///
/// As [`listeners`].
///
/// # Examples
///
/// Serve on the socket a restart (or systemd's `FileDescriptorName=http`) passed, or bind
/// one on the first start:
///
/// ```no_run
/// use lastcall::systemd::Inherited;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = match lastcall::systemd::listener_named("http")? {
///     Some(Inherited::Tcp(tcp)) => tokio::net::TcpListener::from_std(tcp)?,
///     _ => lastcall::http::listen(([127, 0, 0, 1], 3000).into())?,
/// };
/// # let _ = listener; Ok(()) }
/// ```
pub fn listener_named(name: &str) -> Result<Option<Inherited>, SystemdError> {
    let mut all = listeners()?;
    let found = all.iter().position(|(n, _)| n == name);
    Ok(found.map(|index| all.swap_remove(index).1))
}

/// Takes the TCP listener systemd passed by socket activation, if any (`LISTEN_FDS` set for
/// this process); `Ok(None)` when the process was not socket-activated.
///
/// Needs the `systemd` feature (and a unix target).
///
/// The first passed socket is returned, non-blocking; the others are closed (see
/// [`listeners`] to take several).
///
/// # Errors
///
/// [`SystemdError::Listener`] when the first passed socket is not a TCP listener.
///
/// # Examples
///
/// ```no_run
/// let listener = match lastcall::systemd::listener()? {
///     Some(listener) => listener,
///     None => std::net::TcpListener::bind("127.0.0.1:3000")?,
/// };
/// println!("listening on {}", listener.local_addr()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn listener() -> Result<Option<std::net::TcpListener>, SystemdError> {
    match listeners()?.into_iter().next() {
        None => Ok(None),
        Some((_, Inherited::Tcp(tcp))) => Ok(Some(tcp)),
        Some((_, Inherited::Unix(_))) => Err(SystemdError::Listener {
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fd 3 is a Unix stream socket",
            ),
        }),
    }
}

/// `READY=1` when the service becomes ready, then, during the shutdown, a renewed
/// `EXTEND_TIMEOUT_USEC` every second until exit.
async fn report(shutdown: Shutdown) {
    tokio::select! {
        () = shutdown.health().reached(HealthState::Ready) => {
            send(&[NotifyState::Ready, NotifyState::Status("ready")]);
        }
        () = shutdown.reached(Phase::NotReady) => {}
    }
    shutdown.reached(Phase::NotReady).await;
    if shutdown.shared.restarting() {
        return;
    }
    let exit = shutdown.reached(Phase::Exit);
    tokio::pin!(exit);
    loop {
        tokio::select! {
            () = &mut exit => return,
            () = tokio::time::sleep(EXTEND_EVERY) => {
                if let Some(more) = extend(shutdown.deadline(Phase::Exit)) {
                    send(&[more]);
                }
            }
        }
    }
}

/// The message for entering `phase`; `end` is when the budget runs out.
fn announce(phase: Phase, end: Option<tokio::time::Instant>) {
    if phase == Phase::Running {
        return;
    }
    let status = format!("shutting down: {}", phase.as_str());
    let mut message = Vec::with_capacity(3);
    if phase == Phase::NotReady {
        message.push(NotifyState::Stopping);
    }
    message.push(NotifyState::Status(&status));
    if phase != Phase::Exit {
        message.extend(extend(end));
    }
    send(&message);
}

/// `EXTEND_TIMEOUT_USEC` for the time left until `end`, the end of the budget; none once it is
/// spent.
fn extend(end: Option<tokio::time::Instant>) -> Option<NotifyState<'static>> {
    let left = end?.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return None;
    }
    Some(NotifyState::ExtendTimeoutUsec(
        u32::try_from(left.as_micros()).unwrap_or(u32::MAX),
    ))
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

// Listening sockets inherited the systemd way: socket activation and the restart (feature
// `restart`) are one mechanism.
//
// Ownership: `listenfd` reads `LISTEN_FDS` once and removes it from the environment, so the
// inherited fds are taken exactly once in a process; every fd taken here is either handed to
// the caller as an owned listener or closed here. `LISTEN_PID`, when present and not this
// process's, means the fds are not for us (listenfd's rule, systemd's protocol); absent, it is
// accepted, since a parent cannot know its child's pid before the fork.

/// Takes every inherited fd: stream listeners (TCP or Unix) are returned non-blocking with
/// their names, in `LISTEN_FDS` order; anything else is closed with a warning.
fn take_all() -> Result<Vec<(String, Inherited)>, SystemdError> {
    // Read before `ListenFd::from_env`, which removes `LISTEN_FDS` and `LISTEN_PID` (but not
    // the names).
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':').filter(|n| !n.is_empty());
    let mut fds = listenfd::ListenFd::from_env();
    let mut taken = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        // systemd's name for a socket that was given none.
        let name = names.next().unwrap_or("unknown").to_owned();
        let fd = 3 + index;
        let listener = match fds.take_tcp_listener(index) {
            Ok(Some(tcp)) => Some(Inherited::Tcp(tcp)),
            Ok(None) => None,
            Err(_) => match fds.take_unix_listener(index) {
                Ok(Some(unix)) => Some(Inherited::Unix(unix)),
                Ok(None) => None,
                Err(_) => {
                    close_raw(&mut fds, index, "not a TCP or Unix stream socket");
                    None
                }
            },
        };
        let Some(listener) = listener else { continue };
        // A blocking fd handed in (by a supervisor, a test, an old binary) must work under
        // tokio, whose accept would otherwise block a worker thread.
        listener
            .set_nonblocking()
            .map_err(|source| SystemdError::Inherited {
                fd,
                name: name.clone(),
                source,
            })?;
        taken.push((name, listener));
    }
    Ok(taken)
}

/// Closes the inherited fds nobody took (`LISTEN_FDS` still set: no one called
/// [`take_all`]); returns how many. Called once the service is ready, after a restart, so a
/// successor that no longer serves a socket does not hold it open (connections would queue
/// on it unanswered).
#[cfg(feature = "restart")]
pub(crate) fn close_unclaimed() -> usize {
    let mut fds = listenfd::ListenFd::from_env();
    for index in 0..fds.len() {
        close_raw(
            &mut fds,
            index,
            "not claimed by the service once it was ready",
        );
    }
    fds.len()
}

fn close_raw(fds: &mut listenfd::ListenFd, index: usize, why: &str) {
    if let Ok(Some(raw)) = fds.take_raw_fd(index) {
        tracing::warn!(fd = raw, reason = why, "closing an inherited fd");
        // The fd was passed to this process for it to take and is taken by nothing else:
        // listenfd hands each index out once.
        if let Err(error) = nix::unistd::close(raw) {
            tracing::warn!(fd = raw, %error, "cannot close an inherited fd");
        }
    }
}

impl Inherited {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Inherited::Tcp(tcp) => tcp.set_nonblocking(true),
            Inherited::Unix(unix) => unix.set_nonblocking(true),
        }
    }
}
