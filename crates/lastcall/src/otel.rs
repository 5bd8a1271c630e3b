//! OpenTelemetry that leaves the process (feature `opentelemetry`): see [`Flush`].
//!
//! Batched spans, periodic metrics and buffered logs die with the process unless somebody
//! flushes them; and the shutdown's own figures are worth most exactly when the process is
//! gone and nobody scrapes it. [`Flush`] registers one flush-telemetry step that:
//!
//! 1. records the shutdown so far ([`Shutdown::report_so_far`]) on a `lastcall` meter of the
//!    meter provider, so the figures go out with the last batch:
//!
//!    | instrument | kind | attributes |
//!    |---|---|---|
//!    | `lastcall.shutdown.phase.duration` | histogram, `s` | `phase`, `outcome` |
//!    | `lastcall.shutdown.elapsed` | gauge, `s` (trigger to flush) | `trigger`, `signal`, `exit` |
//!    | `lastcall.shutdown.rejected_while_draining` | counter | |
//!    | `lastcall.shutdown.closed_without_request` | counter | |
//!    | `lastcall.shutdown.active_at_deadline` | gauge | `kind` |
//!    | `lastcall.shutdown.cleanup_failures` | counter | `step`, `phase`, `outcome` |
//!    | `lastcall.shutdown.later_signals` | counter | |
//!
//!    `exit` is where the shutdown is heading when the flush begins (`work_cut` if work was
//!    cut, `cleanup_failed` if a stop-accepting step failed, else `clean`);
//! 2. calls `force_flush` then `shutdown` on each provider given (tracer, meter, logger),
//!    on a thread of its own: the SDK's calls block, and a hung exporter must not hold the
//!    runtime. The step's timeout bounds the whole; past it the step is reported as timed
//!    out, the close steps still run, and the process exits on time.
//!
//! With the `metrics` feature the same figures also go through the `metrics` facade before
//! the flush phase, for exporters flushed by a step of your own.

use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::report::Report;
use crate::Controller;
#[cfg(doc)]
use crate::Shutdown;

/// The name of the step [`Flush::register`] adds.
///
/// Needs the `opentelemetry` feature.
pub const STEP_NAME: &str = "opentelemetry";

/// Flushes and shuts down OpenTelemetry providers in the flush-telemetry phase, after
/// recording the shutdown's figures on the meter provider (see the [module](self) docs).
///
/// Needs the `opentelemetry` feature.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::Controller;
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let tracer_provider = SdkTracerProvider::builder().build(); // .with_batch_exporter(..)
/// let meter_provider = SdkMeterProvider::builder().build(); // .with_reader(..)
/// let controller = Controller::builder().build().unwrap();
/// lastcall::otel::Flush::new()
///     .tracer_provider(tracer_provider)
///     .meter_provider(meter_provider)
///     .timeout(Duration::from_secs(5))
///     .register(&controller);
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Flush does nothing until registered"]
pub struct Flush {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    logger: Option<SdkLoggerProvider>,
    timeout: Duration,
}

/// Which provider an [`OtelError`] is about.
///
/// Needs the `opentelemetry` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// The tracer provider.
    Tracer,
    /// The meter provider.
    Meter,
    /// The logger provider.
    Logger,
}

/// Why the OpenTelemetry flush step failed; the step's outcome in the report carries it.
///
/// Needs the `opentelemetry` feature.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// A provider's `force_flush` failed (its exporter could not deliver, say).
    #[error("{provider:?} provider: force_flush failed: {source}")]
    Flush {
        /// The provider.
        provider: Provider,
        /// The SDK's error.
        source: OTelSdkError,
    },
    /// A provider's `shutdown` failed.
    #[error("{provider:?} provider: shutdown failed: {source}")]
    Shutdown {
        /// The provider.
        provider: Provider,
        /// The SDK's error.
        source: OTelSdkError,
    },
    /// The flush thread could not be started, or ended without an answer (it panicked).
    #[error("the flush thread {0}")]
    Thread(&'static str),
}

impl Default for Flush {
    fn default() -> Self {
        Flush::new()
    }
}

impl Flush {
    /// No providers yet, a timeout of 5 s.
    pub fn new() -> Flush {
        Flush {
            tracer: None,
            meter: None,
            logger: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Flushes and shuts down this tracer provider (batched spans).
    pub fn tracer_provider(mut self, provider: SdkTracerProvider) -> Flush {
        self.tracer = Some(provider);
        self
    }

    /// Records the shutdown's figures on this meter provider, then flushes and shuts it down.
    pub fn meter_provider(mut self, provider: SdkMeterProvider) -> Flush {
        self.meter = Some(provider);
        self
    }

    /// Flushes and shuts down this logger provider (batched log records).
    pub fn logger_provider(mut self, provider: SdkLoggerProvider) -> Flush {
        self.logger = Some(provider);
        self
    }

    /// The step's timeout (default 5 s); it gets `min(timeout, time left in the phase)`.
    pub fn timeout(mut self, timeout: Duration) -> Flush {
        self.timeout = timeout;
        self
    }

    /// Registers the step, named [`STEP_NAME`], in `controller`'s flush-telemetry phase.
    ///
    /// Leave the providers' shutdown to this step: one the application has already shut down
    /// answers `force_flush` with `AlreadyShutdown`, which the step reports as a failure
    /// ([`OtelError::Flush`]), making the exit code [`Exit::CleanupFailed`](crate::Exit).
    pub fn register(self, controller: &Controller) {
        let shutdown = controller.shutdown();
        let timeout = self.timeout;
        controller.flush(STEP_NAME, timeout, move || async move {
            if let (Some(meter), Some(report)) = (&self.meter, shutdown.report_so_far()) {
                record(&meter.meter("lastcall"), &report);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A thread of its own, not `spawn_blocking`: the runtime waits for blocking tasks
            // when it shuts down, and a hung exporter must not keep the process alive.
            std::thread::Builder::new()
                .name("lastcall-otel-flush".into())
                .spawn(move || {
                    let _ = tx.send(self.flush_and_shut_down());
                })
                .map_err(|_| OtelError::Thread("could not be started"))?;
            rx.await
                .unwrap_or(Err(OtelError::Thread("ended without an answer")))
        });
    }

    /// Flushes every provider, then shuts every one down; all are tried, the first error is
    /// returned and the others logged.
    fn flush_and_shut_down(self) -> Result<(), OtelError> {
        let mut errors = Vec::new();
        let mut attempt = |result: Result<(), OtelError>| {
            if let Err(error) = result {
                tracing::warn!(%error, "OpenTelemetry flush");
                errors.push(error);
            }
        };
        let flush = |provider, result: Result<(), OTelSdkError>| {
            result.map_err(|source| OtelError::Flush { provider, source })
        };
        let close = |provider, result: Result<(), OTelSdkError>| {
            result.map_err(|source| OtelError::Shutdown { provider, source })
        };
        if let Some(p) = &self.tracer {
            attempt(flush(Provider::Tracer, p.force_flush()));
        }
        if let Some(p) = &self.meter {
            attempt(flush(Provider::Meter, p.force_flush()));
        }
        if let Some(p) = &self.logger {
            attempt(flush(Provider::Logger, p.force_flush()));
        }
        if let Some(p) = &self.tracer {
            attempt(close(Provider::Tracer, p.shutdown()));
        }
        if let Some(p) = &self.meter {
            attempt(close(Provider::Meter, p.shutdown()));
        }
        if let Some(p) = &self.logger {
            attempt(close(Provider::Logger, p.shutdown()));
        }
        match errors.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }
}

/// Records `report` (the shutdown so far) on `meter`.
fn record(meter: &Meter, report: &Report) {
    let phases = meter
        .f64_histogram("lastcall.shutdown.phase.duration")
        .with_unit("s")
        .with_description("How long each shutdown phase took")
        .build();
    for phase in &report.phases {
        phases.record(
            phase.duration.as_secs_f64(),
            &[
                KeyValue::new("phase", phase.phase.as_str()),
                KeyValue::new("outcome", phase.outcome.as_str()),
            ],
        );
    }
    let (trigger, signal) = report.trigger_labels();
    meter
        .f64_gauge("lastcall.shutdown.elapsed")
        .with_unit("s")
        .with_description("From the trigger to the telemetry flush")
        .build()
        .record(
            report.total.as_secs_f64(),
            &[
                KeyValue::new("trigger", trigger),
                KeyValue::new("signal", signal),
                KeyValue::new("exit", report.exit.as_str()),
            ],
        );
    meter
        .u64_counter("lastcall.shutdown.rejected_while_draining")
        .with_description("Requests or claims turned away while draining")
        .build()
        .add(report.rejected_while_draining, &[]);
    meter
        .u64_counter("lastcall.shutdown.closed_without_request")
        .with_description("Connections closed at the shutdown before a first request")
        .build()
        .add(report.closed_without_request, &[]);
    let active = meter
        .u64_gauge("lastcall.shutdown.active_at_deadline")
        .with_description("Work still active at the wait-for-work deadline")
        .build();
    for (kind, count) in report.cut_by_kind() {
        active.record(count as u64, &[KeyValue::new("kind", kind.as_str())]);
    }
    let failures = meter
        .u64_counter("lastcall.shutdown.cleanup_failures")
        .with_description("Shutdown steps that failed, timed out or panicked")
        .build();
    for step in report.failed_steps() {
        failures.add(
            1,
            &[
                KeyValue::new("step", step.name.clone()),
                KeyValue::new("phase", step.phase.as_str()),
                KeyValue::new("outcome", step.outcome.as_str()),
            ],
        );
    }
    meter
        .u64_counter("lastcall.shutdown.later_signals")
        .with_description("Signals that arrived after the one that started the shutdown")
        .build()
        .add(report.later_signals.len() as u64, &[]);
}
