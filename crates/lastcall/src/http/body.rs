//! The response body that keeps a request tracked until it has been sent: see [`DrainBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::WorkGuard;

pin_project_lite::pin_project! {
    /// The body of a response that went through [`Drain`](super::Drain).
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
        // The inner service's body, tracked.
        Tracked {
            #[pin]
            body: B,
            // Dropped with the last frame: that is the moment the request stops counting.
            guard: Option<WorkGuard>,
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
                body,
                guard: Some(guard),
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
            KindProj::Tracked { body, guard } => {
                let polled = body.poll_frame(cx);
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guard.take();
                }
                polled
            }
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
