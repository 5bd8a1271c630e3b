//! Serving HTTP/1.1 and HTTP/2 through a shutdown: see [`serve`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// How [`serve`] treats connections.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::http::ServeConfig;
///
/// let config = ServeConfig::default().header_read_timeout(Duration::from_secs(5));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct ServeConfig {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    linger: Duration,
    idle_close_delay: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(1),
            idle_close_delay: Duration::ZERO,
        }
    }
}

impl ServeConfig {
    /// How long an HTTP/1 client may take to send a request's headers, from their first byte
    /// (default 10 s), so a client that trickles its headers cannot hold a connection open.
    /// Checked every half timeout: a late head is refused (the connection closed) between 1 and
    /// 1.5 timeouts after its first byte. A silent client is the idle timeout's.
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
/// - Every connection is tracked as [`WorkKind::Connection`] work, so waiting for work covers
///   them; at the wait-for-work deadline the ones still open are closed, and the report names
///   them.
///
/// Wrap the service in a [`DrainLayer`](super::DrainLayer) so requests are tracked and the
/// health paths answered.
///
/// # Errors
///
/// Never fails once listening: accept errors are logged and retried. The `io::Result` is for
/// [`serve_std`]'s conversion of the listener.
///
/// # Cancel safety
///
/// Dropping the future stops accepting and drops every connection at once; let it finish.
pub async fn serve<S, B>(
    listener: TcpListener,
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header-read timeout is enforced by `connection` itself, not by hyper's timer,
    // which costs a timer-wheel entry and an extra read poll per request (see `ConnState`).
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let local = listener.local_addr().ok();
    let connections = TaskTracker::new();
    let stop = shutdown.reached(Phase::StopAccepting);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(
                    stream,
                    peer,
                    service.clone(),
                    builder.clone(),
                    shutdown.clone(),
                    config.clone(),
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
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await
    {
        backlog += 1;
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            peer,
            service.clone(),
            late.clone(),
            shutdown.clone(),
            config.clone(),
            Arrival::AfterStop,
        ));
    }
    drop(listener);
    tracing::info!(addr = ?local, backlog, "listener closed; new connections are refused");
    connections.close();
    connections.wait().await;
    tracing::debug!(addr = ?local, "every connection closed");
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

async fn connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    builder: auto::Builder<TokioExecutor>,
    shutdown: Shutdown,
    config: ServeConfig,
    arrival: Arrival,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let guard = shutdown
        .tracker()
        .track(WorkKind::Connection, format!("connection {peer}"));
    let state = Arc::new(ConnState::new());
    let io = Lingering {
        stream: Some(stream),
        guard: Some(guard),
        shutdown: shutdown.clone(),
        linger: config.linger,
        state: state.clone(),
    };
    let service = Counted {
        inner: service,
        state: state.clone(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let stop = shutdown.reached(Phase::StopAccepting);
    let cut = shutdown.reached(Phase::FlushTelemetry);
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
    // Not `select!`: that would poll the two phase futures and the timer at every wake of the
    // connection, and a phase future's poll takes the lock of a `Notify` that every
    // connection shares. They are polled once, to register this task's waker (which a task
    // keeps for its life), and then read through the shutdown's atomic phase and the timer's
    // state, polled again only when they fire.
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
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
            tracing::warn!(%peer, "connection still open at the wait deadline; closing it");
            return Poll::Ready(());
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
                let head = state.head_started.load(Ordering::Relaxed) != 0;
                let wait = if requests == 0 || head {
                    config.linger
                } else {
                    config.idle_close_delay
                };
                (now + wait, requests)
            });
            let waiting = now < until
                && requests == requests_at_stop
                && state.in_flight.load(Ordering::Relaxed) == 0
                && !state.no_heads.load(Ordering::Relaxed);
            if !waiting {
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
                tracing::debug!(%peer, reading_ms = reading.as_millis() as u64, "request head not complete in time; closing");
                return Poll::Ready(());
            }
        }
        if quiet >= config.idle_timeout && !draining {
            tracing::debug!(%peer, quiet_ms = quiet.as_millis() as u64, "closing an idle connection");
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
    })
    .await;
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
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            last_io: AtomicU64::new(crate::clock::read()),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            no_heads: AtomicBool::new(false),
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

/// The connection's service: marks each request in flight until its response body is done.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
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
struct Lingering {
    stream: Option<TcpStream>,
    // The connection counts as work until its socket is really closed.
    guard: Option<WorkGuard>,
    shutdown: Shutdown,
    linger: Duration,
    /// Shared with the connection's loop and service.
    state: Arc<ConnState>,
}

impl Lingering {
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

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Lingering {
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

impl AsyncWrite for Lingering {
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

impl Drop for Lingering {
    fn drop(&mut self) {
        let phase = self.shutdown.phase();
        // Before the shutdown, and once the wait deadline has passed, close as usual.
        if phase < Phase::StopAccepting || phase >= Phase::FlushTelemetry {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Nothing unread: closing now sends FIN, not a reset, so there is nothing to linger
        // for (nginx's heuristic too). Waiting for the client's FIN would only hold the
        // process for a round trip after its last response.
        if !has_unread(&stream) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let guard = self.guard.take();
        let cut = self.shutdown.reached(Phase::FlushTelemetry);
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
fn has_unread(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // A non-blocking peek: `WouldBlock` when nothing is there, `Ok(0)` after the client's FIN.
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
}

/// Sends FIN, then reads and discards until the client's FIN.
async fn close_politely(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
