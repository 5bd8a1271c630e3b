//! The drain middleware: see [`Drain`].

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use tower_service::Service;

use super::{DrainBody, DrainLayer, DrainPolicy, ResponseFuture};
use crate::{Phase, WorkKind};

/// The service [`DrainLayer`] wraps around an inner service; see the layer for what it does.
///
/// Needs the `http` feature.
#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    // Shared: hyper clones the service for every request, and a `DrainLayer` holds the
    // health paths' strings.
    layer: Arc<DrainLayer>,
}

const DRAINING_BODY: &[u8] =
    br#"{"error":"server_draining","message":"This instance is shutting down. Retry on another instance."}"#;

impl<S> Drain<S> {
    /// Wraps `inner` with `layer`'s configuration.
    pub fn new(inner: S, layer: DrainLayer) -> Drain<S> {
        Drain {
            inner,
            layer: Arc::new(layer),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Gives this copy, one connection's of [`serve`](super::serve), the layer's
    /// configuration in an `Arc` of its own: hyper clones the service for every request, and
    /// a count shared by every connection would move between cores at each one.
    #[cfg(feature = "axum")]
    pub(crate) fn own_layer(&mut self) {
        Arc::make_mut(&mut self.layer);
    }

    /// The answer to a health path, if `path` is one.
    fn health(&self, path: &str) -> Option<Response<Bytes>> {
        let paths = self.layer.health.as_ref()?;
        let health = self.layer.shutdown.health();
        let (ok, body): (bool, &'static [u8]) = if path == paths.live {
            match health.is_live() {
                true => (true, br#"{"ok":true}"#),
                false => (false, br#"{"ok":false}"#),
            }
        } else if path == paths.ready {
            match health.is_ready() {
                true => (true, br#"{"ready":true}"#),
                false => (false, br#"{"ready":false}"#),
            }
        } else {
            return None;
        };
        let mut response = json(body);
        if !ok {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(response)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drain<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if let Some(response) = self.health(req.uri().path()) {
            return ResponseFuture::ready(response);
        }
        let shutdown = &self.layer.shutdown;
        if let DrainPolicy::Reject { retry_after } = self.layer.policy {
            if shutdown.phase() >= Phase::StopAccepting {
                self.layer.rejections.record();
                tracing::debug!(method = %req.method(), path = req.uri().path(), "rejected while draining");
                let mut response = json(DRAINING_BODY);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
                return ResponseFuture::ready(response);
            }
        }
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |pq| pq.as_str());
        let method = req.method().as_str();
        let mut label = String::with_capacity(method.len() + 1 + target.len());
        label.push_str(method);
        label.push(' ');
        label.push_str(target);
        let guard = shutdown.tracker().track(WorkKind::Request, label);
        let version = req.version();
        ResponseFuture::inner(self.inner.call(req), guard, version, self.layer.clone())
    }
}

fn json(body: &'static [u8]) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
