//! Zero-downtime restart (feature `restart`, unix): the listeners are handed to a new process
//! of the binary on disk, which says when it is ready; then this process drains. See
//! [`Restarter`].
//!
//! # How a restart goes
//!
//! 1. The restart signal (`LASTCALL_RESTART_SIGNAL`, default `SIGHUP`) or
//!    [`Restarter::restart`] asks for it. It is refused (logged, and [`RestartError`] says why)
//!    while another restart is under way, before the service is ready, once a shutdown has
//!    begun, and while the previous generation (the process that restarted into this one) is
//!    still alive: **one generation drains at a time**, which caps the processes alive at
//!    two.
//! 2. The successor is started: the executable at the path this process was started from,
//!    resolved when the controller was built (a deploy replaces the file, then signals), with
//!    the same `argv[0]`, arguments and environment, except that `LISTEN_FDS` and
//!    `LISTEN_FDNAMES` name the listeners registered with
//!    [`Controller::restart_listener`](crate::Controller::restart_listener) (passed as fds 3,
//!    4, ... in registration order), `LISTEN_PID` is removed, and `LASTCALL_RESTART_FD` /
//!    `LASTCALL_RESTART_PARENT` carry the handshake. Every other fd of this process is
//!    close-on-exec (Rust's default). The successor takes its listeners with
//!    [`systemd::listener_named`](crate::systemd::listener_named), exactly as under socket
//!    activation.
//! 3. This process keeps serving until the successor's lastcall writes `ready` on the
//!    handshake socket, which it does the first time its readiness is set ready; it then
//!    closes the handshake and the inherited fds its service did not take.
//! 4. On `ready`: the PID file (`LASTCALL_PID_FILE`) is rewritten atomically with the
//!    successor's pid, systemd (with `NOTIFY_SOCKET`) is told `MAINPID=<successor>` and
//!    `READY=1`, and this process shuts down through the normal flow with the trigger
//!    [`TriggerCause::Restart`], without the drain delay.
//! 5. If the successor exits, or is not ready within `LASTCALL_RESTART_TIMEOUT` (default
//!    30 s), it is stopped (`SIGTERM`, then `SIGKILL` after 2 s) and reaped, this process goes
//!    on serving as if nothing happened, the failure is logged, counted
//!    (`lastcall_restarts_failed_total`) and listed in the eventual report
//!    ([`Report::restarts_failed`](crate::Report::restarts_failed)); systemd is told
//!    `READY=1`. The PID file was not touched, so it still names this process. A later
//!    restart starts afresh.
//!
//! The successor must speak the handshake: a binary built without the `restart` feature (or
//! without lastcall) never says ready, and is stopped at the timeout.
//!
//! A shutdown signal during a restart stops the successor (no orphan is left: it is killed
//! at the latest as this process exits), then shuts down as usual.
//!
//! # Scope
//!
//! For services that own their process: under systemd, on a VM, on bare metal. Not for a
//! container's PID 1 under Kubernetes, where a restart is a new pod and the old process's
//! exit ends the container.

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal as NixSignal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use crate::error::ConfigError;
use crate::health::HealthState;
use crate::report::TriggerCause;
use crate::shutdown::{Shared, SignalHook};
use crate::{Phase, Signal};

/// The variable naming the handshake fd, set for the successor.
pub(crate) const FD_VAR: &str = "LASTCALL_RESTART_FD";
/// The variable naming the previous generation's pid, set for the successor.
pub(crate) const PARENT_VAR: &str = "LASTCALL_RESTART_PARENT";
/// What the successor writes on the handshake socket once ready.
const READY: &[u8] = b"ready\n";
/// How long a successor that is being rolled back has between `SIGTERM` and `SIGKILL`.
const KILL_AFTER: Duration = Duration::from_secs(2);
/// The first fd a successor's listeners are passed as (systemd's `SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Starts a restart from code: the same as the restart signal. Get one from
/// [`Controller::restarter`](crate::Controller::restarter). Needs the `restart` feature.
///
/// # Examples
///
/// An admin endpoint that restarts the service:
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let controller = lastcall::Controller::from_env()?;
/// let listener = lastcall::http::listen(([127, 0, 0, 1], 3000).into())?;
/// controller.restart_listener("http", &listener)?;
/// let restarter = controller.restarter();
/// tokio::spawn(async move {
///     // ... when the admin asks:
///     match restarter.restart().await {
///         Ok(pid) => println!("the new process ({pid}) serves; this one drains"),
///         Err(err) => println!("still serving here: {err}"),
///     }
/// });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Restarter {
    shared: Arc<Shared>,
    state: Arc<State>,
}

/// Why a restart was refused or failed. Needs the `restart` feature.
///
/// The refusals ([`InProgress`](RestartError::InProgress), [`NotReady`](RestartError::NotReady),
/// [`ShuttingDown`](RestartError::ShuttingDown), [`PreviousGeneration`](RestartError::PreviousGeneration))
/// start nothing. The failures ([`Spawn`](RestartError::Spawn), [`Exited`](RestartError::Exited),
/// [`Timeout`](RestartError::Timeout)) are rolled back: the successor is stopped, this process
/// keeps serving, and the failure is listed in the report's `restarts_failed`.
///
/// # Examples
///
/// ```
/// use lastcall::restart::RestartError;
///
/// let err = RestartError::Timeout { after: std::time::Duration::from_secs(30) };
/// assert!(err.to_string().contains("not ready within 30s"));
/// assert!(err.is_failure());
/// assert!(!RestartError::InProgress.is_failure());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// Another restart is under way.
    #[error("restart refused: another restart is under way")]
    InProgress,
    /// The service has not become ready yet.
    #[error("restart refused: the service is not ready yet")]
    NotReady,
    /// The shutdown has begun (or began during the restart, which was then abandoned).
    #[error("restart refused: the service is shutting down")]
    ShuttingDown,
    /// The previous generation, which restarted into this process, is still draining: one
    /// generation drains at a time.
    #[error("restart refused: the previous generation (pid {pid}) is still draining; retry once it has exited")]
    PreviousGeneration {
        /// Its pid.
        pid: u32,
    },
    /// The path this process was started from could not be resolved at start-up.
    #[error("restart refused: the executable's path could not be resolved at start-up: {reason}")]
    NoExecutable {
        /// Why.
        reason: String,
    },
    /// A listener could not be registered: its name is unusable in `LISTEN_FDNAMES`, or its
    /// fd could not be duplicated.
    #[error("restart listener {name:?} cannot be registered: {problem}")]
    Listener {
        /// The name given.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The successor could not be started.
    #[error("restart failed: cannot start {}: {source}", path.display())]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The successor exited before it was ready.
    #[error("restart failed: the new process exited before it was ready ({status})")]
    Exited {
        /// How it exited (`exit status: 1`, `signal: 9`).
        status: String,
    },
    /// The successor was not ready in time (`LASTCALL_RESTART_TIMEOUT`).
    #[error("restart failed: the new process was not ready within {}; it was stopped", humantime::format_duration(*after))]
    Timeout {
        /// The timeout.
        after: Duration,
    },
}

/// The restart settings the builder checked.
pub(crate) struct Config {
    /// `None`: restarts come only from code.
    pub(crate) signal: Option<Signal>,
    pub(crate) timeout: Duration,
    pub(crate) pid_file: Option<PathBuf>,
}

/// One process's restart machinery, shared by the signal thread, [`Restarter`]s and the
/// phase observer.
pub(crate) struct State {
    pub(crate) signal: Option<Signal>,
    timeout: Duration,
    exe: Result<PathBuf, String>,
    argv0: OsString,
    args: Vec<OsString>,
    pid_file: Option<PathBuf>,
    /// The previous generation's pid, when this process is a successor.
    previous: Option<u32>,
    /// Duplicates of the registered listeners, passed to each successor; closed when the
    /// shutdown begins, so they never keep a listener open that `serve` closed.
    listeners: Mutex<Vec<(String, OwnedFd)>>,
    busy: AtomicBool,
    /// The successor being started and not yet reaped: a shutdown stops it.
    pending: Mutex<Option<u32>>,
}

impl State {
    /// Reads the start-up facts (the executable's path, the arguments, the handshake a
    /// predecessor passed), writes the PID file of a first generation, starts the handshake
    /// of a successor, and registers the shutdown's hold over a pending successor.
    pub(crate) fn start(config: Config, shared: &Arc<Shared>) -> Result<Arc<State>, ConfigError> {
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        let handshake = handshake_fd()?;
        let previous =
            match std::env::var(PARENT_VAR) {
                Ok(value) => Some(value.trim().parse::<u32>().map_err(|_| {
                    ConfigError::RestartHandshake {
                        variable: PARENT_VAR,
                        value: value.clone(),
                        problem: "not a process id".into(),
                    }
                })?),
                Err(_) => None,
            };
        // A successor's PID file is written by its predecessor once it is ready.
        if let (Some(path), None) = (&config.pid_file, handshake) {
            write_pid_file(path, std::process::id()).map_err(|source| ConfigError::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        let state = Arc::new(State {
            signal: config.signal,
            timeout: config.timeout,
            exe: std::env::current_exe().map_err(|e| e.to_string()),
            argv0,
            args: args.collect(),
            pid_file: config.pid_file,
            previous,
            listeners: Mutex::new(Vec::new()),
            busy: AtomicBool::new(false),
            pending: Mutex::new(None),
        });
        let observer = state.clone();
        shared.observe(Box::new(move |phase, _| observer.on_phase(phase)));
        if let Some(fd) = handshake {
            shared.runtime.spawn(say_ready(shared.clone(), fd));
        }
        Ok(state)
    }

    /// The shutdown's hold over the restart: at its start the registered listeners are let go
    /// and a successor still starting is told to stop; at exit one still alive is killed.
    fn on_phase(&self, phase: Phase) {
        let signal = match phase {
            Phase::NotReady => {
                lock(&self.listeners).clear();
                NixSignal::SIGTERM
            }
            Phase::Exit => NixSignal::SIGKILL,
            _ => return,
        };
        if let Some(pid) = *lock(&self.pending) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    fn refusal(&self, shared: &Shared) -> Option<RestartError> {
        if shared.phase() > Phase::Running {
            return Some(RestartError::ShuttingDown);
        }
        if shared.health.state() != HealthState::Ready {
            return Some(RestartError::NotReady);
        }
        // Our parent is the previous generation until it exits; then the process is
        // reparented. No pid is polled, so neither a zombie nor a reused pid can mislead.
        if let Some(pid) = self.previous {
            if std::os::unix::process::parent_id() == pid {
                return Some(RestartError::PreviousGeneration { pid });
            }
        }
        None
    }

    /// Starts the successor and waits for its handshake; on failure it has been stopped and
    /// reaped.
    async fn start_successor(&self, shared: &Shared) -> Result<u32, RestartError> {
        let exe = self
            .exe
            .clone()
            .map_err(|reason| RestartError::NoExecutable { reason })?;
        let spawn_error = |source| RestartError::Spawn {
            path: exe.clone(),
            source,
        };
        // Both ends are close-on-exec; command-fds passes the successor's end as a plain fd.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
        let mut mappings = Vec::new();
        let mut names = Vec::new();
        for (name, fd) in lock(&self.listeners).iter() {
            mappings.push(FdMapping {
                parent_fd: fd.try_clone().map_err(spawn_error)?,
                child_fd: FIRST_FD + names.len() as RawFd,
            });
            names.push(name.as_str().to_owned());
        }
        let handshake = FIRST_FD + names.len() as RawFd;
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(theirs),
            child_fd: handshake,
        });
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg0(&self.argv0)
            .args(&self.args)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS_FIRST_FD")
            .env(FD_VAR, handshake.to_string())
            .env(PARENT_VAR, std::process::id().to_string());
        if names.is_empty() {
            command
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_FDNAMES");
        } else {
            command
                .env("LISTEN_FDS", names.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
        }
        command.fd_mappings(mappings).map_err(|_| {
            spawn_error(std::io::Error::other(
                "the fds to pass collide (command-fds)",
            ))
        })?;
        let spawned = command.spawn();
        // The command holds this process's copies of the passed fds: they close with it.
        drop(command);
        let mut child = spawned.map_err(spawn_error)?;
        let Some(pid) = child.id() else {
            // Already reaped: it exited at once.
            return Err(RestartError::Exited {
                status: "exited at once".into(),
            });
        };
        *lock(&self.pending) = Some(pid);
        tracing::info!(pid, path = %exe.display(), listeners = names.len(), "restart: new process started, waiting for it to be ready");

        let outcome = self.handshake(shared, ours, &mut child).await;
        let outcome = match outcome {
            // Decided under the lock the shutdown's observer takes: either the shutdown has
            // already told the successor to stop, or it will not.
            Ok(()) => match lock(&self.pending).take() {
                Some(_) if shared.phase() == Phase::Running => return Ok(pid),
                _ => Err(RestartError::ShuttingDown),
            },
            Err(err) => Err(err),
        };
        stop(&mut child, pid).await;
        *lock(&self.pending) = None;
        outcome
    }

    async fn handshake(
        &self,
        shared: &Shared,
        ours: std::os::unix::net::UnixStream,
        child: &mut tokio::process::Child,
    ) -> Result<(), RestartError> {
        let mut ours = ours
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(ours))
            .ok();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let shutdown = shared.token_ref(Phase::NotReady).clone();
        let mut said = Vec::new();
        let mut buf = [0u8; 16];
        // Closed: the successor closed its end without `ready` (it exited, or it does not
        // speak the handshake); its exit or the timeout decides. `ready` counts once the
        // successor has closed its end too.
        let mut closed = ours.is_none();
        loop {
            tokio::select! {
                read = async { ours.as_mut().expect("polled only while open").read(&mut buf).await }, if !closed => match read {
                    // `ready`, then its end closed: the successor holds no fd of the
                    // handshake any more when this process goes on.
                    Ok(0) | Err(_) if said.starts_with(READY) => return Ok(()),
                    Ok(0) | Err(_) => closed = true,
                    // Anything longer is not the handshake: its exit or the timeout decides.
                    Ok(n) if said.len() + n > 64 => closed = true,
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                },
                status = child.wait() => {
                    return Err(RestartError::Exited {
                        status: match status {
                            Ok(status) => status.to_string(),
                            Err(e) => e.to_string(),
                        },
                    });
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(RestartError::Timeout { after: self.timeout });
                }
                () = shutdown.cancelled() => return Err(RestartError::ShuttingDown),
            }
        }
    }
}

impl Restarter {
    pub(crate) fn new(shared: Arc<Shared>, state: Arc<State>) -> Restarter {
        Restarter { shared, state }
    }

    /// Restarts the service: starts the successor, waits for it to be ready, then starts this
    /// process's shutdown (trigger `restart`) and returns the successor's pid. See the
    /// [module docs](self) for the whole sequence.
    ///
    /// # Errors
    ///
    /// A refusal (another restart under way, not ready, shutting down, the previous
    /// generation still draining) or a failure (the successor could not start, exited, or was
    /// not ready in time; it has been stopped and this process keeps serving).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future mid-restart drops the successor's handle without
    /// reaping it (a shutdown still stops it). Await it to the end.
    pub async fn restart(&self) -> Result<u32, RestartError> {
        restart(&self.shared, &self.state).await
    }
}

impl fmt::Debug for Restarter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Restarter")
            .field("busy", &self.state.busy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RestartError {
    /// Whether a successor was started and rolled back (as opposed to a refusal, which
    /// started nothing).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            RestartError::Spawn { .. } | RestartError::Exited { .. } | RestartError::Timeout { .. }
        )
    }

    /// A stable `snake_case` name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RestartError::InProgress => "in_progress",
            RestartError::NotReady => "not_ready",
            RestartError::ShuttingDown => "shutting_down",
            RestartError::PreviousGeneration { .. } => "previous_generation",
            RestartError::NoExecutable { .. } => "no_executable",
            RestartError::Listener { .. } => "listener",
            RestartError::Spawn { .. } => "spawn",
            RestartError::Exited { .. } => "exited",
            RestartError::Timeout { .. } => "timeout",
        }
    }
}

/// Registers a listener to pass to every successor under `name`; see
/// [`Controller::restart_listener`](crate::Controller::restart_listener).
pub(crate) fn register(
    state: &State,
    name: &str,
    listener: &impl AsFd,
) -> Result<(), RestartError> {
    let problem = |problem: &str| RestartError::Listener {
        name: name.to_owned(),
        problem: problem.to_owned(),
    };
    if name.is_empty() || name.contains(':') || !name.is_ascii() || name.len() > 255 {
        return Err(problem(
            "a LISTEN_FDNAMES name is 1 to 255 ASCII characters without ':'",
        ));
    }
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| problem(&format!("cannot duplicate its fd: {e}")))?;
    lock(&state.listeners).push((name.to_owned(), fd));
    Ok(())
}

impl SignalHook for State {
    /// The restart signal was delivered (on the signal thread): restart on the runtime.
    fn on_signal(self: Arc<Self>, shared: &Arc<Shared>, signal: Signal) -> bool {
        if self.signal != Some(signal) {
            return false;
        }
        let shared = shared.clone();
        let runtime = shared.runtime.clone();
        runtime.spawn(async move {
            // Logged inside; nobody awaits a signal's restart.
            let _ = restart(&shared, &self).await;
        });
        true
    }
}

async fn restart(shared: &Arc<Shared>, state: &State) -> Result<u32, RestartError> {
    let refused = match state.refusal(shared) {
        Some(refused) => Err(refused),
        None => match state.busy.swap(true, Ordering::AcqRel) {
            true => Err(RestartError::InProgress),
            false => Ok(()),
        },
    };
    if let Err(refused) = refused {
        tracing::warn!(reason = refused.kind(), "{refused}");
        return Err(refused);
    }
    tracing::info!("restart: starting the new process");
    notify(&[sd_notify::NotifyState::Reloading]);
    let outcome = state.start_successor(shared).await;
    let outcome = match outcome {
        Ok(pid) => {
            if let Some(path) = &state.pid_file {
                if let Err(error) = write_pid_file(path, pid) {
                    tracing::warn!(%error, path = %path.display(), "cannot rewrite the PID file for the new process");
                }
            }
            notify(&[
                sd_notify::NotifyState::MainPid(pid),
                sd_notify::NotifyState::Ready,
            ]);
            tracing::info!(
                successor = pid,
                "restart: the new process is ready; this one drains"
            );
            // A shutdown that began in the instant since the handshake keeps its own trigger;
            // the successor serves on either way.
            shared.fire(TriggerCause::Restart { successor: pid });
            Ok(pid)
        }
        Err(err) => {
            if err.is_failure() {
                tracing::warn!(reason = err.kind(), "{err}; still serving here");
                shared.restart_failed(err.to_string());
                #[cfg(feature = "metrics")]
                metrics::counter!("lastcall_restarts_failed_total", "reason" => err.kind())
                    .increment(1);
            } else {
                tracing::warn!(reason = err.kind(), "restart abandoned: {err}");
            }
            notify(&[sd_notify::NotifyState::Ready]);
            Err(err)
        }
    };
    state.busy.store(false, Ordering::Release);
    outcome
}

/// Stops a successor that is being rolled back: `SIGTERM`, `SIGKILL` after [`KILL_AFTER`],
/// and reaps it.
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), NixSignal::SIGTERM);
    if tokio::time::timeout(KILL_AFTER, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The successor's side: once the service is first ready, write `ready` on the handshake
/// socket, close it, and close the inherited fds the service did not take.
async fn say_ready(shared: Arc<Shared>, fd: RawFd) {
    tokio::select! {
        biased;
        () = shared.token_ref(Phase::NotReady).cancelled() => {}
        () = shared.health.reached(HealthState::Ready) => {}
    }
    // Reached also resolves for the shutdown's draining state: ready only if still running.
    let ready = shared.phase() == Phase::Running;
    if ready {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let flags = nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let flags = nix::sys::socket::MsgFlags::empty();
        match nix::sys::socket::send(fd, READY, flags) {
            Ok(_) => tracing::info!("restart: told the previous generation this process is ready"),
            Err(error) => {
                tracing::warn!(%error, "restart: cannot tell the previous generation this process is ready")
            }
        }
    }
    // The fd was checked at start-up to be the socket our predecessor passed, and nothing
    // else in this process knows its number.
    let _ = nix::unistd::close(fd);
    if ready {
        let closed = crate::systemd::close_unclaimed();
        if closed > 0 {
            tracing::info!(
                closed,
                "restart: closed the inherited fds the service did not take"
            );
        }
    }
}

/// The handshake fd a predecessor passed, checked to be a socket.
fn handshake_fd() -> Result<Option<RawFd>, ConfigError> {
    let Ok(value) = std::env::var(FD_VAR) else {
        return Ok(None);
    };
    let refuse = |problem: String| ConfigError::RestartHandshake {
        variable: FD_VAR,
        value: value.clone(),
        problem,
    };
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= FIRST_FD)
        .ok_or_else(|| refuse("not an fd number of 3 or more".into()))?;
    let stat = nix::sys::stat::fstat(fd).map_err(|e| refuse(format!("fd {fd}: {e}")))?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return Err(refuse(format!("fd {fd} is not a socket")));
    }
    Ok(Some(fd))
}

/// Writes `pid` to `path` atomically: a temporary file beside it, then a rename.
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, format!("{pid}\n"))?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// Tells systemd, when it listens (`NOTIFY_SOCKET`). `RELOADING=1` carries the monotonic
/// clock, as `Type=notify-reload` requires.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut all = states.to_vec();
    if states
        .iter()
        .any(|s| matches!(s, sd_notify::NotifyState::Reloading))
    {
        if let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
            let usec = i128::from(now.tv_sec()) * 1_000_000 + i128::from(now.tv_nsec()) / 1_000;
            all.push(sd_notify::NotifyState::MonotonicUsec(usec));
        }
    }
    if let Err(error) = sd_notify::notify(false, &all) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// The locks here guard plain data and no code panics while holding them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
