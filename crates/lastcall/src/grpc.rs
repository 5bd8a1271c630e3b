//! gRPC through a shutdown (feature `tonic`; needs Rust 1.88).
//!
//! - [`health_reporter`] is `tonic-health`'s standard `grpc.health.v1.Health` service, driven by
//!   the shutdown: every service reports `NOT_SERVING` from the first moment of the shutdown
//!   (and while the process is starting), so a balancer or a Kubernetes `grpc` probe moves away
//!   during the drain delay while the RPCs it still sends are served.
//! - [`serve`] runs tonic services (a `tonic::service::Routes`, a generated `XxxServer`, any
//!   tower service speaking gRPC) on a listener with the same semantics as
//!   [`http::serve`](crate::http::serve): the listener closes at stop-accepting, HTTP/2
//!   connections get GOAWAY, RPCs in flight finish and are tracked, and at the wait-for-work
//!   deadline whatever is left is cut and named in the report.
//! - [`until_shutdown`] / [`stream_response`] end a server-streaming RPC with an `UNAVAILABLE`
//!   status when stop-accepting begins, so the client sees a finished RPC with a status it can
//!   retry on another instance, not a reset stream, and the service does not wait for the
//!   stream until its deadline.
//!
//! # Examples
//!
//! ```no_run
//! use lastcall::grpc::{health_reporter, serve};
//! use lastcall::http::ServeConfig;
//! use lastcall::Controller;
//! use tonic::service::Routes;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let controller = Controller::from_env().expect("valid LASTCALL_* settings");
//! let shutdown = controller.shutdown();
//! let (health, health_service) = health_reporter(&shutdown);
//! // health.set_serving::<GreeterServer<MyGreeter>>().await;
//! # let _ = health;
//! let routes = Routes::new(health_service); // .add_service(GreeterServer::new(MyGreeter))
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! let server = tokio::spawn(serve(listener, routes, shutdown, ServeConfig::default()));
//! let code = controller.run().await;
//! let _ = server.await;
//! # let _ = code; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures_core::Stream;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};
use tonic_health::ServingStatus;
use tower_layer::Layer;
use tower_service::Service;

use crate::health::HealthState;
use crate::http::{DrainLayer, ServeConfig, TrackAsStream};
use crate::step::BoxError;
use crate::{Health as ProcessHealth, Shutdown};

/// The message of the status a stream ended by [`until_shutdown`] carries.
///
/// Needs the `tonic` feature.
pub const SHUTDOWN_MESSAGE: &str = "server shutting down; retry on another instance";

/// The gRPC health service (`grpc.health.v1.Health`, from `tonic-health`) for `shutdown`, and
/// the handle that sets the status of each service.
///
/// Needs the `tonic` feature.
///
/// The overall status (service `""`) and every service set serving through [`GrpcHealth`]
/// answer `SERVING` only while the shutdown's [`Health`](crate::Health) is ready:
/// `NOT_SERVING` while starting (see
/// [`Builder::manual_readiness`](crate::Builder::manual_readiness)) and from the first moment
/// of the shutdown on. `Watch` streams are told of each change.
///
/// Must be called within a tokio runtime: a task follows the shutdown's health.
///
/// # Examples
///
/// ```
/// use lastcall::grpc::health_reporter;
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().build().unwrap();
/// let (health, service) = health_reporter(&controller.shutdown());
/// // The name a generated server has as `NamedService::NAME`.
/// health.set_service_status("orders.v1.Orders", true).await;
/// # let _ = service;
/// # }
/// ```
pub fn health_reporter(shutdown: &Shutdown) -> (GrpcHealth, HealthServer<ShutdownHealth>) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(ShutdownHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        shutdown: shutdown.clone(),
    });
    let inner = Arc::new(HealthInner {
        reporter,
        services: tokio::sync::Mutex::new(BTreeMap::from([(
            String::new(),
            Wanted {
                serving: true,
                reported: Some(ServingStatus::Serving),
            },
        )])),
        health: shutdown.health().clone(),
    });
    let follower = inner.clone();
    tokio::spawn(async move {
        loop {
            let state = follower.health.state();
            follower.apply_all().await;
            let next = match state {
                HealthState::Starting => HealthState::Ready,
                HealthState::Ready => HealthState::Draining,
                HealthState::Draining | HealthState::Stopped => break,
            };
            follower.health.reached(next).await;
        }
    });
    (GrpcHealth { inner }, service)
}

/// The `grpc.health.v1.Health` service of [`health_reporter`]: `tonic-health`'s, except that
/// `Watch` streams end with an `UNAVAILABLE` status when the shutdown stops accepting (after
/// telling their watcher `NOT_SERVING` at the trigger), so a watching client does not hold the
/// process until its deadline. Tracked as streams.
///
/// Needs the `tonic` feature.
#[derive(Debug)]
pub struct ShutdownHealth {
    inner: HealthService,
    shutdown: Shutdown,
}

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for ShutdownHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        tonic_health::pb::health_server::Health::check(&self.inner, request).await
    }

    type WatchStream = UntilShutdown<WatchStream>;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let stream = tonic_health::pb::health_server::Health::watch(&self.inner, request)
            .await?
            .into_inner();
        Ok(stream_response(&self.shutdown, stream))
    }
}

/// Sets the gRPC health status of services; made by [`health_reporter`].
///
/// Needs the `tonic` feature.
///
/// A service set serving answers `SERVING` only while the process is ready: the shutdown
/// turns every service `NOT_SERVING`, and later calls cannot turn one back.
#[derive(Clone)]
pub struct GrpcHealth {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    reporter: HealthReporter,
    /// What the application asked for each service; the shutdown's health has the last word.
    services: tokio::sync::Mutex<BTreeMap<String, Wanted>>,
    health: ProcessHealth,
}

struct Wanted {
    serving: bool,
    /// The status last given to the reporter: watchers are told of changes only.
    reported: Option<ServingStatus>,
}

impl GrpcHealth {
    /// Marks the service `S` (a generated `XxxServer`) as serving while the process is ready.
    pub async fn set_serving<S: NamedService>(&self) {
        self.set_service_status(S::NAME, true).await;
    }

    /// Marks the service `S` as not serving (a dependency of its is down, say).
    pub async fn set_not_serving<S: NamedService>(&self) {
        self.set_service_status(S::NAME, false).await;
    }

    /// Sets the status of the service named `name` (`""` is the whole server): `serving`
    /// while the process is ready, or not serving.
    pub async fn set_service_status(&self, name: impl Into<String>, serving: bool) {
        let mut services = self.inner.services.lock().await;
        let wanted = services.entry(name.into()).or_insert(Wanted {
            serving,
            reported: None,
        });
        wanted.serving = serving;
        drop(services);
        self.inner.apply_all().await;
    }
}

impl HealthInner {
    fn status(&self, wanted: bool) -> ServingStatus {
        if wanted && self.health.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }

    async fn apply_all(&self) {
        let mut services = self.services.lock().await;
        for (name, wanted) in services.iter_mut() {
            let status = self.status(wanted.serving);
            if wanted.reported != Some(status) {
                self.reporter.set_service_status(name, status).await;
                wanted.reported = Some(status);
            }
        }
    }
}

impl std::fmt::Debug for GrpcHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHealth")
            .field("health", &self.inner.health)
            .finish_non_exhaustive()
    }
}

/// Serves gRPC `service` on `listener` through the shutdown, as [`http::serve`] serves HTTP,
/// with a [`DrainLayer`] (without HTTP health paths: use [`health_reporter`]) around it.
///
/// Needs the `tonic` feature.
///
/// - During the drain delay RPCs are served normally; [`health_reporter`] says `NOT_SERVING`.
/// - At stop-accepting the listener closes and every connection gets HTTP/2 GOAWAY: the
///   client opens no new stream on it, and the RPCs in flight finish. Each RPC is tracked
///   until the last frame of its response; a stream made with [`stream_response`] is tracked
///   as a [`WorkKind::Stream`](crate::WorkKind::Stream) and ends with a status.
/// - At the wait-for-work deadline the connections still open are closed and named in the
///   report, with the RPCs they carried.
///
/// [`http::serve`]: crate::http::serve
///
/// # Errors
///
/// As [`http::serve`](crate::http::serve): none once listening.
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
    B::Data: From<bytes::Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let service = DrainLayer::new(shutdown.clone())
        .without_health()
        .layer(service);
    crate::http::serve(listener, service, shutdown, config).await
}

/// The stream [`until_shutdown`] returns.
pub use crate::future::UntilShutdown;

/// Wraps the stream of a server-streaming RPC so that when the shutdown reaches stop-accepting
/// it yields one last item, `Err(Status::unavailable(SHUTDOWN_MESSAGE))`, and ends: the client
/// sees the RPC finish with a status it can retry elsewhere (a resumable stream resumes on
/// another instance), not a reset, and the connection can close before the deadline.
///
/// Needs the `tonic` feature.
///
/// Return it with [`stream_response`] so the [`DrainLayer`] tracks it as a stream.
pub fn until_shutdown<S, T>(shutdown: &Shutdown, stream: S) -> UntilShutdown<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    UntilShutdown::new(
        shutdown.reached(crate::Phase::StopAccepting),
        stream,
        Err(Status::unavailable(SHUTDOWN_MESSAGE)),
    )
}

/// The response of a server-streaming RPC: `stream` ended at the shutdown by
/// [`until_shutdown`], marked so the [`DrainLayer`] tracks it as a
/// [`WorkKind::Stream`](crate::WorkKind::Stream).
///
/// Needs the `tonic` feature.
///
/// # Examples
///
/// ```
/// use futures_util::stream::{self, Iter};
/// use lastcall::grpc::{stream_response, UntilShutdown};
/// use lastcall::Shutdown;
/// use tonic::{Response, Status};
///
/// type Ticks = Iter<std::vec::IntoIter<Result<u64, Status>>>;
///
/// // In a generated service: `type TicksStream = UntilShutdown<Ticks>;`
/// fn ticks(shutdown: &Shutdown) -> Result<Response<UntilShutdown<Ticks>>, Status> {
///     Ok(stream_response(shutdown, stream::iter(vec![Ok(1), Ok(2), Ok(3)])))
/// }
/// # let _ = ticks;
/// ```
pub fn stream_response<S, T>(shutdown: &Shutdown, stream: S) -> tonic::Response<UntilShutdown<S>>
where
    S: Stream<Item = Result<T, Status>>,
{
    let mut response = tonic::Response::new(until_shutdown(shutdown, stream));
    response.extensions_mut().insert(TrackAsStream);
    response
}
