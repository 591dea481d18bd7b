//! What a handler gets ([`Job`]) and what it answers when it did not succeed
//! ([`WorkError`], with its [`Disposition`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::types::{LeasedItem, QueueName};

/// One item given to a handler.
#[derive(Debug)]
pub struct Job {
    pub(super) item: LeasedItem,
    pub(super) queue: Arc<QueueName>,
    pub(super) shutdown: CancellationToken,
    pub(super) lease_lost: CancellationToken,
}

impl Job {
    /// The item.
    pub fn item(&self) -> &LeasedItem {
        &self.item
    }

    /// The item, by value.
    pub fn into_item(self) -> LeasedItem {
        self.item
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.item.payload
    }

    /// The queue the item came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// Cancelled when the worker is shutting down: finish quickly, or return
    /// [`WorkError::release`] to give the item back.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Cancelled when the lease was lost (it expired, someone else may hold the
    /// item now): the result of this handler will be refused.
    pub fn lease_lost(&self) -> &CancellationToken {
        &self.lease_lost
    }
}

/// What should happen to an item whose handler did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back to the queue after a back-off (the queue's, or this one), or dead once
    /// attempts are exhausted.
    Retry {
        /// Overrides the queue's back-off.
        after: Option<Duration>,
    },
    /// Dead at once: no retry will help.
    Fatal,
    /// Back to the queue at once, no attempt counted (the work was not tried).
    Release,
}

/// A handler's failure: a reason, and what should happen to the item.
///
/// Any `std::error::Error` converts into a retriable `WorkError`, so `?` works in
/// handlers; use [`WorkError::fatal`] for failures no retry will fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkError {
    pub(super) disposition: Disposition,
    pub(super) reason: String,
}

impl WorkError {
    /// Retry later, after the queue's back-off.
    pub fn retry(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Retry { after: None },
            reason: reason.into(),
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        WorkError {
            disposition: Disposition::Retry { after: Some(delay) },
            reason: reason.into(),
        }
    }

    /// Give up: the item goes dead with this reason.
    pub fn fatal(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Fatal,
            reason: reason.into(),
        }
    }

    /// Give the item back untried (no attempt counted), for example on shutdown.
    pub fn release(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Release,
            reason: reason.into(),
        }
    }

    /// What should happen to the item.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for WorkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl<E: std::error::Error> From<E> for WorkError {
    fn from(e: E) -> Self {
        let mut reason = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            reason.push_str(": ");
            reason.push_str(&c.to_string());
            cause = c.source();
        }
        WorkError::retry(reason)
    }
}
