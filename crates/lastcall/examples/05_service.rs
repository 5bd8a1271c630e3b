//! A whole service on lastcall, the README's first example: HTTP, a queue worker and a close
//! step, with the bounded end of `lastcall::main`. `lastcall check` passes it on every
//! scenario but `websocket`, a skip: it has no WebSocket route (`crates/lastcall-cli/tests/check.rs`).
//!
//! `PORT=3000 cargo run -p lastcall --example 05_service` (features `http`, `axum`, `sqlite`),
//! then `curl localhost:3000/orders/1` and Ctrl+C. The database is `SERVICE_DB`, else a file in
//! the temporary directory.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event, Sse};
use axum::{routing::get, Router};
use lastcall::http::{serve, sse::until_shutdown, DrainLayer, ServeConfig};
use lastcall::worker::{Job, SqliteQueue, Worker};
use lastcall::{Controller, Shutdown};
use sqlx::SqlitePool;
use tower::Layer;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    lastcall::main(|controller| async move {
        if let Err(err) = start(&controller).await {
            eprintln!("service: {err}");
            return ExitCode::FAILURE;
        }
        controller.run().await // waits for SIGTERM/SIGINT, then the whole bounded sequence
    })
}

/// Everything lastcall needs to know, in one place: what serves, what works, what closes.
async fn start(controller: &Controller) -> Result<(), Error> {
    let pool = open().await?;
    let shutdown = controller.shutdown();
    // A worker: claims stop with the listener; a job in flight finishes or is handed back.
    let queue = SqliteQueue::new(pool.clone(), "emails")?;
    Worker::with_state(queue, pool.clone(), send_email).spawn(controller)?;
    // HTTP: every request tracked, /health/* answered, readiness 503 from the signal on.
    let app = DrainLayer::new(shutdown.clone()).layer(routes(shutdown.clone()));
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |p| p.parse())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(serve(listener, app, shutdown, ServeConfig::default()));
    // The database closes last, bounded.
    controller.close("database", Duration::from_secs(3), move || async move {
        pool.close().await;
    });
    Ok(())
}

fn routes(shutdown: Shutdown) -> Router {
    Router::new()
        .route(
            "/orders/{id}",
            get(|| async { r#"{"id":1,"status":"confirmed"}"# }),
        )
        .route("/reports/slow", get(slow))
        .route(
            "/events",
            get(move || {
                let ticks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, Infallible>(Event::default().data(n.to_string())),
                        n + 1,
                    ))
                });
                let shutdown = shutdown.clone();
                async move { Sse::new(until_shutdown(&shutdown, ticks)) }
            }),
        )
}

#[derive(serde::Deserialize)]
struct Slow {
    #[serde(default)]
    ms: u64,
}

async fn slow(Query(slow): Query<Slow>) -> String {
    tokio::time::sleep(Duration::from_millis(slow.ms)).await;
    format!(r#"{{"report":"ready","ms":{}}}"#, slow.ms)
}

async fn send_email(pool: SqlitePool, job: Job) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_millis(50)).await; // the work itself
    let mut tx = pool.begin().await?;
    SqliteQueue::mark_processed(&mut tx, &job).await?; // applied at most once
    tx.commit().await?;
    Ok(())
}

async fn open() -> Result<SqlitePool, Error> {
    let path = std::env::var_os("SERVICE_DB").map_or_else(
        || std::env::temp_dir().join("lastcall-service.sqlite3"),
        Into::into,
    );
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    SqliteQueue::migrate(&pool).await?;
    Ok(pool)
}
