//! Readiness and liveness, as the HTTP layer serves them: see [`Health`].

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
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
/// use lastcall::{Health, HealthState};
///
/// let health = Health::new();
/// assert!(!health.is_ready());
/// assert!(health.is_live());
/// health.set_ready();
/// assert_eq!(health.state(), HealthState::Ready);
/// ```
#[derive(Clone, Default)]
pub struct Health {
    state: Arc<AtomicU8>,
    changed: Arc<tokio::sync::Notify>,
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

    /// Whether readiness should answer 200.
    pub fn is_ready(&self) -> bool {
        self.state() == HealthState::Ready
    }

    /// Whether liveness should answer 200: until the process is about to exit.
    pub fn is_live(&self) -> bool {
        self.state() != HealthState::Stopped
    }

    /// Marks the service ready, if it is still starting. Has no effect once the shutdown has
    /// begun: a draining service never becomes ready again.
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
