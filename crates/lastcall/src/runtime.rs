//! Ending the tokio runtime once the shutdown flow has returned: see [`block_on`].
//!
//! `#[tokio::main]` drops its runtime when `main`'s future returns, and dropping a runtime
//! waits, with no limit, for every blocking task (`spawn_blocking`, `tokio::fs`, a synchronous
//! client called through `block_in_place`) to return. One such task stuck on a read keeps the
//! process alive after a shutdown that went perfectly, and the watchdog cannot help: its
//! deadline was disarmed when the flow finished. The orchestrator's SIGKILL ends it instead.
//!
//! [`block_on`] runs `main` on a runtime you built and then ends that runtime under a
//! [`Teardown`] policy: bounded ([`Teardown::Wait`], the default), or not waited for at all
//! ([`Teardown::Detach`]).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::runtime::{Runtime, RuntimeFlavor};

/// How the runtime ends after `main`'s future has returned. See [`block_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Teardown {
    /// Drop the tasks still alive (their destructors run) and wait for the runtime's threads,
    /// for at most this long; a blocking task still running after it is abandoned to the
    /// process's exit, with a warning. The default waits 500 ms.
    Wait(Duration),
    /// Do not wait: return at once and let the process's exit end the runtime's threads.
    ///
    /// Tasks still alive are dropped on the worker threads while the process exits, so their
    /// destructors may not run. Choose it when the shutdown's steps close everything that
    /// matters (tracked work has ended, dependencies are closed, telemetry is flushed), as in
    /// a service whose every resource is closed through the [`Controller`](crate::Controller);
    /// it saves the runtime's teardown, 0.1 to 0.2 ms between the last response and the
    /// process's exit (see `BENCHMARKS.md`).
    Detach,
}

impl Default for Teardown {
    fn default() -> Self {
        Teardown::Wait(Duration::from_millis(500))
    }
}

/// Runs `main` to completion on `runtime`, then ends the runtime under `teardown`: the
/// replacement for `#[tokio::main]` whose end is bounded.
///
/// On a multi-thread runtime `main` runs as a task, and the calling thread, idle otherwise,
/// keeps lastcall's coarse clock fresh and enforces the shutdown's hard deadline (the watchdog)
/// while it waits: no thread of lastcall's own is alive when the process exits, which makes
/// the exit faster (see `BENCHMARKS.md`). A panic in `main` is resumed on the calling thread.
/// A current-thread runtime runs `main` on the calling thread, as its `block_on` does.
///
/// # Examples
///
/// ```no_run
/// use std::process::ExitCode;
///
/// use lastcall::runtime::{block_on, Teardown};
/// use lastcall::Controller;
///
/// fn main() -> ExitCode {
///     let runtime = match tokio::runtime::Runtime::new() {
///         Ok(runtime) => runtime,
///         Err(err) => {
///             eprintln!("cannot start the async runtime: {err}");
///             return ExitCode::FAILURE;
///         }
///     };
///     block_on(runtime, Teardown::default(), async {
///         let controller = match Controller::from_env() {
///             Ok(controller) => controller,
///             Err(err) => {
///                 eprintln!("{err}");
///                 return err.exit_code();
///             }
///         };
///         // ... start the service with controller.shutdown() ...
///         controller.run().await
///     })
/// }
/// ```
pub fn block_on<F>(runtime: Runtime, teardown: Teardown, main: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let output = match runtime.handle().runtime_flavor() {
        RuntimeFlavor::MultiThread => crate::host::run(&runtime, main),
        // A current-thread runtime runs its tasks only inside `block_on`.
        _ => runtime.block_on(main),
    };
    match teardown {
        Teardown::Wait(limit) => {
            let started = Instant::now();
            runtime.shutdown_timeout(limit);
            if !limit.is_zero() && started.elapsed() >= limit {
                tracing::warn!(
                    target: "lastcall::runtime",
                    limit_ms = limit.as_millis() as u64,
                    "the runtime's teardown outlived its limit: a blocking task (spawn_blocking, \
                     a synchronous call) was still running and is abandoned to the exit"
                );
            }
        }
        Teardown::Detach => runtime.shutdown_background(),
    }
    output
}
