//! Batched completions for the worker loop.
//!
//! Item tasks hand their lease tokens to one [`Acker`] task, which sends
//! whatever has gathered as one Complete call while the previous call is in
//! flight — group commit on the client side, so a busy worker sends one call
//! for many items and an idle one answers each item at once.
//!
//! Complete is all-or-nothing: one stale token refuses the whole call. A refused
//! or failed batch is therefore retried one token at a time, so that each item
//! learns its own fate and one lost lease does not fail its neighbours.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::client::Queue;
use crate::error::{Error, Result};
use crate::retry::{Backoff, retry};
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
            return complete_retrying(queue, std::slice::from_ref(&token)).await;
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => complete_retrying(queue, std::slice::from_ref(&token)).await,
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
            Ok(()) => {
                for (_, reply) in batch {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some((_, reply)) = batch.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, n = batch.len(), "batch completion refused; completing one by one");
                for (token, reply) in batch {
                    let result = complete_retrying(&queue, std::slice::from_ref(&token)).await;
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// One Complete call, retrying transient errors with back-off for a while.
async fn complete_retrying(queue: &Queue, tokens: &[LeaseToken]) -> Result<()> {
    retry(
        Backoff::for_server(),
        Instant::now() + GIVE_UP_AFTER,
        || queue.complete(tokens),
        Error::is_transient,
        |e, _| tracing::warn!(queue = %queue.name(), error = %e, "completion failed; retrying"),
    )
    .await
}

#[cfg(test)]
mod tests;
