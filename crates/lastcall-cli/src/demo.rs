//! `lastcall demo`: the reference orders service on the lastcall library.
//!
//! The article's service: `GET /orders/{id}` reads an order from a real SQLite file,
//! `GET /reports/slow?ms=N` answers after N ms (a huge N never completes), `GET /events` is a
//! Server-Sent Events stream with one event per 100 ms, and `/health/live` and `/health/ready`
//! answer from the shutdown's state. SIGTERM and SIGINT start the shutdown; the SQLite pool is
//! closed in the close-dependencies phase; the exit status tells how it went.

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lastcall::http::sse::until_shutdown;
use lastcall::http::{serve_std, DrainLayer, ServeConfig};
use lastcall::{Controller, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tower_layer::Layer as _;

use crate::flags::DemoArgs;

/// How many orders a new database is seeded with.
const SEEDED_ORDERS: i64 = 100;

#[derive(Clone)]
struct AppState {
    pool: SqlitePool,
    shutdown: Shutdown,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Order {
    id: i64,
    item: String,
    quantity: i64,
    status: String,
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    #[serde(default)]
    ms: u64,
}

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lastcall demo: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: DemoArgs) -> ExitCode {
    let controller = match Controller::builder().allow_env("LASTCALL_DEMO_DB").build() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall demo: {err}");
            return err.exit_code();
        }
    };
    let server = match start(&controller, &args).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("lastcall demo: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let report = controller.run_with_report().await;
    if let Err(err) = server.await {
        tracing::warn!(%err, "the server task ended abnormally");
    }
    report.exit_code()
}

/// Opens the database, binds the port, registers the close step and starts serving.
async fn start(
    controller: &Controller,
    args: &DemoArgs,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("lastcall-demo.sqlite3"));
    let pool = open(&db).await?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr}; set PORT to a free port (0 picks one)")
    })?;
    let local = listener.local_addr().context("reading the bound address")?;

    let shutdown = controller.shutdown();
    let app = Router::new()
        .route("/orders/{id}", get(order))
        .route("/reports/slow", get(slow_report))
        .route("/events", get(events))
        .with_state(AppState {
            pool: pool.clone(),
            shutdown: shutdown.clone(),
        });
    let service = DrainLayer::new(shutdown.clone()).layer(app);
    controller.close("sqlite pool", Duration::from_secs(3), move || async move {
        pool.close().await;
    });
    let server = tokio::spawn(serve_std(
        listener,
        service,
        shutdown,
        ServeConfig::default(),
    ));
    // The database is open and the socket listening: ready before anyone is told where to go.
    controller.health().set_ready();
    tracing::info!(addr = %local, db = %db.display(), "orders service ready");
    // On stdout, for scripts and the checker: the one line that says where to connect.
    println!("lastcall demo listening on http://{local}");
    Ok(server)
}

/// Opens (creating and seeding on first start) the SQLite database at `path`.
async fn open(path: &PathBuf) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str("sqlite://")
        .context("building the SQLite options")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}; set LASTCALL_DEMO_DB to a writable path",
                path.display()
            )
        })?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
            id INTEGER PRIMARY KEY,
            item TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'new'
        )",
    )
    .execute(&pool)
    .await
    .context("creating the orders table")?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .context("counting orders")?;
    if count == 0 {
        let mut tx = pool.begin().await.context("seeding orders")?;
        for id in 1..=SEEDED_ORDERS {
            sqlx::query("INSERT OR IGNORE INTO orders (id, item, quantity) VALUES (?, ?, ?)")
                .bind(id)
                .bind(format!("item-{}", id % 7))
                .bind(1 + id % 5)
                .execute(&mut *tx)
                .await
                .context("seeding orders")?;
        }
        tx.commit().await.context("seeding orders")?;
        tracing::info!(orders = SEEDED_ORDERS, "seeded a new database");
    }
    Ok(pool)
}

async fn order(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let found =
        sqlx::query_as::<_, Order>("SELECT id, item, quantity, status FROM orders WHERE id = ?")
            .bind(id)
            .fetch_optional(&state.pool)
            .await;
    match found {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(ApiError { error: "not_found" })).into_response(),
        Err(err) => {
            tracing::error!(%err, id, "reading an order failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(ApiError {
                    error: "database_error",
                }),
            )
                .into_response()
        }
    }
}

async fn slow_report(Query(query): Query<SlowQuery>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(query.ms)).await;
    Json(SlowReport {
        report: "ready",
        ms: query.ms,
    })
}

async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let ticks = futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let event = Event::default().event("tick").data(n.to_string());
        Some((Ok::<_, Infallible>(event), n + 1))
    });
    Sse::new(until_shutdown(&state.shutdown, ticks))
}

#[derive(Serialize)]
struct SlowReport {
    report: &'static str,
    ms: u64,
}

#[derive(Serialize)]
struct ApiError {
    error: &'static str,
}
