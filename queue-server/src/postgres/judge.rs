//! Judging lease tokens on PostgreSQL, as the local engine judges them
//! (`queue/leases.rs`): the named items are read and locked (`FOR UPDATE`,
//! in id order) with the record of how each item's last lease finished,
//! and each token is live, already done by this very lease, or refused with
//! the reason the local engine gives. And the record of a finish, written
//! in the finish's own transaction (a retry after an in-doubt COMMIT is
//! answered from it).

use super::{PgEngine, QueueRow, db_id, unavailable};
use crate::error::{Error, Finish, Result, StaleCause};
use crate::names::{LeaseToken, QueueName};
use crate::queue::{Batch, Outcome, TokenResult};
use deadpool_postgres::{GenericClient, Transaction};
use std::collections::{HashMap, HashSet};

/// What a token that is not a live lease is, against what a call wants to
/// do with it.
enum Verdict {
    AlreadyDone(bool),
    Refused(Error),
}

/// An item as a finish reads it.
pub(super) struct ItemRow {
    pub(super) state: i8,
    pub(super) seq: i64,
    pub(super) secret: Option<Vec<u8>>,
    pub(super) live: bool,
    pub(super) attempts: i32,
    pub(super) key: Option<String>,
}

/// How an item's last lease finished.
struct FinishedRow {
    seq: i64,
    secret: Vec<u8>,
    how: Finish,
    dead: bool,
}

fn how_of(c: i8) -> Finish {
    match c as u8 {
        b'c' => Finish::Completed,
        b'f' => Finish::Failed,
        _ => Finish::Released,
    }
}

fn how_char(f: Finish) -> &'static str {
    match f {
        Finish::Completed => "c",
        Finish::Failed => "f",
        Finish::Released => "r",
    }
}

pub(super) fn same_secret(a: &[u8], t: &LeaseToken) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == t.secret.len() && bool::from(a.ct_eq(&t.secret))
}

pub(super) fn result(token: LeaseToken, outcome: Outcome) -> TokenResult {
    TokenResult {
        token,
        outcome,
        deadline: None,
        dead: false,
    }
}

/// A judged batch: per token its result, and the items of the live ones.
pub(super) struct Judged {
    pub(super) results: Vec<TokenResult>,
    pub(super) items: HashMap<i64, ItemRow>,
}

impl Judged {
    /// The live tokens, in the order given.
    pub(super) fn live(&self) -> Vec<LeaseToken> {
        self.results
            .iter()
            .filter(|r| r.done())
            .map(|r| r.token)
            .collect()
    }
}

impl PgEngine {
    /// Reads, locks and judges `tokens` for `op` (a renewal: `None`).
    pub(super) async fn judge(
        &self,
        tx: &Transaction<'_>,
        q: &QueueRow,
        name: &QueueName,
        tokens: &[LeaseToken],
        op: Option<Finish>,
        batch: Batch,
    ) -> Result<Judged> {
        let ids: Vec<i64> = tokens.iter().map(|t| db_id(t.item)).collect();
        let items_stmt = tx
            .prepare_cached(
                "SELECT id, state, seq, secret, due_at > workq_ms(), attempts, idem_key \
                 FROM workq_items WHERE queue_id = $1 AND id = ANY($2) ORDER BY id FOR UPDATE",
            )
            .await
            .map_err(unavailable)?;
        let finished_stmt = tx
            .prepare_cached(
                "SELECT item, seq, secret, how, dead FROM workq_finished \
                 WHERE queue_id = $1 AND item = ANY($2)",
            )
            .await
            .map_err(unavailable)?;
        let completed_stmt = tx
            .prepare_cached(
                // OFFSET 0 keeps the subquery per id (not flattened into a
                // join the planner may turn into a scan of every record).
                "SELECT x.id, c.seq, c.secret FROM unnest($2::int8[]) AS x(id) \
                 CROSS JOIN LATERAL (SELECT c.seqs[array_position(c.items, x.id)] AS seq, \
                 c.secrets[array_position(c.items, x.id)] AS secret FROM workq_completed c \
                 WHERE int8range(c.lo, c.hi, '[]') @> x.id AND c.queue_id = $1 \
                 AND x.id = ANY(c.items) OFFSET 0) c",
            )
            .await
            .map_err(unavailable)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&q.id, &ids];
        let (item_rows, finished_rows, completed_rows) = futures::try_join!(
            tx.query(&items_stmt, &params),
            tx.query(&finished_stmt, &params),
            tx.query(&completed_stmt, &params),
        )
        .map_err(unavailable)?;
        let items: HashMap<i64, ItemRow> = item_rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    ItemRow {
                        state: r.get(1),
                        seq: r.get(2),
                        secret: r.get(3),
                        live: r.get::<_, Option<bool>>(4).unwrap_or(false),
                        attempts: r.get(5),
                        key: r.get(6),
                    },
                )
            })
            .collect();
        let mut finished: HashMap<i64, FinishedRow> = finished_rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    FinishedRow {
                        seq: r.get(1),
                        secret: r.get(2),
                        how: how_of(r.get(3)),
                        dead: r.get(4),
                    },
                )
            })
            .collect();
        // A completion recorded per call ends the item: it is its last
        // finish unless a record of a later lease says otherwise.
        for r in &completed_rows {
            let (id, seq): (i64, i64) = (r.get(0), r.get(1));
            if finished.get(&id).is_none_or(|f| f.seq < seq) {
                let row = FinishedRow {
                    seq,
                    secret: r.get(2),
                    how: Finish::Completed,
                    dead: false,
                };
                finished.insert(id, row);
            }
        }
        let stale = |token: LeaseToken, cause| Error::StaleLease {
            queue: name.clone(),
            token,
            cause,
        };
        let mut seen = HashSet::with_capacity(tokens.len());
        let mut results = Vec::with_capacity(tokens.len());
        for t in tokens {
            let id = db_id(t.item);
            let seq = i64::try_from(t.seq).unwrap_or(-1);
            let v = if !seen.insert(t.item) {
                Verdict::Refused(Error::DuplicateToken { item: t.item })
            } else if let Some(f) = finished.get(&id)
                && f.seq == seq
                && same_secret(&f.secret, t)
            {
                if Some(f.how) == op {
                    Verdict::AlreadyDone(f.dead)
                } else {
                    Verdict::Refused(stale(*t, StaleCause::Finished(f.how)))
                }
            } else {
                let cause = match items.get(&id) {
                    None => StaleCause::ItemCompleted,
                    Some(i)
                        if i.state == b'l' as i8
                            && i.seq == seq
                            && i.secret.as_deref().is_some_and(|s| same_secret(s, t)) =>
                    {
                        if i.live {
                            results.push(result(*t, Outcome::Done));
                            continue;
                        }
                        StaleCause::Expired
                    }
                    Some(i) if i.state == b'l' as i8 => StaleCause::Taken,
                    Some(i) if i.state == b'x' as i8 => StaleCause::ItemDead,
                    Some(_) => StaleCause::Expired,
                };
                Verdict::Refused(stale(*t, cause))
            };
            let r = match v {
                Verdict::AlreadyDone(dead) => TokenResult {
                    dead,
                    ..result(*t, Outcome::AlreadyDone)
                },
                Verdict::Refused(e) => {
                    if batch == Batch::AllOrNothing {
                        return Err(e);
                    }
                    result(*t, Outcome::Refused(e))
                }
            };
            results.push(r);
        }
        Ok(Judged { results, items })
    }

    /// Records how the leases of `done` finished.
    pub(super) async fn record_finished(
        tx: &Transaction<'_>,
        q: &QueueRow,
        done: &[(LeaseToken, bool)],
        how: Finish,
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = done.iter().map(|(t, _)| db_id(t.item)).collect();
        let seqs: Vec<i64> = done
            .iter()
            .map(|(t, _)| i64::try_from(t.seq).unwrap_or(-1))
            .collect();
        let secrets: Vec<&[u8]> = done.iter().map(|(t, _)| &t.secret[..]).collect();
        let dead: Vec<bool> = done.iter().map(|(_, d)| *d).collect();
        let stmt = tx
            .prepare_cached(
                "INSERT INTO workq_finished (queue_id, item, seq, secret, how, dead, at) \
                 SELECT $1, i, s, x, $5::text::\"char\", d, workq_ms() \
                 FROM unnest($2::int8[], $3::int8[], $4::bytea[], $6::bool[]) AS t(i, s, x, d) \
                 ON CONFLICT (queue_id, item) DO UPDATE SET seq = excluded.seq, \
                 secret = excluded.secret, how = excluded.how, dead = excluded.dead, \
                 at = excluded.at",
            )
            .await
            .map_err(unavailable)?;
        tx.execute(
            &stmt,
            &[&q.id, &ids, &seqs, &secrets, &how_char(how), &dead],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
