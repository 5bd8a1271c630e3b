//! What the SQLite and PostgreSQL adapters share: the receipt and its lease token.

use super::QueueError;

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

    /// The error for a statement that no longer finds this claim: the lease expired and the
    /// job was claimed again.
    pub(crate) fn lost(&self, queue: &str) -> QueueError {
        QueueError::LeaseLost {
            queue: queue.to_owned(),
            job: self.id.to_string(),
        }
    }

    /// `Ok` when a statement keyed on this claim touched its row (`rows` = 1), else
    /// [`SqlReceipt::lost`].
    pub(crate) fn matched(&self, queue: &str, rows: u64) -> Result<(), QueueError> {
        if rows == 1 {
            Ok(())
        } else {
            Err(self.lost(queue))
        }
    }
}

/// A fresh lease token.
pub(crate) fn token() -> i64 {
    fastrand::i64(..)
}
