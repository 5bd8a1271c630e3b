//! How a failed job is retried: see [`Retry`].

use std::time::Duration;

/// Retries with exponential backoff and jitter, up to a maximum number of attempts.
///
/// After attempt `n` fails, the job waits `min(max, base × 2^(n-1))`, of which a random half
/// is taken off ("equal jitter": spread out, never less than half the step), then runs again.
/// When attempt `max_attempts` fails, the job goes to the dead letters with its last error.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lastcall::worker::Retry;
///
/// let retry = Retry::new(5)
///     .base(Duration::from_secs(1))
///     .max(Duration::from_secs(60));
/// let wait = retry.delay(3); // after the third attempt failed: 2s..=4s
/// assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_secs(4));
/// assert!(retry.gives_up(5));
/// assert!(!retry.gives_up(4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    max_attempts: u32,
    base: Duration,
    max: Duration,
}

impl Default for Retry {
    /// 5 attempts, backoff from 1 s up to 5 minutes.
    fn default() -> Retry {
        Retry {
            max_attempts: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Retry {
    /// Up to `max_attempts` attempts in all (1 means "never retry"), with the default backoff.
    pub fn new(max_attempts: u32) -> Retry {
        Retry {
            max_attempts,
            ..Retry::default()
        }
    }

    /// The first backoff step.
    pub fn base(mut self, base: Duration) -> Retry {
        self.base = base;
        self
    }

    /// The longest backoff step.
    pub fn max(mut self, max: Duration) -> Retry {
        self.max = max;
        self
    }

    /// The maximum number of attempts.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether a job whose attempt number `attempt` just failed goes to the dead letters.
    pub fn gives_up(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// How long to wait after attempt number `attempt` (from 1) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let step = self
            .base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Checks the settings, naming the bad one.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.max_attempts == 0 {
            return Err((
                "retry.max_attempts",
                "0".into(),
                "at least 1 (1 means a failed job goes straight to the dead letters)",
            ));
        }
        if self.base > self.max {
            return Err((
                "retry.base",
                humantime::format_duration(self.base).to_string(),
                "no longer than retry.max",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_the_cap_and_keeps_at_least_half() {
        let retry = Retry::new(10)
            .base(Duration::from_millis(100))
            .max(Duration::from_secs(1));
        for (attempt, step) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = retry.delay(attempt).as_millis() as u64;
                assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d}ms");
            }
        }
    }
}
