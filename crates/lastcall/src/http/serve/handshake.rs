//! A connection's handshake (TLS), run in the connection's own task before it is served, and
//! bounded at the shutdown like a request head half read.

use std::sync::atomic::Ordering;

use super::connection::{connection, Arrival};
use super::listener::sealed::Handshake;
use super::timeouts::{DEADLINE_MARGIN, HEAD_GRACE};
use super::{Conn, Listener, Served, ServedBody, ServedService};
use crate::{Phase, Shutdown};

/// Completes the connection's handshake, if it has one, then serves it.
///
/// A connection in its handshake is tracked as [`WorkKind::Connection`] work, as it is once
/// served, so the wait for work does not end under a client about to send a request. The
/// handshake is bounded by the listener's timeout and, from stop-accepting on, by
/// [`HEAD_GRACE`] (the grace of a request head half read) and the wait-for-work deadline; one
/// that does not complete is closed and, at the shutdown, counted as a connection closed
/// without a request.
pub(super) async fn handshake_then_serve<L, S, B>(
    accepted: L::Accepted,
    conn: Conn<L, S>,
    served: Served,
) where
    L: Listener,
    S: ServedService<B>,
    B: ServedBody,
{
    let (handshake, timeout) = match L::handshake(accepted) {
        Handshake::Ready(io) => {
            return connection::<L, S, B>(io, conn, served).await;
        }
        Handshake::Start { handshake, timeout } => (handshake, timeout),
    };
    let peer = &conn.peer;
    let io = tokio::select! {
        biased;
        done = tokio::time::timeout(timeout, handshake) => match done {
            Ok(Ok(io)) => Some(io),
            Ok(Err(error)) => {
                tracing::debug!(?peer, %error, "handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, timeout_ms = timeout.as_millis() as u64, "handshake timed out");
                None
            }
        },
        () = grace_ended(&served.shutdown, conn.arrival) => {
            tracing::debug!(?peer, "handshake still incomplete after its grace; closing");
            None
        }
    };
    let Some(io) = io else {
        if served.shutdown.phase() >= Phase::StopAccepting {
            served.without_request.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    connection::<L, S, B>(io, conn, served).await;
}

/// Resolves when a handshake in progress has had its grace, the same as a request head half
/// read: [`HEAD_GRACE`] from stop-accepting (from now for a connection accepted after it),
/// and never past [`DEADLINE_MARGIN`] before the wait-for-work deadline.
async fn grace_ended(shutdown: &Shutdown, arrival: Arrival) {
    if arrival == Arrival::BeforeStop {
        shutdown.reached(Phase::StopAccepting).await;
    }
    let now = tokio::time::Instant::now();
    let mut until = now + HEAD_GRACE;
    if let Some(deadline) = shutdown.deadline(Phase::WaitForWork) {
        until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(now));
    }
    tokio::time::sleep_until(until).await;
}
