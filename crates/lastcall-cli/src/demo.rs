//! `lastcall demo`: the reference orders service on the lastcall library.
//!
//! The article's service: `POST /orders` inserts an order and, in the same transaction,
//! enqueues a "confirm order" job (`?job_ms=N` sets how long the job takes); a worker confirms
//! each order exactly once (the job's deduplication key is recorded with the confirmation); a
//! scheduled task counts unconfirmed orders every second. `GET /orders/{id}` reads an order and
//! its job's state from a real SQLite file,
//! `GET /reports/slow?ms=N` answers after N ms (a huge N never completes), `GET /events` is a
//! Server-Sent Events stream with one event per 100 ms, `GET /ws` a WebSocket echo that the
//! shutdown ends with a close frame 1001 "going away", and `/health/live` and `/health/ready`
//! answer from the shutdown's state, `GET /stats` says what the worker and the scheduled task
//! did. Under systemd it takes its socket from socket activation and reports readiness and
//! each phase over `NOTIFY_SOCKET` (`deploy/systemd/`). SIGHUP restarts it without closing its
//! socket (`lastcall::restart`): the binary on disk starts with the socket passed, and once it
//! is ready this process drains. SIGTERM and SIGINT start the shutdown: the worker stops claiming and the task stops
//! firing; a job or a task run under way is awaited, and a job still running at the deadline is
//! handed back to the queue for the next start; the SQLite pool is closed last. The exit
//! status tells how it went.

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lastcall::http::sse::until_shutdown;
use lastcall::http::{serve_std, DrainLayer, ServeConfig};
use lastcall::runtime::Teardown;
use lastcall::schedule::{Scheduler, TaskHandle};
use lastcall::worker::{Job, NewJob, SqliteQueue, Worker, WorkerHandle};
use lastcall::{Controller, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tower_layer::Layer as _;

use crate::flags::DemoArgs;

/// How many orders a new database is seeded with (already confirmed).
const SEEDED_ORDERS: i64 = 100;

/// The demo's own `LASTCALL_*` variable (the database path), allowed past the controller's
/// check for unknown names; `lastcall plan` knows it too.
pub(crate) const DB_ENV: &str = "LASTCALL_DEMO_DB";

/// The longest a confirm job may be asked to take (`?job_ms=`).
const MAX_JOB_MS: u64 = 600_000;

#[derive(Clone)]
struct AppState {
    pool: SqlitePool,
    queue: SqliteQueue,
    shutdown: Shutdown,
    worker: WorkerHandle,
    task: TaskHandle,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Order {
    id: i64,
    item: String,
    quantity: i64,
    status: String,
    /// How many times the confirmation was applied: 1 once confirmed, never more.
    confirmations: i64,
    #[serde(skip)]
    job_id: Option<i64>,
}

#[derive(Debug, Serialize)]
struct OrderView {
    #[serde(flatten)]
    order: Order,
    job: Option<JobView>,
}

#[derive(Debug, Serialize)]
struct JobView {
    id: i64,
    /// `queued`, `running`, `done` or `dead`.
    state: &'static str,
    attempts: i64,
    last_error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    #[serde(default = "default_item")]
    item: String,
    #[serde(default = "default_quantity")]
    quantity: i64,
}

fn default_item() -> String {
    "item-0".into()
}

fn default_quantity() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    #[serde(default)]
    job_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ConfirmOrder {
    order_id: i64,
    job_ms: u64,
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    #[serde(default)]
    ms: u64,
}

pub(crate) fn main(mut args: DemoArgs) -> ExitCode {
    // The variables are read here rather than by the flag parser, so that a bad value is a
    // configuration error naming the variable (exit 78), as for every other setting.
    if let Err(err) = from_env(&mut args) {
        eprintln!("lastcall demo: {err}");
        return lastcall::Exit::Config.into();
    }
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
    // The runtime's teardown is bounded: a blocking task cannot hold the exit.
    lastcall::runtime::block_on(runtime, Teardown::default(), run(args))
}

/// Fills what the flags left unset from `PORT` and `LASTCALL_DEMO_DB`.
fn from_env(args: &mut DemoArgs) -> Result<(), String> {
    if args.port.is_none() {
        if let Some(value) = std::env::var_os("PORT") {
            let text = value.to_string_lossy();
            let port = text.trim().parse::<u16>().map_err(|_| {
                format!(
                    "PORT={text:?} is not a port number; set PORT to a number from 0 to 65535 \
                     (0 picks a free one), or pass --port"
                )
            })?;
            args.port = Some(port);
        }
    }
    if args.db.is_none() {
        if let Some(value) = std::env::var_os(DB_ENV) {
            if value.is_empty() {
                return Err(format!(
                    "{DB_ENV} is empty; set it to the path of a SQLite file (created on first \
                     start), or unset it for lastcall-demo.sqlite3 in the temporary directory"
                ));
            }
            args.db = Some(value.into());
        }
    }
    Ok(())
}

async fn run(args: DemoArgs) -> ExitCode {
    let controller = match Controller::builder().allow_env(DB_ENV).build() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall demo: {err}");
            return err.exit_code();
        }
    };
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("lastcall-demo.sqlite3"));
    let pool = match open(&db).await {
        Ok(pool) => pool,
        Err(err) => {
            // A path that cannot hold the database is a configuration error, like a bad PORT.
            eprintln!("lastcall demo: {err:#}");
            return lastcall::Exit::Config.into();
        }
    };
    let server = match start(&controller, &args, &db, pool).await {
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

/// Binds the port, registers the close step and starts serving.
async fn start(
    controller: &Controller,
    args: &DemoArgs,
    db: &std::path::Path,
    pool: SqlitePool,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    // Under systemd: the socket from socket activation, and the notify protocol; after a
    // restart, the socket the previous generation passed.
    let listener = match lastcall::systemd::listener()? {
        Some(listener) => listener,
        None => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port.unwrap_or(3000)));
            // The system's largest backlog: a burst of connections at the moment of the signal
            // waits in the kernel's queue instead of being refused.
            lastcall::http::listen(addr)
                .and_then(|listener| listener.into_std())
                .with_context(|| {
                    format!("cannot listen on {addr}; set PORT to a free port (0 picks one)")
                })?
        }
    };
    // A restart (SIGHUP) hands this socket to the new process, which takes it above as
    // systemd's first passed fd.
    controller.restart_listener("http", &listener)?;
    lastcall::systemd::notify(controller)?;
    let local = listener.local_addr().context("reading the bound address")?;

    let shutdown = controller.shutdown();
    let queue = SqliteQueue::new(pool.clone(), "orders")?.lease(Duration::from_secs(10));
    let worker_pool = pool.clone();
    let worker = Worker::new(queue.clone(), move |job| confirm(worker_pool.clone(), job))
        .concurrency(4)
        .spawn(controller)?;
    let task_pool = pool.clone();
    let task = Scheduler::new(controller).every(
        "count unconfirmed orders",
        Duration::from_secs(1),
        move || count_unconfirmed(task_pool.clone()),
    )?;
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(order))
        .route("/reports/slow", get(slow_report))
        .route("/events", get(events))
        .route("/ws", get(websocket))
        .route("/stats", get(stats))
        .with_state(AppState {
            pool: pool.clone(),
            queue,
            shutdown: shutdown.clone(),
            worker,
            task,
        });
    let service = DrainLayer::new(shutdown.clone()).layer(app);
    // Runs after the worker's hand-back step, which the worker registers to run first.
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
    controller.readiness().set_ready();
    tracing::info!(addr = %local, db = %db.display(), "orders service ready");
    // On stdout, for scripts and the checker: the one line that says where to connect. Not
    // `println!`, which panics when stdout is closed: a restart's successor inherits the
    // stdout of a process whose reader may be long gone, and must serve all the same.
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        if let Err(error) = writeln!(stdout, "lastcall demo listening on http://{local}")
            .and_then(|()| stdout.flush())
        {
            tracing::debug!(%error, "the address line could not be written to stdout");
        }
    }
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
            status TEXT NOT NULL DEFAULT 'pending',
            confirmations INTEGER NOT NULL DEFAULT 0,
            job_id INTEGER
        )",
    )
    .execute(&pool)
    .await
    .context("creating the orders table")?;
    // A database from an earlier version of the demo lacks the confirmation columns.
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('orders')")
        .fetch_all(&pool)
        .await
        .context("reading the orders table's columns")?;
    for (column, ddl) in [
        (
            "confirmations",
            "ALTER TABLE orders ADD COLUMN confirmations INTEGER NOT NULL DEFAULT 0",
        ),
        ("job_id", "ALTER TABLE orders ADD COLUMN job_id INTEGER"),
    ] {
        if !columns.iter().any(|c| c == column) {
            sqlx::query(ddl)
                .execute(&pool)
                .await
                .with_context(|| format!("adding the column orders.{column}"))?;
        }
    }
    SqliteQueue::migrate(&pool)
        .await
        .context("creating the job queue's tables")?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .context("counting orders")?;
    if count == 0 {
        let mut tx = pool.begin().await.context("seeding orders")?;
        for id in 1..=SEEDED_ORDERS {
            sqlx::query(
                "INSERT OR IGNORE INTO orders (id, item, quantity, status, confirmations)
                 VALUES (?, ?, ?, 'confirmed', 1)",
            )
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

fn database_error(err: &dyn std::fmt::Display, what: &str) -> Response {
    tracing::error!(%err, "{what} failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(ApiError {
            error: "database_error",
        }),
    )
        .into_response()
}

/// `POST /orders[?job_ms=N]`: the order and the job that confirms it commit together.
async fn create_order(
    State(state): State<AppState>,
    Query(query): Query<JobQuery>,
    body: Option<Json<NewOrder>>,
) -> Response {
    let new = body.map_or_else(
        || NewOrder {
            item: default_item(),
            quantity: default_quantity(),
        },
        |Json(new)| new,
    );
    if query.job_ms > MAX_JOB_MS || new.quantity < 1 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ApiError {
                error: "job_ms must be at most 600000 and quantity at least 1",
            }),
        )
            .into_response();
    }
    match insert_order(&state, &new, query.job_ms).await {
        Ok((id, job_id)) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "id": id, "status": "pending", "job_id": job_id })),
        )
            .into_response(),
        Err(err) => database_error(&format!("{err:#}"), "creating an order"),
    }
}

async fn insert_order(state: &AppState, new: &NewOrder, job_ms: u64) -> anyhow::Result<(i64, i64)> {
    let mut tx = state.pool.begin().await?;
    let id: i64 =
        sqlx::query_scalar("INSERT INTO orders (item, quantity) VALUES (?, ?) RETURNING id")
            .bind(&new.item)
            .bind(new.quantity)
            .fetch_one(&mut *tx)
            .await?;
    let payload = serde_json::to_vec(&ConfirmOrder {
        order_id: id,
        job_ms,
    })?;
    let job = NewJob::new(payload).key(format!("confirm-order-{id}"));
    let job_id = state.queue.enqueue_in(&mut tx, job).await?;
    sqlx::query("UPDATE orders SET job_id = ? WHERE id = ?")
        .bind(job_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((id, job_id))
}

/// The worker's handler: takes `job_ms`, then confirms the order once, whatever the number of
/// deliveries.
async fn confirm(pool: SqlitePool, job: Job) -> anyhow::Result<()> {
    let confirm: ConfirmOrder = serde_json::from_slice(job.payload())
        .with_context(|| format!("job {} has a malformed payload", job.label()))?;
    tokio::time::sleep(Duration::from_millis(confirm.job_ms)).await;
    let mut tx = pool.begin().await?;
    if SqliteQueue::mark_processed(&mut tx, &job).await? {
        sqlx::query(
            "UPDATE orders SET status = 'confirmed', confirmations = confirmations + 1
             WHERE id = ?",
        )
        .bind(confirm.order_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(order = confirm.order_id, job = %job.label(), attempt = job.attempt(), "order confirmed");
    } else {
        tracing::info!(order = confirm.order_id, job = %job.label(), "order already confirmed: redelivery skipped");
    }
    Ok(())
}

/// The scheduled task: logs how many orders wait for confirmation.
async fn count_unconfirmed(pool: SqlitePool) -> anyhow::Result<()> {
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status != 'confirmed'")
            .fetch_one(&pool)
            .await?;
    tracing::debug!(pending, "unconfirmed orders");
    Ok(())
}

async fn order(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let found = sqlx::query_as::<_, Order>(
        "SELECT id, item, quantity, status, confirmations, job_id FROM orders WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await;
    let order = match found {
        Ok(Some(order)) => order,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, Json(ApiError { error: "not_found" })).into_response()
        }
        Err(err) => return database_error(&err, "reading an order"),
    };
    let job = match order.job_id {
        Some(job_id) => match job_view(&state.pool, job_id).await {
            Ok(view) => Some(view),
            Err(err) => return database_error(&err, "reading an order's job"),
        },
        None => None,
    };
    Json(OrderView { order, job }).into_response()
}

async fn job_view(pool: &SqlitePool, id: i64) -> Result<JobView, sqlx::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let live: Option<(i64, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT attempts, lease_until, last_error FROM lastcall_jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    if let Some((attempts, lease_until, last_error)) = live {
        let running = lease_until.is_some_and(|until| until > now);
        return Ok(JobView {
            id,
            state: if running { "running" } else { "queued" },
            attempts,
            last_error,
        });
    }
    let dead: Option<(i64, Option<String>)> =
        sqlx::query_as("SELECT attempts, last_error FROM lastcall_dead_jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(match dead {
        Some((attempts, last_error)) => JobView {
            id,
            state: "dead",
            attempts,
            last_error,
        },
        None => JobView {
            id,
            state: "done",
            attempts: 0,
            last_error: None,
        },
    })
}

/// `GET /stats`: what the worker and the scheduled task did in this process.
async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    let worker = state.worker.stats();
    let task = state.task.stats();
    Json(serde_json::json!({
        "worker": {
            "claimed": worker.claimed,
            "succeeded": worker.succeeded,
            "retried": worker.retried,
            "dead": worker.dead,
            "released": worker.released,
        },
        "scheduled_task": {
            "runs": task.runs,
            "failed": task.failed,
            "skipped": task.skipped,
        },
    }))
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

/// `GET /ws`: echoes each message until the peer closes or the shutdown reaches
/// stop-accepting, which ends the session with a close frame 1001 "going away".
async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, state.shutdown))
}

async fn echo(mut socket: WebSocket, shutdown: Shutdown) {
    // Counted as a stream until the session ends, so the drain waits for its close.
    let _session = shutdown.tracker().stream("ws /ws");
    while let Some(Ok(message)) =
        lastcall::http::ws::recv_until_shutdown(&mut socket, &shutdown).await
    {
        if socket.send(message).await.is_err() {
            break;
        }
    }
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
