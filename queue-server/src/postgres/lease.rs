//! Leasing on PostgreSQL: one statement takes up to `max` pending items in
//! rank order (`FOR UPDATE SKIP LOCKED`, so concurrent leases on any
//! replica never wait for each other or take the same item), cuts them to
//! the byte budget, moves them to LEASED with a new epoch, a fresh random
//! secret and a deadline from the database's clock, updates a counter
//! stripe, and reads the queue's state — in one round trip.
//! `complete_then_lease` is one statement too: the completion's CTEs
//! (`finish.rs`) and the lease's, gated on every token being live (one
//! round trip and one commit instead of two).
//!
//! The queue's id is a scalar subquery (an InitPlan), not a join: so the
//! ready index `(queue_id, rank)` is read in order and the scan stops after
//! `max` rows (with a join the planner read and sorted every pending item).
//!
//! A call that finds nothing parks until a notification for its queue (an
//! enqueue on any replica), its wait ends, or a slow safety poll.

use super::finish::{COMPLETE_CTES, CompleteArgs};
use super::{PgEngine, secrets, token, unavailable};
use crate::engine::LeaseOutcome;
use crate::error::{Error, Result};
use crate::names::{LeaseToken, QueueName};
use crate::queue::Leased;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Taking up to `max` pending items within the byte budget, as CTEs after
/// a `q` CTE (id, default_lease_ms): `picked` (locked, rank order), `took`
/// (those within the budget; the first always when `first_free`) and `upd`
/// (leased: new epoch, secret and deadline). `gate` must hold for anything
/// to be taken; `p` numbers the parameters max, budget, first_free,
/// secrets and lease_ms from `$p`. The window over the picked rows runs
/// only when their sizes together exceed the budget (rare: the common
/// case takes them all).
fn take_ctes(gate: &str, p: usize) -> String {
    let (max, budget, first_free, secrets, lease) = (p, p + 1, p + 2, p + 3, p + 4);
    format!(
        "picked AS MATERIALIZED (SELECT id, rank, size FROM workq_items WHERE {gate} \
    AND queue_id = (SELECT id FROM q) AND state = 'p' ORDER BY rank LIMIT ${max} \
    FOR UPDATE SKIP LOCKED), \
fits AS (SELECT coalesce(sum(size), 0) <= ${budget} AS fit FROM picked), \
sized AS (SELECT id, row_number() OVER w AS n, sum(size) OVER w AS run FROM picked \
    WHERE NOT (SELECT fit FROM fits) WINDOW w AS (ORDER BY rank)), \
took AS (SELECT id, row_number() OVER () AS n FROM picked WHERE (SELECT fit FROM fits) \
    UNION ALL SELECT id, n FROM sized WHERE run <= ${budget} OR (n = 1 AND ${first_free})), \
upd AS (UPDATE workq_items i SET state = 'l', seq = i.seq + 1, \
    secret = (${secrets}::bytea[])[t.n], \
    due_at = workq_ms() + coalesce(${lease}, q.default_lease_ms) FROM took t, q \
    WHERE i.queue_id = q.id AND i.id = t.id \
    RETURNING i.id, i.seq, i.secret, i.payload, i.attrs, i.attempts, i.due_at, i.enqueued_at, \
    i.rank)"
    )
}

/// What the lease statements answer, a row per item taken (or one row of
/// NULLs): the item (columns 0–8), then how many were picked and taken,
/// whether the queue is sealed, and its live items (pending, delayed and
/// leased) after the statement, summed over the counters only when it
/// took nothing (else 1: not empty; `done` are completed by it); then
/// `extra` columns.
fn take_answer(done: &str, extra: &str) -> String {
    format!(
        "SELECT upd.id, upd.seq, upd.secret, upd.payload, upd.attrs, upd.attempts, upd.due_at, \
    upd.enqueued_at, upd.rank, \
    (SELECT count(*) FROM picked), (SELECT count(*) FROM upd), \
    (SELECT sealed FROM q), \
    CASE WHEN EXISTS (SELECT 1 FROM upd) THEN 1::int8 ELSE \
    (SELECT coalesce(sum(pending + delayed + leased), 0)::int8 FROM workq_counters \
        WHERE queue_id = (SELECT id FROM q)) - {done} END{extra} \
FROM (SELECT 1) one LEFT JOIN upd ON true"
    )
}

/// Leasing: `$1` the queue, `$2`–`$6` as [`take_ctes`], `$7` the stripe.
static LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH q AS (SELECT id, sealed, default_lease_ms FROM workq_queues WHERE name = $1), \
{}, \
cnt AS (UPDATE workq_counters SET pending = pending - (SELECT count(*) FROM upd), \
    leased = leased + (SELECT count(*) FROM upd) \
    WHERE queue_id = (SELECT id FROM q) AND stripe = $7 AND EXISTS (SELECT 1 FROM upd)) \
{}",
        take_ctes("true", 2),
        take_answer("0", "")
    )
});

/// Completing a batch of live leases and leasing, in one statement (one
/// round trip, one commit): `$1`–`$6` as [`COMPLETE_CTES`], `$7` the
/// stripe, `$8`–`$12` as [`take_ctes`]. It changes nothing unless every
/// token is live; its answer's last column says whether they were.
static COMPLETE_THEN_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{COMPLETE_CTES}, {}, \
cnt AS (UPDATE workq_counters c SET completed = c.completed + $5, \
    leased = c.leased - $5 + (SELECT count(*) FROM upd), \
    pending = c.pending - (SELECT count(*) FROM upd), \
    bytes = c.bytes - (SELECT coalesce(sum(b), 0) FROM del) \
    FROM ok WHERE ok.all_live AND c.queue_id = (SELECT id FROM q) AND c.stripe = $7) \
{}",
        take_ctes("(SELECT all_live FROM ok)", 8),
        take_answer(
            "$5",
            ", (SELECT all_live FROM ok), (SELECT count(*) FROM del)"
        )
    )
});

/// What one lease statement found.
struct Took {
    items: Vec<Leased>,
    over_budget: bool,
    sealed: bool,
    /// Pending, delayed and leased after it.
    live: i64,
}

/// Counts a parked lease call for as long as it lives.
struct Parked<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PgEngine {
    /// Leases within a byte budget (see [`crate::Engine::lease_within`]).
    pub async fn lease_within(
        &self,
        name: &QueueName,
        max: usize,
        max_bytes: usize,
        first_free: bool,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, &[], max, (max_bytes, first_free), lease, wait)
            .await
    }

    /// Completes `complete`, then leases (see
    /// [`crate::Engine::complete_then_lease`]).
    pub async fn complete_then_lease(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        max_bytes: usize,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, complete, max, (max_bytes, true), lease, wait)
            .await
    }

    async fn lease_inner(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        (max_bytes, first_free): (usize, bool),
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let limits = self.inner.limits;
        limits.check_batch("max_items", "lease max_items", max)?;
        let wait = limits.check_wait(wait)?;
        let budget = match max_bytes {
            0 => limits.answer_budget(),
            n => n.min(limits.answer_budget()),
        };
        // A lease given is checked here; the queue's default (checked when
        // it was set) is read by the lease statement itself.
        let lease_ms = match lease {
            Some(d) => Some(super::ms(limits.check_lease("lease", d)?)),
            None => None,
        };
        if !complete.is_empty() {
            self.tokens_ok("complete", complete)?;
        }
        let mut complete = complete;
        let waker = self.waker(name);
        let until = Instant::now() + wait;
        let mut last_try = wait.is_zero();
        loop {
            let notified = waker.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let took = if complete.is_empty() {
                self.take(name, max, budget, first_free, lease_ms).await?
            } else {
                let tokens = std::mem::take(&mut complete);
                match self
                    .complete_and_take(name, tokens, max, budget, first_free, lease_ms)
                    .await?
                {
                    Some(took) => took,
                    None => {
                        // A token not live (or the queue missing): nothing
                        // changed; the judging path answers, then a lease.
                        self.complete_as(name, tokens, crate::queue::Batch::AllOrNothing)
                            .await?;
                        self.take(name, max, budget, first_free, lease_ms).await?
                    }
                }
            };
            let drained = took.sealed && took.live == 0;
            if !took.items.is_empty()
                || took.over_budget
                || drained
                || last_try
                || self.is_stopping()
            {
                metrics::counter!("workq_items_leased_total").increment(took.items.len() as u64);
                return Ok(LeaseOutcome {
                    items: took.items,
                    drained,
                    empty: took.live == 0,
                    sealed: took.sealed,
                    over_budget: took.over_budget,
                });
            }
            waker.waiting.fetch_add(1, Ordering::Relaxed);
            let _parked = Parked(&waker.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => last_try = true,
                () = tokio::time::sleep(super::SAFETY_POLL) => {}
                () = self.stopping() => {}
            }
        }
    }

    /// One lease statement.
    async fn take(
        &self,
        name: &QueueName,
        max: usize,
        budget: usize,
        first_free: bool,
        lease_ms: Option<i64>,
    ) -> Result<Took> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(LEASE.as_str())
            .await
            .map_err(unavailable)?;
        let fresh = secrets(max)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &name.as_str(),
                    &i64::try_from(max).unwrap_or(i64::MAX),
                    &i64::try_from(budget).unwrap_or(i64::MAX),
                    &first_free,
                    &fresh,
                    &lease_ms,
                    &super::stripe(),
                ],
            )
            .await
            .map_err(unavailable)?;
        took_of(name, &rows)
    }

    /// Completes `tokens` and leases in one statement: `None` when it
    /// changed nothing (a token not live, an item named twice, the queue
    /// missing).
    async fn complete_and_take(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        max: usize,
        budget: usize,
        first_free: bool,
        lease_ms: Option<i64>,
    ) -> Result<Option<Took>> {
        let Some(args) = CompleteArgs::of(name, tokens, self.inner.limits.idempotency_window)
        else {
            return Ok(None);
        };
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(COMPLETE_THEN_LEASE.as_str())
            .await
            .map_err(unavailable)?;
        let fresh = secrets(max)?;
        let (stripe, max, budget) = (
            super::stripe(),
            i64::try_from(max).unwrap_or(i64::MAX),
            i64::try_from(budget).unwrap_or(i64::MAX),
        );
        let mut params = args.params();
        params.extend_from_slice(&[&stripe, &max, &budget, &first_free, &fresh, &lease_ms]);
        let rows = client.query(&stmt, &params).await.map_err(unavailable)?;
        let all_live = rows
            .first()
            .and_then(|r| r.get::<_, Option<bool>>(13))
            .unwrap_or(false);
        let deleted: i64 = rows.first().map_or(0, |r| r.get(14));
        if !all_live || deleted != tokens.len() as i64 {
            return Ok(None);
        }
        metrics::counter!("workq_items_completed_total").increment(tokens.len() as u64);
        let took = took_of(name, &rows)?;
        if took.sealed {
            // The queue may have drained.
            self.notify_committed(name);
        }
        Ok(Some(took))
    }
}

/// What a lease statement's rows say (see [`take_answer`]).
fn took_of(name: &QueueName, rows: &[tokio_postgres::Row]) -> Result<Took> {
    let Some(first) = rows.first() else {
        return Err(Error::QueueNotFound(name.clone()));
    };
    let Some(sealed) = first.get::<_, Option<bool>>(11) else {
        return Err(Error::QueueNotFound(name.clone()));
    };
    let picked: i64 = first.get(9);
    let taken: i64 = first.get(10);
    let live: i64 = first.get(12);
    let mut items: Vec<(i64, Leased)> = rows
        .iter()
        .filter_map(|r| {
            let id: i64 = r.get::<_, Option<i64>>(0)?;
            let seq: i64 = r.get(1);
            let secret: Vec<u8> = r.get(2);
            let payload: Vec<u8> = r.get(3);
            Some((
                r.get::<_, i64>(8),
                Leased {
                    id: crate::names::ItemId(u64::try_from(id).unwrap_or(0)),
                    token: token(id, seq, &secret),
                    payload: payload.into(),
                    attributes: super::attrs_of(r.get(4)),
                    attempt: u32::try_from(r.get::<_, i32>(5)).unwrap_or(0) + 1,
                    deadline: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                    enqueued_at: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
                },
            ))
        })
        .collect();
    items.sort_by_key(|(rank, _)| *rank);
    Ok(Took {
        items: items.into_iter().map(|(_, l)| l).collect(),
        over_budget: taken < picked,
        sealed,
        live,
    })
}
