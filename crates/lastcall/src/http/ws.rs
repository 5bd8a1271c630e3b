//! WebSockets that close cleanly at shutdown (feature `websocket`): see [`recv_until_shutdown`].

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};

use crate::{Phase, Shutdown};

/// How long [`recv_until_shutdown`] waits for the peer to answer its close frame.
///
/// Needs the `websocket` feature.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Receives the next message, unless the shutdown reaches stop-accepting first: then it sends a
/// close frame with code 1001 "going away", waits (at most [`CLOSE_WAIT`]) for the peer's close
/// frame, and returns `None`, as when the peer closes.
///
/// Needs the `websocket` feature.
///
/// A client that sees 1001 knows the server is going away on purpose and reconnects (to
/// another instance); a service whose only open work is WebSockets exits promptly instead of
/// waiting for them until its deadline.
///
/// # Examples
///
/// ```
/// use axum::extract::ws::{WebSocket, WebSocketUpgrade};
/// use axum::response::Response;
/// use lastcall::http::ws::recv_until_shutdown;
/// use lastcall::Shutdown;
///
/// async fn upgrade(ws: WebSocketUpgrade, shutdown: Shutdown) -> Response {
///     ws.on_upgrade(move |socket| echo(socket, shutdown))
/// }
///
/// async fn echo(mut socket: WebSocket, shutdown: Shutdown) {
///     // Counted as a stream until the session ends.
///     let _session = shutdown.tracker().stream("ws /echo");
///     while let Some(Ok(message)) = recv_until_shutdown(&mut socket, &shutdown).await {
///         if socket.send(message).await.is_err() {
///             break;
///         }
///     }
/// }
/// # let _ = upgrade;
/// ```
///
/// # Cancel safety
///
/// Cancel safe while it waits for a message; once the shutdown has begun it finishes the close
/// handshake before returning, and dropping it then may leave the close unanswered.
pub async fn recv_until_shutdown(
    socket: &mut WebSocket,
    shutdown: &Shutdown,
) -> Option<Result<Message, axum::Error>> {
    tokio::select! {
        biased;
        _ = shutdown.reached(Phase::StopAccepting) => {
            going_away(socket, CLOSE_WAIT).await;
            None
        }
        message = socket.recv() => message,
    }
}

/// Sends a close frame with code 1001 "going away" and waits, at most `wait`, for the peer's
/// close frame.
///
/// Needs the `websocket` feature.
pub async fn going_away(socket: &mut WebSocket, wait: Duration) {
    let frame = CloseFrame {
        code: close_code::AWAY,
        reason: "going away".into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    })
    .await;
}
