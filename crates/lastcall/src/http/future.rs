//! The drain middleware's response future: see [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode, Version};

use super::{DrainBody, DrainLayer};
use crate::{Phase, WorkGuard, WorkKind};

pin_project_lite::pin_project! {
    /// The future returned by [`Drain`](super::Drain).
    ///
    /// Needs the `http` feature.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Inner {
            #[pin]
            future: F,
            // Held while the handler runs, then moved into the body: the request counts until
            // its response has been sent.
            guard: Option<WorkGuard>,
            version: Version,
            // Its shutdown is read when the response is ready: a request that outlives
            // stop-accepting is told to close its connection. The service's own handle, not a
            // `Shutdown` clone: under `serve` it is the connection's, whose count no other
            // core touches.
            layer: Arc<DrainLayer>,
        },
        Ready {
            response: Option<Response<bytes::Bytes>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(
        future: F,
        guard: WorkGuard,
        version: Version,
        layer: Arc<DrainLayer>,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
                version,
                layer,
            },
        }
    }

    pub(crate) fn ready(response: Response<bytes::Bytes>) -> ResponseFuture<F> {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<DrainBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                future,
                guard,
                version,
                layer,
            } => {
                let response = ready!(future.poll(cx))?;
                let (mut parts, body) = response.into_parts();
                let guard = guard
                    .take()
                    .expect("the guard is taken only when the future completes, and a completed future is not polled again");
                // A stream (SSE, or an upgraded connection such as a WebSocket) is its own kind
                // of work. A body of known length is not an event stream, which spares most
                // responses the header lookup.
                let is_stream = parts.status == StatusCode::SWITCHING_PROTOCOLS
                    || parts.extensions.get::<super::TrackAsStream>().is_some()
                    || (body.size_hint().exact().is_none()
                        && parts
                            .headers
                            .get(CONTENT_TYPE)
                            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")));
                if is_stream {
                    guard.set_kind(WorkKind::Stream);
                }
                // After stop-accepting, tell an HTTP/1.x client not to reuse the connection.
                if layer.shutdown.phase() >= Phase::StopAccepting
                    && *version <= Version::HTTP_11
                    && parts.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    parts
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    DrainBody::tracked(body, guard),
                )))
            }
            KindProj::Ready { response } => {
                let response = response.take().expect(
                    "a ready response is taken once; a completed future is not polled again",
                );
                let (parts, body) = response.into_parts();
                Poll::Ready(Ok(Response::from_parts(parts, DrainBody::full(body))))
            }
        }
    }
}
