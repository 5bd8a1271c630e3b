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
//!   the runtime ends through `lastcall::runtime::block_on`, so it cannot hold the exit.
//!
//! It prints `ready` once the controller is built, `phase NAME` as phases begin, and
//! `report: {json}` at the end, after `threads: NAMES`, the names of the process's threads
//! then (Linux); logs go to stderr. `FIXTURE_WORKERS=N` runs it on a multi-thread runtime.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use lastcall::runtime::Teardown;
use lastcall::{Controller, Phase};

fn main() -> ExitCode {
    // `FIXTURE_WORKERS=N` runs a multi-thread runtime with N workers, on which
    // `lastcall::runtime::block_on` hosts the clock and the watchdog on the main thread.
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

    let controller = match Controller::from_env() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall: {err}");
            return err.exit_code();
        }
    };
    let shutdown = controller.shutdown();

    let args: Vec<String> = std::env::args().skip(1).collect();
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
                // A guard taken 300 ms after the first one: with the cached clock kept fresh
                // (by the main thread or the clock thread), it is young.
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

    println!("ready");
    let report = controller.run_with_report().await;
    println!("threads: {}", thread_names().join(" "));
    println!("report: {}", report.to_json());
    report.exit_code()
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
