//! The server the scripts under `bench/` measure, in one of three modes:
//!
//! - `drain`: lastcall's stack, `DrainLayer` + `lastcall::http::serve` + the controller;
//! - `plain`: the same server without the `DrainLayer` (its overhead is the difference);
//! - `axum`: the peer, `axum::serve(..).with_graceful_shutdown(SIGTERM)`, with the readiness an
//!   axum user writes: `GET /health/ready` answers 200 until SIGTERM flips an `AtomicBool`,
//!   then 503 while the server keeps serving for `BENCH_DRAIN_DELAY` (default 0);
//! - `axum-orders`: the same peer serving the reference service's `GET /orders/{id}` from a
//!   SQLite file (`BENCH_DB`, created and seeded like `lastcall demo`'s), the peer of
//!   `lastcall demo` in `bench/rolling.sh orders`.
//!
//! - `tls-drain`: `drain` over TLS, through `lastcall::http::TlsListener`; `tls-serve` the same
//!   without the `DrainLayer`;
//! - `tls-plain`: the TLS peer, a plain accept loop spawning hyper-util's `auto` connection
//!   over a tokio-rustls handshake, with no shutdown handling; both TLS modes serve the
//!   certificate chain `BENCH_CERT` and key `BENCH_KEY` (PEM) with the same rustls
//!   configuration (`ring`, safe defaults, ALPN `h2` and `http/1.1`).
//!
//! `BENCH_IDLE_CLOSE_DELAY` (a duration) sets `ServeConfig::idle_close_delay` in the first two,
//! and `BENCH_CONNECT_INFO=off` turns `ServeConfig::connect_info` off there.
//!
//! Routes: `GET /` answers `hello`, `GET /slow?ms=N` answers after N ms. Listens on
//! 127.0.0.1:`PORT` (0 picks a port) and prints `listening on ADDR`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lastcall::http::rustls::pki_types::pem::PemObject;
use lastcall::http::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use lastcall::http::{rustls, serve, DrainLayer, ServeConfig, TlsListener};
use lastcall::runtime::Teardown;
use lastcall::Controller;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::net::TcpListener;
use tower_layer::Layer as _;

#[derive(Deserialize)]
struct Slow {
    #[serde(default)]
    ms: u64,
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" })).route(
        "/slow",
        get(|Query(slow): Query<Slow>| async move {
            tokio::time::sleep(Duration::from_millis(slow.ms)).await;
            "slow hello"
        }),
    )
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench-server: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if mode == "axum" {
        // What `#[tokio::main]` does: block on main, then drop the runtime.
        return runtime.block_on(run(mode));
    }
    // lastcall's servers end the runtime through lastcall::runtime::block_on, bounded by
    // default, or detached with BENCH_TEARDOWN=detach.
    let teardown = match std::env::var("BENCH_TEARDOWN").as_deref() {
        Ok("detach") => Teardown::Detach,
        Ok("wait") | Err(_) => Teardown::default(),
        Ok(other) => {
            eprintln!("bench-server: BENCH_TEARDOWN={other:?}; use wait or detach");
            return ExitCode::from(2);
        }
    };
    lastcall::runtime::block_on(runtime, teardown, run(mode))
}

async fn run(mode: String) -> ExitCode {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bench-server: cannot listen on port {port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match mode.as_str() {
        "tls-drain" | "tls-serve" | "tls-plain" => {
            let config = match tls_config() {
                Ok(config) => Arc::new(config),
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    return ExitCode::from(78);
                }
            };
            println!("listening on {addr}");
            if mode == "tls-plain" {
                tls_plain(listener, config).await;
                return ExitCode::SUCCESS;
            }
            let controller = match Controller::from_env() {
                Ok(controller) => controller,
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    return err.exit_code();
                }
            };
            let shutdown = controller.shutdown();
            let listener = TlsListener::new(listener, config);
            let server = if mode == "tls-drain" {
                let service = DrainLayer::new(shutdown.clone()).layer(app());
                tokio::spawn(serve(listener, service, shutdown, ServeConfig::default()))
            } else {
                tokio::spawn(serve(listener, app(), shutdown, ServeConfig::default()))
            };
            let code = controller.run().await;
            let _ = server.await;
            code
        }
        "drain" | "plain" => {
            let controller = match Controller::from_env() {
                Ok(controller) => controller,
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    return err.exit_code();
                }
            };
            let shutdown = controller.shutdown();
            let mut config = ServeConfig::default();
            if let Ok(delay) = std::env::var("BENCH_IDLE_CLOSE_DELAY") {
                match humantime::parse_duration(&delay) {
                    Ok(delay) => config = config.idle_close_delay(delay),
                    Err(err) => {
                        eprintln!("bench-server: BENCH_IDLE_CLOSE_DELAY={delay:?}: {err}; use a duration like 500ms");
                        return ExitCode::from(2);
                    }
                }
            }
            match std::env::var("BENCH_CONNECT_INFO").as_deref() {
                Ok("off") => config = config.connect_info(false),
                Ok("on") | Err(_) => {}
                Ok(other) => {
                    eprintln!("bench-server: BENCH_CONNECT_INFO={other:?}; use on or off");
                    return ExitCode::from(2);
                }
            }
            let server = if mode == "drain" {
                let service = DrainLayer::new(shutdown.clone()).layer(app());
                tokio::spawn(serve(listener, service, shutdown, config))
            } else {
                tokio::spawn(serve(listener, app(), shutdown, config))
            };
            println!("listening on {addr}");
            let code = controller.run().await;
            let _ = server.await;
            code
        }
        "axum" => {
            let delay = match std::env::var("BENCH_DRAIN_DELAY") {
                Err(_) => Duration::ZERO,
                Ok(delay) => match humantime::parse_duration(&delay) {
                    Ok(delay) => delay,
                    Err(err) => {
                        eprintln!("bench-server: BENCH_DRAIN_DELAY={delay:?}: {err}; use a duration like 1s");
                        return ExitCode::from(2);
                    }
                },
            };
            let ready = Arc::new(AtomicBool::new(true));
            let app = app().route(
                "/health/ready",
                get({
                    let ready = ready.clone();
                    move || async move {
                        if ready.load(Ordering::Acquire) {
                            (StatusCode::OK, "{\"ready\":true}")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "{\"ready\":false}")
                        }
                    }
                }),
            );
            let shutdown = async move {
                sigterm().await;
                ready.store(false, Ordering::Release);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            };
            println!("listening on {addr}");
            match axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        "axum-orders" => {
            let pool = match orders_db().await {
                Ok(pool) => pool,
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    return ExitCode::FAILURE;
                }
            };
            println!("listening on {addr}");
            let app = Router::new()
                .route("/orders/{id}", get(order))
                .with_state(pool.clone());
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(sigterm())
                .await;
            pool.close().await;
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bench-server: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!(
                "bench-server: unknown mode {other:?}; use drain, plain, tls-drain, tls-serve, tls-plain, axum or axum-orders"
            );
            ExitCode::from(2)
        }
    }
}

/// The TLS modes' one rustls configuration, from `BENCH_CERT` and `BENCH_KEY`.
fn tls_config() -> Result<rustls::ServerConfig, String> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("{name} is not set; set it to a PEM file"))
    };
    let (cert, key) = (var("BENCH_CERT")?, var("BENCH_KEY")?);
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("BENCH_CERT={cert:?}: {err}"))?;
    let key =
        PrivateKeyDer::from_pem_file(&key).map_err(|err| format!("BENCH_KEY={key:?}: {err}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|err| format!("BENCH_CERT/BENCH_KEY refused: {err}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The plain peer: hyper-util's server over tokio-rustls, each handshake in its connection's
/// task, until SIGTERM (then it simply stops; this mode measures serving, not shutting down).
async fn tls_plain(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let app = app();
    let stop = sigterm();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Resolves at the first SIGTERM.
async fn sigterm() {
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
    }
}

/// The orders table of `lastcall demo`, at `BENCH_DB`, with order 1 in it.
async fn orders_db() -> Result<SqlitePool, String> {
    let path = std::env::var("BENCH_DB")
        .map_err(|_| "BENCH_DB is not set; set it to a SQLite file path".to_string())?;
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|err| format!("cannot open BENCH_DB={path:?}: {err}"))?;
    for sql in [
        "CREATE TABLE IF NOT EXISTS orders (
            id INTEGER PRIMARY KEY,
            item TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            confirmations INTEGER NOT NULL DEFAULT 0,
            job_id INTEGER
        )",
        "INSERT OR IGNORE INTO orders (id, item, quantity, status, confirmations)
         VALUES (1, 'item-1', 2, 'confirmed', 1)",
    ] {
        sqlx::query(sql)
            .execute(&pool)
            .await
            .map_err(|err| format!("cannot prepare BENCH_DB={path:?}: {err}"))?;
    }
    Ok(pool)
}

#[derive(Serialize)]
struct OrderView {
    id: i64,
    item: String,
    quantity: i64,
    status: String,
    confirmations: i64,
    job: Option<()>,
}

async fn order(State(pool): State<SqlitePool>, Path(id): Path<i64>) -> Response {
    let found = sqlx::query_as::<_, (i64, String, i64, String, i64)>(
        "SELECT id, item, quantity, status, confirmations FROM orders WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&pool)
    .await;
    match found {
        Ok(Some((id, item, quantity, status, confirmations))) => Json(OrderView {
            id,
            item,
            quantity,
            status,
            confirmations,
            job: None,
        })
        .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
