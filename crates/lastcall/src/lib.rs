//! The graceful-shutdown control plane for tokio services.
//!
//! A deploy, a scale-down or a restart ends with a signal. `lastcall` turns it into an orderly,
//! bounded sequence, one flow per process:
//!
//! readiness flips → drain delay (still serving) → stop accepting → wait for in-flight work →
//! flush telemetry → close dependencies → exit with a code that tells the truth, plus a
//! [`Report`](report::Report) of what happened and what was left behind.
//!
//! The pieces:
//!
//! - [`Controller`] owns the flow; [`Builder`] configures it from code and `LASTCALL_*`
//!   variables, checked at startup ([`error::ConfigError`]).
//! - [`Shutdown`] lets components observe it ([`Shutdown::reached`]), [`Trigger`] starts it
//!   from code.
//! - [`Tracker`] counts in-flight work through [`WorkGuard`]s; waiting for it is event-driven.
//! - [`Health`] is the readiness/liveness state the HTTP layer serves.
//! - [`Budget`] splits one deadline into per-phase windows ([`Plan`](budget::Plan)); a
//!   watchdog enforces the end of it even when the async runtime is blocked.
//! - [`Report`](report::Report) and [`Exit`] say how it went.
//!
//! The crate root holds these handles; everything else lives in the module of its concept
//! ([`report`], [`budget`], [`builder`], [`health`], [`signal`], [`step`], [`tracker`], and
//! the integrations: `http`, `grpc`, `worker`, `schedule`, ...).
//!
//! # Examples
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::time::Duration;
//! use lastcall::Controller;
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     let controller = match Controller::from_env() {
//!         Ok(c) => c,
//!         Err(err) => {
//!             eprintln!("lastcall: {err}");
//!             return err.exit_code();
//!         }
//!     };
//!     let shutdown = controller.shutdown();
//!     tokio::spawn(async move {
//!         let _job = shutdown.tracker().job("nightly-report");
//!         tokio::select! {
//!             _ = tokio::time::sleep(Duration::from_secs(2)) => {} // finished
//!             _ = shutdown.cut() => {}                             // cut at the deadline
//!         }
//!     });
//!     controller.close("database", Duration::from_secs(3), || async {});
//!     controller.run().await
//! }
//! ```
//!
//! # Features
//!
//! - `metrics` (default): the report recorded through the `metrics` facade.
//! - `http`: `lastcall::http` (a tower layer, `serve` on hyper-util, health routes).
//! - `tls`: `http::TlsListener`, `serve` over TLS (rustls, `ring` provider).
//! - `axum`, `websocket`: Server-Sent Events and WebSockets that end at the shutdown.
//! - `sqlite`, `postgres`, `nats`: queue workers on those ([`worker`]).
//! - `cron`: cron schedules for the [`schedule`] module's scheduler.
//! - `systemd`: sd_notify and socket activation; `tonic`: gRPC; `opentelemetry`: a flush step.
#![deny(missing_docs, unreachable_pub, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

mod clock;
mod controller;
mod exit;
#[cfg(feature = "metrics")]
mod metrics;
mod millis;
mod phase;
mod shutdown;
mod spawned;
mod watchdog;

pub mod budget;
pub mod builder;
pub mod error;
pub mod future;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod report;
#[cfg(all(feature = "restart", unix))]
pub mod restart;
pub mod runtime;
pub mod schedule;
pub mod signal;
pub mod step;
#[cfg(all(feature = "systemd", unix))]
pub mod systemd;
pub mod tracker;
pub mod worker;

// The handles, at the root; everything else lives in its module (`report`, `budget`, ...).
pub use budget::Budget;
pub use builder::Builder;
pub use controller::Controller;
pub use exit::Exit;
pub use health::Health;
pub use phase::Phase;
pub use runtime::main;
pub use shutdown::{Shutdown, Trigger};
pub use signal::Signal;
pub use tracker::{Tracker, WorkGuard, WorkKind};

/// The shutdown's report, now [`report::Report`].
#[deprecated(note = "moved to `lastcall::report::Report`; this alias goes in the next release")]
pub type Report = report::Report;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
