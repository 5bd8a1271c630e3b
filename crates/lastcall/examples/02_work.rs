//! Work guards: the shutdown waits for in-flight work, and cuts what outlives its deadline.
//!
//! `cargo run -p lastcall --example 02_work`: three jobs start, the shutdown is triggered at
//! once, the two short ones finish, the long one is cut at the wait deadline and named in the
//! report (exit status 3).

use std::process::ExitCode;
use std::time::Duration;

use lastcall::Controller;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let controller = match Controller::builder()
        .budget(Duration::from_secs(10))
        .build()
    {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("lastcall: {err}");
            return err.exit_code();
        }
    };
    for (id, seconds) in [(1, 1), (2, 2), (3, 60)] {
        let shutdown = controller.shutdown();
        // The guard is taken before the task starts, so the job counts from this line.
        let guard = shutdown.tracker().job(format!("orders:job-{id}"));
        tokio::spawn(async move {
            let _guard = guard;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(seconds)) => println!("job {id} done"),
                // Past the wait deadline the job is told to give up (and is reported as cut).
                _ = shutdown.cut() => println!("job {id} abandoned"),
            }
        });
    }
    controller.trigger().trigger("example");
    let report = controller.run_with_report().await;
    print!("{report}");
    report.exit_code()
}
