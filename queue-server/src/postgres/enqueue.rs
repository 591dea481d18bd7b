//! Enqueue on PostgreSQL: a batch is one `INSERT … SELECT FROM unnest(…)`
//! (arrays, not a loop). A batch without idempotency keys goes in one
//! statement with the batches of other calls on its queue
//! (`enqueue_fast.rs`: one round trip and one commit for them all); if that
//! statement cannot add it (a request id already used, a sealed or missing
//! queue) it changes nothing for it and the general path answers. The
//! general path is one transaction: idempotency keys one `INSERT … ON
//! CONFLICT` that answers, per key, the item it names; request ids
//! remembered for the idempotency window. With `--max-queued-bytes` set, a
//! batch is first checked against the bytes every queue holds (the `bytes`
//! counters).

use super::enqueue_fast::Fast;
use super::queues::add_counters;
use super::{PgEngine, attrs_text, unavailable};
use crate::engine::EnqueueItem;
use crate::error::{Error, Result};
use crate::names::{ItemId, QueueName};
use crate::queue::Enqueued;
use crate::settings::QueueSettings;
use std::collections::HashMap;

impl PgEngine {
    fn check_items(&self, items: &[EnqueueItem]) -> Result<()> {
        let limits = &self.inner.limits;
        limits.check_batch("items", "enqueue", items.len())?;
        for (i, it) in items.iter().enumerate() {
            limits.check_item(
                i,
                it.payload.len(),
                &it.attributes,
                it.idempotency_key.as_deref(),
                it.delay,
            )?;
        }
        Ok(())
    }

    /// Refuses a batch that would take the bytes of items the database
    /// holds (all queues, every replica's enqueues committed) past
    /// [`crate::settings::Limits::max_queued_bytes`]; no statement when
    /// there is no limit.
    async fn check_room(&self, items: &[EnqueueItem]) -> Result<()> {
        let max = self.inner.limits.max_queued_bytes;
        if max == u64::MAX {
            return Ok(());
        }
        let cost: u64 = items
            .iter()
            .map(|it| u64::try_from(held_bytes(it)).unwrap_or(0))
            .sum();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT coalesce(sum(bytes), 0)::int8 FROM workq_counters")
            .await
            .map_err(unavailable)?;
        let held: i64 = client
            .query_one(&stmt, &[])
            .await
            .map_err(unavailable)?
            .get(0);
        let held = u64::try_from(held).unwrap_or(0);
        if held.saturating_add(cost) > max {
            return Err(Error::Exhausted {
                limit: "max_queued_bytes",
                max,
                message: format!(
                    "the database holds {held} bytes of items, and {cost} more would exceed \
                     the limit of {max} bytes (queue-server --max-queued-bytes); consume or \
                     purge items, or retry later"
                ),
            });
        }
        Ok(())
    }

    /// Adds a batch of items, all or nothing, creating the queue when
    /// `create` is set; a call named by a `request_id` remembered is
    /// answered with its items and `true` (replayed), adding nothing.
    pub async fn enqueue_request(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        create: bool,
        request_id: Option<&str>,
    ) -> Result<(Vec<Enqueued>, bool)> {
        self.check_items(&items)?;
        self.check_room(&items).await?;
        let request_id = request_id.filter(|r| !r.is_empty());
        let n = items.len();
        let items = if items
            .iter()
            .all(|it| it.idempotency_key.as_deref().is_none_or(str::is_empty))
        {
            match self.enqueue_fast(name, items, request_id).await? {
                Fast::Added(out) => return Ok((out, false)),
                Fast::Own(items) => items,
            }
        } else {
            items
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Shared: concurrent enqueues go on; a seal waits for them.
        let q = match self.queue_row(&tx, name, "FOR SHARE").await {
            Err(Error::QueueNotFound(_)) if create => {
                tx.rollback().await.map_err(unavailable)?;
                drop(client);
                self.create_queue_with(name, QueueSettings::UNSET.into())
                    .await?;
                return Box::pin(self.enqueue_request(name, items, false, request_id)).await;
            }
            Err(e) => {
                // Ended, not dropped (see `finish.rs`); the refusal is the
                // answer whatever the rollback says.
                let _ = tx.rollback().await;
                return Err(e);
            }
            Ok(q) => q,
        };
        let window =
            i64::try_from(self.inner.limits.idempotency_window.as_millis()).unwrap_or(i64::MAX);
        if let Some(id) = request_id {
            let earlier = tx
                .query_opt(
                    "SELECT ids, duplicates FROM workq_requests WHERE queue_id = $1 \
                     AND request_id = $2 AND at > workq_ms() - $3",
                    &[&q.id, &id, &window],
                )
                .await
                .map_err(unavailable)?;
            if let Some(row) = earlier {
                let ids: Vec<i64> = row.get(0);
                let dups: Vec<bool> = row.get(1);
                // Ended, not dropped: see `finish.rs`.
                tx.rollback().await.map_err(unavailable)?;
                if ids.len() != n {
                    return Err(Error::RequestIdReused {
                        request_id: crate::names::quoted(id),
                        earlier: ids.len(),
                        now: n,
                    });
                }
                let out = ids
                    .iter()
                    .zip(dups)
                    .map(|(id, duplicate)| Enqueued {
                        id: ItemId(u64::try_from(*id).unwrap_or(0)),
                        duplicate,
                    })
                    .collect();
                return Ok((out, true));
            }
        }
        if q.sealed {
            tx.rollback().await.map_err(unavailable)?;
            return Err(Error::Sealed(name.clone()));
        }
        let ids: Vec<i64> = tx
            .query_one(
                "SELECT array_agg(nextval('workq_item_id')) FROM generate_series(1, $1::int4)",
                &[&i32::try_from(n).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        // Each key once (the first item that names it), then what each key
        // names after the upsert: our item, or the earlier one.
        let mut first_of: HashMap<&str, i64> = HashMap::new();
        for (it, id) in items.iter().zip(&ids) {
            if let Some(k) = it.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
                first_of.entry(k).or_insert(*id);
            }
        }
        let mut named: HashMap<String, i64> = HashMap::new();
        if !first_of.is_empty() {
            let (keys, key_ids): (Vec<&str>, Vec<i64>) =
                first_of.iter().map(|(k, i)| (*k, *i)).unzip();
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO workq_keys (queue_id, key, item) \
                     SELECT $1, k, i FROM unnest($2::text[], $3::int8[]) AS t(k, i) \
                     ON CONFLICT (queue_id, key) DO UPDATE SET \
                     item = CASE WHEN workq_keys.expires_at <= workq_ms() \
                         THEN excluded.item ELSE workq_keys.item END, \
                     expires_at = CASE WHEN workq_keys.expires_at <= workq_ms() \
                         THEN NULL ELSE workq_keys.expires_at END \
                     RETURNING key, item",
                )
                .await
                .map_err(unavailable)?;
            for row in tx
                .query(&stmt, &[&q.id, &keys, &key_ids])
                .await
                .map_err(unavailable)?
            {
                named.insert(row.get(0), row.get(1));
            }
        }
        let mut out = Vec::with_capacity(n);
        let (mut new_ids, mut delays, mut payloads, mut attrs, mut keys, mut sizes) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut pending, mut delayed, mut bytes) = (0i64, 0i64, 0i64);
        for (it, id) in items.iter().zip(&ids) {
            let key = it.idempotency_key.as_deref().filter(|k| !k.is_empty());
            if let Some(k) = key
                && let Some(existing) = named.get(k)
                && existing != id
            {
                out.push(Enqueued {
                    id: ItemId(u64::try_from(*existing).unwrap_or(0)),
                    duplicate: true,
                });
                continue;
            }
            let delay = i64::try_from(it.delay.as_millis()).unwrap_or(i64::MAX);
            if delay > 0 {
                delayed += 1;
            } else {
                pending += 1;
            }
            new_ids.push(*id);
            delays.push(delay);
            payloads.push(it.payload.as_ref());
            attrs.push(attrs_text(&it.attributes));
            keys.push(key);
            sizes.push(answer_size(it));
            bytes += held_bytes(it);
            out.push(Enqueued {
                id: ItemId(u64::try_from(*id).unwrap_or(0)),
                duplicate: false,
            });
        }
        if !new_ids.is_empty() {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO workq_items (queue_id, id, rank, state, due_at, enqueued_at, \
                     size, payload, attrs, idem_key) \
                     SELECT $1, id, id, CASE WHEN d > 0 THEN 'd' ELSE 'p' END::\"char\", \
                     CASE WHEN d > 0 THEN workq_ms() + d END, workq_ms(), s, p, a, k \
                     FROM unnest($2::int8[], $3::int8[], $4::bytea[], $5::text[], $6::text[], \
                     $7::int4[]) AS t(id, d, p, a, k, s)",
                )
                .await
                .map_err(unavailable)?;
            tx.execute(
                &stmt,
                &[&q.id, &new_ids, &delays, &payloads, &attrs, &keys, &sizes],
            )
            .await
            .map_err(unavailable)?;
            add_counters(
                &tx,
                q.id,
                [pending + delayed, pending, delayed, 0, 0, 0, 0, bytes],
            )
            .await?;
        }
        if let Some(id) = request_id {
            let all: Vec<i64> = out.iter().map(|e| super::db_id(e.id)).collect();
            let dups: Vec<bool> = out.iter().map(|e| e.duplicate).collect();
            tx.execute(
                "INSERT INTO workq_requests (queue_id, request_id, ids, duplicates, at) \
                 VALUES ($1, $2, $3, $4, workq_ms()) ON CONFLICT (queue_id, request_id) \
                 DO UPDATE SET ids = excluded.ids, duplicates = excluded.duplicates, \
                 at = excluded.at",
                &[&q.id, &id, &all, &dups],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        if pending > 0 {
            self.notify_committed(name);
        }
        if delayed > 0 {
            self.inner.reaper.notify_one();
        }
        metrics::counter!("workq_items_enqueued_total").increment(new_ids.len() as u64);
        Ok((out, false))
    }
}

/// What an item counts against `--max-queued-bytes` (the `bytes` counters):
/// its answer size and its idempotency key.
fn held_bytes(it: &EnqueueItem) -> i64 {
    i64::from(answer_size(it))
        + it.idempotency_key
            .as_deref()
            .map_or(0, |k| i64::try_from(k.len()).unwrap_or(i64::MAX))
}

/// What an item adds to a lease answer ([`crate::item::Item::answer_bytes`]
/// but its reason), kept with it for leases' byte budgets.
pub(super) fn answer_size(it: &EnqueueItem) -> i32 {
    let n = it.payload.len()
        + it.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len() + crate::settings::ATTRIBUTE_OVERHEAD)
            .sum::<usize>()
        + crate::settings::ITEM_OVERHEAD;
    i32::try_from(n).unwrap_or(i32::MAX)
}
