//! The main thread as lastcall's timekeeper while [`runtime::block_on`](crate::runtime::block_on)
//! waits for `main`: see [`run`].
//!
//! lastcall needs a thread outside the async runtime for two things: keeping the coarse clock
//! fresh (the `clock` module) and ending the process at the hard deadline when the runtime is
//! blocked (the `watchdog` module). Each would otherwise be a thread of its own, and every
//! thread still alive when the process exits lengthens the exit: the kernel has to stop it and
//! tear down its stack, about 50 µs a thread on a two-core virtual machine (`BENCHMARKS.md`).
//! Meanwhile a service's main thread has nothing to do while the runtime runs `main`. So on a
//! multi-thread runtime, `block_on` runs `main` as a task and the main thread hosts both: it
//! waits for `main` on a condition variable, with the next clock tick or the deadline as its
//! timeout.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::runtime::Runtime;

use crate::clock;
use crate::watchdog::Arm;

/// The host while one runs: the main thread inside `block_on`.
static HOST: Mutex<Option<Arc<Host>>> = Mutex::new(None);

/// The running host, if any.
pub(crate) fn current() -> Option<Arc<Host>> {
    lock(&HOST).clone()
}

/// Runs `main` as a task on `runtime` (multi-thread) while the calling thread hosts the clock
/// and the watchdog, and returns `main`'s output; a panic in `main` is resumed here. When
/// another thread hosts already, it simply blocks on `main`.
pub(crate) fn run<F>(runtime: &Runtime, main: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let host = Arc::new(Host {
        state: Mutex::new(State::default()),
        woken: Condvar::new(),
    });
    {
        let mut slot = lock(&HOST);
        if slot.is_some() {
            drop(slot);
            return runtime.block_on(main);
        }
        *slot = Some(host.clone());
    }
    let ended = Arc::new(Mutex::new(None));
    let task = runtime.spawn(main);
    let (finished, slot) = (host.clone(), ended.clone());
    runtime.spawn(async move {
        let output = task.await;
        *lock(&slot) = Some(output);
        finished.finish();
    });
    host.serve();
    {
        let mut slot = lock(&HOST);
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, &host)) {
            *slot = None;
        }
    }
    let output = lock(&ended).take();
    match output {
        Some(Ok(output)) => output,
        Some(Err(error)) => match error.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Nothing aborts the task and the runtime outlives it.
            Err(error) => panic!("main's task ended without an output: {error}"),
        },
        None => unreachable!("the host returns only after main's task has ended"),
    }
}

/// What the main thread does while `main` runs.
pub(crate) struct Host {
    state: Mutex<State>,
    woken: Condvar,
}

#[derive(Default)]
struct State {
    /// `main` has ended: the host takes no more work, and hands over what it has.
    finished: bool,
    /// Keeping the clock fresh.
    ticking: Option<Ticking>,
    /// The deadline being watched.
    armed: Option<Arc<Arm>>,
}

struct Ticking {
    /// The last demand: ticks stop [`clock::IDLE_AFTER`] after it.
    since: Instant,
    next: Instant,
}

impl Host {
    /// Keeps the clock fresh for the next [`clock::IDLE_AFTER`]. `false` when the host has
    /// finished: the caller ticks another way.
    pub(crate) fn tick(&self) -> bool {
        let mut state = self.lock();
        if state.finished {
            return false;
        }
        let now = Instant::now();
        state.ticking = Some(Ticking {
            since: now,
            next: now + clock::TICK,
        });
        drop(state);
        self.woken.notify_one();
        true
    }

    /// Watches `arm`'s deadline. `false` when the host has finished or watches another armed
    /// deadline: the caller watches another way.
    pub(crate) fn watch(&self, arm: &Arc<Arm>) -> bool {
        let mut state = self.lock();
        if state.finished || state.armed.as_ref().is_some_and(|a| !a.is_disarmed()) {
            return false;
        }
        state.armed = Some(arm.clone());
        drop(state);
        self.woken.notify_one();
        true
    }

    fn finish(&self) {
        self.lock().finished = true;
        self.woken.notify_one();
    }

    /// The main thread's loop, until `main` has ended.
    fn serve(&self) {
        let mut state = self.lock();
        while !state.finished {
            let now = Instant::now();
            let mut wake_at: Option<Instant> = None;
            if let Some(arm) = state.armed.clone() {
                if arm.is_disarmed() {
                    state.armed = None;
                } else if now >= arm.deadline() {
                    drop(state);
                    // Ends the process, unless the shutdown it belongs to is gone.
                    arm.fire();
                    state = self.lock();
                    state.armed = None;
                    continue;
                } else {
                    wake_at = Some(arm.deadline());
                }
            }
            if let Some(ticking) = &mut state.ticking {
                if now >= ticking.next {
                    clock::refresh();
                    ticking.next = now + clock::TICK;
                }
                if now.duration_since(ticking.since) >= clock::IDLE_AFTER {
                    clock::stop_ticking();
                    state.ticking = None;
                } else {
                    let next = ticking.next;
                    wake_at = Some(wake_at.map_or(next, |at| at.min(next)));
                }
            }
            state = match wake_at {
                Some(at) => {
                    self.woken
                        .wait_timeout(state, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .woken
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        // `main` has ended; a process that goes on gets its clock and deadline back on threads.
        if state.ticking.take().is_some() {
            clock::stop_ticking();
        }
        if let Some(arm) = state.armed.take() {
            if !arm.is_disarmed() {
                if let Err(error) = arm.spawn() {
                    tracing::error!(%error, "cannot start the watchdog thread; the hard deadline is not enforced");
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
