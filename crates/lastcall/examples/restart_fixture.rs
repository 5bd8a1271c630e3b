//! Not a tutorial: the HTTP service the restart tests (`tests/restart.rs`) start, restart and
//! grade (feature `restart`).
//!
//! `restart_fixture`: `lastcall::http::serve` + `DrainLayer` on the listener named `http`
//! that a restart (or systemd) passed, else on one bound on 127.0.0.1 (port `FIXTURE_PORT`,
//! default 0), registered for the next restart. Routes: `GET /pid` answers this process's
//! pid, `GET /slow?ms=N` answers it after N ms, `GET /events` is a Server-Sent Events stream
//! (an event per 50 ms, a last `shutdown` event at the shutdown). With `FIXTURE_READY_DELAY_MS=N` the service
//! says it is ready N ms after it listens. It prints `listening ADDR pid PID` once listening,
//! `ready PID` once ready, and `report PID {json}` when its shutdown is done. Shutdown and
//! restart settings come from `LASTCALL_*`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use lastcall::http::{listen, serve, sse::until_shutdown, DrainLayer, ServeConfig};
use lastcall::systemd::Inherited;
use lastcall::Controller;
use tower::Layer;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("restart_fixture: {err}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let port: u16 = match std::env::var("FIXTURE_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 0,
    };
    let ready_delay = match std::env::var("FIXTURE_READY_DELAY_MS") {
        Ok(ms) => Some(Duration::from_millis(ms.parse()?)),
        Err(_) => None,
    };
    let mut builder = Controller::builder();
    if ready_delay.is_some() {
        builder = builder.manual_readiness();
    }
    let controller = match builder.build() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("restart_fixture: {err}");
            return Ok(err.exit_code());
        }
    };
    let pid = std::process::id();
    let listener = match lastcall::systemd::listener_named("http")? {
        Some(Inherited::Tcp(tcp)) => tokio::net::TcpListener::from_std(tcp)?,
        Some(_) => return Err("the listener named http is not a TCP listener".into()),
        None => listen(SocketAddr::from(([127, 0, 0, 1], port)))?,
    };
    controller.restart_listener("http", &listener)?;
    let shutdown = controller.shutdown();
    let events = shutdown.clone();
    let app = Router::new()
        .route("/pid", get(move || async move { pid.to_string() }))
        .route("/slow", get(slow))
        .route(
            "/events",
            get(move || {
                let ticks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Ok::<_, Infallible>(Event::default().data(n.to_string())),
                        n + 1,
                    ))
                });
                let shutdown = events.clone();
                async move { Sse::new(until_shutdown(&shutdown, ticks)) }
            }),
        );
    let app = DrainLayer::new(shutdown.clone()).layer(app);
    println!("listening {} pid {pid}", listener.local_addr()?);
    let server = tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
    let readiness = controller.readiness();
    let health = controller.health().clone();
    tokio::spawn(async move {
        if let Some(delay) = ready_delay {
            tokio::time::sleep(delay).await;
            readiness.set_ready();
        }
        // The controller marks the service ready as `run` starts, without a delay.
        while !health.is_ready() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!("ready {pid}");
    });
    let report = controller.run_with_report().await;
    // One write: every generation shares this stdout, and a line written in pieces (longer
    // than stdout's buffer) could interleave with another generation's.
    let line = format!("report {pid} {}\n", report.to_json());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush());
    drop(stdout);
    let _ = server.await;
    Ok(report.exit_code())
}

async fn slow(Query(q): Query<HashMap<String, u64>>) -> String {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    std::process::id().to_string()
}
