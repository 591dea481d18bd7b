//! What a handler gets ([`Job`]) and what it answers when it did not succeed
//! ([`WorkError`], with its [`Disposition`]).

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::types::{LeasedItem, QueueName};

/// One item given to a handler.
#[derive(Debug)]
pub struct Job {
    pub(super) item: LeasedItem,
    pub(super) queue: Arc<QueueName>,
    pub(super) shutdown: Arc<CancellationToken>,
    pub(super) lease_lost: Lost,
}

/// How a [`Job`] learns that its lease was lost.
#[derive(Debug)]
pub(super) enum Lost {
    /// The token of a lease handle that renews the item.
    Token(CancellationToken),
    /// The flag of a lease the stream loop renews.
    Flag(Arc<LostFlag>),
}

/// Whether a lease the stream loop holds was lost, shared by the loop and
/// the item's [`Job`]: the cancellation token a handler may wait on is made
/// only when it asks for it (most never do).
#[derive(Debug, Default)]
pub(super) struct LostFlag {
    lost: AtomicBool,
    token: OnceLock<CancellationToken>,
}

impl LostFlag {
    /// The lease is lost: cancels the token, now or when it is made.
    pub(super) fn cancel(&self) {
        self.lost.store(true, Ordering::SeqCst);
        // Pairs with the fence in `token`: one of the two sees the other.
        fence(Ordering::SeqCst);
        if let Some(t) = self.token.get() {
            t.cancel();
        }
    }

    /// Whether the lease was lost.
    pub(super) fn is_cancelled(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn token(&self) -> &CancellationToken {
        let t = self.token.get_or_init(CancellationToken::new);
        fence(Ordering::SeqCst);
        if self.lost.load(Ordering::SeqCst) {
            t.cancel();
        }
        t
    }
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
        match &self.lease_lost {
            Lost::Token(t) => t,
            Lost::Flag(f) => f.token(),
        }
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

#[cfg(test)]
mod tests {
    use super::LostFlag;

    #[test]
    fn a_lost_flag_cancels_its_token_whether_made_before_or_after() {
        let before = LostFlag::default();
        let token = before.token().clone();
        assert!(!token.is_cancelled() && !before.is_cancelled());
        before.cancel();
        assert!(token.is_cancelled() && before.is_cancelled());

        let after = LostFlag::default();
        after.cancel();
        assert!(after.is_cancelled());
        assert!(
            after.token().is_cancelled(),
            "made after the loss: cancelled"
        );
    }
}
