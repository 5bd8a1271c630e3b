//! Server-Sent Events that end cleanly at shutdown (feature `axum`): see [`until_shutdown`].

use std::time::Duration;

use axum::response::sse::Event;
use futures_core::Stream;

use crate::Shutdown;

/// The stream [`until_shutdown`] returns.
pub use crate::future::UntilShutdown;

/// Wraps an SSE event stream so that when the shutdown reaches stop-accepting it sends one last
/// event, `event: shutdown` with a `retry:` hint of one second (the client reconnects, to
/// another instance), and ends. The response body then ends cleanly (on HTTP/1.1 with the
/// chunked terminator), so the client sees a finished stream, not a cut one, and the service
/// does not wait for the stream until its deadline.
///
/// Needs the `axum` feature.
///
/// Serve it behind a [`DrainLayer`](super::DrainLayer), which tracks the response as a
/// [`WorkKind::Stream`](crate::WorkKind::Stream) until its last byte.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use axum::response::sse::{Event, Sse};
/// use axum::{routing::get, Router};
/// use lastcall::http::sse::until_shutdown;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # let controller = lastcall::Controller::builder().build().unwrap();
/// let shutdown = controller.shutdown();
/// let app: Router = Router::new().route(
///     "/events",
///     get(move || {
///         let shutdown = shutdown.clone();
///         async move {
///             let ticks = futures_util::stream::repeat_with(|| {
///                 Ok::<_, Infallible>(Event::default().data("tick"))
///             });
///             Sse::new(until_shutdown(&shutdown, ticks))
///         }
///     }),
/// );
/// # let _ = app;
/// # }
/// ```
pub fn until_shutdown<S, E>(shutdown: &Shutdown, stream: S) -> UntilShutdown<S>
where
    S: Stream<Item = Result<Event, E>>,
{
    until_shutdown_with(
        shutdown,
        stream,
        Event::default()
            .event("shutdown")
            .data("server draining")
            .retry(Duration::from_secs(1)),
    )
}

/// As [`until_shutdown`], with your own last event.
///
/// Needs the `axum` feature.
pub fn until_shutdown_with<S, E>(shutdown: &Shutdown, stream: S, last: Event) -> UntilShutdown<S>
where
    S: Stream<Item = Result<Event, E>>,
{
    UntilShutdown::new(
        shutdown.reached(crate::Phase::StopAccepting),
        stream,
        Ok(last),
    )
}
