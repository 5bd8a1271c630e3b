//! The OpenTelemetry flush step with the real OTLP/HTTP exporter and an in-test OTLP receiver on
//! loopback: what the process buffered, and the shutdown's own figures, arrive before exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use lastcall::otel::{Flush, STEP_NAME};
use lastcall::report::{Report, StepOutcome};
use lastcall::{Controller, Exit};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message as _;
use tokio::net::TcpListener;

/// Bounds a hang; not a measurement.
const PATIENCE: Duration = Duration::from_secs(20);

/// A data point's string attributes.
type Attributes = Vec<(String, String)>;

/// What an OTLP/HTTP receiver was sent: (signal, protobuf body).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Bytes)>>>);

impl Received {
    fn span_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (signal, body) in self.0.lock().unwrap().iter() {
            if signal != "traces" {
                continue;
            }
            let request = ExportTraceServiceRequest::decode(body.clone()).unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    names.extend(scope.spans.into_iter().map(|s| s.name));
                }
            }
        }
        names
    }

    /// Every metric sent: its name and the string attributes of each data point.
    fn metrics(&self) -> Vec<(String, Vec<Attributes>)> {
        let mut metrics = Vec::new();
        for (signal, body) in self.0.lock().unwrap().iter() {
            if signal != "metrics" {
                continue;
            }
            let request = ExportMetricsServiceRequest::decode(body.clone()).unwrap();
            for resource in request.resource_metrics {
                for scope in resource.scope_metrics {
                    for metric in scope.metrics {
                        let attributes = match &metric.data {
                            Some(Data::Histogram(h)) => {
                                h.data_points.iter().map(|p| &p.attributes).collect()
                            }
                            Some(Data::Sum(s)) => {
                                s.data_points.iter().map(|p| &p.attributes).collect()
                            }
                            Some(Data::Gauge(g)) => {
                                g.data_points.iter().map(|p| &p.attributes).collect()
                            }
                            _ => Vec::new(),
                        };
                        let points = attributes
                            .into_iter()
                            .map(|kvs| {
                                kvs.iter()
                                    .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                        Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                                        _ => None,
                                    })
                                    .collect()
                            })
                            .collect();
                        metrics.push((metric.name, points));
                    }
                }
            }
        }
        metrics
    }

    fn has_point(&self, metric: &str, key: &str, value: &str) -> bool {
        self.metrics().iter().any(|(name, points)| {
            name == metric
                && points
                    .iter()
                    .any(|p| p.iter().any(|(k, v)| k == key && v == value))
        })
    }
}

/// An OTLP/HTTP receiver: `POST /v1/{traces,metrics}`, answered 200.
async fn receiver() -> (SocketAddr, Received) {
    let received = Received::default();
    let store = received.clone();
    let app = Router::new().route(
        "/v1/{signal}",
        post(move |Path(signal): Path<String>, body: Bytes| {
            let store = store.clone();
            async move {
                store.0.lock().unwrap().push((signal, body));
                ""
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// Providers exporting over OTLP/HTTP to `addr`, built off the runtime (the exporter's HTTP
/// client is a blocking one). Nothing is exported on a timer during the test: spans wait for
/// the batch delay (5 s), metrics for an hour.
async fn providers(addr: SocketAddr, timeout: Duration) -> (SdkTracerProvider, SdkMeterProvider) {
    tokio::task::spawn_blocking(move || {
        let spans = SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{addr}/v1/traces"))
            .with_timeout(timeout)
            .build()
            .unwrap();
        let metrics = MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{addr}/v1/metrics"))
            .with_timeout(timeout)
            .build()
            .unwrap();
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        (tracer_provider, meter_provider)
    })
    .await
    .unwrap()
}

async fn run(controller: Controller) -> Report {
    controller.trigger().trigger("test");
    tokio::time::timeout(PATIENCE, controller.run_with_report())
        .await
        .expect("the shutdown finishes")
}

#[tokio::test]
async fn the_flush_step_ships_buffered_spans_app_metrics_and_the_shutdown_figures() {
    let (addr, received) = receiver().await;
    let (tracer_provider, meter_provider) = providers(addr, Duration::from_secs(5)).await;
    tracer_provider
        .tracer("orders")
        .in_span("handled order", |_| {});
    meter_provider
        .meter("orders")
        .u64_counter("orders.created")
        .build()
        .add(3, &[]);

    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .drain_delay(Duration::from_millis(50))
        .build()
        .unwrap();
    Flush::new()
        .tracer_provider(tracer_provider)
        .meter_provider(meter_provider)
        .register(&controller);
    let closed_after_flush = received.clone();
    let saw = Arc::new(AtomicBool::new(false));
    let saw_in_close = saw.clone();
    controller.close("database", Duration::from_secs(1), move || async move {
        // The close phase comes after the flush: the telemetry has left by now.
        saw_in_close.store(
            !closed_after_flush.span_names().is_empty(),
            Ordering::SeqCst,
        );
    });
    assert!(
        received.0.lock().unwrap().is_empty(),
        "nothing exported before the shutdown"
    );

    let report = run(controller).await;
    assert_eq!(report.exit, Exit::Clean, "{report}");
    let step = report.steps.iter().find(|s| s.name == STEP_NAME).unwrap();
    assert_eq!(step.outcome, StepOutcome::Ok, "{report}");
    assert!(saw.load(Ordering::SeqCst), "flushed before the close phase");

    assert_eq!(received.span_names(), vec!["handled order".to_owned()]);
    let names: Vec<String> = received.metrics().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"orders.created".to_owned()), "{names:?}");
    for phase in [
        "not_ready",
        "drain_delay",
        "stop_accepting",
        "wait_for_work",
    ] {
        assert!(
            received.has_point("lastcall.shutdown.phase.duration", "phase", phase),
            "{phase} duration shipped: {:?}",
            received.metrics()
        );
    }
    assert!(received.has_point("lastcall.shutdown.elapsed", "exit", "clean"));
    assert!(received.has_point("lastcall.shutdown.active_at_deadline", "kind", "request"));
}

#[tokio::test]
async fn work_cut_at_the_deadline_is_in_the_shipped_figures() {
    let (addr, received) = receiver().await;
    let (_, meter_provider) = providers(addr, Duration::from_secs(5)).await;
    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .budget(Duration::from_secs(3))
        .drain_delay(Duration::ZERO)
        .stop_timeout(Duration::from_millis(100))
        .flush_timeout(Duration::from_secs(1))
        .close_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let _stuck = controller.tracker().job("orders#7");
    Flush::new()
        .meter_provider(meter_provider)
        .register(&controller);

    let report = run(controller).await;
    assert_eq!(report.exit, Exit::WorkCut, "{report}");
    assert!(received.has_point("lastcall.shutdown.elapsed", "exit", "work_cut"));
    assert!(received.has_point(
        "lastcall.shutdown.phase.duration",
        "outcome",
        "deadline_reached"
    ));
}

#[tokio::test]
async fn a_hung_exporter_is_cut_at_the_step_timeout_and_the_close_steps_still_run() {
    // A collector that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (tracer_provider, _meter) = providers(addr, Duration::from_secs(60)).await;
    tracer_provider
        .tracer("orders")
        .in_span("handled order", |_| {});

    let controller = Controller::builder()
        .continue_after_run()
        .ignore_env()
        .drain_delay(Duration::ZERO)
        .build()
        .unwrap();
    Flush::new()
        .tracer_provider(tracer_provider)
        .timeout(Duration::from_millis(300))
        .register(&controller);
    let closed = Arc::new(AtomicBool::new(false));
    let closed_in_step = closed.clone();
    controller.close("database", Duration::from_secs(1), move || async move {
        closed_in_step.store(true, Ordering::SeqCst);
    });

    let report = run(controller).await;
    let step = report.steps.iter().find(|s| s.name == STEP_NAME).unwrap();
    assert_eq!(step.outcome, StepOutcome::TimedOut, "{report}");
    assert!(step.duration < Duration::from_secs(5), "{report}");
    assert_eq!(report.exit, Exit::CleanupFailed, "{report}");
    assert!(closed.load(Ordering::SeqCst), "the close step still ran");
}
