//! Ending and extending leases on PostgreSQL: renew, complete, fail and
//! release, all or nothing or token by token. Each call is one transaction:
//! the named items are read and locked (`FOR UPDATE`, in id order), with
//! the record of how each item's last lease finished; every token is judged
//! exactly as the local engine judges it (`queue::leases`); then one
//! statement per kind of change applies the verdicts (arrays), the
//! counters change in one stripe, and the finishes are recorded — so a
//! finish retried after a COMMIT whose outcome the client never learned is
//! answered "already done". A completion whose every token is live (the
//! common case) is first tried as one statement doing all of that; it
//! changes nothing unless every token is live.

use super::queues::add_counters;
use super::{PgEngine, db_id, unavailable};
use crate::error::{Finish, Result};
use crate::names::{LeaseToken, QueueName};
use crate::queue::{Batch, Outcome, TokenResult};
use deadpool_postgres::GenericClient;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_postgres::types::ToSql;

use super::judge::{result, same_secret};

/// The completion of a batch whose every token is a live lease, as the
/// first CTEs of a statement (parameters `$1`–`$6` of [`CompleteArgs`]):
/// `q` the queue (id, sealed, default lease), `live` the items named by
/// live tokens (locked, in id order), `ok` whether every token is live;
/// only then `del` deletes the items (answering each one's `b`, its bytes
/// held), `keys` starts their idempotency keys' window and `fin` records
/// the completions — one `workq_completed` row for the call, not one row
/// per item (the judge reads both). The counters are the statement's to
/// change.
///
/// `state::text = 'l'`, not `state = 'l'`: each token is found by the
/// primary key. On the bare column the planner, seeing the `due` index's
/// predicate (`state IN ('d','l')`) implied, may AND that lookup with a
/// scan of the whole `due` index — every lease and delayed item, per
/// token — which took a third to a half of the database's CPU in a run
/// (`docs/STORE.md`, "Where the time goes").
pub(super) const COMPLETE_CTES: &str = "\
WITH q AS (SELECT id, sealed, default_lease_ms FROM workq_queues WHERE name = $1), \
t AS (SELECT * FROM unnest($2::int8[], $3::int8[], $4::bytea[]) AS t(id, seq, secret)), \
live AS (SELECT i.id, i.idem_key, t.seq, t.secret FROM (SELECT * FROM t ORDER BY id) t \
    CROSS JOIN LATERAL (SELECT id, idem_key FROM workq_items \
    WHERE queue_id = (SELECT id FROM q) AND id = t.id AND state::text = 'l' AND seq = t.seq \
    AND secret = t.secret AND due_at > workq_ms() FOR UPDATE) i), \
ok AS (SELECT count(*) = $5 AS all_live FROM live), \
del AS (DELETE FROM workq_items WHERE (SELECT all_live FROM ok) \
    AND queue_id = (SELECT id FROM q) AND id = ANY(ARRAY(SELECT id FROM live)) \
    RETURNING id, size + coalesce(octet_length(idem_key), 0) AS b), \
keys AS (UPDATE workq_keys SET expires_at = workq_ms() + $6 WHERE (SELECT all_live FROM ok) \
    AND queue_id = (SELECT id FROM q) \
    AND key = ANY(ARRAY(SELECT idem_key FROM live WHERE idem_key IS NOT NULL)) \
    AND item = ANY(ARRAY(SELECT id FROM live))), \
fin AS (INSERT INTO workq_completed (queue_id, lo, hi, items, seqs, secrets, at) \
    SELECT (SELECT id FROM q), min(id), max(id), array_agg(id), array_agg(seq), \
    array_agg(secret), workq_ms() FROM live WHERE (SELECT all_live FROM ok) \
    HAVING count(*) > 0)";

/// The parameters `$1`–`$6` of [`COMPLETE_CTES`] (a statement's own follow).
pub(super) struct CompleteArgs<'a> {
    name: &'a str,
    ids: Vec<i64>,
    seqs: Vec<i64>,
    secrets: Vec<&'a [u8]>,
    n: i64,
    window: i64,
}

impl<'a> CompleteArgs<'a> {
    /// The parameters of completing `tokens`; `None` when one item is named
    /// twice (the judging path answers that).
    pub(super) fn of(
        name: &'a QueueName,
        tokens: &'a [LeaseToken],
        window: Duration,
    ) -> Option<Self> {
        let mut seen = HashSet::with_capacity(tokens.len());
        if !tokens.iter().all(|t| seen.insert(t.item)) {
            return None;
        }
        Some(CompleteArgs {
            name: name.as_str(),
            ids: tokens.iter().map(|t| db_id(t.item)).collect(),
            seqs: tokens
                .iter()
                .map(|t| i64::try_from(t.seq).unwrap_or(-1))
                .collect(),
            secrets: tokens.iter().map(|t| &t.secret[..]).collect(),
            n: tokens.len() as i64,
            window: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// `$1`–`$6`.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.name,
            &self.ids,
            &self.seqs,
            &self.secrets,
            &self.n,
            &self.window,
        ]
    }
}

impl PgEngine {
    pub(super) fn tokens_ok(&self, what: &str, tokens: &[LeaseToken]) -> Result<()> {
        self.inner
            .limits
            .check_batch("lease_tokens", what, tokens.len())
    }

    /// Extends leases by `lease` (the queue's default when `None`).
    pub async fn renew_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("renew", tokens)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q = self.queue_row(&tx, name, "").await?;
        let lease = lease.unwrap_or(q.settings.default_lease);
        let lease_ms = super::ms(self.inner.limits.check_lease("lease", lease)?);
        let mut judged = self.judge(&tx, &q, name, tokens, None, batch).await?;
        let live: Vec<i64> = judged.live().iter().map(|t| db_id(t.item)).collect();
        if !live.is_empty() {
            let rows = tx
                .query(
                    "UPDATE workq_items SET due_at = workq_ms() + $3 \
                     WHERE queue_id = $1 AND id = ANY($2) RETURNING id, due_at",
                    &[&q.id, &live, &lease_ms],
                )
                .await
                .map_err(unavailable)?;
            let deadlines: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for r in judged.results.iter_mut().filter(|r| r.done()) {
                r.deadline = deadlines
                    .get(&db_id(r.token.item))
                    .map(|d| u64::try_from(*d).unwrap_or(0));
            }
            tx.commit().await.map_err(unavailable)?;
        }
        Ok(judged.results)
    }

    /// The completion of a batch whose every token is a live lease (the
    /// common case), in its queue's next group of work calls (`work.rs`):
    /// `true` when it completed them all, `false` when it changed nothing
    /// (a token not live) and the judging path must answer.
    async fn complete_fast(&self, name: &QueueName, tokens: &[LeaseToken]) -> Result<bool> {
        let call = super::work::WorkCall {
            tokens: tokens.to_vec(),
            max: 0,
            budget: 0,
            first_free: false,
            lease_ms: None,
        };
        match self.work(name, call).await {
            Ok(done) => Ok(done.is_some()),
            // The judging path says so, as it says everything else.
            Err(crate::error::Error::QueueNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Completes leased items; tokens that already completed their item are
    /// answered "already done".
    pub async fn complete_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("complete", tokens)?;
        if self.complete_fast(name, tokens).await? {
            return Ok(tokens.iter().map(|t| result(*t, Outcome::Done)).collect());
        }
        self.complete_judged(name, tokens, batch).await
    }

    /// Completes leased items, each token judged (the path of a batch not
    /// every token of which is live).
    pub(super) async fn complete_judged(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q = self.queue_row(&tx, name, "").await?;
        let judged = self
            .judge(&tx, &q, name, tokens, Some(Finish::Completed), batch)
            .await?;
        let live = judged.live();
        if !live.is_empty() {
            let ids: Vec<i64> = live.iter().map(|t| db_id(t.item)).collect();
            let keys: Vec<&str> = ids
                .iter()
                .filter_map(|id| judged.items.get(id)?.key.as_deref())
                .collect();
            let bytes: i64 = tx
                .query_one(
                    "WITH d AS (DELETE FROM workq_items WHERE queue_id = $1 AND id = ANY($2) \
                     RETURNING size + coalesce(octet_length(idem_key), 0) AS b) \
                     SELECT coalesce(sum(b), 0)::int8 FROM d",
                    &[&q.id, &ids],
                )
                .await
                .map_err(unavailable)?
                .get(0);
            if !keys.is_empty() {
                let window = i64::try_from(self.inner.limits.idempotency_window.as_millis())
                    .unwrap_or(i64::MAX);
                let sql = if window == 0 {
                    "DELETE FROM workq_keys WHERE queue_id = $1 AND key = ANY($2) \
                     AND item = ANY($3) AND $4::int8 = 0"
                } else {
                    "UPDATE workq_keys SET expires_at = workq_ms() + $4 \
                     WHERE queue_id = $1 AND key = ANY($2) AND item = ANY($3)"
                };
                tx.execute(sql, &[&q.id, &keys, &ids, &window])
                    .await
                    .map_err(unavailable)?;
            }
            let n = live.len() as i64;
            add_counters(&tx, q.id, [0, 0, 0, -n, n, 0, 0, -bytes]).await?;
            let done: Vec<_> = live.iter().map(|t| (*t, false)).collect();
            Self::record_finished(&tx, &q, &done, Finish::Completed).await?;
            tx.commit().await.map_err(unavailable)?;
            if q.sealed {
                // The queue may have drained: wake who waits for that.
                self.notify_committed(name);
            }
            metrics::counter!("workq_items_completed_total").increment(live.len() as u64);
        }
        Ok(judged.results)
    }

    /// Fails leased items: back to the queue after `retry_after` (the
    /// queue's back-off when `None`) or dead; fatally: dead at once.
    pub async fn fail_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("fail", tokens)?;
        let limits = self.inner.limits;
        let reason = crate::engine::fail_reason(&limits, reason, retry_after)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q = self.queue_row(&tx, name, "").await?;
        let mut judged = self
            .judge(&tx, &q, name, tokens, Some(Finish::Failed), batch)
            .await?;
        let live = judged.live();
        if live.is_empty() {
            // Ended here, not by dropping it: a dropped transaction's
            // rollback is sent but not awaited, and the rows judged would
            // stay locked a moment after the answer (a lease at once would
            // skip them).
            tx.commit().await.map_err(unavailable)?;
            return Ok(judged.results);
        }
        let max = q.settings.max_attempts.max(1);
        let (mut ids, mut states, mut delays, mut reasons, mut attempts) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut dead, mut pending, mut delayed) = (0i64, 0i64, 0i64);
        let mut died = HashSet::new();
        for t in &live {
            let id = db_id(t.item);
            let Some(item) = judged.items.get(&id) else {
                continue;
            };
            let n = u32::try_from(item.attempts).unwrap_or(0) + 1;
            let dead_reason = if fatal {
                Some(format!("failed fatally on attempt {n}: {reason}"))
            } else {
                (n >= max).then(|| format!("attempt {n} of {max} failed: {reason}"))
            };
            let (state, delay) = match dead_reason {
                Some(r) => {
                    reasons.push(Some(r));
                    dead += 1;
                    died.insert(id);
                    ("x", 0)
                }
                None => {
                    reasons.push(None);
                    let d = retry_after.unwrap_or_else(|| q.settings.backoff(n));
                    let d = super::ms(d);
                    if d == 0 {
                        pending += 1;
                        ("p", 0)
                    } else {
                        delayed += 1;
                        ("d", d)
                    }
                }
            };
            ids.push(id);
            states.push(state);
            delays.push(delay);
            attempts.push(i32::try_from(n).unwrap_or(i32::MAX));
        }
        tx.execute(
            "UPDATE workq_items i SET state = t.st::\"char\", attempts = t.a, \
             due_at = CASE WHEN t.st = 'd' THEN workq_ms() + t.d END, \
             rank = CASE WHEN t.st = 'p' THEN -nextval('workq_item_id') ELSE i.rank END, \
             reason = t.r, died_at = CASE WHEN t.st = 'x' THEN workq_ms() END, secret = NULL \
             FROM unnest($2::int8[], $3::text[], $4::int8[], $5::text[], $6::int4[]) \
             AS t(id, st, d, r, a) WHERE i.queue_id = $1 AND i.id = ANY($2) AND i.id = t.id",
            &[&q.id, &ids, &states, &delays, &reasons, &attempts],
        )
        .await
        .map_err(unavailable)?;
        let n = live.len() as i64;
        add_counters(
            &tx,
            q.id,
            [0, pending, delayed, -n, 0, dead, pending + delayed, 0],
        )
        .await?;
        let done: Vec<_> = live
            .iter()
            .map(|t| (*t, died.contains(&db_id(t.item))))
            .collect();
        Self::record_finished(&tx, &q, &done, Finish::Failed).await?;
        tx.commit().await.map_err(unavailable)?;
        if pending > 0 || q.sealed {
            self.notify_committed(name);
        }
        if delayed > 0 {
            self.inner.reaper.notify_one();
        }
        for r in judged.results.iter_mut().filter(|r| r.done()) {
            r.dead = died.contains(&db_id(r.token.item));
        }
        metrics::counter!("workq_items_failed_total").increment(live.len() as u64);
        Ok(judged.results)
    }

    /// Gives leased items back at once, first in line in the order given,
    /// no attempt counted.
    pub async fn release_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("release", tokens)?;
        self.release_tokens(name, tokens, batch).await
    }

    async fn release_tokens(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q = self.queue_row(&tx, name, "").await?;
        let judged = self
            .judge(&tx, &q, name, tokens, Some(Finish::Released), batch)
            .await?;
        let live = judged.live();
        if live.is_empty() {
            // Ended here, not by dropping it: a dropped transaction's
            // rollback is sent but not awaited, and the rows judged would
            // stay locked a moment after the answer (a lease at once would
            // skip them).
            tx.commit().await.map_err(unavailable)?;
            return Ok(judged.results);
        }
        // The first given goes first in line: it gets the newest (most
        // negative) front rank.
        let mut ranks: Vec<i64> = tx
            .query_one(
                "SELECT array_agg(-nextval('workq_item_id')) FROM generate_series(1, $1::int4)",
                &[&i32::try_from(live.len()).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        ranks.sort_unstable();
        let ids: Vec<i64> = live.iter().map(|t| db_id(t.item)).collect();
        tx.execute(
            "UPDATE workq_items i SET state = 'p', due_at = NULL, rank = t.r, secret = NULL \
             FROM unnest($2::int8[], $3::int8[]) AS t(id, r) \
             WHERE i.queue_id = $1 AND i.id = ANY($2) AND i.id = t.id",
            &[&q.id, &ids, &ranks],
        )
        .await
        .map_err(unavailable)?;
        let n = live.len() as i64;
        add_counters(&tx, q.id, [0, n, 0, -n, 0, 0, 0, 0]).await?;
        let done: Vec<_> = live.iter().map(|t| (*t, false)).collect();
        Self::record_finished(&tx, &q, &done, Finish::Released).await?;
        tx.commit().await.map_err(unavailable)?;
        self.notify_committed(name);
        Ok(judged.results)
    }

    /// Gives back those of `tokens` still live; the others are skipped.
    /// Returns how many were released.
    pub async fn release_held(&self, name: &QueueName, tokens: &[LeaseToken]) -> Result<usize> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let n = self
            .release_tokens(name, tokens, Batch::EachToken)
            .await?
            .iter()
            .filter(|r| r.done())
            .count();
        if n > 0 {
            metrics::counter!("workq_items_released_total").increment(n as u64);
        }
        Ok(n)
    }

    /// The tokens of `tokens` that are live leases now; `None` when the
    /// database could not say (keep them all).
    async fn live_of(
        &self,
        name: &QueueName,
        tokens: impl Iterator<Item = LeaseToken>,
    ) -> Option<HashSet<LeaseToken>> {
        let tokens: Vec<LeaseToken> = tokens.collect();
        if tokens.is_empty() {
            return Some(HashSet::new());
        }
        let client = self.client().await.ok()?;
        let ids: Vec<i64> = tokens.iter().map(|t| db_id(t.item)).collect();
        let rows = client
            .query(
                "SELECT i.id, i.seq, i.secret FROM workq_items i JOIN workq_queues q \
                 ON q.id = i.queue_id WHERE q.name = $1 AND i.id = ANY($2) \
                 AND i.state::text = 'l' AND i.due_at > workq_ms()",
                &[&name.as_str(), &ids],
            )
            .await
            .ok()?;
        let live: HashMap<i64, (i64, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (r.get(1), r.get::<_, Option<Vec<u8>>>(2).unwrap_or_default()),
                )
            })
            .collect();
        Some(
            tokens
                .into_iter()
                .filter(|t| {
                    live.get(&db_id(t.item)).is_some_and(|(seq, secret)| {
                        i64::try_from(t.seq).ok() == Some(*seq) && same_secret(secret, t)
                    })
                })
                .collect(),
        )
    }

    /// Keeps in `tokens` only the leases still live.
    pub async fn retain_live(&self, name: &QueueName, tokens: &mut HashSet<LeaseToken>) {
        if let Some(live) = self.live_of(name, tokens.iter().copied()).await {
            tokens.retain(|t| live.contains(t));
        }
    }

    /// [`PgEngine::retain_live`] of a map keyed by token.
    pub async fn retain_live_map<V, S: std::hash::BuildHasher>(
        &self,
        name: &QueueName,
        tokens: &mut HashMap<LeaseToken, V, S>,
    ) {
        if let Some(live) = self.live_of(name, tokens.keys().copied()).await {
            tokens.retain(|t, _| live.contains(t));
        }
    }
}
