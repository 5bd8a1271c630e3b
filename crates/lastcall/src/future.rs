//! Named futures (and the one stream) returned by lastcall's methods.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::Phase;

pin_project_lite::pin_project! {
    /// Resolves when the shutdown has reached a phase; returned by
    /// [`Shutdown::reached`](crate::Shutdown::reached).
    ///
    /// It is `Send + 'static`, so it can be handed to any API that takes a shutdown future,
    /// such as axum's `with_graceful_shutdown` or hyper-util's `GracefulShutdown`.
    #[must_use = "futures do nothing unless polled"]
    pub struct PhaseReached {
        phase: Phase,
        #[pin]
        inner: WaitForCancellationFutureOwned,
    }
}

/// Resolves when a [`Tracker`](crate::Tracker) has no active work; returned by
/// [`Tracker::wait_idle`](crate::Tracker::wait_idle).
#[must_use = "futures do nothing unless polled"]
pub struct Idle {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl PhaseReached {
    pub(crate) fn new(phase: Phase, inner: WaitForCancellationFutureOwned) -> PhaseReached {
        PhaseReached { phase, inner }
    }

    /// The phase this future waits for.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

impl Future for PhaseReached {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().inner.poll(cx)
    }
}

impl fmt::Debug for PhaseReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseReached")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Idle {
    pub(crate) fn new(inner: impl Future<Output = ()> + Send + 'static) -> Idle {
        Idle {
            inner: Box::pin(inner),
        }
    }
}

impl Future for Idle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Idle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idle").finish_non_exhaustive()
    }
}

#[cfg(any(feature = "axum", feature = "tonic"))]
pin_project_lite::pin_project! {
    /// A stream that, when the shutdown reaches stop-accepting, yields one last item and
    /// ends; until then it is the stream it wraps. Made by
    /// `http::sse::until_shutdown` (feature `axum`; the last item is an SSE event) and
    /// `grpc::until_shutdown` (feature `tonic`; an `UNAVAILABLE` status). Not links: either
    /// module may be left out of a build that has this type.
    ///
    /// Needs the `axum` or the `tonic` feature.
    #[must_use = "streams do nothing unless polled"]
    pub struct UntilShutdown<S>
    where
        S: futures_core::Stream,
    {
        #[pin]
        inner: S,
        #[pin]
        stop: PhaseReached,
        last: Option<S::Item>,
        ended: bool,
    }
}

#[cfg(any(feature = "axum", feature = "tonic"))]
impl<S: futures_core::Stream> UntilShutdown<S> {
    /// `inner` until `stop` (the shutdown's stop-accepting), then `last`.
    pub(crate) fn new(stop: PhaseReached, inner: S, last: S::Item) -> UntilShutdown<S> {
        UntilShutdown {
            inner,
            stop,
            last: Some(last),
            ended: false,
        }
    }
}

#[cfg(any(feature = "axum", feature = "tonic"))]
impl<S: futures_core::Stream> futures_core::Stream for UntilShutdown<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.stop.poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(this.last.take());
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

#[cfg(any(feature = "axum", feature = "tonic"))]
impl<S: futures_core::Stream + fmt::Debug> fmt::Debug for UntilShutdown<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilShutdown")
            .field("inner", &self.inner)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
