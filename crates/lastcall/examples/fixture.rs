//! Not a tutorial: the service the process tests (`tests/process.rs`) start, signal and grade.
//!
//! Arguments pick its behaviour, so each test can stage one of the article's unhappy paths:
//!
//! - `work=MS` / `work=never`: a job that holds a guard for MS milliseconds, or forever;
//! - `stop-hook`: a stop-accepting step that prints `hook stop_accepting ran`;
//! - `close-hang`: a close step `broker` that never finishes (500 ms timeout), then `database`;
//! - `close-fail`, `close-panic`: a close step that returns an error, or panics;
//! - `block`: in stop-accepting, a task blocks the runtime's thread for ten minutes (the whole
//!   runtime when it has one thread: the default, or `FIXTURE_WORKERS=1`);
//! - `fatal-after=MS`: the service calls `Trigger::fatal` after MS milliseconds;
//! - `systemd`: reports to systemd over `NOTIFY_SOCKET` (`lastcall::systemd::notify`).
//! - `ages`: prints the age of a guard taken 300 ms after another (`age of a new guard: N ms`);
//! - `untracked-task`: a task that never ends, holding a value that prints `untracked task
//!   dropped` when dropped;
//! - `blocking-leftover`: an untracked `spawn_blocking` task that sleeps for ten minutes;
//!   the runtime ends through `lastcall::runtime::block_on`, so it cannot hold the exit
//!   (unless `FIXTURE_TOKIO_MAIN=1`);
//! - `block-now`: a task blocks the runtime's thread at once, before any signal;
//! - `fill-stderr`: a thread writes to stderr without end, so with a stderr nobody reads every
//!   writer blocks (Docker's blocking log mode);
//! - `serve-after-run`: the README's axum shape, `DrainLayer` and `axum::serve(..)
//!   .with_graceful_shutdown(..)` on a port it prints (`listening PORT`), then
//!   `controller.run().await; server.await`; `GET /hang` never answers (`hang started`);
//! - `spin-main`: the flow runs as a task while `main` polls an always-ready future forever;
//! - `continue-after-run`: built with `Builder::continue_after_run`; after the flow it lives
//!   past the budget and prints `alive after the budget`;
//! - `second-controller=MS`: a second controller with a budget of MS milliseconds and a job
//!   that never ends.
//!
//! It prints `ready` once the controller is built, `phase NAME` as phases begin, and
//! `report: {json}` at the end, after `threads: NAMES`, the names of the process's threads
//! then (Linux); logs go to stderr. `FIXTURE_WORKERS=N` runs it on a multi-thread runtime;
//! `FIXTURE_TOKIO_MAIN=1` ends the runtime as `#[tokio::main]` does (dropped, unbounded).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use lastcall::runtime::Teardown;
use lastcall::{Controller, Phase};

fn main() -> ExitCode {
    // `FIXTURE_WORKERS=N` runs a multi-thread runtime with N workers.
    let workers = match std::env::var("FIXTURE_WORKERS") {
        Err(_) => None,
        Ok(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("fixture: FIXTURE_WORKERS={n:?}; use a number of worker threads, like 2");
                return ExitCode::from(2);
            }
        },
    };
    let built = match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fixture: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if std::env::var_os("FIXTURE_TOKIO_MAIN").is_some() {
        // What `#[tokio::main]` expands to: the runtime is dropped, which waits for every
        // blocking task with no limit.
        return runtime.block_on(service());
    }
    // Bounded teardown: a blocking task left running cannot hold the exit.
    lastcall::runtime::block_on(runtime, Teardown::default(), service())
}

async fn service() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = Controller::builder();
    if args.iter().any(|a| a == "continue-after-run") {
        builder = builder.continue_after_run();
    }
    let controller = match builder.build() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall: {err}");
            return err.exit_code();
        }
    };
    let shutdown = controller.shutdown();
    let mut after_run = AfterRun::Return;
    // Keeps a second controller (and its signal listener) alive until the end of `main`.
    let mut second = None;

    for (i, arg) in args.iter().enumerate() {
        let (name, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        match name {
            "work" => {
                let guard = shutdown.tracker().job(format!("job-{i}"));
                let ms: Option<u64> = value.parse().ok();
                tokio::spawn(async move {
                    let _guard = guard;
                    match ms {
                        Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        None => std::future::pending().await,
                    }
                });
            }
            "stop-hook" => {
                controller.on_stop_accepting("listener", Duration::from_millis(500), || async {
                    println!("hook stop_accepting ran");
                });
            }
            "close-hang" => {
                controller.close("broker", Duration::from_millis(500), || {
                    std::future::pending::<()>()
                });
                controller.close("database", Duration::from_millis(500), || async {
                    println!("step database ran");
                });
            }
            "close-fail" => {
                controller.close("cache", Duration::from_millis(500), || async {
                    Err::<(), _>(std::io::Error::other("connection reset while closing"))
                });
            }
            "close-panic" => {
                controller.close("cache", Duration::from_millis(500), || async {
                    let broken = true;
                    if broken {
                        panic!("cache client panicked on close");
                    }
                });
            }
            "block" => {
                let shutdown = shutdown.clone();
                let guard = shutdown.tracker().request("GET /reports/blocking");
                tokio::spawn(async move {
                    let _guard = guard;
                    shutdown.reached(Phase::StopAccepting).await;
                    // A handler that blocks the runtime thread: nothing async runs any more.
                    std::thread::sleep(Duration::from_secs(600));
                });
            }
            "ages" => {
                // A guard taken 300 ms after the first one: its start time is read then, so
                // it is young.
                let tracker = shutdown.tracker();
                let first = tracker.job("ages-first");
                tokio::time::sleep(Duration::from_millis(300)).await;
                let second = tracker.job("ages-second");
                let age = tracker
                    .active()
                    .items
                    .iter()
                    .find(|item| item.label == "ages-second")
                    .map_or(u128::MAX, |item| item.age.as_millis());
                println!("age of a new guard: {age} ms");
                drop((first, second));
            }
            "untracked-task" => {
                // A task nobody tracks or joins, alive when `main` returns: the teardown drops
                // it, and its destructor says so.
                struct SaysWhenDropped;
                impl Drop for SaysWhenDropped {
                    fn drop(&mut self) {
                        println!("untracked task dropped");
                    }
                }
                let held = SaysWhenDropped;
                tokio::spawn(async move {
                    let _held = held;
                    std::future::pending::<()>().await;
                });
            }
            "blocking-leftover" => {
                // An untracked blocking task that never returns (a read on a stuck pipe):
                // dropping the runtime would wait for it forever.
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(600)));
            }
            "block-now" => {
                tokio::spawn(async {
                    // Blocks the runtime's thread before any signal can be handled by a task.
                    println!("runtime blocked");
                    std::thread::sleep(Duration::from_secs(600));
                });
            }
            "fill-stderr" => {
                std::thread::spawn(|| {
                    let line = [b'x'; 1023];
                    loop {
                        use std::io::Write;
                        let mut stderr = std::io::stderr().lock();
                        let _ = stderr.write_all(&line);
                        let _ = stderr.write_all(b"\n");
                    }
                });
            }
            "serve-after-run" => after_run = AfterRun::Serve,
            "spin-main" => after_run = AfterRun::Spin,
            "continue-after-run" => after_run = AfterRun::Outlive,
            "second-controller" => {
                let ms = value.parse().unwrap_or(1000);
                let built = Controller::builder()
                    .ignore_env()
                    .budget(Duration::from_millis(ms))
                    .build();
                match built {
                    Ok(other) => {
                        let job = other.shutdown().tracker().job("second-controller-job");
                        tokio::spawn(async move {
                            let _job = job;
                            std::future::pending::<()>().await;
                        });
                        second = Some(tokio::spawn(other.run()));
                    }
                    Err(err) => {
                        eprintln!("fixture: {err}");
                        return err.exit_code();
                    }
                }
            }
            "fatal-after" => {
                let trigger = controller.trigger();
                let ms = value.parse().unwrap_or(0);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    trigger.fatal("the fixture's fatal error");
                });
            }
            "systemd" => {
                if let Err(err) = lastcall::systemd::notify(&controller) {
                    eprintln!("fixture: {err}");
                    return ExitCode::from(2);
                }
            }
            other => {
                eprintln!("fixture: unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }

    let watcher = shutdown.clone();
    tokio::spawn(async move {
        for phase in &Phase::ALL[1..] {
            watcher.reached(*phase).await;
            println!("phase {phase}");
        }
    });

    match after_run {
        AfterRun::Serve => return serve_after_run(controller).await,
        AfterRun::Spin => {
            let flow = tokio::spawn(controller.run_with_report());
            println!("ready");
            drop(flow);
            spin().await;
            return ExitCode::FAILURE;
        }
        AfterRun::Return | AfterRun::Outlive => {}
    }

    println!("ready");
    let report = controller.run_with_report().await;
    println!("threads: {}", thread_names().join(" "));
    println!("report: {}", report.to_json());
    if after_run == AfterRun::Outlive {
        let budget = shutdown.plan().budget().total;
        tokio::time::sleep(budget + Duration::from_millis(500)).await;
        println!("alive after the budget");
    }
    drop(second);
    report.exit_code()
}

/// What `main` does around the flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterRun {
    /// Returns the flow's exit code.
    Return,
    /// Serves axum, and awaits the server after the flow.
    Serve,
    /// Polls an always-ready future forever.
    Spin,
    /// Lives past the budget after the flow (with `continue_after_run`).
    Outlive,
}

/// The README's axum shape: the server stops accepting with the flow and is awaited after it.
async fn serve_after_run(controller: Controller) -> ExitCode {
    use axum::routing::get;
    use std::future::IntoFuture;
    let shutdown = controller.shutdown();
    let app = axum::Router::new()
        .route(
            "/hang",
            get(|| async {
                println!("hang started");
                std::future::pending::<&str>().await
            }),
        )
        .layer(lastcall::http::DrainLayer::new(shutdown.clone()));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("fixture: cannot listen: {err}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening {}", addr.port()),
        Err(err) => {
            eprintln!("fixture: {err}");
            return ExitCode::FAILURE;
        }
    }
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.reached(Phase::StopAccepting))
            .into_future(),
    );
    println!("ready");
    let code = controller.run().await;
    let _ = server.await;
    code
}

/// An always-ready future, polled forever: it never returns `Pending` on its own, so only
/// tokio's cooperative budget makes it yield.
async fn spin() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    loop {
        let _ = tx.send(());
        let _ = rx.recv().await;
    }
}

/// The names of this process's threads, from `/proc/self/task` (empty elsewhere).
fn thread_names() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut names: Vec<String> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    names
}
