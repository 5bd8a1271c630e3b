//! Flush and close steps: named, ordered, each with its own timeout.
//!
//! `cargo run -p lastcall --example 03_steps`: the broker's close hangs and is cut at its
//! timeout, the database still closes after it, and the exit status (4) says a cleanup step
//! failed.

use std::process::ExitCode;
use std::time::Duration;

use lastcall::Controller;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let controller = match Controller::from_env() {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall: {err}");
            return err.exit_code();
        }
    };
    controller.flush("metrics", Duration::from_millis(500), || async {
        println!("metrics flushed");
    });
    controller.close("broker", Duration::from_secs(1), || async {
        // A broker client whose close never returns.
        std::future::pending::<()>().await;
    });
    controller.close("database", Duration::from_secs(2), || async {
        println!("database pool closed");
        Ok::<(), std::io::Error>(())
    });
    controller.trigger().trigger("example");
    let report = controller.run_with_report().await;
    print!("{report}");
    report.exit_code()
}
