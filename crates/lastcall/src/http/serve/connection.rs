//! One connection's life: hyper serves it, and this task ends it at the shutdown (keep-alive
//! off, GOAWAY, a half-read head closed after its grace), enforces the header-read and idle
//! timeouts, and counts its requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_service::Service;

use super::linger::Lingering;
use super::{Listener, Served};
use crate::http::body::Guarded;
use crate::{BoxError, Phase, WorkGuard};

/// How long a request head half read at stop-accepting may take to complete, at most (less
/// when its header-read timeout has less left): a client that trickles its head cannot hold
/// the shutdown.
const HEAD_GRACE: Duration = Duration::from_secs(1);

/// How long before the wait-for-work deadline a connection that only waits for a request is
/// closed, so that it is never counted as work cut there.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

pub(super) async fn connection<L, S, B>(
    stream: L::Io,
    peer: L::Addr,
    guard: WorkGuard,
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
pub(super) struct ConnState {
    /// When a byte was last read or written, on the coarse clock, for the idle timeout.
    pub(super) last_io: AtomicU64,
    /// When the first byte of a request head was read; 0 when no head is being read.
    pub(super) head_started: AtomicU64,
    /// Requests whose head was read and whose response has not been fully sent.
    pub(super) in_flight: AtomicU64,
    /// Requests whose head was read, ever.
    pub(super) requests: AtomicU64,
    /// HTTP/2 or upgraded: no HTTP/1 heads to time any more.
    pub(super) no_heads: AtomicBool,
    /// Closed by the shutdown with a head half read: not work, so its polite close is not
    /// tracked.
    pub(super) closed_in_head: AtomicBool,
}

impl ConnState {
    pub(super) fn new() -> ConnState {
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
    pub(super) fn read(&self, now: u64) {
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
pub(super) enum Arrival {
    BeforeStop,
    AfterStop,
}
