//! The streaming form of lease and complete (`Work`): one long-lived stream
//! per worker instead of a call per batch.
//!
//! The worker grants credit and hands in completions and renewals; the
//! server leases up to the open credit (and the byte budget) as items become
//! available and pushes them, and answers each request's completions and
//! renewals once durable, in a [`pb::WorkAnswer`] with its `sequence`.
//! Completions run beside the lease, so a worker waiting for a sync still
//! gets new items.
//!
//! Leasing is the engine's long-polling lease, dropped and made again whenever
//! a message comes in: it is cancel-safe, as it takes items only in the poll
//! that returns them.
//!
//! # Guarantees
//! - The stream owns its items: when it ends, every item leased to it and
//!   not completed (completions over unary calls are honoured: only leases
//!   still live count) goes back to the queue at once. How depends on how it
//!   ended ([`End`]): on a *clean* end — the worker half-closed its side (it
//!   hands back, by then, what it did not start), or the server ended the
//!   stream (the queue drained or deleted, the server stopping, the grant
//!   withdrawn) — they are released, counting no attempt. On an *abnormal*
//!   end — the worker's side failed before it half-closed (connection lost
//!   or reset, the process killed, a message that could not be read) or it
//!   stopped reading — they were in the worker's hands: each counts an
//!   attempt, as an expired lease does ([`WORKER_LOST`]; dead once attempts
//!   are exhausted, else back at once), so an item that kills its worker
//!   goes dead instead of coming back forever.
//! - Open credit (granted, not yet used) is at most
//!   [`Limits::max_work_credit`](crate::settings::Limits::max_work_credit).
//!   A grant beyond it is clamped, and the answer says so: the answer to
//!   that request's `sequence` carries the note in its problem's `message`
//!   (code OK when there was nothing to complete; otherwise the
//!   completion's own code).
//! - Each push holds at most [`Limits::answer_budget`](crate::settings::Limits::answer_budget)
//!   bytes of items.
//! - With `max_outstanding_bytes`, the bytes of the items pushed and not yet
//!   finished ([`crate::queue::Leased::answer_bytes`] summed) stay within it,
//!   but for the first item when nothing is outstanding. Items finished over
//!   unary calls or expired are noticed within [`RECHECK`] while the budget
//!   holds the stream back.
//! - Completions and renewals of one request: all or nothing each (the
//!   renewals are not tried when the completions are refused), or token by
//!   token with `per_token_results`. The answer's `results` hold, with
//!   `per_token_results`, one per completed token then one per renewed
//!   token; without it, one per renewed token (their new deadlines).
//! - With authentication on, the caller's `consume` grant on the queue is
//!   looked up again whenever the grants file is reloaded; once withdrawn,
//!   the stream leases nothing more and ends with PERMISSION_DENIED (after
//!   the answers in flight), releasing what it held.

use crate::backend::Backend as Engine;
use crate::engine::LeaseOutcome;
use crate::grpc::{leased_pb, parse_tokens, rejection, token_result_pb};
use crate::names::{LeaseToken, QueueName};
use crate::queue::{Batch, TokenResult};
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;

/// How often a stream held back by its byte budget looks for items of its
/// finished over unary calls or expired.
pub const RECHECK: Duration = Duration::from_millis(500);

/// What the server sends on a `Work` stream.
pub type Outbound = mpsc::Sender<Result<pb::WorkResponse, Status>>;

/// What a stream holds: each item pushed and not finished, with its bytes.
/// (The Fx hash, not SipHash: its keys are tokens this server minted, so a
/// client cannot choose them to collide, and SipHash of every token pushed
/// and finished was 2 % of the server's CPU.)
type Held = rustc_hash::FxHashMap<LeaseToken, usize>;

/// The failure reason of items held by a stream that ended abnormally.
pub const WORKER_LOST: &str = "worker lost: its Work stream ended abnormally with the item in hand";

/// How a stream ended, which decides what becomes of the items it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The worker half-closed, or the server ended the stream: released,
    /// no attempt counted.
    Clean,
    /// The worker's side failed before it half-closed, or it stopped
    /// reading: each item held counts an attempt.
    Abnormal,
}

/// Serves one `Work` stream until the queue is drained or deleted, the server
/// stops, or the worker goes away; then gives back what the worker still
/// held: released on a clean end, failed ([`WORKER_LOST`]) on an abnormal one.
pub async fn serve(
    engine: Engine,
    name: QueueName,
    lease: Option<Duration>,
    first: pb::WorkRequest,
    inbound: Streaming<pb::WorkRequest>,
    tx: Outbound,
    grant: Option<crate::auth::Recheck>,
) {
    let mut held = Held::default();
    let end = run(&engine, &name, lease, first, inbound, tx, &mut held, grant).await;
    let held: Vec<LeaseToken> = held.into_keys().collect();
    for chunk in held.chunks(engine.limits().max_batch.max(1)) {
        let given_back = match end {
            End::Clean => engine.release_held(&name, chunk).await.map(drop),
            // Token by token: leases ended meanwhile are refused, the others
            // fail; back at once, as after a lease's expiry.
            End::Abnormal => engine
                .fail_as(
                    &name,
                    chunk,
                    false,
                    WORKER_LOST,
                    Some(Duration::ZERO),
                    Batch::EachToken,
                )
                .await
                .map(drop),
        };
        match given_back {
            Ok(()) | Err(crate::Error::QueueNotFound(_)) => {}
            Err(e) => tracing::warn!(
                "queue {name}: a Work stream ended ({end:?}); giving back its {} item(s) failed: {e}",
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

/// The byte budget of the next lease: (bytes, whether the first item is
/// free); `None` when the stream holds its budget's worth.
fn room(max_outstanding: usize, outstanding: usize) -> Option<(usize, bool)> {
    match (max_outstanding, outstanding) {
        (0, _) => Some((0, true)),
        (m, 0) => Some((m, true)),
        (m, o) if o < m => Some((m - o, false)),
        _ => None,
    }
}

#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
async fn run(
    engine: &Engine,
    name: &QueueName,
    lease: Option<Duration>,
    first: pb::WorkRequest,
    mut inbound: Streaming<pb::WorkRequest>,
    tx: Outbound,
    held: &mut Held,
    mut grant: Option<crate::auth::Recheck>,
) -> End {
    let max_batch = engine.limits().max_batch as u64;
    let max_credit = engine.limits().max_work_credit.max(1);
    // A floor: a zero limit would make every lease answer at once and spin.
    let max_wait = engine.limits().max_wait.max(Duration::from_secs(1));
    let max_outstanding = usize::try_from(first.max_outstanding_bytes.max(0)).unwrap_or(usize::MAX);
    let mut credit: u64 = 0;
    let mut outstanding: usize = 0;
    // Set when a lease stopped at an item that did not fit the room left;
    // cleared when room is made.
    let mut blocked = false;
    // When `held` outgrows this, leases ended over unary calls are dropped
    // from it, so that it stays about as large as what the worker holds.
    let mut prune_at = 2 * max_credit as usize + 1024;
    let mut answers = FuturesUnordered::new();
    // Set once the worker half-closed, the queue drained or the server is
    // stopping: nothing more is read or leased; answered requests end it.
    let mut ending = false;
    // Clean once the worker half-closed or the server chose to end; a stream
    // that stops otherwise ended abnormally.
    let mut end = End::Abnormal;
    // Sent last, after the answers to requests in flight.
    let mut last_word: Option<Status> = None;
    let take = |req: pb::WorkRequest, credit: &mut u64| {
        let wanted = credit.saturating_add(u64::try_from(req.credit).unwrap_or(0));
        *credit = wanted.min(max_credit);
        let note = (wanted > max_credit).then(|| clamped_note(req.credit, *credit, max_credit));
        (!req.complete_tokens.is_empty() || !req.renew_tokens.is_empty() || note.is_some())
            .then(|| answer(engine, name, lease, req, note))
    };
    if let Some(a) = take(first, &mut credit) {
        answers.push(a);
    }
    let stopping = engine.stopping();
    tokio::pin!(stopping);
    let recheck = tokio::time::sleep(RECHECK);
    tokio::pin!(recheck);
    // The lease in progress, kept across turns of the loop: on a durable
    // store a lease waits for the store after taking its items, so dropping
    // it when another branch is ready would strand them until they expire.
    let mut leasing: Option<Pin<Box<dyn Future<Output = LeaseResult> + Send>>> = None;
    loop {
        if ending && answers.is_empty() {
            if let Some(s) = last_word {
                let _ = tx.send(Err(s)).await;
            }
            return end;
        }
        let want = usize::try_from(credit.min(max_batch)).unwrap_or(1);
        let room_left = room(max_outstanding, outstanding);
        if leasing.is_none()
            && want > 0
            && !ending
            && !blocked
            && let Some((bytes, first_free)) = room_left
        {
            let (engine, name) = (engine.clone(), name.clone());
            leasing = Some(Box::pin(async move {
                engine
                    .lease_within(&name, want, bytes, first_free, lease, max_wait)
                    .await
            }));
        }
        // Held back by the budget: look for items finished elsewhere.
        let held_back = leasing.is_none() && want > 0 && (blocked || room_left.is_none());
        tokio::select! {
            biased;
            Some((done, result)) = answers.next(), if !answers.is_empty() => {
                for t in &done {
                    if let Some(bytes) = held.remove(t) {
                        outstanding -= bytes;
                        blocked = false;
                    }
                }
                let msg = pb::WorkResponse { answer: Some(result), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    return end;
                }
            }
            msg = inbound.message(), if !ending => match msg {
                Ok(Some(req)) => {
                    if let Some(a) = take(req, &mut credit) {
                        answers.push(a);
                    }
                }
                Ok(None) => {
                    end = End::Clean;
                    ending = true;
                }
                // A message that could not be read (too large, malformed),
                // or the worker's side broken (reset, connection lost): the
                // stream ends with why, after the answers in flight.
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
                    // Held back only when nothing fitted the room left (a
                    // push cut short by the message budget is not).
                    blocked = out.over_budget && out.items.is_empty();
                    for i in &out.items {
                        let bytes = if max_outstanding == 0 { 0 } else { i.answer_bytes() };
                        held.insert(i.token, bytes);
                        outstanding += bytes;
                    }
                    if held.len() > prune_at {
                        forget_ended(engine, name, held, &mut outstanding).await;
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
                            return end;
                        }
                    }
                    if out.drained {
                        end = End::Clean;
                        ending = true;
                    }
                }
                Err(e) => {
                    last_word = Some(rejection(&e).to_status());
                    end = End::Clean;
                    ending = true;
                }
            }},
            () = &mut recheck, if held_back => {
                let before = outstanding;
                forget_ended(engine, name, held, &mut outstanding).await;
                if outstanding < before {
                    blocked = false;
                }
                recheck.as_mut().reset(tokio::time::Instant::now() + RECHECK);
            }
            () = &mut stopping, if !ending => {
                last_word = Some(crate::grpc::rejection(&crate::Error::ShuttingDown).to_status());
                end = End::Clean;
                ending = true;
            }
            refused = async {
                match grant.as_mut() {
                    Some(r) => r.withdrawn(crate::auth::Verb::Consume, name.as_str()).await,
                    None => std::future::pending().await,
                }
            }, if !ending => {
                // The grant is gone: no lease more (one waiting on the
                // store gives its items back when dropped).
                leasing = None;
                last_word = Some(refused);
                end = End::Clean;
                ending = true;
            }
            () = tx.closed() => return end,
        }
        if !held_back {
            recheck
                .as_mut()
                .reset(tokio::time::Instant::now() + RECHECK);
        }
    }
}

/// Drops from `held` the leases that ended over unary calls or expired.
async fn forget_ended(engine: &Engine, name: &QueueName, held: &mut Held, outstanding: &mut usize) {
    engine.retain_live_map(name, held).await;
    *outstanding = held.values().sum();
}

/// What a lease in progress yields.
type LeaseResult = crate::error::Result<LeaseOutcome>;

/// Completes, then renews, the tokens of `req`, answering with its
/// `sequence` and `note` (a clamped grant) in the problem's message; yields
/// the tokens that completed (now or before).
fn answer(
    engine: &Engine,
    name: &QueueName,
    lease: Option<Duration>,
    req: pb::WorkRequest,
    note: Option<String>,
) -> impl Future<Output = (Vec<LeaseToken>, pb::WorkAnswer)> + use<> {
    let (engine, name) = (engine.clone(), name.clone());
    async move {
        let per_token = req.per_token_results;
        let batch = if per_token {
            Batch::EachToken
        } else {
            Batch::AllOrNothing
        };
        let mut refused: Option<Rejection> = None;
        let mut completed: Vec<TokenResult> = Vec::new();
        let mut renewed: Vec<TokenResult> = Vec::new();
        match parse_tokens("complete_tokens", &req.complete_tokens) {
            Ok(tokens) if tokens.is_empty() => {}
            Ok(tokens) => match engine.complete_as(&name, &tokens, batch).await {
                Ok(r) => completed = r,
                Err(e) => refused = Some(rejection(&e)),
            },
            Err(r) => refused = Some(*r),
        }
        if refused.is_none() {
            match parse_tokens("renew_tokens", &req.renew_tokens) {
                Ok(tokens) if tokens.is_empty() => {}
                Ok(tokens) => match engine.renew_as(&name, &tokens, lease, batch).await {
                    Ok(r) => renewed = r,
                    Err(e) => refused = Some(rejection(&e)),
                },
                Err(r) => refused = Some(*r),
            }
        }
        let problem = match (refused, note) {
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
        let finished = completed
            .iter()
            .filter(|r| r.done() || r.already_done())
            .map(|r| r.token)
            .collect();
        let results = if per_token {
            completed
                .iter()
                .chain(&renewed)
                .map(token_result_pb)
                .collect()
        } else {
            renewed.iter().map(token_result_pb).collect()
        };
        let answer = pb::WorkAnswer {
            sequence: req.sequence,
            problem,
            results,
        };
        (finished, answer)
    }
}
