//! Batched completions for the worker loop.
//!
//! Item tasks hand their lease tokens to one [`Acker`] task, which sends
//! whatever has gathered as one Complete call while the previous call is in
//! flight — group commit on the client side, so a busy worker sends one call
//! for many items and an idle one answers each item at once.
//!
//! Each call asks for per-token results ([`Queue::complete_each`]), so one
//! stale token does not refuse its neighbours and each item learns its own
//! fate from the one call. A call whose answer was lost (a transient error) is
//! sent again as a whole: completing is idempotent, so the tokens it had
//! completed answer "already done", and on such a retry a token refused
//! because its item is completed (`ITEM_COMPLETED`, after a server restart) is
//! reported completed, not lost.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::client::Queue;
use crate::error::{Error, Result};
use crate::finish::{FinishKind, retry_delay};
use crate::retry::Backoff;
use crate::types::LeaseToken;

/// Most tokens in one Complete call (the queue service's batch limit).
const MAX_BATCH: usize = 1000;

/// How long transient errors are retried before an item's completion gives up:
/// the default lease, as long as a lease would last anyway.
const GIVE_UP_AFTER: Duration = workq_proto::defaults::LEASE;

type Request = (LeaseToken, oneshot::Sender<Result<()>>);

/// A handle on the completion task; cloning is cheap. The task ends when every
/// handle is dropped.
///
/// The worker loop uses one when it runs several items at once; a program that
/// completes many items from many tasks (the bench) can too.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Request>,
}

impl Acker {
    /// Starts the completion task for `queue`.
    pub fn start(queue: Queue) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, rx));
        Acker { tx }
    }

    /// Completes the item leased with `token`; answers once the server has.
    pub async fn complete(&self, queue: &Queue, token: LeaseToken) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((token.clone(), reply)).is_err() {
            // The task is gone (the runtime is stopping): complete directly.
            return complete_one(queue, token).await;
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => complete_one(queue, token).await,
        }
    }
}

async fn run(queue: Queue, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let tokens: Vec<LeaseToken> = batch.iter().map(|(t, _)| t.clone()).collect();
        match complete_retrying(&queue, &tokens).await {
            Ok(each) => {
                for ((_, reply), result) in batch.into_iter().zip(each) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.replicate()));
                }
            }
        }
    }
}

/// One per-token Complete call, sent again as a whole on a transient error
/// for a while. On a retry, a token refused because its item is completed
/// counts as completed (see the module docs).
async fn complete_retrying(queue: &Queue, tokens: &[LeaseToken]) -> Result<Vec<Result<()>>> {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut backoff = Backoff::for_server();
    let mut retried = false;
    loop {
        match queue.complete_each(tokens).await {
            Ok(each) if each.len() == tokens.len() => {
                if !retried {
                    return Ok(each);
                }
                return Ok(each
                    .into_iter()
                    .map(|r| match r {
                        Err(e) if FinishKind::Complete.done_anyway(&e).is_some() => {
                            tracing::debug!(queue = %queue.name(), error = %e, "a retried completion was refused: the item is completed (an earlier try did it)");
                            Ok(())
                        }
                        r => r,
                    })
                    .collect());
            }
            Ok(each) => {
                return Err(Error::Protocol(format!(
                    "completing {} tokens answered {} results",
                    tokens.len(),
                    each.len()
                )));
            }
            // A server refusing the call as a whole for its one token.
            Err(e)
                if retried
                    && tokens.len() == 1
                    && FinishKind::Complete.done_anyway(&e).is_some() =>
            {
                tracing::debug!(queue = %queue.name(), error = %e, "a retried completion was refused: the item is completed (an earlier try did it)");
                return Ok(vec![Ok(())]);
            }
            Err(e) if e.is_transient() => {
                let delay = retry_delay(&mut backoff, &e);
                if Instant::now() + delay > deadline {
                    return Err(e);
                }
                tracing::warn!(queue = %queue.name(), error = %e, ?delay, "completion failed; retrying");
                tokio::time::sleep(delay).await;
                retried = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// [`complete_retrying`] of one token.
async fn complete_one(queue: &Queue, token: LeaseToken) -> Result<()> {
    complete_retrying(queue, std::slice::from_ref(&token))
        .await?
        .pop()
        .unwrap_or_else(|| Err(Error::Protocol("completion answered no result".into())))
}

#[cfg(test)]
mod tests;
