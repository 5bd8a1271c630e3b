//! The drain middleware's configuration: see [`DrainLayer`].

use std::time::Duration;

use tower_layer::Layer;

use super::Drain;
use crate::report::Rejections;
use crate::Shutdown;

/// A tower layer that drains HTTP traffic through a shutdown.
///
/// Needs the `http` feature.
///
/// Every request is tracked in the shutdown's [`Tracker`](crate::Tracker) until its response
/// body has been fully sent (a streaming body counts until it ends; a `text/event-stream` or
/// upgraded response counts as a [`WorkKind::Stream`](crate::WorkKind::Stream)). During the
/// drain delay requests are served normally: only readiness says 503, because a balancer
/// still routing here does not retry a 503. From stop-accepting on, the [`DrainPolicy`] decides.
/// The health paths are answered by the layer itself and never rejected.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::http::{DrainLayer, DrainPolicy, HealthPaths};
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// let layer = DrainLayer::new(controller.shutdown())
///     .policy(DrainPolicy::Reject { retry_after: Duration::from_secs(1) })
///     .health(HealthPaths::new("/livez", "/readyz"));
/// # let _ = layer;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DrainLayer {
    pub(crate) shutdown: Shutdown,
    /// Where [`DrainPolicy::Reject`] counts what it turns away.
    pub(crate) rejections: Rejections,
    pub(crate) policy: DrainPolicy,
    pub(crate) health: Option<HealthPaths>,
}

/// What the layer does with a request that arrives after stop-accepting, on a connection that
/// is still open.
///
/// Needs the `http` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DrainPolicy {
    /// Serve it, and answer with `Connection: close` (HTTP/1.1) so the client does not reuse
    /// the connection. No client sees an error.
    #[default]
    Serve,
    /// Answer at once with a retryable `503 Service Unavailable`, `Connection: close`,
    /// `Retry-After` and `{"error":"server_draining","message":"..."}`: for services whose
    /// requests are long. Counted as rejected in the report.
    Reject {
        /// The `Retry-After` hint, rounded up to whole seconds.
        retry_after: Duration,
    },
}

/// The paths of the liveness and readiness endpoints the layer answers.
///
/// Needs the `http` feature.
///
/// Liveness answers `200 {"ok":true}` until the process is about to exit; readiness answers
/// `200 {"ready":true}` while ready and `503 {"ready":false}` from the first moment of the
/// shutdown (and while starting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPaths {
    pub(crate) live: String,
    pub(crate) ready: String,
}

impl DrainLayer {
    /// A layer for `shutdown`, with the [`DrainPolicy::Serve`] policy and the health paths
    /// `/health/live` and `/health/ready`.
    pub fn new(shutdown: Shutdown) -> DrainLayer {
        DrainLayer {
            rejections: shutdown.rejections(),
            shutdown,
            policy: DrainPolicy::Serve,
            health: Some(HealthPaths::default()),
        }
    }

    /// Sets what happens to requests that arrive after stop-accepting.
    pub fn policy(mut self, policy: DrainPolicy) -> DrainLayer {
        self.policy = policy;
        self
    }

    /// Sets the health paths.
    pub fn health(mut self, paths: HealthPaths) -> DrainLayer {
        self.health = Some(paths);
        self
    }

    /// Leaves the health paths to the inner service.
    pub fn without_health(mut self) -> DrainLayer {
        self.health = None;
        self
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain::new(inner, self.clone())
    }
}

impl HealthPaths {
    /// Liveness at `live`, readiness at `ready`.
    pub fn new(live: impl Into<String>, ready: impl Into<String>) -> HealthPaths {
        HealthPaths {
            live: live.into(),
            ready: ready.into(),
        }
    }
}

impl Default for HealthPaths {
    fn default() -> Self {
        HealthPaths::new("/health/live", "/health/ready")
    }
}
