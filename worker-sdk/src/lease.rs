//! [`LeaseHandle`]: a leased item that keeps its lease alive.
//!
//! # Lifecycle
//! A handle renews its item's lease in the background, every third of the lease
//! duration, for as long as it lives. [`complete`](LeaseHandle::complete),
//! [`fail`](LeaseHandle::fail) and [`release`](LeaseHandle::release) take the handle
//! by value, so an item is finished at most once. Dropping a handle without
//! finishing stops the renewal and finishes nothing: the lease runs out on the
//! server and the item is delivered again (an attempt is counted). That is what
//! should happen to work that was interrupted without a word.
//!
//! # Guarantees
//! If the server refuses a renewal because the lease is no longer this worker's
//! (it expired while the worker was paused, and someone else may hold it now),
//! [`LeaseHandle::lost`] is cancelled and renewal stops; finishing the handle then
//! fails with [`Error::LeaseLost`]. Transient errors (a lost connection) are
//! retried with back-off, both by the renewal and by the finishing calls.

use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Queue;
use crate::error::{Error, Result};
use crate::finish::{FinishKind, Finished, finish_retrying};
use crate::retry::Backoff;
use crate::types::{Failure, LeaseToken, LeasedItem};

/// Shortest renewal period, whatever the lease.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(50);

/// A leased item whose lease is renewed in the background. See the
/// [module docs](crate::lease).
#[derive(Debug)]
pub struct LeaseHandle {
    queue: Queue,
    item: LeasedItem,
    lease: Duration,
    lost: CancellationToken,
    renewal: JoinHandle<()>,
}

impl LeaseHandle {
    pub(crate) fn new(queue: Queue, item: LeasedItem, lease: Duration) -> Self {
        let lost = CancellationToken::new();
        let renewal = tokio::spawn(renew_forever(
            queue.clone(),
            item.clone(),
            lease,
            lost.clone(),
        ));
        LeaseHandle {
            queue,
            item,
            lease,
            lost,
            renewal,
        }
    }

    /// The item.
    pub fn item(&self) -> &LeasedItem {
        &self.item
    }

    /// Cancelled when the server refused a renewal: the item is no longer ours.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Completes the item.
    ///
    /// A completion whose answer was lost is retried; if the retry is refused
    /// because the item is completed (the first try did it, and the server
    /// restarted since), that is a success. Likewise a retried fail refused
    /// because the item is dead or back in the queue, and a retried release
    /// refused because the item is back in the queue.
    pub async fn complete(self) -> Result<()> {
        self.finish(FinishKind::Complete, |q, tokens| async move {
            q.complete(&tokens).await
        })
        .await
        .map(|_| ())
    }

    /// Fails the item; answers whether it went dead (fatal, or attempts exhausted).
    pub async fn fail(self, failure: Failure) -> Result<bool> {
        let kind = if failure.fatal {
            FinishKind::FailFatal
        } else {
            FinishKind::FailRetry
        };
        let done = self
            .finish(kind, |q, tokens| {
                let failure = failure.clone();
                async move { q.fail(&tokens, &failure).await }
            })
            .await?;
        Ok(match done {
            Finished::Answered(dead) => dead > 0,
            Finished::Anyway { dead } => dead,
        })
    }

    /// Gives the item back at once, counting no attempt.
    pub async fn release(self) -> Result<()> {
        self.finish(FinishKind::Release, |q, tokens| async move {
            q.release(&tokens).await
        })
        .await
        .map(|_| ())
    }

    /// Runs a finishing call (given the queue and the item's token), retrying
    /// transient errors with back-off for up to the lease duration (at least
    /// the default lease, 30 s) while renewal goes on. Finishing is idempotent,
    /// so a retry is safe; a retry's refusal that shows an earlier try did it
    /// is a success ([`FinishKind::done_anyway`]).
    async fn finish<T, F, Fut>(self, kind: FinishKind, call: F) -> Result<Finished<T>>
    where
        F: Fn(Queue, [LeaseToken; 1]) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let give_up = Instant::now() + self.lease.max(workq_proto::defaults::LEASE);
        let queue = &self.queue;
        let what = format!("item {}", self.item.id);
        let result = finish_retrying(kind, &what, give_up, || {
            call(queue.clone(), [self.item.token.clone()])
        })
        .await;
        self.renewal.abort();
        result
    }
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// Renews `item`'s lease every third of `lease` until aborted or refused.
async fn renew_forever(queue: Queue, item: LeasedItem, lease: Duration, lost: CancellationToken) {
    let every = (lease / 3).max(MIN_RENEW_EVERY);
    let tokens = [item.token.clone()];
    let mut wait = every;
    let mut backoff = Backoff::for_server();
    loop {
        tokio::time::sleep(wait).await;
        match queue.renew(&tokens, Some(lease)).await {
            Ok(_) => {
                wait = every;
                backoff.reset();
            }
            Err(Error::LeaseLost {
                reason, message, ..
            }) => {
                tracing::warn!(queue = %queue.name(), item = %item.id, %reason, %message, "lease lost");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(queue = %queue.name(), item = %item.id, error = %e, "renewal failed; retrying");
                wait = backoff.next_delay().min(every);
            }
        }
    }
}
