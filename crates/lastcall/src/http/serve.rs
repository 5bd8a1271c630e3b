//! Serving HTTP/1.1 and HTTP/2 through a shutdown: see [`serve`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::body::Guarded;
use crate::{BoxError, Phase, Shutdown, WorkGuard, WorkKind};

/// How long a request head half read at stop-accepting may take to complete, at most (less
/// when its header-read timeout has less left): a client that trickles its head cannot hold
/// the shutdown.
const HEAD_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2's largest flow-control window (RFC 9113, 6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// How long before the wait-for-work deadline a connection that only waits for a request is
/// closed, so that it is never counted as work cut there.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// How [`serve`] treats connections: its own timeouts and close behaviour, and hyper's
/// HTTP/1 and HTTP/2 settings.
///
/// hyper's settings that are not set here keep hyper's defaults, except HTTP/2's extended
/// CONNECT protocol (RFC 8441), which is on, as under `axum::serve`, so WebSockets work over
/// HTTP/2.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::http::ServeConfig;
///
/// let config = ServeConfig::default()
///     .header_read_timeout(Duration::from_secs(5))
///     .http1_max_headers(64)
///     .http2_max_concurrent_streams(100)
///     .http2_initial_stream_window_size(1 << 20);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct ServeConfig {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    linger: Duration,
    idle_close_delay: Duration,
    http1: Http1Settings,
    http2: Http2Settings,
}

/// hyper's HTTP/1 settings; `None` keeps hyper's default.
#[derive(Debug, Clone, Default)]
struct Http1Settings {
    keep_alive: Option<bool>,
    max_headers: Option<usize>,
    max_buf_size: Option<usize>,
}

/// hyper's HTTP/2 settings; `None` keeps hyper's default.
#[derive(Debug, Clone)]
struct Http2Settings {
    max_concurrent_streams: Option<u32>,
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    adaptive_window: Option<bool>,
    max_frame_size: Option<u32>,
    max_header_list_size: Option<u32>,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    connect_protocol: bool,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: None,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            adaptive_window: None,
            max_frame_size: None,
            max_header_list_size: None,
            keep_alive_interval: None,
            keep_alive_timeout: None,
            connect_protocol: true,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(1),
            idle_close_delay: Duration::ZERO,
            http1: Http1Settings::default(),
            http2: Http2Settings::default(),
        }
    }
}

impl ServeConfig {
    /// How long an HTTP/1 client may take to send a request's headers, from their first byte
    /// (default 10 s), so a client that trickles its headers cannot hold a connection open.
    /// Checked every half timeout: a late head is refused (the connection closed) between 1 and
    /// 1.5 timeouts after its first byte. A silent client is the idle timeout's.
    ///
    /// At stop-accepting, a head half read gets at most 1 s more (less when its timeout has
    /// less left), then its connection is closed without a request, which is not work cut.
    pub fn header_read_timeout(mut self, timeout: Duration) -> ServeConfig {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a connection may go without reading or writing a byte before the server closes
    /// it (default 60 s): a silent client, or an idle keep-alive connection. A busy HTTP/1
    /// connection is not cut: its current response gets `Connection: close`.
    pub fn idle_timeout(mut self, timeout: Duration) -> ServeConfig {
        self.idle_timeout = timeout;
        self
    }

    /// How long a connection closed during the shutdown with client bytes still unread (a
    /// pipelined request, a body the handler did not read) waits for the client to close its
    /// side (default 1 s). The server sends its FIN first and reads until the client's, so
    /// that data never turns the close into a reset that could destroy the last response. A
    /// connection with nothing unread closes at once.
    pub fn linger(mut self, linger: Duration) -> ServeConfig {
        self.linger = linger;
        self
    }

    /// How long an idle HTTP/1 keep-alive connection stays open after stop-accepting, waiting
    /// for its client's next request so that request is answered (with `Connection: close`)
    /// instead of racing the close (default zero: idle connections close at once).
    ///
    /// A client that sends a request on a connection the server is closing sees it closed
    /// under the request; it may retry only what is idempotent. Behind a balancer that learns
    /// of the shutdown only from its pooled connections closing (open-source nginx, which
    /// never reads readiness), that race fails a few `POST`s per restart; a delay of 500 ms
    /// to 1 s, under load, lets every pooled connection carry one more request and close
    /// cleanly. Behind a balancer that follows readiness, nothing is sent any more at
    /// stop-accepting and zero is right.
    pub fn idle_close_delay(mut self, delay: Duration) -> ServeConfig {
        self.idle_close_delay = delay;
        self
    }

    /// Whether HTTP/1 connections are kept alive between requests (default `true`). With
    /// `false` every response says `Connection: close` and its connection closes after it.
    pub fn http1_keep_alive(mut self, enabled: bool) -> ServeConfig {
        self.http1.keep_alive = Some(enabled);
        self
    }

    /// The most header fields an HTTP/1 request may have (hyper's default: 100); a request
    /// with more is answered `431 Request Header Fields Too Large` and its connection closed.
    pub fn http1_max_headers(mut self, max: usize) -> ServeConfig {
        self.http1.max_headers = Some(max);
        self
    }

    /// The largest HTTP/1 read buffer, which bounds a request head's size (hyper's default:
    /// about 400 KiB; at least 8192). A longer head is answered `431`.
    pub fn http1_max_buf_size(mut self, max: usize) -> ServeConfig {
        self.http1.max_buf_size = Some(max.max(8192));
        self
    }

    /// The most streams an HTTP/2 client may open at once on one connection (hyper's default:
    /// 200), sent in the server's `SETTINGS`.
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> ServeConfig {
        self.http2.max_concurrent_streams = Some(max);
        self
    }

    /// HTTP/2's initial flow-control window per stream, in bytes (hyper's default: 1 MiB; at
    /// most 2^31 - 1, HTTP/2's limit, to which a larger value is lowered), sent in the
    /// server's `SETTINGS`.
    pub fn http2_initial_stream_window_size(mut self, size: u32) -> ServeConfig {
        self.http2.initial_stream_window_size = Some(size.min(MAX_WINDOW));
        self
    }

    /// HTTP/2's initial flow-control window per connection, in bytes (hyper's default:
    /// 1 MiB; at most 2^31 - 1), sent as the server's first `WINDOW_UPDATE`.
    pub fn http2_initial_connection_window_size(mut self, size: u32) -> ServeConfig {
        self.http2.initial_connection_window_size = Some(size.min(MAX_WINDOW));
        self
    }

    /// Whether HTTP/2 sizes its flow-control windows from the measured bandwidth-delay product
    /// (default `false`); when on, the two window sizes above are ignored.
    pub fn http2_adaptive_window(mut self, enabled: bool) -> ServeConfig {
        self.http2.adaptive_window = Some(enabled);
        self
    }

    /// The largest HTTP/2 frame payload the server accepts, in bytes (hyper's default: 16 KiB),
    /// sent in the server's `SETTINGS`. HTTP/2 allows 16,384 to 16,777,215; a value outside is
    /// brought to the nearest bound (hyper would panic on it).
    pub fn http2_max_frame_size(mut self, size: u32) -> ServeConfig {
        self.http2.max_frame_size = Some(size.clamp(16_384, 16_777_215));
        self
    }

    /// The largest HTTP/2 header list the server accepts, in bytes (hyper's default: 16 KiB),
    /// sent in the server's `SETTINGS`.
    pub fn http2_max_header_list_size(mut self, size: u32) -> ServeConfig {
        self.http2.max_header_list_size = Some(size);
        self
    }

    /// How often an HTTP/2 connection is pinged to check it is alive (default: never), and
    /// how long a ping may go unanswered before the connection is closed (hyper's default:
    /// 20 s).
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> ServeConfig {
        self.http2.keep_alive_interval = Some(interval);
        self.http2.keep_alive_timeout = Some(timeout);
        self
    }

    /// Whether HTTP/2 offers the extended CONNECT protocol (RFC 8441, default `true`), which
    /// WebSockets over HTTP/2 need; axum's own `serve` turns it on too.
    pub fn http2_connect_protocol(mut self, enabled: bool) -> ServeConfig {
        self.http2.connect_protocol = enabled;
        self
    }

    /// A connection builder with hyper's settings applied.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        // The header-read timeout is enforced by `connection` itself, not by hyper's timer,
        // which costs a timer-wheel entry and an extra read poll per request (see `ConnState`).
        http1.header_read_timeout(None);
        if let Some(enabled) = self.http1.keep_alive {
            http1.keep_alive(enabled);
        }
        if let Some(max) = self.http1.max_headers {
            http1.max_headers(max);
        }
        if let Some(max) = self.http1.max_buf_size {
            http1.max_buf_size(max);
        }
        let mut http2 = builder.http2();
        http2.timer(TokioTimer::new());
        let h2 = &self.http2;
        if let Some(max) = h2.max_concurrent_streams {
            http2.max_concurrent_streams(max);
        }
        if let Some(size) = h2.initial_stream_window_size {
            http2.initial_stream_window_size(size);
        }
        if let Some(size) = h2.initial_connection_window_size {
            http2.initial_connection_window_size(size);
        }
        if let Some(enabled) = h2.adaptive_window {
            http2.adaptive_window(enabled);
        }
        if let Some(size) = h2.max_frame_size {
            http2.max_frame_size(size);
        }
        if let Some(size) = h2.max_header_list_size {
            http2.max_header_list_size(size);
        }
        if let Some(interval) = h2.keep_alive_interval {
            http2.keep_alive_interval(interval);
        }
        if let Some(timeout) = h2.keep_alive_timeout {
            http2.keep_alive_timeout(timeout);
        }
        if h2.connect_protocol {
            http2.enable_connect_protocol();
        }
        builder
    }
}

/// A source of connections for [`serve`]: a [`tokio::net::TcpListener`], or on Unix a
/// [`tokio::net::UnixListener`].
///
/// Sealed: [`serve`] needs to know a socket's kind to close it without a reset.
pub trait Listener: sealed::Accept {}

impl Listener for TcpListener {}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {}

mod sealed {
    use std::future::Future;
    use std::io;

    use tokio::io::{AsyncRead, AsyncWrite};

    /// What [`serve`](super::serve) needs of a listener and its sockets.
    #[allow(unreachable_pub)] // Sealed: nameable only through `Listener`.
    pub trait Accept: Send + 'static {
        /// An accepted connection's socket.
        type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
        /// A peer's address, inserted into each request's extensions.
        type Addr: Clone + std::fmt::Debug + Send + Sync + 'static;

        /// Accepts one connection.
        fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

        /// The listening address, for the logs.
        fn describe(&self) -> String;

        /// Prepares an accepted socket (no Nagle delay for TCP).
        fn prepare(io: &Self::Io);

        /// Whether the client has sent bytes nobody read.
        fn has_unread(io: &Self::Io) -> bool;
    }
}

impl sealed::Accept for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept_one(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.accept()
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => "a TCP listener".to_owned(),
        }
    }

    fn prepare(io: &TcpStream) {
        let _ = io.set_nodelay(true);
    }

    fn has_unread(io: &TcpStream) -> bool {
        peek_unread(socket2::SockRef::from(io))
    }
}

#[cfg(unix)]
impl sealed::Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn accept_one(
        &self,
    ) -> impl Future<Output = io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)>> + Send
    {
        self.accept()
    }

    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(addr) => format!("{addr:?}"),
            Err(_) => "a Unix listener".to_owned(),
        }
    }

    fn prepare(_: &tokio::net::UnixStream) {}

    fn has_unread(io: &tokio::net::UnixStream) -> bool {
        peek_unread(socket2::SockRef::from(io))
    }
}

/// Binds a TCP listener on `addr` with the system's largest accept backlog, so a burst of
/// connections at the moment of a shutdown waits in the kernel's queue for [`serve`] to take
/// it rather than being dropped or reset.
///
/// `tokio::net::TcpListener::bind` asks for a backlog of 1,024, and many servers 128; a
/// connection that finds the queue full has its handshake dropped, and retried a second
/// later, by which time the listener may be closed. On Linux the backlog is
/// `/proc/sys/net/core/somaxconn` (4,096 since Linux 5.4), elsewhere 1,024. `SO_REUSEADDR` is
/// set, as `TcpListener::bind` does, so a restarted service can bind at once.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let listener = lastcall::http::listen(([127, 0, 0, 1], 3000).into())?;
/// # let _ = listener; Ok(()) }
/// ```
///
/// # Errors
///
/// If the socket cannot be created, bound (the address is in use, say) or listened on.
///
/// # Panics
///
/// Outside a tokio runtime with I/O enabled, as [`TcpListener::from_std`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(max_backlog())?;
    TcpListener::from_std(socket.into())
}

/// The system's largest accept backlog: Linux's `net.core.somaxconn`, else 1,024.
fn max_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1024)
}

/// Serves `service` on `listener` until the shutdown has stopped accepting and every connection
/// has closed.
///
/// - During the drain delay everything is served normally.
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
/// - Every connection is tracked as [`WorkKind::Connection`] work, so waiting for work covers
///   them; at the wait-for-work deadline the ones still open are closed, and the report names
///   them.
/// - Each request carries its peer's address in its extensions, as axum's
///   `ConnectInfo<SocketAddr>` (feature `axum`; `ConnectInfo<tokio::net::unix::SocketAddr>` on a
///   Unix socket), so handlers that extract it work as under `axum::serve`.
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
    let without_request = Arc::new(AtomicUsize::new(0));
    let stop = shutdown.reached(Phase::StopAccepting);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept_one() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                L::prepare(&stream);
                connections.spawn(connection::<L, S, B>(
                    stream,
                    peer,
                    service.clone(),
                    builder.clone(),
                    Served {
                        shutdown: shutdown.clone(),
                        config: config.clone(),
                        without_request: without_request.clone(),
                    },
                    Arrival::BeforeStop,
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // Connections the kernel completed but nobody accepted yet would be reset when the listener
    // closes: accept them now and answer their first request with `Connection: close`.
    let mut late = builder.clone();
    late.http1().keep_alive(false);
    let mut backlog = 0usize;
    while let Ok(Ok((stream, peer))) =
        tokio::time::timeout(Duration::ZERO, listener.accept_one()).await
    {
        backlog += 1;
        L::prepare(&stream);
        connections.spawn(connection::<L, S, B>(
            stream,
            peer,
            service.clone(),
            late.clone(),
            Served {
                shutdown: shutdown.clone(),
                config: config.clone(),
                without_request: without_request.clone(),
            },
            Arrival::AfterStop,
        ));
    }
    drop(listener);
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

/// [`serve`] for an already-bound standard listener (socket activation, tests).
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

/// What every connection of one [`serve`] shares.
struct Served {
    shutdown: Shutdown,
    config: ServeConfig,
    /// Connections the shutdown closed before their first request or with a head half read.
    without_request: Arc<AtomicUsize>,
}

async fn connection<L, S, B>(
    stream: L::Io,
    peer: L::Addr,
    service: S,
    builder: auto::Builder<TokioExecutor>,
    served: Served,
    arrival: Arrival,
) where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Served {
        shutdown,
        config,
        without_request,
    } = served;
    let guard = shutdown
        .tracker()
        .track(WorkKind::Connection, format!("connection {peer:?}"));
    let state = Arc::new(ConnState::new());
    let io = Lingering::<L> {
        stream: Some(stream),
        guard: Some(guard),
        shutdown: shutdown.clone(),
        linger: config.linger,
        state: state.clone(),
    };
    let service = Counted {
        inner: service,
        state: state.clone(),
        #[cfg(feature = "axum")]
        peer: peer.clone(),
        #[cfg(not(feature = "axum"))]
        peer: std::marker::PhantomData::<L::Addr>,
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let stop = shutdown.reached(Phase::StopAccepting);
    let cut = shutdown.cut();
    // One timer per connection, for the idle and header-read timeouts: it fires at least twice
    // per header-read timeout, so a head that is not complete in time is refused between 1 and
    // 1.5 timeouts after its first byte.
    let tick = config
        .idle_timeout
        .min(config.header_read_timeout / 2)
        .max(Duration::from_millis(10));
    let timer = tokio::time::sleep(tick);
    tokio::pin!(stop, cut, timer);
    // A connection taken from the backlog after stop-accepting has keep-alive off already; a
    // graceful shutdown now would close it before its request is read.
    let mut draining = arrival == Arrival::AfterStop;
    let mut registered = false;
    // Set at stop-accepting while waiting for a next request (see below): until when, and
    // how many requests the connection had had.
    let mut next_wait: Option<(tokio::time::Instant, u64)> = None;
    // For a connection taken from the backlog after stop-accepting: until when it may take to
    // send its first request.
    let mut first_request_by: Option<tokio::time::Instant> = None;
    // Not `select!`: that would poll the two phase futures and the timer at every wake of the
    // connection, and a phase future's poll takes the lock of a `Notify` that every
    // connection shares. They are polled once, to register this task's waker (which a task
    // keeps for its life), and then read through the shutdown's atomic phase and the timer's
    // state, polled again only when they fire.
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            if let Err(error) = ended {
                tracing::debug!(?peer, %error, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        if !registered {
            registered = true;
            let _ = stop.as_mut().poll(cx);
            let _ = cut.as_mut().poll(cx);
            let _ = timer.as_mut().poll(cx);
        }
        let phase = shutdown.phase();
        if phase >= Phase::FlushTelemetry {
            tracing::warn!(
                ?peer,
                "connection still open at the wait deadline; closing it"
            );
            return Poll::Ready(());
        }
        if arrival == Arrival::AfterStop
            && state.requests.load(Ordering::Relaxed) == 0
            && state.in_flight.load(Ordering::Relaxed) == 0
        {
            // Taken from the backlog and still without a whole request (silent, or trickling
            // its head): the same grace as a head half read at the stop, then closed without
            // a request, which hyper would not do before its first request.
            let now = tokio::time::Instant::now();
            let until = *first_request_by.get_or_insert_with(|| {
                let until = now + HEAD_GRACE.min(config.linger);
                match shutdown.deadline(Phase::WaitForWork) {
                    Some(deadline) => {
                        until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(now))
                    }
                    None => until,
                }
            });
            if now >= until {
                tracing::debug!(?peer, "no request after its grace; closing");
                state.closed_in_head.store(true, Ordering::Relaxed);
                return Poll::Ready(());
            }
            if timer.deadline() > until {
                timer.as_mut().reset(until);
                let _ = timer.as_mut().poll(cx);
            }
        }
        if phase >= Phase::StopAccepting && !draining {
            // An HTTP/1 connection with no request in flight is not closed at once when
            // - it has not had a request yet: a client that connected just before the stop
            //   may have its first one on the wire, and hyper would cancel a connection that
            //   has not read enough to tell HTTP/1 from HTTP/2, closing it under that request
            //   (a reset, for data already in the socket);
            // - a request head is half read: hyper would close it as idle;
            // - `idle_close_delay` asks to wait for the client's next request.
            // It waits for the next request, for at most the linger (the delay for the last
            // case), then closes as below; that request is answered with `Connection: close`.
            let requests = state.requests.load(Ordering::Relaxed);
            let now = tokio::time::Instant::now();
            let (until, requests_at_stop) = *next_wait.get_or_insert_with(|| {
                // (Connections accepted after the stop start out draining: not here.)
                let wait = match state.reading_head_for(crate::clock::read()) {
                    // A head half read gets a short grace, never more than its header-read
                    // timeout has left: a client that trickles its head cannot hold the
                    // shutdown.
                    Some(reading) => {
                        HEAD_GRACE.min(config.header_read_timeout.saturating_sub(reading))
                    }
                    None if requests == 0 => config.linger,
                    None => config.idle_close_delay,
                };
                let mut until = now + wait;
                // A connection that waits for a request is not work: it must not still be
                // open at the wait-for-work deadline, where it would count as work cut.
                if let Some(deadline) = shutdown.deadline(Phase::WaitForWork) {
                    until = until.min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(now));
                }
                (until, requests)
            });
            let waiting = now < until
                && requests == requests_at_stop
                && state.in_flight.load(Ordering::Relaxed) == 0
                && !state.no_heads.load(Ordering::Relaxed);
            if !waiting {
                if state.in_flight.load(Ordering::Relaxed) == 0
                    && state.reading_head_for(crate::clock::read()).is_some()
                {
                    // hyper ignores a graceful shutdown while a head is half read, and would
                    // keep the connection until its header-read timeout: close it here, through
                    // the socket's polite close, as a connection without a request.
                    tracing::debug!(
                        ?peer,
                        "request head still incomplete after its grace; closing"
                    );
                    state.closed_in_head.store(true, Ordering::Relaxed);
                    return Poll::Ready(());
                }
                draining = true;
                // HTTP/1: close if idle, else finish the current exchange with `Connection:
                // close`. HTTP/2: GOAWAY, then finish the open streams.
                conn.as_mut().graceful_shutdown();
                continue;
            }
            if timer.deadline() > until {
                timer.as_mut().reset(until);
                let _ = timer.as_mut().poll(cx);
            }
        }
        if !timer.is_elapsed() {
            return Poll::Pending;
        }
        let now = crate::clock::read();
        let quiet = Duration::from_nanos(now.saturating_sub(state.last_io.load(Ordering::Relaxed)));
        let next = tick.min(config.idle_timeout.saturating_sub(quiet));
        let mut at = tokio::time::Instant::now() + next.max(Duration::from_millis(10));
        if let (Some((until, _)), false) = (next_wait, draining) {
            at = at.min(until);
        }
        timer.as_mut().reset(at);
        let _ = timer.as_mut().poll(cx);
        if let Some(reading) = state.reading_head_for(now) {
            if reading >= config.header_read_timeout {
                tracing::debug!(
                    ?peer,
                    reading_ms = reading.as_millis() as u64,
                    "request head not complete in time; closing"
                );
                return Poll::Ready(());
            }
        }
        if quiet >= config.idle_timeout && !draining {
            tracing::debug!(
                ?peer,
                quiet_ms = quiet.as_millis() as u64,
                "closing an idle connection"
            );
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
    })
    .await;
    if (next_wait.is_some() || first_request_by.is_some())
        && (state.closed_in_head.load(Ordering::Relaxed)
            || state.requests.load(Ordering::Relaxed) == 0)
    {
        without_request.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a connection's socket, its service and its loop share; only that connection's task
/// touches it.
///
/// The header-read timeout is kept here rather than by hyper: hyper's arms a timer for every
/// request (on a keep-alive connection from the end of the previous response) and polls the
/// read side once more per request to check it, which measured at about 1,100 instructions per
/// request, a tenth of the server's own work. Here a head's first byte is stamped by the
/// socket's read, the service's call (the head is complete) clears it, and the connection's
/// periodic timer compares. A head starts only when no request is in flight: bytes read while
/// one is (its body, a pipelined request) are not a new head.
struct ConnState {
    /// When a byte was last read or written, on the coarse clock, for the idle timeout.
    last_io: AtomicU64,
    /// When the first byte of a request head was read; 0 when no head is being read.
    head_started: AtomicU64,
    /// Requests whose head was read and whose response has not been fully sent.
    in_flight: AtomicU64,
    /// Requests whose head was read, ever.
    requests: AtomicU64,
    /// HTTP/2 or upgraded: no HTTP/1 heads to time any more.
    no_heads: AtomicBool,
    /// Closed by the shutdown with a head half read: not work, so its polite close is not
    /// tracked.
    closed_in_head: AtomicBool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            last_io: AtomicU64::new(crate::clock::read()),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            no_heads: AtomicBool::new(false),
            closed_in_head: AtomicBool::new(false),
        }
    }

    /// Bytes were read at `now`.
    fn read(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
        if self.head_started.load(Ordering::Relaxed) == 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && !self.no_heads.load(Ordering::Relaxed)
        {
            self.head_started.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// A request's head was read: it is in flight until its response has been sent.
    fn head_read(self: &Arc<Self>, version: http::Version) -> InFlight {
        self.head_started.store(0, Ordering::Relaxed);
        if version >= http::Version::HTTP_2 {
            self.no_heads.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// How long the head being read has taken so far, if one is.
    fn reading_head_for(&self, now: u64) -> Option<Duration> {
        let started = self.head_started.load(Ordering::Relaxed);
        if started == 0 || self.no_heads.load(Ordering::Relaxed) {
            return None;
        }
        Some(Duration::from_nanos(now.saturating_sub(started)))
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's service: marks each request in flight until its response body is done,
/// and gives it its peer's address as axum's `ConnectInfo`.
#[derive(Clone)]
struct Counted<S, A> {
    inner: S,
    state: Arc<ConnState>,
    #[cfg(feature = "axum")]
    peer: A,
    #[cfg(not(feature = "axum"))]
    peer: std::marker::PhantomData<A>,
}

impl<S, B, A> Service<Request<Incoming>> for Counted<S, A>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    A: Clone + Send + Sync + 'static,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        #[cfg(feature = "axum")]
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer.clone()));
        let in_flight = self.state.head_read(req.version());
        CountedFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            if let Some(in_flight) = &in_flight {
                in_flight.0.no_heads.store(true, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(response.map(|body| Guarded::new(body, in_flight))))
    }
}

/// A response body that keeps its request in flight until its last frame.
type CountedBody<B> = Guarded<B, InFlight>;

/// When a connection was accepted, relative to stop-accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    BeforeStop,
    AfterStop,
}

/// The connection's socket, which closes politely once the shutdown has begun: when hyper is
/// done with it and the client has sent bytes nobody read, the socket sends FIN and reads
/// until the client's FIN (bounded) instead of closing with unread data, which the kernel
/// would answer with a reset. With nothing unread it closes at once.
struct Lingering<L: Listener> {
    stream: Option<L::Io>,
    // The connection counts as work until its socket is really closed.
    guard: Option<WorkGuard>,
    shutdown: Shutdown,
    linger: Duration,
    /// Shared with the connection's loop and service.
    state: Arc<ConnState>,
}

impl<L: Listener> Lingering<L> {
    fn touch(&self) {
        self.state
            .last_io
            .store(crate::clock::read(), Ordering::Relaxed);
    }

    /// Counts a write that moved bytes as activity, for the idle timeout.
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.touch();
            }
        }
        polled
    }

    fn stream(&mut self) -> io::Result<&mut L::Io> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<L: Listener> AsyncRead for Lingering<L> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        if buf.filled().len() > before {
            self.state.read(crate::clock::read());
        }
        polled
    }
}

impl<L: Listener> AsyncWrite for Lingering<L> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<L: Listener> Drop for Lingering<L> {
    fn drop(&mut self) {
        let phase = self.shutdown.phase();
        // Before the shutdown, and once the wait deadline has passed, close as usual.
        if phase < Phase::StopAccepting || phase >= Phase::FlushTelemetry {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        // A connection closed with its head half read always closes politely, since its
        // client is still sending, but that close is not work: its guard goes now.
        let in_head = self.state.closed_in_head.load(Ordering::Relaxed);
        if in_head {
            self.guard = None;
        }
        // Nothing unread: closing now sends FIN, not a reset, so there is nothing to linger
        // for (nginx's heuristic too). Waiting for the client's FIN would only hold the
        // process for a round trip after its last response.
        if !in_head && !L::has_unread(&stream) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let guard = self.guard.take();
        let cut = self.shutdown.cut();
        let linger = self.linger;
        runtime.spawn(async move {
            let _guard = guard;
            let _ = tokio::time::timeout(linger, async {
                tokio::select! {
                    _ = cut => {}
                    _ = close_politely(stream) => {}
                }
            })
            .await;
        });
    }
}

/// Whether the client has sent bytes nobody read (a pipelined request, an unread body):
/// closing the socket now would answer them with a reset, which can destroy the response still
/// on its way to the client. A closed or failed socket has nothing unread.
fn peek_unread(socket: socket2::SockRef<'_>) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // A non-blocking peek: `WouldBlock` when nothing is there, `Ok(0)` after the client's FIN.
    matches!(socket.peek(&mut byte), Ok(n) if n > 0)
}

/// Sends FIN, then reads and discards until the client's FIN.
async fn close_politely<T: AsyncRead + AsyncWrite + Unpin>(mut stream: T) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
