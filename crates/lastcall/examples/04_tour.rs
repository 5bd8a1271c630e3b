//! The whole sequence, driven by real signals: the README's first command until the checker
//! lands.
//!
//! `cargo run -p lastcall --example 04_tour`: the process starts a few requests and a job,
//! sends itself SIGTERM, then a second SIGTERM and a SIGINT while it drains (both are logged
//! and start nothing), lets the work finish, flushes, closes its dependencies in order, and
//! prints the report. Exit status 0.

use std::process::ExitCode;
use std::time::Duration;

use lastcall::{Controller, Phase};
use nix::sys::signal::{raise, Signal};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let controller = match Controller::builder()
        .budget(Duration::from_secs(10))
        .drain_delay(Duration::from_millis(300))
        .build()
    {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall: {err}");
            return err.exit_code();
        }
    };
    let shutdown = controller.shutdown();

    // In-flight work: two requests and a job, each holding a guard until it ends.
    for (label, ms) in [("GET /orders/7", 400), ("GET /reports/slow?ms=900", 900)] {
        let guard = shutdown.tracker().request(label);
        tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        });
    }
    let job = shutdown.tracker().job("orders:confirm-42");
    tokio::spawn(async move {
        let _job = job;
        tokio::time::sleep(Duration::from_millis(700)).await;
    });

    // A listener that stops accepting when told to.
    let listener = shutdown.clone();
    tokio::spawn(async move {
        listener.reached(Phase::StopAccepting).await;
        tracing::info!("listener closed");
    });

    controller.flush("metrics", Duration::from_millis(500), || async {});
    controller.close("broker", Duration::from_secs(1), || async {});
    controller.close("database", Duration::from_secs(2), || async {});

    // The platform asks us to stop, then gets impatient.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = raise(Signal::SIGTERM);
        shutdown.reached(Phase::StopAccepting).await;
        let _ = raise(Signal::SIGTERM);
        let _ = raise(Signal::SIGINT);
    });

    let report = controller.run_with_report().await;
    // The JSON form is in the `lastcall::report` log event above.
    println!("\n{report}");
    report.exit_code()
}
