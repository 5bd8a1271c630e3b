//! The main thread as lastcall's timekeeper while [`runtime::block_on`](crate::runtime::block_on)
//! waits for `main`: see [`run`].
//!
//! lastcall needs a thread outside the async runtime for two things: keeping the coarse clock
//! fresh (the `clock` module) and ending the process at the hard deadline when the runtime is
//! blocked (the `watchdog` module). Each would otherwise be a thread of its own, and every
//! thread still alive when the process exits lengthens the exit: the kernel has to stop it and
//! tear down its stack, about 50 µs a thread on a two-core virtual machine (`BENCHMARKS.md`).
//! Meanwhile a service's main thread mostly waits while the runtime's workers run the service.
//! So on a multi-thread runtime, `block_on` polls `main` on the main thread itself, as the
//! runtime's own `block_on` does, and hosts both between polls: it parks with the next clock
//! tick or the deadline as its timeout. The deadline is watched whenever `main` is not being
//! polled, so a blocked runtime cannot delay it; only `main`'s own code blocking the main
//! thread could (the shutdown flow that `main` awaits never blocks). The controller's signal
//! listeners are polled here too, rather than be tasks that the runtime's teardown would have
//! to wake workers to drop.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::clock;
use crate::watchdog::Arm;
#[cfg(unix)]
use crate::Signal;

/// The host while one runs: the main thread inside `block_on`.
static HOST: Mutex<Option<Arc<Host>>> = Mutex::new(None);

/// The running host, if any.
pub(crate) fn current() -> Option<Arc<Host>> {
    lock(&HOST).clone()
}

/// Runs `main` to completion on the calling thread, inside `runtime`'s context (a
/// multi-thread runtime, whose workers run every other task), while the thread hosts the clock
/// and the watchdog between polls. When another thread hosts already, it simply blocks on
/// `main` with the runtime's own `block_on`.
///
/// This is what `Runtime::block_on` does on a multi-thread runtime (poll `main` on the
/// calling thread, park it until `main` is woken), with a timed park.
pub(crate) fn run<F: Future>(runtime: &Runtime, main: F) -> F::Output {
    let host = Arc::new(Host {
        state: Mutex::new(State::default()),
        thread: std::thread::current(),
    });
    {
        let mut slot = lock(&HOST);
        if slot.is_some() {
            drop(slot);
            return runtime.block_on(main);
        }
        *slot = Some(host.clone());
    }
    // Finishes the host however `serve` ends, a panic in `main` included.
    let _finish = Finish(host.clone());
    let _entered = runtime.enter();
    host.serve(main)
}

/// Ends hosting: uninstalls the host and hands what it still does over to threads.
struct Finish(Arc<Host>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finish();
        let mut slot = lock(&HOST);
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, &self.0)) {
            *slot = None;
        }
    }
}

/// Wakes the main thread for a poll of `main`.
struct MainWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// What the main thread does while `main` runs.
pub(crate) struct Host {
    state: Mutex<State>,
    /// The main thread, unparked when there is something new to do.
    thread: Thread,
}

#[derive(Default)]
struct State {
    /// `main` has ended: the host takes no more work, and hands over what it has.
    finished: bool,
    /// Signal streams polled here instead of by tasks of their own.
    #[cfg(unix)]
    listeners: Vec<Hosted>,
    /// The id of the next listener.
    #[cfg(unix)]
    next_listener: u64,
    /// Keeping the clock fresh.
    ticking: Option<Ticking>,
    /// The deadline being watched.
    armed: Option<Arc<Arm>>,
}

/// A signal listener the host polls.
#[cfg(unix)]
struct Hosted {
    id: u64,
    signal: Signal,
    stream: tokio::signal::unix::Signal,
    on_signal: OnSignal,
}

#[cfg(unix)]
type OnSignal = Arc<dyn Fn(Signal) + Send + Sync>;

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
        self.thread.unpark();
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
        self.thread.unpark();
        true
    }

    /// Polls `stream` for `signal` on the main thread, calling `on_signal` for every delivery,
    /// until [`Host::unlisten`] or the end of `main`. Only for a controller built by `main`
    /// itself, on the main thread, which ends with `main`: one built elsewhere (another task,
    /// another runtime) may outlive it, and gets its stream back to listen with a task.
    #[cfg(unix)]
    pub(crate) fn listen(
        &self,
        signal: Signal,
        stream: tokio::signal::unix::Signal,
        on_signal: OnSignal,
    ) -> Result<u64, tokio::signal::unix::Signal> {
        if std::thread::current().id() != self.thread.id() {
            return Err(stream);
        }
        let mut state = self.lock();
        if state.finished {
            return Err(stream);
        }
        let id = state.next_listener;
        state.next_listener += 1;
        state.listeners.push(Hosted {
            id,
            signal,
            stream,
            on_signal,
        });
        drop(state);
        // Its first poll registers the main thread's waker with the stream.
        self.thread.unpark();
        Ok(id)
    }

    /// Stops polling the listener `id`.
    #[cfg(unix)]
    pub(crate) fn unlisten(&self, id: u64) {
        self.lock().listeners.retain(|l| l.id != id);
    }

    /// Polls the signal streams and calls back for what was delivered, outside the lock (a
    /// callback starts the shutdown, which arms the watchdog here).
    #[cfg(unix)]
    fn signals(&self, cx: &mut Context<'_>) {
        let mut delivered: Vec<(Signal, OnSignal)> = Vec::new();
        self.lock().listeners.retain_mut(|l| loop {
            match l.stream.poll_recv(cx) {
                Poll::Ready(Some(())) => delivered.push((l.signal, l.on_signal.clone())),
                // The driver is gone: nothing more will come.
                Poll::Ready(None) => return false,
                Poll::Pending => return true,
            }
        });
        for (signal, on_signal) in delivered {
            on_signal(signal);
        }
    }

    #[cfg(not(unix))]
    fn signals(&self, _cx: &mut Context<'_>) {}

    /// The main thread's loop: polls `main` when woken, keeps the clock and watches the
    /// deadline in between.
    fn serve<F: Future>(&self, main: F) -> F::Output {
        let waker = Arc::new(MainWaker {
            thread: self.thread.clone(),
            woken: AtomicBool::new(true),
        });
        let wake = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&wake);
        let mut main = pin!(main);
        loop {
            self.signals(&mut cx);
            if waker.woken.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(output) = main.as_mut().poll(&mut cx) {
                    return output;
                }
            }
            let timeout = self.duties();
            // Woken meanwhile: poll before parking (a park would return at once anyway).
            if waker.woken.load(Ordering::Acquire) {
                continue;
            }
            match timeout {
                Some(timeout) => std::thread::park_timeout(timeout),
                None => std::thread::park(),
            }
        }
    }

    /// Ticks the clock and checks the deadline; returns how long the thread may park.
    fn duties(&self) -> Option<Duration> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut wake_at: Option<Instant> = None;
        if let Some(arm) = state.armed.clone() {
            if arm.is_disarmed() {
                state.armed = None;
            } else if now >= arm.deadline() {
                drop(state);
                // Ends the process, unless the shutdown it belongs to is gone.
                arm.fire();
                self.lock().armed = None;
                return Some(Duration::ZERO);
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
        wake_at.map(|at| at.saturating_duration_since(now))
    }

    /// `main` has ended (or panicked): takes no more work, and hands an armed deadline over to
    /// a thread, for a process that goes on.
    fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        // The listeners belong to controllers `main` built, ended with it.
        #[cfg(unix)]
        state.listeners.clear();
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
