//! Not a tutorial: the HTTP service the serve tests (`tests/serve.rs`) and `bench/burst.py`
//! start, signal and grade.
//!
//! `serve_fixture [backlog=N|backlog=max] [unix=PATH] [tls=DIR] [handshake_timeout=DURATION]`:
//! `lastcall::http::serve` + `DrainLayer` on 127.0.0.1 (port `FIXTURE_PORT`, default 0),
//! listening with a backlog of N (default: [`lastcall::http::listen`], the system's largest),
//! or on a Unix socket at PATH, or over TLS with `DIR/cert.pem` and `DIR/key.pem`. Routes:
//! `GET /slow?ms=N` answers `done` after N ms, `GET /peer` answers the peer's address from
//! axum's `ConnectInfo`. It prints `listening ADDR` once serving, and at the end `report:
//! {json}` and `served` when `serve` has returned. Shutdown settings come from `LASTCALL_*`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query};
use axum::routing::get;
use axum::Router;
use lastcall::http::{serve, DrainLayer, ServeConfig};
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
            eprintln!("serve_fixture: {err}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let mut backlog = None;
    let mut unix = None;
    let mut tls = None;
    let mut handshake_timeout = None;
    for arg in std::env::args().skip(1) {
        match arg.split_once('=') {
            Some(("backlog", "max")) => backlog = None,
            Some(("backlog", n)) => backlog = Some(n.parse::<i32>()?),
            Some(("unix", path)) => unix = Some(path.to_owned()),
            Some(("tls", dir)) => tls = Some(std::path::PathBuf::from(dir)),
            Some(("handshake_timeout", t)) => {
                handshake_timeout = Some(humantime::parse_duration(t)?)
            }
            _ => return Err(format!("unknown argument {arg:?}").into()),
        }
    }
    let port: u16 = match std::env::var("FIXTURE_PORT") {
        Ok(port) => port.parse()?,
        Err(_) => 0,
    };
    let controller = Controller::from_env()?;
    let shutdown = controller.shutdown();
    let app = Router::new()
        .route("/slow", get(slow))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route("/hello", get(|| async { "hello" }));
    let app = DrainLayer::new(shutdown.clone()).layer(app);
    let config = ServeConfig::default();
    let server = if let Some(path) = unix {
        let listener = tokio::net::UnixListener::bind(&path)?;
        println!("listening {path}");
        tokio::spawn(serve(listener, app, shutdown, config))
    } else if let Some(dir) = tls {
        let listener = lastcall::http::listen(SocketAddr::from(([127, 0, 0, 1], port)))?;
        let mut listener = lastcall::http::TlsListener::from_pem_files(
            listener,
            dir.join("cert.pem"),
            dir.join("key.pem"),
        )?;
        if let Some(timeout) = handshake_timeout {
            listener = listener.handshake_timeout(timeout);
        }
        println!("listening {}", listener.local_addr()?);
        tokio::spawn(serve(listener, app, shutdown, config))
    } else {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = match backlog {
            None => lastcall::http::listen(addr)?,
            Some(backlog) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(backlog as u32)?
            }
        };
        println!("listening {}", listener.local_addr()?);
        tokio::spawn(serve(listener, app, shutdown, config))
    };
    let report = controller.run_with_report().await;
    println!("report: {}", report.to_json());
    let _ = server.await;
    println!("served");
    Ok(report.exit_code())
}

async fn slow(Query(q): Query<HashMap<String, u64>>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(0))).await;
    "done"
}
