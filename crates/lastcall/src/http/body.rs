//! The response body that keeps a request tracked until it has been sent: see [`DrainBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::WorkGuard;

pin_project_lite::pin_project! {
    /// The body of a response that went through [`Drain`](super::Drain).
    ///
    /// Needs the `http` feature.
    ///
    /// It holds the request's [`WorkGuard`] until the body has been fully sent (or dropped), so
    /// a streaming response counts as active work until its last frame, not merely until the
    /// handler returned.
    #[derive(Debug)]
    pub struct DrainBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        // The inner service's body, tracked: the guard is dropped with the last frame, the
        // moment the request stops counting.
        Tracked {
            #[pin]
            body: Guarded<B, WorkGuard>,
        },
        // A body the layer wrote itself (health answers, draining rejections).
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> DrainBody<B> {
    pub(crate) fn tracked(body: B, guard: WorkGuard) -> DrainBody<B> {
        DrainBody {
            kind: Kind::Tracked {
                body: Guarded::new(body, Some(guard)),
            },
        }
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> DrainBody<B> {
        DrainBody {
            kind: Kind::Full {
                data: Some(data.into()),
            },
        }
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Tracked { body } => body.poll_frame(cx),
            KindProj::Full { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(B::Data::from(d)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Tracked { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Tracked { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` until its last frame, an error, or its drop: a request's
    /// [`WorkGuard`] in [`DrainBody`], its in-flight mark in `serve`'s connection bookkeeping.
    #[derive(Debug)]
    pub(crate) struct Guarded<B, G> {
        #[pin]
        body: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    /// `guard` is `None` when there is nothing to hold.
    pub(crate) fn new(body: B, guard: Option<G>) -> Guarded<B, G> {
        Guarded { body, guard }
    }
}

impl<B: Body, G> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
