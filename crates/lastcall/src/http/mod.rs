//! HTTP drain for tower, hyper and axum services (feature `http`).
//!
//! - [`DrainLayer`] tracks every request until its response body has been sent, answers the
//!   health paths from the shutdown's [`Health`](crate::Health), and after stop-accepting either
//!   serves requests with `Connection: close` (the default) or rejects them with a retryable 503
//!   ([`DrainPolicy`]).
//! - [`serve`] runs a service on a listener with hyper-util (HTTP/1.1 and HTTP/2): it stops
//!   accepting in the stop-accepting phase, closes idle keep-alive connections at once and
//!   cleanly, lets busy ones finish with `Connection: close` (HTTP/2: GOAWAY), closes a
//!   connection whose request head is still incomplete after a short grace, and cuts what is
//!   left at the wait-for-work deadline. It serves TCP and Unix domain sockets ([`Listener`]),
//!   gives handlers axum's `ConnectInfo`, and takes hyper's HTTP/1 and HTTP/2 settings
//!   ([`ServeConfig`]); [`listen`] binds with the system's largest accept backlog.
//!   `TlsListener` (feature `tls`) serves it over TLS (rustls), with `close_notify` at the close
//!   and bounded handshakes.
//! - `sse` (feature `axum`) ends Server-Sent Events streams with a final event when
//!   stop-accepting begins.
//! - `ws` (feature `websocket`) closes WebSockets with 1001 "going away" when stop-accepting
//!   begins, and waits (bounded) for the peer's close.
//!
//! # Examples
//!
//! ```no_run
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use lastcall::http::{serve, DrainLayer, ServeConfig};
//! use lastcall::Controller;
//! use tower::ServiceBuilder;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let controller = Controller::from_env().expect("valid LASTCALL_* settings");
//! let shutdown = controller.shutdown();
//! let app = ServiceBuilder::new()
//!     .layer(DrainLayer::new(shutdown.clone()))
//!     .service_fn(|_req: Request<hyper::body::Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let server = tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
//! let code = controller.run().await;
//! let _ = server.await;
//! # let _ = code; Ok(()) }
//! ```

mod body;
mod future;
mod layer;
mod serve;
mod service;
#[cfg(feature = "axum")]
pub mod sse;
#[cfg(feature = "websocket")]
pub mod ws;

pub use body::DrainBody;
pub use future::ResponseFuture;
pub use layer::{DrainLayer, DrainPolicy, HealthPaths};
#[cfg(feature = "tls")]
pub use serve::TlsListener;
pub use serve::{listen, serve, serve_std, Listener, ServeConfig};

/// The rustls that [`TlsListener`] speaks, so a configuration built by hand has the matching
/// version. Needs the `tls` feature.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use lastcall::http::rustls;
///
/// let provider = Arc::new(rustls::crypto::ring::default_provider());
/// let builder = rustls::ServerConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()
///     .expect("ring supports the default versions");
/// # let _ = builder;
/// ```
#[cfg(feature = "tls")]
pub use rustls;
pub use service::Drain;

/// A response extension that makes [`DrainLayer`] track the response as a
/// [`WorkKind::Stream`](crate::WorkKind::Stream) instead of a request, for streams it cannot
/// recognise by their headers (`text/event-stream` and upgrades it does): a gRPC server stream,
/// say (`grpc::stream_response`, feature `tonic`, sets it), or a long download.
///
/// Needs the `http` feature.
///
/// # Examples
///
/// ```
/// use lastcall::http::TrackAsStream;
///
/// let mut response = http::Response::new(());
/// response.extensions_mut().insert(TrackAsStream);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrackAsStream;
