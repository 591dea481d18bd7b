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
//!
//! # Guarantees
//! - The stream owns its items: when it ends, for any reason (the worker
//!   half-closed or vanished, the queue drained or deleted, the server
//!   stopping), every item leased to it and not completed is released at
//!   once, counting no attempt (completions over unary calls are honoured:
//!   only leases still live are released).
//! - Open credit (granted, not yet used) is at most
//!   [`Limits::max_work_credit`](crate::settings::Limits::max_work_credit).
//!   A grant beyond it is clamped, and the answer says so: the answer to
//!   that request's `sequence` carries the note in its problem's `message`
//!   (code OK when there was nothing to complete; otherwise the
//!   completion's own code).
//! - Each push holds at most [`Limits::answer_budget`](crate::settings::Limits::answer_budget)
//!   bytes of items.

use crate::engine::{Engine, LeaseOutcome};
use crate::grpc::{leased_pb, rejection};
use crate::names::{LeaseToken, QueueName};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;

/// What the server sends on a `Work` stream.
pub type Outbound = mpsc::Sender<Result<pb::WorkResponse, Status>>;

/// Serves one `Work` stream until the queue is drained or deleted, the server
/// stops, or the worker goes away; then releases what the worker still held.
pub async fn serve(
    engine: Engine,
    name: QueueName,
    lease: Option<Duration>,
    first: pb::WorkRequest,
    inbound: Streaming<pb::WorkRequest>,
    tx: Outbound,
) {
    let mut held = HashSet::new();
    run(&engine, &name, lease, first, inbound, tx, &mut held).await;
    let held: Vec<LeaseToken> = held.into_iter().collect();
    for chunk in held.chunks(engine.limits().max_batch.max(1)) {
        match engine.release_held(&name, chunk).await {
            Ok(_) | Err(crate::Error::QueueNotFound(_)) => {}
            Err(e) => tracing::warn!(
                "queue {name}: a Work stream ended; releasing its {} item(s) failed: {e}",
                chunk.len()
            ),
        }
    }
}

/// The note an answer carries when a grant was clamped.
fn clamped_note(granted: i32, open: u64, max: u64) -> String {
    format!(
        "credit clamped: a grant of {granted} would leave more than {max} open \
         (queue-server --max-work-credit); {open} open now, grant more as items arrive"
    )
}

async fn run(
    engine: &Engine,
    name: &QueueName,
    lease: Option<Duration>,
    first: pb::WorkRequest,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Outbound,
    held: &mut HashSet<LeaseToken>,
) {
    let max_batch = engine.limits().max_batch as u64;
    let max_credit = engine.limits().max_work_credit.max(1);
    // A floor: a zero limit would make every lease answer at once and spin.
    let max_wait = engine.limits().max_wait.max(Duration::from_secs(1));
    let mut credit: u64 = 0;
    // When `held` outgrows this, leases ended over unary calls are dropped
    // from it, so that it stays about as large as what the worker holds.
    let mut prune_at = 2 * max_credit as usize + 1024;
    let mut completions = FuturesUnordered::new();
    // Set once the worker half-closed, the queue drained or the server is
    // stopping: nothing more is read or leased; answered completions end it.
    let mut ending = false;
    // Sent last, after the answers to completions in flight.
    let mut last_word: Option<Status> = None;
    let take = |req: pb::WorkRequest, credit: &mut u64| {
        let wanted = credit.saturating_add(u64::try_from(req.credit).unwrap_or(0));
        *credit = wanted.min(max_credit);
        let note = (wanted > max_credit).then(|| clamped_note(req.credit, *credit, max_credit));
        (!req.complete_tokens.is_empty() || note.is_some())
            .then(|| complete(engine, name, req, note))
    };
    if let Some(c) = take(first, &mut credit) {
        completions.push(c);
    }
    let stopping = engine.stopping();
    tokio::pin!(stopping);
    // The lease in progress, kept across turns of the loop: on a durable
    // store a lease waits for the store after taking its items, so dropping
    // it when another branch is ready would strand them until they expire.
    let mut leasing: Option<Pin<Box<dyn Future<Output = LeaseResult> + Send>>> = None;
    loop {
        if ending && completions.is_empty() {
            if let Some(s) = last_word {
                let _ = tx.send(Err(s)).await;
            }
            return;
        }
        let want = usize::try_from(credit.min(max_batch)).unwrap_or(1);
        if leasing.is_none() && want > 0 && !ending {
            let (engine, name) = (engine.clone(), name.clone());
            leasing = Some(Box::pin(async move {
                engine.lease(&name, want, lease, max_wait).await
            }));
        }
        tokio::select! {
            biased;
            Some((done, result)) = completions.next(), if !completions.is_empty() => {
                for t in &done {
                    held.remove(t);
                }
                let msg = pb::WorkResponse { answer: Some(result), ..Default::default() };
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
            out = async {
                match leasing.as_mut() {
                    Some(l) => l.await,
                    None => std::future::pending().await,
                }
            } => { leasing = None; match out {
                Ok(out) => {
                    credit -= out.items.len() as u64;
                    held.extend(out.items.iter().map(|i| i.token));
                    if held.len() > prune_at {
                        engine.retain_live(name, held);
                        prune_at = 2 * held.len() + 2 * max_credit as usize + 1024;
                    }
                    if !out.items.is_empty() || out.drained {
                        let msg = pb::WorkResponse {
                            items: out.items.into_iter().map(leased_pb).collect(),
                            drained: out.drained,
                            answer: None,
                        };
                        // The worker gone before it saw them: `serve` gives
                        // them back.
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    if out.drained {
                        ending = true;
                    }
                }
                Err(e) => {
                    last_word = Some(rejection(&e).to_status());
                    ending = true;
                }
            }},
            () = &mut stopping, if !ending => {
                last_word = Some(Status::unavailable("the server is stopping"));
                ending = true;
            }
            () = tx.closed() => return,
        }
    }
}

/// What a lease in progress yields.
type LeaseResult = crate::error::Result<LeaseOutcome>;

/// Completes the tokens of `req` (none: nothing to do), answering with its
/// `sequence` and `note` in the problem's message; yields the tokens
/// completed.
fn complete(
    engine: &Engine,
    name: &QueueName,
    req: pb::WorkRequest,
    note: Option<String>,
) -> impl std::future::Future<Output = (Vec<LeaseToken>, pb::WorkAnswer)> + use<> {
    let (engine, name) = (engine.clone(), name.clone());
    async move {
        let result: Result<Vec<LeaseToken>, Rejection> =
            match crate::grpc::parse_tokens("complete_tokens", &req.complete_tokens) {
                Ok(tokens) if tokens.is_empty() => Ok(tokens),
                Ok(tokens) => engine
                    .complete(&name, &tokens)
                    .await
                    .map(|()| tokens)
                    .map_err(|e| rejection(&e)),
                Err(r) => Err(*r),
            };
        let problem = match (result.as_ref().err(), note) {
            (None, None) => None,
            (None, Some(n)) => Some(pb::Problem {
                code: tonic::Code::Ok as i32,
                message: n,
                ..Default::default()
            }),
            (Some(r), note) => {
                let mut p = r.to_problem();
                if let Some(n) = note {
                    p.message = format!("{}; {n}", p.message);
                }
                Some(p)
            }
        };
        let answer = pb::WorkAnswer {
            sequence: req.sequence,
            problem,
            results: Vec::new(),
        };
        (result.unwrap_or_default(), answer)
    }
}
