//! Ending the tokio runtime once `main` has returned: see [`block_on`].
//!
//! `#[tokio::main]` drops its runtime when `main`'s future returns, and dropping a runtime
//! waits, with no limit, for every blocking task (`spawn_blocking`, `tokio::fs`, a synchronous
//! client called through `block_in_place`) to return. One such task stuck on a read keeps the
//! process alive after a shutdown that went perfectly. The shutdown's hard deadline still ends
//! such a process at the end of the budget (it holds until the process is gone, see
//! [`Controller::run`](crate::Controller::run)), but with status 5 and after the whole budget.
//!
//! [`block_on`] is the runtime's own `block_on` followed by a bounded end: the blocking tasks
//! are waited for at most [`Teardown::Wait`]'s limit ([`Runtime::shutdown_timeout`]), or not at
//! all ([`Teardown::Detach`], [`Runtime::shutdown_background`]).

use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::Controller;

/// How the runtime ends after `main`'s future has returned. See [`block_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Teardown {
    /// Drop the tasks still alive (their destructors run) and wait for the blocking tasks
    /// still running, for at most this long; one still running after it is abandoned to the
    /// process's exit, with a warning. The default waits 500 ms.
    Wait(Duration),
    /// The same as [`Teardown::Wait`]: the runtime's threads are always joined now.
    #[deprecated(note = "use Teardown::Wait, which now always joins the runtime's threads")]
    Join(Duration),
    /// Do not wait: return at once and let the process's exit end the runtime's threads.
    ///
    /// Tasks still alive are dropped on the worker threads while the process exits, so their
    /// destructors may not run. Choose it when the shutdown's steps close everything that
    /// matters (tracked work has ended, dependencies are closed, telemetry is flushed).
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
/// `main` runs exactly as under [`Runtime::block_on`]; only the runtime's end differs.
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
pub fn block_on<F: Future>(runtime: Runtime, teardown: Teardown, main: F) -> F::Output {
    let output = runtime.block_on(main);
    #[allow(deprecated)]
    match teardown {
        Teardown::Wait(limit) | Teardown::Join(limit) => {
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

/// Runs a service with no ceremony: a multi-thread tokio runtime, the [`Controller`] configured
/// from `LASTCALL_*` ([`Controller::from_env`]), `service` given that controller, and the
/// runtime's bounded end ([`block_on`] with [`Teardown::default`]). Re-exported as
/// `lastcall::main`.
///
/// A configuration the controller refuses is printed to stderr and ends the process with 78
/// ([`Exit::Config`](crate::Exit::Config)), before `service` runs; a runtime that cannot start
/// ends it with 1. `service` sets the service up with the controller and returns
/// [`Controller::run`]'s exit code.
///
/// # Examples
///
/// ```no_run
/// use std::process::ExitCode;
/// use std::time::Duration;
///
/// fn main() -> ExitCode {
///     lastcall::main(|controller| async move {
///         let shutdown = controller.shutdown();
///         // ... serve with `shutdown`, start workers ...
///         # let _ = shutdown;
///         controller.close("database", Duration::from_secs(3), || async {
///             // pool.close().await
///         });
///         controller.run().await
///     })
/// }
/// ```
pub fn main<F, Fut>(service: F) -> ExitCode
where
    F: FnOnce(Controller) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    // Printed, not logged: this is the program's own entry point, and a start-up failure may
    // come before any log subscriber is installed.
    let runtime = match Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lastcall: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    block_on(runtime, Teardown::default(), async move {
        match Controller::from_env() {
            Ok(controller) => service(controller).await,
            Err(err) => {
                eprintln!("lastcall: {err}");
                err.exit_code()
            }
        }
    })
}
