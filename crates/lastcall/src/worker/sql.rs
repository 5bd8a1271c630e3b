//! What the SQLite and PostgreSQL adapters share: the receipt and the lease arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The proof of a claim on a SQL queue: the row and the token of the claim holding its lease.
/// An ack, renewal or release matches both, so a worker whose lease expired and was claimed
/// again cannot settle someone else's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlReceipt {
    pub(crate) id: i64,
    pub(crate) token: i64,
}

impl SqlReceipt {
    /// The job's row id.
    pub fn id(&self) -> i64 {
        self.id
    }
}

/// A fresh lease token.
pub(crate) fn token() -> i64 {
    fastrand::i64(..)
}

/// Milliseconds in a duration, saturating.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Wall-clock unix milliseconds: SQLite rows are shared by processes, so their times must
/// come from a clock they share.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}
