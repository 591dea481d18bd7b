//! Dead items on PostgreSQL: listed a page at a time, and requeued.

use super::queues::add_counters;
use super::{PgEngine, db_id, unavailable};
use crate::error::{Error, Result};
use crate::names::{ItemId, QueueName};
use crate::queue::DeadItem;

impl PgEngine {
    /// Dead items with ids after `after`, in id order, at most `limit` and
    /// no more than fit in one answer; and whether more follow.
    pub async fn list_dead_page(
        &self,
        name: &QueueName,
        after: Option<ItemId>,
        limit: usize,
    ) -> Result<(Vec<DeadItem>, bool)> {
        let budget = self.inner.limits.answer_budget();
        let client = self.client().await?;
        let q = self.queue_row(&client, name, "").await?;
        let fetch = i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1);
        let rows = client
            .query(
                "SELECT id, payload, attrs, attempts, coalesce(reason, ''), \
                 coalesce(died_at, 0), size FROM workq_items \
                 WHERE queue_id = $1 AND state = 'x' AND id > $2 ORDER BY id LIMIT $3",
                &[&q.id, &after.map_or(0, db_id), &fetch],
            )
            .await
            .map_err(unavailable)?;
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for r in rows.iter().take(limit) {
            let reason: String = r.get(4);
            let size = usize::try_from(r.get::<_, i32>(6)).unwrap_or(0) + reason.len();
            if !out.is_empty() && bytes.saturating_add(size) > budget {
                break;
            }
            bytes = bytes.saturating_add(size);
            let payload: Vec<u8> = r.get(1);
            out.push(DeadItem {
                id: ItemId(u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)),
                payload: payload.into(),
                attributes: super::attrs_of(r.get(2)),
                attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                reason,
                died_at: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
            });
        }
        let more = out.len() < rows.len();
        Ok((out, more))
    }

    /// Moves dead items (all when `ids` is empty) back to pending, attempts
    /// reset; an id that is not dead refuses the call.
    pub async fn requeue_dead(&self, name: &QueueName, ids: &[ItemId]) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q = self.queue_row(&tx, name, "").await?;
        let chosen: Vec<i64> = if ids.is_empty() {
            tx.query(
                "SELECT id FROM workq_items WHERE queue_id = $1 AND state = 'x' \
                 ORDER BY id FOR UPDATE",
                &[&q.id],
            )
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.get(0))
            .collect()
        } else {
            let mut wanted: Vec<i64> = ids.iter().map(|i| db_id(*i)).collect();
            let rows = tx
                .query(
                    "SELECT id, state FROM workq_items WHERE queue_id = $1 AND id = ANY($2) \
                     ORDER BY id FOR UPDATE",
                    &[&q.id, &wanted],
                )
                .await
                .map_err(unavailable)?;
            let states: std::collections::HashMap<i64, i8> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for id in ids {
                match states.get(&db_id(*id)) {
                    Some(s) if *s == b'x' as i8 => {}
                    Some(_) => {
                        tx.rollback().await.map_err(unavailable)?;
                        return Err(Error::ItemNotDead {
                            queue: name.clone(),
                            item: *id,
                        });
                    }
                    None => {
                        tx.rollback().await.map_err(unavailable)?;
                        return Err(Error::ItemNotFound {
                            queue: name.clone(),
                            item: *id,
                        });
                    }
                }
            }
            wanted.sort_unstable();
            wanted.dedup();
            wanted
        };
        if chosen.is_empty() {
            // Ended, not dropped: see `finish.rs`.
            tx.commit().await.map_err(unavailable)?;
            return Ok(0);
        }
        // Back of the line, in id order.
        let ranks: Vec<i64> = tx
            .query_one(
                "SELECT array_agg(nextval('workq_item_id')) FROM generate_series(1, $1::int4)",
                &[&i32::try_from(chosen.len()).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        let mut ranks = ranks;
        ranks.sort_unstable();
        tx.execute(
            "UPDATE workq_items i SET state = 'p', attempts = 0, reason = NULL, died_at = NULL, \
             due_at = NULL, rank = t.r FROM unnest($2::int8[], $3::int8[]) AS t(id, r) \
             WHERE i.queue_id = $1 AND i.id = ANY($2) AND i.id = t.id",
            &[&q.id, &chosen, &ranks],
        )
        .await
        .map_err(unavailable)?;
        let n = chosen.len() as i64;
        add_counters(&tx, q.id, [0, n, 0, 0, 0, -n, 0, 0]).await?;
        tx.commit().await.map_err(unavailable)?;
        self.notify_committed(name);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
