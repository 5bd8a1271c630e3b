//! The hard deadline, enforced from a dedicated OS thread: see [`Watchdog`].

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use crate::shutdown::Shared;
use crate::Exit;

/// How many active items the last words list.
const LISTED: usize = 20;

/// A thread that ends the process at the hard deadline unless disarmed first.
///
/// It runs on its own OS thread, not on the async runtime, so a runtime blocked by a handler
/// calling `std::thread::sleep` (or spinning, or stuck in a blocking call) is still ended on
/// time. Before exiting it writes what was still active to stderr, so the forced exit is never
/// silent. Dropping the `Watchdog` disarms it.
pub(crate) struct Watchdog {
    /// Dropping the sender disconnects the channel, which wakes and ends the thread.
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    /// Starts the watchdog thread for `deadline`. Returns `None` (and logs) if the operating
    /// system refuses a thread, in which case the budget is enforced by the async flow alone.
    pub(crate) fn arm(shared: Arc<Shared>, deadline: Instant) -> Option<Watchdog> {
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("lastcall-watchdog".into())
            .spawn(move || {
                let wait = deadline.saturating_duration_since(Instant::now());
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                    hard_exit(&shared);
                }
            });
        match spawned {
            Ok(_) => Some(Watchdog { _disarm: tx }),
            Err(error) => {
                tracing::error!(%error, "cannot start the watchdog thread; the hard deadline is not enforced");
                None
            }
        }
    }
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

/// Ends the process at the hard deadline, after saying what was still running.
fn hard_exit(shared: &Shared) -> ! {
    let budget = shared.plan.budget().total;
    last_words(
        shared,
        Exit::HardDeadline,
        &format!("the {}ms budget ran out", budget.as_millis()),
    )
}

/// Ends the process because a repeated interrupt asked for it.
pub(crate) fn forced_exit(shared: &Shared) -> ! {
    last_words(shared, Exit::Forced, "a repeated interrupt forced the exit")
}

fn last_words(shared: &Shared, exit: Exit, why: &str) -> ! {
    let phase = shared.phase();
    let active = shared.tracker.active().keep_oldest(LISTED);
    let step = shared
        .current_step()
        .map(|(p, name)| format!("; step {name:?} ({p}) was running"))
        .unwrap_or_default();
    tracing::error!(
        target: "lastcall::watchdog",
        exit_code = exit.code(),
        phase = %phase,
        active = %active,
        "{why}; exiting"
    );
    // Written straight to stderr as well: a buffered or asynchronous log writer may never get
    // to run again, and these are the process's last words.
    let line = format!(
        "lastcall: {why} during {phase}{step}; {active}; exiting with status {}\n",
        exit.code()
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    shared.write_report_file(&line);
    std::process::exit(i32::from(exit.code()))
}
