//! Ending the tokio runtime once the shutdown flow has returned: see [`block_on`].
//!
//! `#[tokio::main]` drops its runtime when `main`'s future returns, and dropping a runtime
//! waits, with no limit, for every blocking task (`spawn_blocking`, `tokio::fs`, a synchronous
//! client called through `block_in_place`) to return. One such task stuck on a read keeps the
//! process alive after a shutdown that went perfectly, and the watchdog cannot help: its
//! deadline was disarmed when the flow finished. The orchestrator's SIGKILL ends it instead.
//!
//! [`block_on`] runs `main` on a runtime you built and then ends that runtime under a
//! [`Teardown`] policy: bounded ([`Teardown::Wait`], the default, which does not even wake the
//! idle workers when nothing is left to wait for), always joined and bounded
//! ([`Teardown::Join`]), or not waited for at all ([`Teardown::Detach`]).

use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::{Runtime, RuntimeFlavor};

/// How the runtime ends after `main`'s future has returned. See [`block_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Teardown {
    /// Drop the tasks still alive (their destructors run) and wait for the blocking tasks
    /// still running, for at most this long; one still running after it is abandoned to the
    /// process's exit, with a warning. The default waits 500 ms.
    ///
    /// When there is nothing to drop or wait for (on a multi-thread runtime, no task alive
    /// and no thread in the process but the caller and the runtime's workers, so no blocking
    /// task), the idle workers are not woken and joined: the runtime is left for the process's
    /// exit to end, which takes the kernel less time than joining them takes (about 0.1 ms
    /// sooner between the last response and the exit, see `BENCHMARKS.md`). Their
    /// thread-local destructors and `on_thread_stop` callbacks do not run then: choose
    /// [`Teardown::Join`] if yours must. A runtime left so is dropped at the next `block_on`
    /// call, for a process that goes on.
    Wait(Duration),
    /// As [`Teardown::Wait`], but always wakes and joins the runtime's threads, as dropping a
    /// runtime does (for at most this long).
    Join(Duration),
    /// Do not wait: return at once and let the process's exit end the runtime's threads.
    ///
    /// Tasks still alive are dropped on the worker threads while the process exits, so their
    /// destructors may not run. Choose it when the shutdown's steps close everything that
    /// matters (tracked work has ended, dependencies are closed, telemetry is flushed), as in
    /// a service whose every resource is closed through the [`Controller`](crate::Controller).
    /// Against [`Teardown::Join`] it saves the runtime's teardown, about 0.1 ms between the last
    /// response and the process's exit; [`Teardown::Wait`] saves as much when nothing is left
    /// (see `BENCHMARKS.md`).
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
/// `main` is polled on the calling thread, as the runtime's own `block_on` does. On a
/// multi-thread runtime the thread also keeps lastcall's coarse clock fresh and enforces the
/// shutdown's hard deadline (the watchdog) while `main` waits, so no thread of lastcall's own
/// is alive when the process exits, which makes the exit faster (see `BENCHMARKS.md`).
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
    // A runtime an earlier call left for the exit: this process went on.
    let earlier = lock_left().take();
    drop(earlier);
    let multi_thread = runtime.handle().runtime_flavor() == RuntimeFlavor::MultiThread;
    // Ending a current-thread runtime joins no thread: nothing to save there.
    let mut threads = (multi_thread && matches!(teardown, Teardown::Wait(_))).then(Threads::open);
    let output = if multi_thread {
        crate::host::run(&runtime, main)
    } else {
        // A current-thread runtime runs its tasks only inside its own `block_on`.
        runtime.block_on(main)
    };
    match teardown {
        Teardown::Wait(_) if threads.as_mut().is_some_and(|t| nothing_left(&runtime, t)) => {
            leave(runtime)
        }
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

/// The runtime the last [`block_on`] left for the process's exit to end (see
/// [`Teardown::Wait`]).
static LEFT: Mutex<Option<Runtime>> = Mutex::new(None);

fn lock_left() -> MutexGuard<'static, Option<Runtime>> {
    LEFT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether ending `runtime` would neither drop a task nor wait for a blocking one: a
/// multi-thread runtime with no task alive, in a process whose only threads are the caller
/// and the runtime's workers (a blocking task would have a thread of the runtime's pool).
/// Under a host, lastcall's own signal listeners are not tasks.
fn nothing_left(runtime: &Runtime, threads: &mut Threads) -> bool {
    let metrics = runtime.metrics();
    metrics.num_alive_tasks() == 0 && threads.count() == Some(1 + metrics.num_workers())
}

/// Counts this process's threads: the entries of `/proc/self/task`, opened before `main`
/// runs, so the count at its end costs one directory read (opening a `/proc` file for the
/// first time, or rendering `/proc/self/stat`, costs tens of microseconds on the path to the
/// exit).
struct Threads {
    #[cfg(target_os = "linux")]
    tasks: Option<nix::dir::Dir>,
}

impl Threads {
    fn open() -> Threads {
        #[cfg(target_os = "linux")]
        {
            use nix::fcntl::OFlag;
            use nix::sys::stat::Mode;
            let tasks = nix::dir::Dir::open(
                "/proc/self/task",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok();
            let mut threads = Threads { tasks };
            // Once now, so the read at the end finds its code paths warm.
            let _ = threads.count();
            threads
        }
        #[cfg(not(target_os = "linux"))]
        Threads {}
    }

    /// How many threads the process has now, if that can be told.
    #[cfg(target_os = "linux")]
    fn count(&mut self) -> Option<usize> {
        let tasks = self.tasks.as_mut()?;
        let mut count = 0;
        // The iterator rewinds the directory when dropped, so each count reads it afresh.
        for entry in tasks.iter() {
            let entry = entry.ok()?;
            if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
                count += 1;
            }
        }
        Some(count)
    }

    #[cfg(not(target_os = "linux"))]
    fn count(&mut self) -> Option<usize> {
        None
    }
}

/// Keeps the idle `runtime` for the process's exit to end.
fn leave(runtime: Runtime) {
    let earlier = lock_left().replace(runtime);
    // Only if two calls overlapped: the next call drops the one left now.
    drop(earlier);
}
