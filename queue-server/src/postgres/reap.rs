//! The reaper every replica runs: delayed items whose time came become
//! pending, expired leases end their attempt (pending again, first in line,
//! or dead on the last one), and idempotency keys, finish records and
//! request ids past the idempotency window are forgotten.
//!
//! Whichever replica gets to an item first reaps it, exactly once: each
//! statement picks its rows `FOR UPDATE SKIP LOCKED` (by `ctid`, so the
//! change is a TID scan whatever the planner's statistics say) and changes them, their
//! counters and the notification in one statement, so two reapers never
//! take the same row and a row changed meanwhile (completed, renewed) is
//! re-checked before it is taken. Deadlines are compared with the
//! database's clock. The reaper sleeps until the earliest deadline (at most
//! [`MAX_SLEEP`]), or until this replica makes an earlier one.

use super::PgEngine;
use super::listen::CHANNEL;
use std::time::Duration;

/// The longest the reaper sleeps (deadlines made by other replicas are seen
/// within it).
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// Rows one statement reaps at most.
const BATCH: i64 = 1000;

/// How often the idempotency window's leftovers are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

const PROMOTE: &str = "\
WITH due AS (SELECT ctid FROM workq_items WHERE state = 'd' AND due_at <= workq_ms() \
    ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
upd AS (UPDATE workq_items i SET state = 'p', due_at = NULL, rank = nextval('workq_item_id') \
    WHERE i.ctid = ANY(ARRAY(SELECT ctid FROM due)) RETURNING i.queue_id), \
agg AS (SELECT queue_id, count(*) AS n FROM upd GROUP BY queue_id), \
cnt AS (UPDATE workq_counters c SET delayed = c.delayed - agg.n, pending = c.pending + agg.n \
    FROM agg WHERE c.queue_id = agg.queue_id AND c.stripe = $2) \
SELECT q.name, agg.n, pg_notify($3, q.name) FROM agg JOIN workq_queues q ON q.id = agg.queue_id";

const EXPIRE: &str = "\
WITH exp AS (SELECT ctid FROM workq_items WHERE state = 'l' AND due_at <= workq_ms() \
    ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED), \
upd AS (UPDATE workq_items i SET attempts = i.attempts + 1, secret = NULL, \
    state = CASE WHEN i.attempts + 1 >= greatest(q.max_attempts, 1) THEN 'x' ELSE 'p' END::\"char\", \
    reason = CASE WHEN i.attempts + 1 >= greatest(q.max_attempts, 1) \
        THEN format('attempt %s of %s failed: the lease expired', i.attempts + 1, \
        greatest(q.max_attempts, 1)) END, \
    died_at = CASE WHEN i.attempts + 1 >= greatest(q.max_attempts, 1) THEN workq_ms() END, \
    due_at = NULL, rank = -nextval('workq_item_id') \
    FROM workq_queues q WHERE i.ctid = ANY(ARRAY(SELECT ctid FROM exp)) \
    AND q.id = i.queue_id RETURNING i.queue_id, i.state), \
agg AS (SELECT queue_id, count(*) FILTER (WHERE state = 'x') AS dead, \
    count(*) FILTER (WHERE state = 'p') AS back FROM upd GROUP BY queue_id), \
cnt AS (UPDATE workq_counters c SET leased = c.leased - agg.dead - agg.back, \
    dead = c.dead + agg.dead, pending = c.pending + agg.back, retried = c.retried + agg.back \
    FROM agg WHERE c.queue_id = agg.queue_id AND c.stripe = $2) \
SELECT q.name, agg.dead + agg.back, pg_notify($3, q.name) FROM agg \
    JOIN workq_queues q ON q.id = agg.queue_id";

const NEXT: &str = "SELECT min(due_at) - workq_ms() FROM workq_items WHERE state IN ('d', 'l')";

const SWEEP: &str = "\
WITH k AS (DELETE FROM workq_keys WHERE expires_at <= workq_ms()), \
f AS (DELETE FROM workq_finished WHERE at <= workq_ms() - $1), \
c AS (DELETE FROM workq_completed WHERE at <= workq_ms() - $1), \
r AS (DELETE FROM workq_requests WHERE at <= workq_ms() - $1) SELECT 1";

/// Starts this replica's reaper.
pub(super) fn start(engine: &PgEngine) {
    let engine = engine.clone();
    tokio::spawn(async move {
        let mut swept = tokio::time::Instant::now();
        loop {
            let sleep = match round(&engine).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::debug!("postgres store: reaper: {e}");
                    MAX_SLEEP
                }
            };
            if swept.elapsed() >= SWEEP_EVERY {
                swept = tokio::time::Instant::now();
                if let Err(e) = sweep(&engine).await {
                    tracing::debug!("postgres store: sweeping old keys: {e}");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = engine.inner.reaper.notified() => {}
                () = engine.stopping() => return,
            }
        }
    });
}

/// Reaps what is due; returns how long until the next deadline.
async fn round(engine: &PgEngine) -> crate::Result<Duration> {
    let client = engine.client().await?;
    let promote = client
        .prepare_cached(PROMOTE)
        .await
        .map_err(super::unavailable)?;
    let expire = client
        .prepare_cached(EXPIRE)
        .await
        .map_err(super::unavailable)?;
    loop {
        let mut full = false;
        for stmt in [&promote, &expire] {
            let rows = client
                .query(stmt, &[&BATCH, &super::stripe(), &CHANNEL])
                .await
                .map_err(super::unavailable)?;
            let n: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
            if std::ptr::eq(stmt, &expire) && n > 0 {
                metrics::counter!("workq_lease_expiries_total")
                    .increment(u64::try_from(n).unwrap_or(0));
            }
            full |= n >= BATCH;
        }
        if !full {
            break;
        }
    }
    let next: Option<i64> = client
        .query_one(NEXT, &[])
        .await
        .map_err(super::unavailable)?
        .get(0);
    Ok(match next {
        Some(ms) => Duration::from_millis(u64::try_from(ms.max(1)).unwrap_or(1)).min(MAX_SLEEP),
        None => MAX_SLEEP,
    })
}

async fn sweep(engine: &PgEngine) -> crate::Result<()> {
    let window =
        i64::try_from(engine.inner.limits.idempotency_window.as_millis()).unwrap_or(i64::MAX);
    let client = engine.client().await?;
    client
        .query(SWEEP, &[&window])
        .await
        .map_err(super::unavailable)?;
    Ok(())
}
