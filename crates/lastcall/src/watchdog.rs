//! The hard deadline, enforced on a thread of its own until the process is gone: see
//! [`Watchdog`].

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::Exit;

/// How long the process waits for its last words to be written before it exits without them:
/// a stalled stderr pipe or a report file nobody reads must not hold the exit.
pub(crate) const LAST_WORDS_WAIT: Duration = Duration::from_millis(30);

/// Ends the process at the end of the budget, unless disarmed first.
///
/// One OS thread per controller, `lastcall-watchdog`, started when the controller is built (so
/// a failure to start it is a start-up error, not a surprise at shutdown) and parked until the
/// shutdown is triggered. It waits outside the async runtime, so a runtime blocked by a
/// handler calling `std::thread::sleep` (or spinning, or stuck in a blocking call) is still
/// ended on time, and it stays armed after [`Controller::run`](crate::Controller::run) has
/// returned: whatever runs after the flow (code after `run`, a runtime's drop waiting for a
/// blocking task) cannot outlive the budget. Only
/// [`Builder::continue_after_run`](crate::Builder::continue_after_run) disarms it when the
/// flow ends.
///
/// When it fires, a helper thread says what was still running (stderr, the log, the report
/// file) while the watchdog waits at most [`LAST_WORDS_WAIT`] for it, then exits with
/// [`Exit::HardDeadline`].
pub(crate) struct Watchdog {
    arm: Arc<Arm>,
}

/// What the process says before the watchdog ends it: the shutdown's state implements it, so
/// the watchdog needs to know nothing of it.
pub(crate) trait LastWords: Send + Sync + 'static {
    /// The whole budget, for the message.
    fn budget(&self) -> Duration;

    /// Says why the process ends with `exit` and what was still running. It may block (a
    /// stalled stderr): it runs on a helper thread.
    fn say(&self, exit: Exit, why: &str);
}

struct Arm {
    state: Mutex<State>,
    changed: Condvar,
}

enum State {
    /// Not triggered yet.
    Idle,
    /// Ends the process at `deadline`. It holds the shared state so that the last words can
    /// be said even after every handle of the application's is gone.
    Armed {
        deadline: Instant,
        words: Arc<dyn LastWords>,
    },
    /// Disarmed for good, or the controller is gone: the thread ends.
    Ended,
}

impl Watchdog {
    /// Starts the watchdog's thread, parked until [`Watchdog::arm`].
    pub(crate) fn start() -> std::io::Result<Watchdog> {
        let arm = Arc::new(Arm {
            state: Mutex::new(State::Idle),
            changed: Condvar::new(),
        });
        let watched = arm.clone();
        std::thread::Builder::new()
            .name("lastcall-watchdog".into())
            .spawn(move || watched.watch())?;
        Ok(Watchdog { arm })
    }

    /// Ends the process at `deadline`, unless [`Watchdog::disarm`] comes first. Once only: a
    /// watchdog that is armed or ended stays so.
    pub(crate) fn arm(&self, words: Arc<dyn LastWords>, deadline: Instant) {
        let mut state = self.arm.lock();
        if matches!(*state, State::Idle) {
            *state = State::Armed { deadline, words };
            self.arm.changed.notify_all();
        }
    }

    /// Disarms it for good; its thread ends.
    pub(crate) fn disarm(&self) {
        let ended = std::mem::replace(&mut *self.arm.lock(), State::Ended);
        self.arm.changed.notify_all();
        // The shared state is dropped outside the lock: it may be the last reference, and
        // dropping it drops this watchdog, which takes the lock.
        drop(ended);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl Arm {
    fn watch(&self) {
        let mut state = self.lock();
        loop {
            state = match &*state {
                State::Ended => return,
                State::Idle => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                State::Armed { deadline, words } => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let words = words.clone();
                        drop(state);
                        hard_exit(words);
                    }
                    self.changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

/// Ends the process at the hard deadline, after saying what was still running.
fn hard_exit(words: Arc<dyn LastWords>) -> ! {
    let why = format!("the {}ms budget ran out", words.budget().as_millis());
    exit_with_last_words(words, Exit::HardDeadline, why)
}

/// Ends the process because a repeated interrupt asked for it.
pub(crate) fn forced_exit(words: Arc<dyn LastWords>) -> ! {
    exit_with_last_words(
        words,
        Exit::Forced,
        "a repeated interrupt forced the exit".into(),
    )
}

/// Says why the process ends and what was still running, from a helper thread, then exits
/// with `exit`'s status after at most [`LAST_WORDS_WAIT`], said or not.
///
/// Everything that can block is on the helper: the tracker's and the step's locks, the
/// `tracing` subscriber (its writer may block on a full pipe), stderr, the report file. The
/// calling thread only waits on a channel with a timeout.
fn exit_with_last_words(words: Arc<dyn LastWords>, exit: Exit, why: String) -> ! {
    let (said, words_said) = mpsc::channel();
    let helper = std::thread::Builder::new()
        .name("lastcall-last-words".into())
        .spawn(move || {
            words.say(exit, &why);
            let _ = said.send(());
        });
    if helper.is_ok() {
        // Said, timed out or the helper died: the exit goes ahead in every case.
        let _ = words_said.recv_timeout(LAST_WORDS_WAIT);
    }
    // `process::exit` skips destructors and other threads. What it still does is flush a
    // partly written stdout line; see the README's "What the deadline cannot bound".
    std::process::exit(i32::from(exit.code()))
}
