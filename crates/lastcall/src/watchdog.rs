//! The hard deadline, enforced outside the async runtime: see [`Watchdog`].

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use crate::shutdown::Shared;
use crate::Exit;

/// How many active items the last words list.
const LISTED: usize = 20;

/// Ends the process at the hard deadline unless disarmed first.
///
/// It waits outside the async runtime, so a runtime blocked by a handler calling
/// `std::thread::sleep` (or spinning, or stuck in a blocking call) is still ended on time: on
/// the main thread when [`runtime::block_on`](crate::runtime::block_on) hosts it (see the
/// `host` module), else on a thread of its own. Before exiting it writes what was still active
/// to stderr, so the forced exit is never silent. Dropping the `Watchdog` disarms it.
pub(crate) struct Watchdog {
    arm: Arc<Arm>,
}

impl Watchdog {
    /// Arms the watchdog for `deadline`. Returns `None` (and logs) if neither the host nor a
    /// thread can watch, in which case the budget is enforced by the async flow alone.
    pub(crate) fn arm(shared: &Arc<Shared>, deadline: Instant) -> Option<Watchdog> {
        let arm = Arc::new(Arm {
            deadline,
            shared: Arc::downgrade(shared),
            disarmed: Mutex::new(false),
            woken: Condvar::new(),
        });
        if crate::host::current().is_some_and(|host| host.watch(&arm)) {
            return Some(Watchdog { arm });
        }
        match arm.clone().spawn() {
            Ok(()) => Some(Watchdog { arm }),
            Err(error) => {
                tracing::error!(%error, "cannot start the watchdog thread; the hard deadline is not enforced");
                None
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.arm.disarm();
    }
}

/// One armed deadline, watched by the host or by a thread of its own.
pub(crate) struct Arm {
    deadline: Instant,
    /// Weak: a process that goes on after its shutdown keeps nothing alive through this.
    shared: Weak<Shared>,
    disarmed: Mutex<bool>,
    /// Wakes a watching thread when disarmed.
    woken: Condvar,
}

impl Arm {
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn is_disarmed(&self) -> bool {
        *self.lock()
    }

    /// Ends the process: the deadline has passed.
    pub(crate) fn fire(&self) {
        if let Some(shared) = self.shared.upgrade() {
            hard_exit(&shared);
        }
    }

    fn disarm(&self) {
        *self.lock() = true;
        self.woken.notify_all();
    }

    /// Watches on a thread of its own, `lastcall-watchdog`, which ends when disarmed.
    pub(crate) fn spawn(self: Arc<Arm>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("lastcall-watchdog".into())
            .spawn(move || self.watch())
            .map(drop)
    }

    fn watch(&self) {
        let mut disarmed = self.lock();
        loop {
            if *disarmed {
                return;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(disarmed);
                self.fire();
                return;
            }
            disarmed = self
                .woken
                .wait_timeout(disarmed, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.disarmed.lock().unwrap_or_else(PoisonError::into_inner)
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
