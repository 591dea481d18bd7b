//! Completing and leasing on PostgreSQL, grouped: one statement completes
//! the live leases of every call in a group and leases each call its share
//! (`combine.rs` forms the groups).
//!
//! A call is a batch of tokens to complete (possibly none) and a lease of
//! up to `max` items (possibly none) within its byte budget: a worker's
//! `complete_then_lease`, a lease alone, or a completion alone. The
//! statement:
//! - locks the items named by the tokens that are live leases (`live`, in
//!   id order); only when every token of the group is live (`ok`) does it
//!   delete them, start their idempotency keys' window and record the
//!   completion (one `workq_completed` row for the statement);
//! - only then takes up to the sum of the calls' `max` pending items in
//!   rank order (`FOR UPDATE SKIP LOCKED`), deals them out in that order —
//!   the first call its `max`, the next its own, … — cuts each call's share
//!   to its own byte budget, and leases them (new epoch, fresh secret,
//!   deadline from the database's clock and the call's lease);
//! - moves one counter stripe by the totals, and answers each leased item
//!   with the call it went to.
//!
//! So each call's completion stays all or nothing: when a token of the
//! group is not live, the statement changes nothing and says which items
//! were; the calls holding a token that was not are answered "take your
//! own path" (the judging path, which answers token by token exactly) and
//! the others run again without them.
//!
//! A leased share whose caller went away while the statement ran is given
//! back at once (released, no attempt counted), not left to its lease's
//! expiry.

use super::combine::{Driving, Waiting};
use super::finish::{COMPLETE_CTES, CompleteArgs};
use super::{PgEngine, db_id, secrets, token, unavailable};
use crate::error::{Error, Result};
use crate::names::{LeaseToken, QueueName};
use crate::queue::Leased;
use rustc_hash::FxHashSet as HashSet;
use std::sync::{Arc, LazyLock};

/// Most items (leased and completed together) one grouped statement takes
/// on: a group stops before a call that would pass it (a call alone may).
const GROUP_ITEMS: usize = 2000;

/// One call in a group.
pub(crate) struct WorkCall {
    /// Leases to complete.
    pub(crate) tokens: Vec<LeaseToken>,
    /// Most items to lease (0: none).
    pub(crate) max: usize,
    /// Most bytes of items to lease.
    pub(crate) budget: usize,
    /// The first item is taken even if alone it passes the budget.
    pub(crate) first_free: bool,
    /// The lease, ms (`None`: the queue's default).
    pub(crate) lease_ms: Option<i64>,
}

impl WorkCall {
    fn weight(&self) -> usize {
        self.tokens.len() + self.max
    }
}

/// What a work call is answered: `None` when its tokens were not all live
/// leases and nothing was changed for it.
pub(crate) type WorkAnswer = Result<Option<Took>>;

/// A line of work calls.
pub(crate) type WorkLine = super::combine::Combiner<WorkCall, WorkAnswer>;

/// What one call got from a statement.
pub(crate) struct Took {
    pub(crate) items: Vec<Leased>,
    /// Its share stopped at an item its byte budget could not take.
    pub(crate) over_budget: bool,
    pub(crate) sealed: bool,
    /// Pending, delayed and leased after it; 1 (not empty) when the
    /// statement leased anything.
    pub(crate) live: i64,
}

/// The grouped statement: `$1`–`$6` as [`COMPLETE_CTES`] (every call's
/// tokens), `$7` the stripe, `$8` the sum of the calls' maxes, `$9` that
/// many fresh secrets; per slot (the n-th item picked, in rank order) `$10`
/// the call it goes to (1-based) and `$11` its place in that call's share;
/// per call `$12` its byte budget, `$13` first-free and `$14` its lease (ms,
/// NULL: the queue's default). Slots are dealt out in call order (the
/// first call's `max` slots, then the next call's), so no join is needed
/// to find a picked item's call; each call's running sum of sizes cuts its
/// share to its budget. The answer is a row per leased item (one row when
/// none); the array of the calls the picked items were dealt to is in one
/// row only, and the ids of the live items only when not all were.
static WORK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{COMPLETE_CTES}, \
picked AS MATERIALIZED (SELECT id, rank, size FROM workq_items \
    WHERE (SELECT all_live FROM ok) AND queue_id = (SELECT id FROM q) AND state = 'p' \
    ORDER BY rank LIMIT $8 FOR UPDATE SKIP LOCKED), \
numbered AS (SELECT id, size, row_number() OVER (ORDER BY rank)::int4 AS n FROM picked), \
dealt AS (SELECT id, n, ($10::int4[])[n] AS c, ($11::int4[])[n] AS m, \
    sum(size) OVER (PARTITION BY ($10::int4[])[n] ORDER BY n) AS run FROM numbered), \
took AS (SELECT id, n, c FROM dealt \
    WHERE run <= ($12::int8[])[c] OR (m = 1 AND ($13::bool[])[c])), \
upd AS (UPDATE workq_items i SET state = 'l', seq = i.seq + 1, secret = ($9::bytea[])[t.n], \
    due_at = workq_ms() + coalesce(($14::int8[])[t.c], q.default_lease_ms) FROM took t, q \
    WHERE i.queue_id = q.id AND i.id = t.id \
    RETURNING i.id, i.seq, i.secret, i.payload, i.attrs, i.attempts, i.due_at, i.enqueued_at, \
    i.rank, t.c), \
cnt AS (UPDATE workq_counters c SET completed = c.completed + $5, \
    leased = c.leased - $5 + (SELECT count(*) FROM upd), \
    pending = c.pending - (SELECT count(*) FROM upd), \
    bytes = c.bytes - (SELECT coalesce(sum(b), 0) FROM del) \
    FROM ok WHERE ok.all_live AND c.queue_id = (SELECT id FROM q) AND c.stripe = $7 \
    AND ($5 > 0 OR EXISTS (SELECT 1 FROM upd))) \
SELECT u.id, u.seq, u.secret, u.payload, u.attrs, u.attempts, u.due_at, \
    u.enqueued_at, u.rank, u.c, \
    CASE WHEN coalesce(u.one, 1) = 1 THEN (SELECT array_agg(c) FROM dealt) END, \
    (SELECT sealed FROM q), \
    CASE WHEN EXISTS (SELECT 1 FROM upd) THEN 1::int8 ELSE \
    (SELECT coalesce(sum(pending + delayed + leased), 0)::int8 FROM workq_counters \
        WHERE queue_id = (SELECT id FROM q)) - $5 END, \
    (SELECT all_live FROM ok), (SELECT count(*) FROM del), \
    CASE WHEN NOT (SELECT all_live FROM ok) THEN (SELECT array_agg(id) FROM live) END \
FROM (SELECT 1) one LEFT JOIN (SELECT upd.*, row_number() OVER () AS one FROM upd) u ON true"
    )
});

impl PgEngine {
    /// Runs `call` in the next group of its queue's line: its share, or
    /// `None` when its tokens were not all live and nothing changed for it.
    pub(crate) async fn work(&self, name: &QueueName, call: WorkCall) -> WorkAnswer {
        let waker = self.waker(name);
        let (answer, start) = waker.work.join(call, self.inner.per_queue);
        if start {
            let (engine, name) = (self.clone(), name.clone());
            tokio::spawn(async move { engine.drive_work(&name, waker).await });
        }
        answer
            .await
            .map_err(|_| unavailable("the statement's task ended before it answered"))?
    }

    async fn drive_work(&self, name: &QueueName, waker: Arc<super::Waker>) {
        let mut driving = Driving::new(&waker.work);
        while let Some(group) = waker.work.next(GROUP_ITEMS, WorkCall::weight) {
            self.work_group(name, group).await;
        }
        driving.done = true;
    }

    /// Runs one group and answers its calls.
    async fn work_group(&self, name: &QueueName, group: Vec<Waiting<WorkCall, WorkAnswer>>) {
        // A call naming an item twice, or an item another call of the group
        // names, takes its own path (which judges it exactly).
        let mut seen = HashSet::default();
        let mut group: Vec<_> = group
            .into_iter()
            .filter_map(|w| {
                let mut mine =
                    HashSet::with_capacity_and_hasher(w.call.tokens.len(), Default::default());
                let clean = w.call.tokens.iter().all(|t| mine.insert(t.item))
                    && w.call.tokens.iter().all(|t| !seen.contains(&t.item));
                if clean {
                    seen.extend(mine);
                    Some(w)
                } else {
                    let _ = w.answer.send(Ok(None));
                    None
                }
            })
            .collect();
        while !group.is_empty() {
            match self.work_statement(name, &group).await {
                Err(e) => {
                    let text = e.to_string();
                    for w in group {
                        let e = match &e {
                            Error::QueueNotFound(n) => Error::QueueNotFound(n.clone()),
                            _ => unavailable(&text),
                        };
                        let _ = w.answer.send(Err(e));
                    }
                    return;
                }
                Ok(Ran::Done(shares)) => {
                    self.answer_shares(name, group, shares).await;
                    return;
                }
                Ok(Ran::NotLive(live)) => {
                    // Nothing changed. Calls with a token that was not live
                    // take their own path; the others go again without them
                    // (if none could be told apart, every call holding
                    // tokens takes its own path).
                    let before = group.len();
                    let (kept, own): (Vec<_>, Vec<_>) = group
                        .into_iter()
                        .partition(|w| w.call.tokens.iter().all(|t| live.contains(&db_id(t.item))));
                    let (kept, own) = if kept.len() == before {
                        kept.into_iter().partition(|w| w.call.tokens.is_empty())
                    } else {
                        (kept, own)
                    };
                    for w in own {
                        let _ = w.answer.send(Ok(None));
                    }
                    group = kept;
                }
            }
        }
    }

    /// Answers each call its share; a share whose caller went away is
    /// given back.
    async fn answer_shares(
        &self,
        name: &QueueName,
        group: Vec<Waiting<WorkCall, WorkAnswer>>,
        shares: Vec<Took>,
    ) {
        let completed: usize = group.iter().map(|w| w.call.tokens.len()).sum();
        if completed > 0 {
            metrics::counter!("workq_items_completed_total").increment(completed as u64);
            // The queue may have drained: only when sealed, and only when
            // this statement leased nothing (what it leased is live until a
            // later completion, release or expiry, which is judged then). A
            // count of live items taken in the statement's snapshot would
            // miss two statements completing the last items side by side.
            let leased = shares.iter().any(|s| !s.items.is_empty());
            if shares.first().is_some_and(|s| s.sealed) && !leased {
                self.notify_committed(name);
            }
        }
        let mut orphaned = Vec::new();
        for (w, share) in group.into_iter().zip(shares) {
            metrics::counter!("workq_items_leased_total").increment(share.items.len() as u64);
            if let Err(Ok(Some(share))) = w.answer.send(Ok(Some(share))) {
                orphaned.extend(share.items.iter().map(|l| l.token));
            }
        }
        // (Nothing to give back: no statement.)
        if let Err(e) = self.release_held(name, &orphaned).await {
            tracing::warn!(queue = %name, error = %e, items = orphaned.len(),
                "could not give back items leased to a caller that went away; \
                 they come back when their lease expires");
        }
    }

    /// One grouped statement.
    async fn work_statement(
        &self,
        name: &QueueName,
        group: &[Waiting<WorkCall, WorkAnswer>],
    ) -> Result<Ran> {
        let tokens: Vec<LeaseToken> = group
            .iter()
            .flat_map(|w| w.call.tokens.iter().copied())
            .collect();
        let Some(args) = CompleteArgs::of(name, &tokens, self.inner.limits.idempotency_window)
        else {
            // Items named twice were kept out of the group (`work_group`).
            return Ok(Ran::NotLive(HashSet::default()));
        };
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let total: usize = group.iter().map(|w| w.call.max).sum();
        let (mut slot_call, mut slot_place) =
            (Vec::with_capacity(total), Vec::with_capacity(total));
        for (c, w) in group.iter().enumerate() {
            let c = i32::try_from(c + 1).unwrap_or(i32::MAX);
            for m in 1..=w.call.max {
                slot_call.push(c);
                slot_place.push(i32::try_from(m).unwrap_or(i32::MAX));
            }
        }
        let budgets: Vec<i64> = group.iter().map(|w| as_i64(w.call.budget)).collect();
        let first_free: Vec<bool> = group.iter().map(|w| w.call.first_free).collect();
        let leases: Vec<Option<i64>> = group.iter().map(|w| w.call.lease_ms).collect();
        let fresh = secrets(total)?;
        let (stripe, total) = (super::stripe(), as_i64(total));
        let mut params = args.params();
        params.extend_from_slice(&[
            &stripe,
            &total,
            &fresh,
            &slot_call,
            &slot_place,
            &budgets,
            &first_free,
            &leases,
        ]);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(WORK.as_str())
            .await
            .map_err(unavailable)?;
        let rows = client.query(&stmt, &params).await.map_err(unavailable)?;
        metrics::counter!("workq_postgres_statements_total", "kind" => "work").increment(1);
        metrics::counter!("workq_postgres_statement_calls_total", "kind" => "work")
            .increment(group.len() as u64);
        let Some(first) = rows.first() else {
            return Err(Error::QueueNotFound(name.clone()));
        };
        let Some(sealed) = first.get::<_, Option<bool>>(11) else {
            return Err(Error::QueueNotFound(name.clone()));
        };
        let all_live = first.get::<_, Option<bool>>(13).unwrap_or(false);
        let deleted: i64 = first.get(14);
        if !all_live || deleted != tokens.len() as i64 {
            let live: Vec<i64> = first.get::<_, Option<Vec<i64>>>(15).unwrap_or_default();
            return Ok(Ran::NotLive(live.into_iter().collect()));
        }
        let live: i64 = first.get(12);
        // The arrays come in one row only (sent with every row they were
        // a tenth of the database's CPU and most of the answer's bytes).
        let dealt: Vec<i32> = rows
            .iter()
            .find_map(|r| r.get::<_, Option<Vec<i32>>>(10))
            .unwrap_or_default();
        let mut shares: Vec<(usize, Vec<(i64, Leased)>)> =
            group.iter().map(|_| (0, Vec::new())).collect();
        for c in dealt {
            if let Some(s) = call_index(c).and_then(|i| shares.get_mut(i)) {
                s.0 += 1;
            }
        }
        for r in &rows {
            let Some(id) = r.get::<_, Option<i64>>(0) else {
                continue;
            };
            let Some(share) = call_index(r.get::<_, i32>(9)).and_then(|i| shares.get_mut(i)) else {
                continue;
            };
            let (seq, secret, payload): (i64, Vec<u8>, Vec<u8>) = (r.get(1), r.get(2), r.get(3));
            share.1.push((
                r.get(8),
                Leased {
                    id: crate::names::ItemId(u64::try_from(id).unwrap_or(0)),
                    token: token(id, seq, &secret),
                    payload: payload.into(),
                    attributes: super::attrs_of(r.get(4)),
                    attempt: u32::try_from(r.get::<_, i32>(5)).unwrap_or(0) + 1,
                    deadline: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                    enqueued_at: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
                },
            ));
        }
        Ok(Ran::Done(
            shares
                .into_iter()
                .map(|(dealt, mut items)| {
                    items.sort_by_key(|(rank, _)| *rank);
                    Took {
                        over_budget: items.len() < dealt,
                        items: items.into_iter().map(|(_, l)| l).collect(),
                        sealed,
                        live,
                    }
                })
                .collect(),
        ))
    }
}

/// What a grouped statement did.
enum Ran {
    /// Each call's share, in the group's order.
    Done(Vec<Took>),
    /// Nothing: a token was not live. The items that were.
    NotLive(HashSet<i64>),
}

/// A call's place in its group from the statement's 1-based number.
fn call_index(c: i32) -> Option<usize> {
    usize::try_from(c).ok()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::WORK;
    use tokio_postgres::NoTls;

    const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// A database of the test's own, dropped (with its connections) after.
    struct Db(String);

    impl Drop for Db {
        fn drop(&mut self) {
            let name = self.0.clone();
            // Its own runtime: the test's may be gone.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let (c, conn) = tokio_postgres::connect(ADMIN, NoTls).await?;
                    tokio::spawn(conn);
                    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                })
                .map_err(std::io::Error::other)
            })
            .join();
        }
    }

    /// No part of the work statement can use the `due` index: the planner
    /// once ANDed each token's primary-key lookup with a scan of that whole
    /// index (every lease out, per token; `docs/STORE.md`, "Where the time
    /// goes", 2026-12-08). The plan is read from `EXPLAIN`, not timed.
    #[tokio::test]
    async fn no_part_of_the_work_statement_can_use_the_due_index() {
        if !workq_testkit::postgres() {
            return;
        }
        let name = workq_testkit::unique_name("wq_plan").replace('-', "_");
        let (admin, conn) = tokio_postgres::connect(ADMIN, NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let db = Db(name);
        let url = format!("postgres://postgres@127.0.0.1:5432/{}", db.0);
        let (mut c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(conn);
        super::super::migrate::migrate(&mut c)
            .await
            .expect("migrate");
        // A queue with items leased and pending. Then the planner is left
        // no primary key and told to avoid sequential scans: any index
        // whose predicate the statement implies is what it takes — so the
        // plan shows whether the `due` index is usable at all, whatever
        // the planner would think of it under load (it once chose it).
        c.batch_execute(
            "INSERT INTO workq_queues (name, default_lease_ms, max_attempts, retry_backoff_ms, \
                 retry_backoff_max_ms) VALUES ('q', 30000, 3, 0, 0);
             INSERT INTO workq_counters (queue_id, stripe) SELECT 1, s FROM generate_series(0, 15) s
                 ON CONFLICT DO NOTHING;
             INSERT INTO workq_items (queue_id, id, state, rank, due_at, seq, secret, \
                 enqueued_at, size, payload)
               SELECT 1, i, CASE WHEN i <= 1000 THEN 'l' ELSE 'p' END::\"char\", i, \
                 CASE WHEN i <= 1000 THEN workq_ms() + 600000 + i END, 1, \
                 decode(md5(i::text), 'hex'), workq_ms(), 10, '\\x00'::bytea
               FROM generate_series(1, 2000) i;
             ANALYZE workq_items;
             ALTER TABLE workq_items DROP CONSTRAINT workq_items_pkey;
             SET enable_seqscan = off;
             SET plan_cache_mode = force_generic_plan;",
        )
        .await
        .expect("fill");
        c.batch_execute(&format!("PREPARE work AS {}", WORK.as_str()))
            .await
            .expect("prepare the work statement");
        // Complete 100 of the leases and lease 100 (on a generic plan the
        // values do not change the plan; they are only well typed).
        let list = |f: &dyn Fn(usize) -> String| (1..=100).map(f).collect::<Vec<_>>().join(",");
        let explain = format!(
            "EXPLAIN EXECUTE work('q', ARRAY[{ids}]::int8[], ARRAY[{ones}]::int8[], \
             ARRAY[{secrets}]::bytea[], 100, 3600000, 0::int2, 100, ARRAY[{secrets}]::bytea[], \
             ARRAY[{ones}]::int4[], ARRAY[{ids}]::int4[], ARRAY[1000000]::int8[], ARRAY[true], \
             ARRAY[NULL]::int8[])",
            ids = list(&|i| i.to_string()),
            ones = list(&|_| "1".into()),
            secrets = list(&|i| format!("decode(md5('{i}'), 'hex')")),
        );
        let plan: Vec<String> = c
            .simple_query(&explain)
            .await
            .expect("explain")
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains("workq_items_ready"), "{plan}");
        assert!(
            !plan.contains("workq_items_due"),
            "the work statement scans the due index:\n{plan}"
        );
    }
}
