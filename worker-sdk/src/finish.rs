//! Retrying a finish (complete, fail, release) without reporting a committed
//! one as lost.
//!
//! Finishing is idempotent on the queue service: a retry with the token that
//! already did it answers OK ("already done") while the server remembers the
//! token. After a server restart it no longer does, and a retry of a finish
//! that had committed is refused; the refusal's reason then says what became
//! of the item. On a retry (never on the first try) a refusal whose reason
//! shows that the finish happened is therefore a success:
//!
//! | finish | reason on a retry | taken as |
//! |---|---|---|
//! | complete | `ITEM_COMPLETED` | completed |
//! | fatal fail | `ITEM_DEAD` | dead |
//! | retriable fail | `LEASE_EXPIRED`, `LEASE_TAKEN` (back in the queue), `ITEM_DEAD` (attempts ran out) | failed |
//! | release | `LEASE_EXPIRED`, `LEASE_TAKEN` (back in the queue) | released |
//!
//! On the first try every refusal is what it says.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, LeaseLostReason, Result};
use crate::retry::Backoff;

/// Which finish is being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishKind {
    /// Complete.
    Complete,
    /// Fail, to be retried (or dead once attempts run out).
    FailRetry,
    /// Fail fatally (dead at once).
    FailFatal,
    /// Release.
    Release,
}

impl FinishKind {
    /// Whether `e`, answering a *retry* of this finish, shows that an earlier
    /// try did it. `Some(dead)` when it does (`dead`: the item is dead).
    pub(crate) fn done_anyway(self, e: &Error) -> Option<bool> {
        use LeaseLostReason::{Expired, ItemCompleted, ItemDead, Taken};
        let reason = e.lease_lost_reason()?;
        match (self, reason) {
            (FinishKind::Complete, ItemCompleted) => Some(false),
            (FinishKind::FailFatal, ItemDead) => Some(true),
            (FinishKind::FailRetry, ItemDead) => Some(true),
            (FinishKind::FailRetry | FinishKind::Release, Expired | Taken) => Some(false),
            _ => None,
        }
    }
}

/// What a finish came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finished<T> {
    /// The call answered.
    Answered(T),
    /// A retry was refused with a reason that shows an earlier try did it;
    /// `dead`: the item is dead.
    Anyway {
        /// The item is dead.
        dead: bool,
    },
}

/// Runs the finishing `call`, retrying transient errors (a lost answer:
/// DEADLINE_EXCEEDED, UNAVAILABLE) with back-off until `deadline`. A refusal
/// of a retry that shows the finish happened ([`FinishKind::done_anyway`]) is
/// a success, logged at debug level.
pub(crate) async fn finish_retrying<T, F, Fut>(
    kind: FinishKind,
    what: &str,
    deadline: Instant,
    mut call: F,
) -> Result<Finished<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::for_server();
    let mut retried = false;
    loop {
        match call().await {
            Ok(v) => return Ok(Finished::Answered(v)),
            Err(e) => {
                if retried && let Some(dead) = kind.done_anyway(&e) {
                    tracing::debug!(
                        what,
                        ?kind,
                        error = %e,
                        "a retried finish was refused, but the reason shows an earlier try did it"
                    );
                    return Ok(Finished::Anyway { dead });
                }
                if !e.is_transient() {
                    return Err(e);
                }
                let delay = retry_delay(&mut backoff, &e);
                if Instant::now() + delay > deadline {
                    return Err(e);
                }
                tracing::warn!(what, error = %e, ?delay, "finishing failed; retrying");
                tokio::time::sleep(delay).await;
                retried = true;
            }
        }
    }
}

/// The next wait: the back-off's, at least what the server asked for.
pub(crate) fn retry_delay(backoff: &mut Backoff, e: &Error) -> Duration {
    backoff
        .next_delay()
        .max(e.retry_after().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(reason: LeaseLostReason) -> Error {
        Error::LeaseLost {
            queue: "q".into(),
            reason,
            item: None,
            message: "x".into(),
        }
    }

    #[test]
    fn which_refusals_show_a_finish_happened() {
        use LeaseLostReason::*;
        let k = FinishKind::Complete;
        assert_eq!(k.done_anyway(&lost(ItemCompleted)), Some(false));
        assert_eq!(k.done_anyway(&lost(Expired)), None);
        assert_eq!(k.done_anyway(&lost(Taken)), None);
        assert_eq!(k.done_anyway(&lost(ItemDead)), None);
        assert_eq!(k.done_anyway(&lost(Finished)), None);
        let k = FinishKind::FailFatal;
        assert_eq!(k.done_anyway(&lost(ItemDead)), Some(true));
        assert_eq!(k.done_anyway(&lost(Expired)), None);
        let k = FinishKind::FailRetry;
        assert_eq!(k.done_anyway(&lost(Expired)), Some(false));
        assert_eq!(k.done_anyway(&lost(ItemDead)), Some(true));
        assert_eq!(k.done_anyway(&lost(ItemCompleted)), None);
        let k = FinishKind::Release;
        assert_eq!(k.done_anyway(&lost(Taken)), Some(false));
        assert_eq!(k.done_anyway(&lost(ItemCompleted)), None);
        assert_eq!(
            k.done_anyway(&Error::QueueNotFound { queue: "q".into() }),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_retry_takes_a_refusal_as_done() {
        let deadline = Instant::now() + Duration::from_secs(30);
        // First try refused: what it says.
        let r: Result<Finished<()>> =
            finish_retrying(FinishKind::Complete, "t", deadline, || async {
                Err(lost(LeaseLostReason::ItemCompleted))
            })
            .await;
        assert!(matches!(r, Err(Error::LeaseLost { .. })), "{r:?}");
        // First try's answer lost, the retry refused with ITEM_COMPLETED: done.
        let mut tries = 0;
        let r = finish_retrying(FinishKind::Complete, "t", deadline, || {
            tries += 1;
            let first = tries == 1;
            async move {
                if first {
                    Err::<(), _>(Error::Unavailable {
                        code: tonic::Code::Unavailable,
                        message: "answer lost".into(),
                        retry_after: None,
                    })
                } else {
                    Err(lost(LeaseLostReason::ItemCompleted))
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(Finished::Anyway { dead: false }));
        assert_eq!(tries, 2);
    }
}
