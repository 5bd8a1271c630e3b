//! The smallest adoption: build the controller, run it, return its exit code.
//!
//! `cargo run -p lastcall --example 01_signals`, then press Ctrl+C (or `kill -TERM <pid>`).
//! A second Ctrl+C is logged and changes nothing; set `LASTCALL_FORCE_EXIT=second-interrupt`
//! to make it end the process with status 130.

use std::process::ExitCode;

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
    println!("pid {}: waiting for SIGTERM or SIGINT", std::process::id());
    controller.run().await
}
