//! Readiness and liveness, as the HTTP layer serves them: see [`Health`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The service's health state, shared by the controller (which moves it through a shutdown)
/// and the health endpoints (which read it).
///
/// | state | readiness | liveness |
/// |---|---|---|
/// | [`HealthState::Starting`] | 503 | 200 |
/// | [`HealthState::Ready`] | 200 | 200 |
/// | [`HealthState::Draining`] | 503 | 200 |
/// | [`HealthState::Stopped`] | 503 | 503 |
///
/// Readiness flips to draining at the very moment the shutdown is triggered, before the drain
/// delay, so balancers start moving traffic away while requests are still served. Liveness
/// stays up until exit: a liveness failure makes Kubernetes kill the container, which is the
/// opposite of a graceful shutdown.
///
/// # Examples
///
/// ```
/// use lastcall::health::HealthState;
/// use lastcall::Health;
///
/// let health = Health::new();
/// assert!(!health.is_ready());
/// assert!(health.is_live());
/// assert_eq!(health.state(), HealthState::Starting);
/// ```
///
/// The application changes readiness through a [`Readiness`] handle
/// ([`Controller::readiness`](crate::Controller::readiness)), not through this view.
#[derive(Clone, Default)]
pub struct Health {
    state: Arc<AtomicU8>,
    /// Set while the application says it cannot serve (a failed dependency check).
    held: Arc<AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
}

/// The application's say over readiness before a shutdown: take the service out of rotation
/// while a dependency is down, and put it back when it returns.
///
/// Readiness answers 200 only while the service is ready *and* no [`Readiness::set_not_ready`]
/// is in force. The shutdown's not-ready is final: once triggered, [`Readiness::set_ready`]
/// changes nothing. Liveness is not affected (a dependency outage is no reason for a restart).
///
/// # Examples
///
/// ```
/// use lastcall::Controller;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let controller = Controller::builder().ignore_env().manual_readiness().build().unwrap();
/// let readiness = controller.readiness();
/// let health = controller.health().clone();
/// readiness.set_ready(); // started: in rotation
/// assert!(health.is_ready());
/// readiness.set_not_ready("database unreachable");
/// assert!(!health.is_ready() && health.is_live());
/// readiness.set_ready(); // the database is back
/// assert!(health.is_ready());
/// # }
/// ```
#[derive(Clone)]
pub struct Readiness {
    health: Health,
}

/// Where the service is in its life, as [`Health`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Started but not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Shutting down: still serving in-flight work, but not ready for more.
    Draining,
    /// The shutdown finished; the process is about to exit.
    Stopped,
}

impl Health {
    /// A health state that starts as [`HealthState::Starting`].
    pub fn new() -> Health {
        Health::default()
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Acquire) {
            0 => HealthState::Starting,
            1 => HealthState::Ready,
            2 => HealthState::Draining,
            _ => HealthState::Stopped,
        }
    }

    /// Whether readiness should answer 200: ready, and not held back by the application.
    pub fn is_ready(&self) -> bool {
        self.state() == HealthState::Ready && !self.held.load(Ordering::Acquire)
    }

    /// Whether liveness should answer 200: until the process is about to exit.
    pub fn is_live(&self) -> bool {
        self.state() != HealthState::Stopped
    }

    /// Marks the service ready, if it is still starting. Has no effect once the shutdown has
    /// begun: a draining service never becomes ready again.
    #[deprecated(note = "use Controller::readiness().set_ready(): Health is the observer's view")]
    pub fn set_ready(&self) {
        let _ = self.advance(HealthState::Ready);
    }

    /// Moves the state forward to `to`; returns whether it moved. States never go back.
    pub(crate) fn advance(&self, to: HealthState) -> bool {
        let to = to as u8;
        let moved = self.state.fetch_max(to, Ordering::AcqRel) < to;
        if moved {
            self.changed.notify_waiters();
        }
        moved
    }

    /// Resolves once the state is `state` or a later one.
    #[cfg_attr(not(any(feature = "systemd", feature = "tonic")), allow(dead_code))]
    pub(crate) async fn reached(&self, state: HealthState) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between still wakes this waiter.
            changed.as_mut().enable();
            if self.state() >= state {
                return;
            }
            changed.await;
        }
    }
}

impl Readiness {
    pub(crate) fn new(health: Health) -> Readiness {
        Readiness { health }
    }

    /// The service can serve: marks it ready if it was starting, and lifts an earlier
    /// [`Readiness::set_not_ready`]. Changes nothing once the shutdown has begun.
    pub fn set_ready(&self) {
        let lifted = self.health.held.swap(false, Ordering::AcqRel);
        let started = self.health.advance(HealthState::Ready);
        if lifted && self.health.state() == HealthState::Ready {
            tracing::info!("readiness restored");
        }
        if lifted && !started {
            self.health.changed.notify_waiters();
        }
    }

    /// The service cannot serve for now (`reason` is logged): readiness answers 503 until
    /// [`Readiness::set_ready`]; liveness and the shutdown are not affected.
    pub fn set_not_ready(&self, reason: impl fmt::Display) {
        if !self.health.held.swap(true, Ordering::AcqRel) {
            tracing::warn!(%reason, "readiness withdrawn by the application");
            self.health.changed.notify_waiters();
        }
    }

    /// Whether readiness answers 200 now.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Health").field(&self.state()).finish()
    }
}

impl HealthState {
    /// The state's stable `snake_case` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Ready => "ready",
            HealthState::Draining => "draining",
            HealthState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
