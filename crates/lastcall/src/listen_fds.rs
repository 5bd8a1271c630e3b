//! Listening sockets inherited the systemd way (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`):
//! socket activation and the restart (feature `restart`) are one mechanism. See
//! [`systemd::listeners`](crate::systemd::listeners).
//!
//! Ownership: `listenfd` reads `LISTEN_FDS` once and removes it from the environment, so the
//! inherited fds are taken exactly once in a process; every fd taken here is either handed to
//! the caller as an owned listener or closed here. `LISTEN_PID`, when present and not this
//! process's, means the fds are not for us (listenfd's rule, systemd's protocol); absent, it is
//! accepted, since a parent cannot know its child's pid before the fork.

use std::io;

use crate::systemd::{Inherited, SystemdError};

/// Takes every inherited fd: stream listeners (TCP or Unix) are returned non-blocking with
/// their names, in `LISTEN_FDS` order; anything else is closed with a warning.
pub(crate) fn take_all() -> Result<Vec<(String, Inherited)>, SystemdError> {
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
