//! Serving HTTP/1.1 and HTTP/2 through a shutdown: see [`serve`].
//!
//! - `mod.rs`: the accept loop ([`serve`]): it stops at stop-accepting, takes the connections
//!   already in the kernel's queue, and waits for every connection to close;
//! - `handshake.rs`: a connection's handshake (TLS), in its own task and bounded at the
//!   shutdown, before it is served;
//! - `connection.rs`: one connection's task, a `select!` over hyper's connection, the phases and
//!   a timer, and the counters its socket and service keep;
//! - `timeouts.rs`: what that task does when, as a pure state machine (`Timeouts`);
//! - `linger.rs`: the polite close (FIN, then read until the client's FIN);
//! - `listener.rs`: what connections come from ([`Listener`], [`listen`]);
//! - `tls.rs`: `TlsListener` (feature `tls`);
//! - `config.rs`: [`ServeConfig`].

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::step::BoxError;
use crate::{Phase, Shutdown, WorkGuard, WorkKind};

mod config;
mod connection;
mod handshake;
mod linger;
mod listener;
mod timeouts;
#[cfg(feature = "tls")]
mod tls;

pub use config::ServeConfig;
pub use listener::{listen, Listener};
#[cfg(feature = "tls")]
pub use tls::TlsListener;

use connection::Arrival;
use handshake::handshake_then_serve;

/// Serves `service` on `listener` until the shutdown has stopped accepting and every connection
/// has closed.
///
/// Needs the `http` feature.
///
/// - During the drain delay everything is served normally.
/// - After a restart (feature `restart`) the listener stays open in the new process: the
///   backlog is left to it, and an idle keep-alive connection waits (bounded by the larger of
///   [`ServeConfig::idle_close_delay`] and [`ServeConfig::linger`]) for its next request,
///   answered with `Connection: close`.
/// - At stop-accepting the listener closes (new connections are refused, which balancers
///   retry elsewhere); connections already waiting in the kernel's accept queue are accepted
///   first and their request answered with `Connection: close`, where closing the listener
///   would have reset them; idle HTTP/1 keep-alive connections close at once, busy ones answer their
///   current request with `Connection: close` and then close; HTTP/2 connections get GOAWAY and
///   finish their streams. Closing sends FIN and waits (bounded) for the client's, never a
///   reset.
/// - A connection whose request head is half read at stop-accepting gets a short grace (at most
///   1 s, or what its header-read timeout has left); if the head is still incomplete then,
///   the connection is closed without a request. A client trickling its head (slowloris) holds
///   the shutdown for that grace at most, and is never counted as work cut. The number of
///   connections closed without a request is logged when `serve` returns.
/// - Every connection is tracked as [`WorkKind::Connection`](crate::WorkKind::Connection) work, so waiting for work covers
///   them; at the wait-for-work deadline the ones still open are closed, and the report names
///   them.
/// - Over TLS (`TlsListener`, feature `tls`) each connection's handshake runs in that
///   connection's own task, never in the accept loop, bounded by its timeout; one in progress
///   at stop-accepting gets the same grace as a half-read head, then is closed without a
///   request. Closing sends TLS `close_notify` before the FIN.
/// - Each request carries its peer's address in its extensions, as axum's
///   `ConnectInfo<SocketAddr>` (feature `axum`; `ConnectInfo<tokio::net::unix::SocketAddr>` on a
///   Unix socket), so handlers that extract it work as under `axum::serve` with
///   `into_make_service_with_connect_info`; [`ServeConfig::connect_info`] turns it off.
///
/// Wrap the service in a [`DrainLayer`](super::DrainLayer) so requests are tracked and the
/// health paths answered.
///
/// # Examples
///
/// Listening with the system's largest backlog ([`listen`]), so a burst of connections at the
/// moment of the signal is queued, not dropped:
///
/// ```no_run
/// use lastcall::http::{listen, serve, DrainLayer, ServeConfig};
/// use lastcall::Controller;
/// use tower::Layer;
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let controller = Controller::from_env().expect("valid LASTCALL_* settings");
/// let shutdown = controller.shutdown();
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let app = DrainLayer::new(shutdown.clone()).layer(app);
/// // The same as `TcpListener::bind`, with `net.core.somaxconn` as the backlog.
/// let listener = listen(([127, 0, 0, 1], 3000).into())?;
/// let server = tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
/// let code = controller.run().await;
/// let _ = server.await;
/// # let _ = code; Ok(()) }
/// ```
///
/// A Unix domain socket, with the same drain:
///
/// ```no_run
/// # use lastcall::http::{serve, DrainLayer, ServeConfig};
/// # use tower::Layer;
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// # let controller = lastcall::Controller::from_env().expect("valid settings");
/// # let shutdown = controller.shutdown();
/// # let app = DrainLayer::new(shutdown.clone()).layer(axum::Router::new());
/// let listener = tokio::net::UnixListener::bind("/run/orders.sock")?;
/// let server = tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
/// # controller.run().await; let _ = server.await; Ok(()) }
/// ```
///
/// # Errors
///
/// Never fails once listening: accept errors are logged and retried. The `io::Result` is for
/// [`serve_std`]'s conversion of the listener.
///
/// # Cancel safety
///
/// Dropping the future stops accepting and drops every connection at once; let it finish.
pub async fn serve<L, S, B>(
    listener: L,
    service: S,
    shutdown: Shutdown,
    config: ServeConfig,
) -> io::Result<()>
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = config.builder();
    let local = listener.describe();
    let connections = TaskTracker::new();
    let without_request = shutdown.closed_without_request(); // counted into the report

    // Every connection is tracked from its accept, before its task first runs: right after a
    // burst, connections waiting to be polled must not leave the tracker looking idle.
    let spawn =
        |accepted: L::Accepted, peer: L::Addr, builder: &auto::Builder<TokioExecutor>, arrival| {
            L::prepare(&accepted);
            let guard = shutdown
                .tracker()
                .track(WorkKind::Connection, format!("connection {peer:?}"));
            let served = Served {
                shutdown: shutdown.clone(),
                config: config.clone(),
                without_request: without_request.clone(),
            };
            // Boxed: the future is large (more so over TLS), and tokio would copy it as the task
            // is spawned and again as it finishes.
            let conn = Conn {
                peer,
                guard,
                service: for_connection(&service),
                builder: builder.clone(),
                arrival,
            };
            connections.spawn(Box::pin(handshake_then_serve::<L, S, B>(
                accepted, conn, served,
            )));
        };
    // Held while this loop may still hand connections out: a connection still in the
    // kernel's queue at the stop must keep waiting-for-work open, or the close steps would run
    // under its request (a database pool closed: a 500) and it would be closed unanswered.
    let accepting = shutdown
        .tracker()
        .task(format!("accepting connections on {local}"));
    let stop = shutdown.reached(Phase::StopAccepting);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept_one() => accepted,
        };
        match accepted {
            Ok((accepted, peer)) => spawn(accepted, peer, &builder, Arrival::BeforeStop),
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Connections the kernel completed but nobody accepted yet would be reset when the listener
    // closes: accept them now and answer their first request with `Connection: close`. After
    // a restart the listener stays open in the new process, which accepts them.
    // Taken anew (before the old one is released) so that its age in a report is the time
    // spent taking the backlog, not the process's uptime.
    let taking_backlog = shutdown
        .tracker()
        .task(format!("taking the backlog of {local}"));
    drop(accepting);
    let mut late = builder.clone();
    late.http1().keep_alive(false);
    let mut backlog = 0usize;
    while !shutdown.shared.restarting() {
        let Ok(Ok((accepted, peer))) =
            tokio::time::timeout(Duration::ZERO, listener.accept_one()).await
        else {
            break;
        };
        backlog += 1;
        spawn(accepted, peer, &late, Arrival::AfterStop);
    }
    drop(listener);
    // Every connection accepted holds its own guard from here.
    drop(taking_backlog);
    tracing::info!(addr = %local, backlog, "listener closed; new connections are refused");
    connections.close();
    connections.wait().await;
    tracing::info!(
        addr = %local,
        closed_without_request = without_request.load(Ordering::Relaxed),
        "every connection closed"
    );
    Ok(())
}

/// The copy of `service` one connection is served with.
///
/// hyper clones a connection's service for every request. An axum `Router`, bare or in a
/// [`Drain`](super::Drain), gets a copy of its own, with every route converted, as
/// `axum::serve` gives each connection: otherwise a route added after the router's last
/// `with_state` is converted (and allocated) at every request, and every request of every
/// connection counts references on the same router and layer, whose counts then move
/// between cores at each request.
fn for_connection<S: Clone + 'static>(service: &S) -> S {
    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    let mut copy = service.clone();
    #[cfg(feature = "axum")]
    {
        let any: &mut dyn std::any::Any = &mut copy;
        let router = if any.is::<axum::Router>() {
            any.downcast_mut::<axum::Router>()
        } else {
            any.downcast_mut::<super::Drain<axum::Router>>()
                .map(|drain| {
                    drain.own_layer();
                    drain.get_mut()
                })
        };
        if let Some(router) = router {
            *router = router.clone().with_state(());
        }
    }
    copy
}

/// [`serve`] for an already-bound standard listener (socket activation, tests).
///
/// Needs the `http` feature.
///
/// # Errors
///
/// If the listener cannot be made non-blocking or registered with the runtime.
pub async fn serve_std<S, B>(
    listener: std::net::TcpListener,
    service: S,
    shutdown: Shutdown,
    config: ServeConfig,
) -> io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    listener.set_nonblocking(true)?;
    serve(TcpListener::from_std(listener)?, service, shutdown, config).await
}

/// What [`serve`] asks of a service, held once for the functions a connection runs through:
/// tower's `Service` for hyper's requests, cloned for each connection and request.
pub(super) trait ServedService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ServedService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + 'static
{
}

/// What [`serve`] asks of a response body.
pub(super) trait ServedBody:
    Body<Data: Send, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ServedBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// One accepted connection, handed from the accept loop to its task.
struct Conn<L: Listener, S> {
    peer: L::Addr,
    /// Tracks the connection as work, from its accept until its socket is closed.
    guard: WorkGuard,
    /// The connection's own copy of the service ([`for_connection`]).
    service: S,
    /// hyper's settings; keep-alive off for a connection taken from the backlog at the stop.
    builder: auto::Builder<TokioExecutor>,
    arrival: Arrival,
}

/// What every connection of one [`serve`] shares.
struct Served {
    shutdown: Shutdown,
    config: ServeConfig,
    /// Connections the shutdown closed before their first request or with a head half read.
    without_request: Arc<AtomicUsize>,
}
