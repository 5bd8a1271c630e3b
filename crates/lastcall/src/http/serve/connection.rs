//! One connection's life: hyper serves it, and its task carries out what [`Timeouts`] decides
//! (keep-alive off or GOAWAY at the shutdown, a half-read head closed after its grace, the
//! header-read and idle timeouts), and counts its requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

use super::linger::Lingering;
use super::timeouts::{Action, Close, Counters, Limits, Moment, Timeouts};
use super::{Conn, Listener, Served, ServedBody, ServedService};
use crate::http::body::Guarded;
use crate::Phase;

pub(super) async fn connection<L, S, B>(
    stream: L::Io,
    Conn {
        peer,
        guard,
        service,
        builder,
        arrival,
    }: Conn<L, S>,
    served: Served,
) where
    L: Listener,
    S: ServedService<B>,
    B: ServedBody,
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
        peer: (cfg!(feature = "axum") && config.connect_info).then(|| peer.clone()),
    };
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let limits = Limits {
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        linger: config.linger,
        idle_close_delay: config.idle_close_delay,
    };
    let accepted = Instant::now();
    let mut timeouts = Timeouts::new(limits, arrival, accepted);
    // `select!` polls every branch at each wake of the connection, about once a request. The
    // phase futures are of child tokens, whose locks only this connection takes; the shared
    // token's would be taken by every connection at every wake.
    let stop = shutdown.token(Phase::StopAccepting).cancelled_owned();
    // `Shutdown::cut`'s phase.
    let cut = shutdown.token(Phase::FlushTelemetry).cancelled_owned();
    // Elapsed: the first decision comes right after hyper's first look at the socket, which
    // serves a request already there, as it does for a connection whose task starts late
    // (after the wait deadline, say).
    let timer = tokio::time::sleep_until(accepted);
    tokio::pin!(conn, stop, cut, timer);
    let mut stopped = false;
    let mut or_request = false;
    let closed = 'conn: loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(?peer, %error, "connection ended with an error");
                }
                break None;
            }
            () = &mut stop, if !stopped => stopped = true,
            // The cut comes after the stop: until then, one phase future to poll, not two.
            () = &mut cut, if stopped => {}
            () = &mut timer => {}
            () = state.request_started.notified(), if or_request => {}
        }
        loop {
            let phase = shutdown.phase();
            let moment = Moment {
                now: Instant::now(),
                phase,
                wait_deadline: shutdown.deadline(Phase::WaitForWork),
                // Read only once stopping (it takes the trigger's lock), which is the only
                // time the state machine looks at it.
                restart: phase >= Phase::StopAccepting && shutdown.shared.restarting(),
            };
            match timeouts.next(moment, state.counters(crate::clock::read())) {
                Action::Sleep {
                    until,
                    or_request: on_request,
                } => {
                    if timer.deadline() != until {
                        timer.as_mut().reset(until);
                    }
                    or_request = on_request;
                    break;
                }
                Action::GracefulShutdown => {
                    // HTTP/1: close if idle, else finish the current exchange with
                    // `Connection: close`. HTTP/2: GOAWAY, then finish the open streams.
                    conn.as_mut().graceful_shutdown();
                }
                Action::Close(close) => break 'conn Some(close),
            }
        }
    };
    match closed {
        None => {}
        Some(Close::WithoutRequest) => {
            // hyper ignores a graceful shutdown before a whole head is read (and before its
            // first request, it would cancel the connection): closed here, through the
            // socket's polite close, as a connection without a request.
            tracing::debug!(?peer, "no whole request after its grace; closing");
            state.closed_in_head.store(true, Ordering::Relaxed);
        }
        Some(Close::HeadTimeout) => {
            tracing::debug!(?peer, "request head not complete in time; closing");
        }
        Some(Close::Deadline) => {
            tracing::warn!(
                ?peer,
                "connection still open at the wait deadline; closing it"
            );
        }
    }
    // hyper's connection, and with it the socket, whose polite close reads `closed_in_head`,
    // is dropped when this function returns.
    if timeouts.waited_for_request()
        && (state.closed_in_head.load(Ordering::Relaxed)
            || state.requests.load(Ordering::Relaxed) == 0)
    {
        without_request.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a connection's socket, its service and its task share. The socket is read and
/// written, and the service called, on the connection's task; but an HTTP/2 stream's response
/// (and so its [`InFlight`], dropped with the body's last frame) runs on a task of its own,
/// hence atomics, and the [`Notify`] through which a request wakes the connection's task.
///
/// The header-read timeout is kept here rather than by hyper: hyper's arms a timer for every
/// request (on a keep-alive connection from the end of the previous response) and polls the
/// read side once more per request to check it, which measured at about 1,100 instructions per
/// request, a tenth of the server's own work. Here a head's first byte is stamped by the
/// socket's read, the service's call (the head is complete) clears it, and the connection's
/// periodic check ([`Timeouts`]) compares. A head starts only when no request is in flight:
/// bytes read while one is (its body, a pipelined request) are not a new head.
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
    /// Notified when a request's head has been read, for the task waiting at stop-accepting
    /// for a next request (a permit left by an earlier request only costs it a look).
    request_started: Notify,
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
            request_started: Notify::new(),
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
        self.request_started.notify_one();
        InFlight(self.clone())
    }

    /// The counters the timeouts decide on, at `now` on the coarse clock.
    fn counters(&self, now: u64) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            no_heads: self.no_heads.load(Ordering::Relaxed),
            reading_head: self.reading_head_for(now),
            quiet: Duration::from_nanos(now.saturating_sub(self.last_io.load(Ordering::Relaxed))),
        }
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
    /// Given to each request as `ConnectInfo` (feature `axum`), unless the config says not.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    peer: Option<A>,
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
        if let Some(peer) = &self.peer {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer.clone()));
        }
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
