//! Serving HTTP/1.1 and HTTP/2 through a shutdown: see [`serve`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            linger: Duration::from_secs(1),
        }
    }
}

impl ServeConfig {
    /// How long an HTTP/1 client may take to send a request's headers (default 10 s), so a
    /// slow or silent client cannot hold a connection open through the shutdown.
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

    /// How long a connection closed during the shutdown waits for the client to close its side
    /// (default 1 s). The server sends its FIN first and reads until the client's, so data
    /// the client sent meanwhile never turns the close into a reset.
    pub fn linger(mut self, linger: Duration) -> ServeConfig {
        self.linger = linger;
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
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
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
    let last_io = Arc::new(AtomicU64::new(crate::clock::now()));
    let io = Lingering {
        stream: Some(stream),
        guard: Some(guard),
        shutdown: shutdown.clone(),
        linger: config.linger,
        last_io: last_io.clone(),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let stop = shutdown.reached(Phase::StopAccepting);
    let cut = shutdown.reached(Phase::FlushTelemetry);
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(stop, cut, idle);
    // A connection taken from the backlog after stop-accepting has keep-alive off already; a
    // graceful shutdown now would close it before its request is read.
    let mut draining = arrival == Arrival::AfterStop;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                break;
            }
            _ = &mut stop, if !draining => {
                draining = true;
                // HTTP/1: close if idle, else finish the current exchange with
                // `Connection: close`. HTTP/2: GOAWAY, then finish the open streams.
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut cut => {
                tracing::warn!(%peer, "connection still open at the wait deadline; closing it");
                break;
            }
            _ = &mut idle, if !draining => {
                let quiet = Duration::from_nanos(crate::clock::now().saturating_sub(last_io.load(Ordering::Relaxed)));
                if quiet >= config.idle_timeout {
                    tracing::debug!(%peer, quiet_ms = quiet.as_millis() as u64, "closing an idle connection");
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + (config.idle_timeout - quiet));
                }
            }
        }
    }
}

/// When a connection was accepted, relative to stop-accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    BeforeStop,
    AfterStop,
}

/// The connection's socket, which closes politely once the shutdown has begun: when hyper is
/// done with it, the socket sends FIN and reads until the client's FIN (bounded) instead of
/// closing with unread data, which the kernel would answer with a reset.
struct Lingering {
    stream: Option<TcpStream>,
    // The connection counts as work until its socket is really closed.
    guard: Option<WorkGuard>,
    shutdown: Shutdown,
    linger: Duration,
    /// When a byte was last read or written, on the cached clock, for the idle timeout.
    last_io: Arc<AtomicU64>,
}

impl Lingering {
    fn touch(&self) {
        self.last_io.store(crate::clock::now(), Ordering::Relaxed);
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
            self.touch();
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
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
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
