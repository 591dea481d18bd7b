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

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::client::Queue;
use crate::error::Result;
use crate::retry::Backoff;
use crate::types::LeaseToken;

/// Most tokens in one Complete call (the queue service's batch limit).
const MAX_BATCH: usize = 1000;

/// How long transient errors are retried before an item's completion gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

type Request = (LeaseToken, oneshot::Sender<Result<()>>);

/// A handle on the completion task; cloning is cheap. The task ends when every
/// handle is dropped.
#[derive(Clone)]
pub(crate) struct Acker {
    tx: mpsc::UnboundedSender<Request>,
}

impl Acker {
    /// Starts the completion task for `queue`.
    pub(crate) fn start(queue: Queue) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, rx));
        Acker { tx }
    }

    /// Completes the item leased with `token`; answers once the server has.
    pub(crate) async fn complete(&self, queue: &Queue, token: LeaseToken) -> Result<()> {
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
    let give_up = Instant::now() + GIVE_UP_AFTER;
    let mut backoff = Backoff::for_server();
    loop {
        match queue.complete(tokens).await {
            Err(e) if e.is_transient() && Instant::now() < give_up => {
                tracing::warn!(queue = %queue.name(), error = %e, "completion failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::types::LeaseOptions;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_token_fails_only_its_own_completion() {
        let server = queue_server::start(queue_server::ServerConfig::memory())
            .await
            .expect("server");
        let url = format!("grpc://{}", server.grpc_addr());
        let q = crate::connect(&url)
            .await
            .expect("connect")
            .queue("acker")
            .expect("name");
        q.push(["a", "b", "c"]).await.expect("push");
        let leased = q
            .lease(&LeaseOptions {
                max_items: 3,
                lease: Some(Duration::from_secs(30)),
                wait: Duration::ZERO,
            })
            .await
            .expect("lease");
        let tokens: Vec<LeaseToken> = leased.items.iter().map(|i| i.token.clone()).collect();
        assert_eq!(tokens.len(), 3);
        q.release(&tokens[1..2]).await.expect("release b");

        let acker = Acker::start(q.clone());
        let results = futures::future::join_all(
            tokens
                .iter()
                .map(|t| acker.complete(&q, t.clone()))
                .collect::<Vec<_>>(),
        )
        .await;
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(Error::LeaseLost { .. })),
            "{results:?}"
        );
        let s = q.stats().await.expect("stats");
        assert_eq!((s.completed, s.pending), (2, 1));
        server.shutdown().await.expect("stops");
    }
}
