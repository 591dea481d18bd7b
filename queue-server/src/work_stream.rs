//! The streaming form of lease and complete (`Work`): one long-lived stream
//! per worker instead of a call per batch.
//!
//! The worker grants credit and hands in completions; the server leases up to
//! the open credit as items become available and pushes them, and answers
//! each completion once it is durable. Completions run beside the lease, so
//! a worker waiting for a sync still gets new items.
//!
//! Leasing is the engine's long-polling lease, dropped and made again whenever
//! a message comes in: it is cancel-safe, as it takes items only in the poll
//! that returns them.

use crate::engine::Engine;
use crate::grpc::{leased_pb, status};
use crate::names::{LeaseToken, QueueName};
use futures::stream::{FuturesUnordered, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use workq_proto::v1 as pb;

/// What the server sends on a `Work` stream.
pub type Outbound = mpsc::Sender<Result<pb::WorkResponse, Status>>;

/// Serves one `Work` stream until the queue is drained or deleted, the server
/// stops, or the worker goes away.
pub async fn serve(
    engine: Engine,
    name: QueueName,
    lease: Option<Duration>,
    first: pb::WorkRequest,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Outbound,
) {
    let max_batch = engine.limits().max_batch as u64;
    // A floor: a zero limit would make every lease answer at once and spin.
    let max_wait = engine.limits().max_wait.max(Duration::from_secs(1));
    let mut credit: u64 = 0;
    let mut completions = FuturesUnordered::new();
    // Set once the worker half-closed, the queue drained or the server is
    // stopping: nothing more is read or leased; answered completions end it.
    let mut ending = false;
    // Sent last, after the answers to completions in flight.
    let mut last_word: Option<Status> = None;
    let take = |req: pb::WorkRequest, credit: &mut u64| {
        *credit = credit.saturating_add(u64::from(req.credit));
        (!req.complete_tokens.is_empty()).then(|| complete(&engine, &name, req))
    };
    if let Some(c) = take(first, &mut credit) {
        completions.push(c);
    }
    let stopping = engine.stopping();
    tokio::pin!(stopping);
    loop {
        if ending && completions.is_empty() {
            if let Some(s) = last_word {
                let _ = tx.send(Err(s)).await;
            }
            return;
        }
        let want = usize::try_from(credit.min(max_batch)).unwrap_or(1);
        tokio::select! {
            biased;
            Some(done) = completions.next(), if !completions.is_empty() => {
                let msg = pb::WorkResponse { completed: Some(done), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            msg = inbound.message(), if !ending => match msg {
                Ok(Some(req)) => {
                    if let Some(c) = take(req, &mut credit) {
                        completions.push(c);
                    }
                }
                Ok(None) => ending = true,
                // A message that could not be read (too large, malformed):
                // the stream ends with why, after the answers in flight.
                Err(s) => {
                    last_word = Some(s);
                    ending = true;
                }
            },
            out = engine.lease(&name, want, lease, max_wait), if want > 0 && !ending => match out {
                Ok(out) => {
                    credit -= out.items.len() as u64;
                    if !out.items.is_empty() || out.drained {
                        let msg = pb::WorkResponse {
                            items: out.items.into_iter().map(leased_pb).collect(),
                            drained: out.drained,
                            completed: None,
                        };
                        if let Err(mpsc::error::SendError(unsent)) = tx.send(Ok(msg)).await {
                            // The worker is gone before it saw them: give
                            // them back at once, counting no attempt.
                            let tokens: Vec<LeaseToken> = unsent
                                .iter()
                                .flat_map(|m| &m.items)
                                .filter_map(|i| i.lease_token.parse().ok())
                                .collect();
                            let _ = engine.release(&name, &tokens).await;
                            return;
                        }
                    }
                    if out.drained {
                        ending = true;
                    }
                }
                Err(e) => {
                    last_word = Some(status(e));
                    ending = true;
                }
            },
            () = &mut stopping, if !ending => {
                last_word = Some(Status::unavailable("the server is stopping"));
                ending = true;
            }
            () = tx.closed() => return,
        }
    }
}

/// Completes the tokens of `req`, answering with its `ref`.
fn complete(
    engine: &Engine,
    name: &QueueName,
    req: pb::WorkRequest,
) -> impl std::future::Future<Output = pb::CompletionResult> + use<> {
    let (engine, name) = (engine.clone(), name.clone());
    async move {
        let result = match req
            .complete_tokens
            .iter()
            .map(|t| t.parse::<LeaseToken>())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(tokens) => engine.complete(&name, &tokens).await.map_err(status),
            Err(e) => Err(Status::invalid_argument(e.0)),
        };
        match result {
            Ok(()) => pb::CompletionResult {
                r#ref: req.r#ref,
                code: 0,
                message: String::new(),
            },
            Err(s) => pb::CompletionResult {
                r#ref: req.r#ref,
                code: s.code() as i32,
                message: s.message().to_owned(),
            },
        }
    }
}
