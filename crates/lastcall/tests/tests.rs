//! lastcall's integration tests, one module per area.

// Tests state their expectations with unwrap; a failure is the point.
#![allow(clippy::unwrap_used)]

// The budget split: property tests over every valid configuration.
mod budget;
// Configuration from code and environment, checked when the controller is built.
mod config;
// The shutdown flow in-process, on tokio's paused clock.
mod controller;
// The example fixture as a real child process, with real signals.
mod process;
// The HTTP drain on real sockets (features `http`, `axum`).
mod http;
// `http::serve` in a real process with real signals: slow and half-open clients.
mod serve;
// The restart (feature `restart`): generations of a real process under load, real SIGHUPs.
#[cfg(target_os = "linux")]
mod restart;
// `http::serve` over TLS in a real process (feature `tls`), with a real rustls client.
mod tls;
// gRPC through a shutdown with a real tonic client (feature `tonic`).
mod grpc;
// The OpenTelemetry flush step, with the OTLP/HTTP exporter and an in-test receiver.
mod otel;
// `runtime::block_on`: output and panics on both runtime flavours.
mod runtime;
// The work tracker: guards, snapshots, event-driven idleness.
mod tracker;
// The child-process harness of the tests that run an example as a real process.
mod support;
// Workers on SQLite, PostgreSQL and NATS JetStream; the scheduler.
mod worker;
