//! The queues' lifecycle on PostgreSQL: create, describe, list, change,
//! delete, purge and seal; and watching a queue across replicas.

use super::{PgEngine, QueueRow, STRIPES, ms, stripe, to_duration, unavailable};
use crate::counters::Counters;
use crate::engine::QueueInfo;
use crate::error::{Error, Result};
use crate::names::QueueName;
use crate::settings::{QueueSettings, SettingsPatch};
use deadpool_postgres::GenericClient;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::Row;

/// A queue's description: its row and its counters summed over the stripes,
/// in one snapshot.
const DESCRIBE: &str = "SELECT q.name, q.default_lease_ms, q.max_attempts, q.retry_backoff_ms, \
     q.retry_backoff_max_ms, q.sealed, \
     coalesce(sum(c.enqueued), 0)::int8, coalesce(sum(c.pending), 0)::int8, \
     coalesce(sum(c.delayed), 0)::int8, coalesce(sum(c.leased), 0)::int8, \
     coalesce(sum(c.completed), 0)::int8, coalesce(sum(c.dead), 0)::int8, \
     coalesce(sum(c.retried), 0)::int8 \
     FROM workq_queues q LEFT JOIN workq_counters c ON c.queue_id = q.id";

/// How often a watched queue is described again even without a
/// notification (completions notify only sealed queues).
const WATCH_POLL: Duration = Duration::from_secs(1);

fn count(row: &Row, i: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(i)).unwrap_or(0)
}

fn info_of(row: &Row) -> Result<QueueInfo> {
    let name: String = row.get(0);
    let counters = Counters {
        enqueued: count(row, 6),
        pending: count(row, 7),
        delayed: count(row, 8),
        leased: count(row, 9),
        completed: count(row, 10),
        dead: count(row, 11),
        retried: count(row, 12),
    };
    let sealed: bool = row.get(5);
    Ok(QueueInfo {
        name: name
            .parse()
            .map_err(|e: crate::names::ParseError| unavailable(e.0))?,
        settings: QueueSettings {
            default_lease: to_duration(row.get(1)),
            max_attempts: u32::try_from(row.get::<_, i32>(2)).unwrap_or(1),
            retry_backoff: to_duration(row.get(3)),
            retry_backoff_max: to_duration(row.get(4)),
        },
        counters,
        sealed,
        drained: sealed && counters.is_empty(),
    })
}

/// Adds `delta` to the counters of queue `id` (one stripe), in the
/// transaction of `client`. Deltas: enqueued, pending, delayed, leased,
/// completed, dead, retried, bytes (of items held).
pub(crate) async fn add_counters(
    client: &impl GenericClient,
    id: i64,
    delta: [i64; 8],
) -> Result<()> {
    if delta.iter().all(|d| *d == 0) {
        return Ok(());
    }
    let stmt = client
        .prepare_cached(
            "UPDATE workq_counters SET enqueued = enqueued + $3, pending = pending + $4, \
             delayed = delayed + $5, leased = leased + $6, completed = completed + $7, \
             dead = dead + $8, retried = retried + $9, bytes = bytes + $10 \
             WHERE queue_id = $1 AND stripe = $2",
        )
        .await
        .map_err(unavailable)?;
    let [a, b, c, d, e, f, g, h] = delta;
    client
        .execute(&stmt, &[&id, &stripe(), &a, &b, &c, &d, &e, &f, &g, &h])
        .await
        .map_err(unavailable)?;
    Ok(())
}

impl PgEngine {
    /// Creates a queue; unset settings take the defaults. Returns the queue
    /// and whether it was created (false: it existed with these settings).
    pub async fn create_queue_with(
        &self,
        name: &QueueName,
        settings: SettingsPatch,
    ) -> Result<(QueueInfo, bool)> {
        let settings = self
            .inner
            .limits
            .check_settings(settings, &self.inner.defaults)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        if let Ok(existing) = self.queue_row(&tx, name, "").await {
            // Ended, not dropped: see `finish.rs`.
            tx.rollback().await.map_err(unavailable)?;
            if existing.settings != settings {
                return Err(Error::QueueExists(name.clone()));
            }
            drop(client);
            return Ok((self.get_queue(name).await?, false));
        }
        let max_queues = self.inner.limits.max_queues;
        let n: i64 = tx
            .query_one("SELECT count(*) FROM workq_queues", &[])
            .await
            .map_err(unavailable)?
            .get(0);
        if usize::try_from(n).unwrap_or(usize::MAX) >= max_queues {
            tx.rollback().await.map_err(unavailable)?;
            return Err(Error::Exhausted {
                limit: "max_queues",
                max: max_queues as u64,
                message: format!(
                    "cannot create queue {name}: the database holds {n} queues, the limit of \
                     {max_queues} (queue-server --max-queues); delete unused queues or raise \
                     the limit"
                ),
            });
        }
        let stmt = tx
            .prepare_cached(
                "WITH q AS (INSERT INTO workq_queues (name, default_lease_ms, max_attempts, \
                 retry_backoff_ms, retry_backoff_max_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO NOTHING RETURNING id) \
                 INSERT INTO workq_counters (queue_id, stripe) \
                 SELECT q.id, s FROM q, generate_series(0, $6::int2 - 1) s",
            )
            .await
            .map_err(unavailable)?;
        let created = tx
            .execute(
                &stmt,
                &[
                    &name.as_str(),
                    &ms(settings.default_lease),
                    &i32::try_from(settings.max_attempts).unwrap_or(i32::MAX),
                    &ms(settings.retry_backoff),
                    &ms(settings.retry_backoff_max),
                    &STRIPES,
                ],
            )
            .await
            .map_err(unavailable)?
            > 0;
        tx.commit().await.map_err(unavailable)?;
        drop(client);
        if !created {
            // Created meanwhile by another call or replica.
            let info = self.get_queue(name).await?;
            if info.settings != settings {
                return Err(Error::QueueExists(name.clone()));
            }
            return Ok((info, false));
        }
        metrics::counter!("workq_queues_created_total").increment(1);
        Ok((self.get_queue(name).await?, true))
    }

    /// Describes one queue.
    pub async fn get_queue(&self, name: &QueueName) -> Result<QueueInfo> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{DESCRIBE} WHERE q.name = $1 GROUP BY q.id"))
            .await
            .map_err(unavailable)?;
        let row = client
            .query_opt(&stmt, &[&name.as_str()])
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::QueueNotFound(name.clone()))?;
        info_of(&row)
    }

    /// Describes the queues named after `after`, in name order, at most
    /// `limit`; and whether more follow.
    pub async fn list_queues_page(
        &self,
        after: Option<&QueueName>,
        limit: usize,
    ) -> Result<(Vec<QueueInfo>, bool)> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{DESCRIBE} WHERE $1::text IS NULL OR q.name > $1 GROUP BY q.id \
                 ORDER BY q.name LIMIT $2"
            ))
            .await
            .map_err(unavailable)?;
        let fetch = i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1);
        let rows = client
            .query(&stmt, &[&after.map(QueueName::as_str), &fetch])
            .await
            .map_err(unavailable)?;
        let more = rows.len() > limit;
        let out = rows
            .iter()
            .take(limit)
            .map(info_of)
            .collect::<Result<Vec<_>>>()?;
        Ok((out, more))
    }

    /// Changes a queue's settings (those set in `patch`).
    pub async fn update_queue(&self, name: &QueueName, patch: SettingsPatch) -> Result<QueueInfo> {
        {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let checked = match self.queue_row(&tx, name, "FOR UPDATE").await {
                Ok(row) => self
                    .inner
                    .limits
                    .check_settings(patch, &row.settings)
                    .map(|s| (row, s)),
                Err(e) => Err(e),
            };
            let (row, s) = match checked {
                Ok(c) => c,
                Err(e) => {
                    // Ended, not dropped (the row stays locked until a
                    // dropped transaction's rollback lands).
                    let _ = tx.rollback().await;
                    return Err(e);
                }
            };
            tx.execute(
                "UPDATE workq_queues SET default_lease_ms = $2, max_attempts = $3, \
                 retry_backoff_ms = $4, retry_backoff_max_ms = $5 WHERE id = $1",
                &[
                    &row.id,
                    &ms(s.default_lease),
                    &i32::try_from(s.max_attempts).unwrap_or(i32::MAX),
                    &ms(s.retry_backoff),
                    &ms(s.retry_backoff_max),
                ],
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            self.notify_committed(name);
        }
        self.get_queue(name).await
    }

    /// Deletes a queue and all its items; parked calls on it (in every
    /// replica) answer NOT_FOUND, watchers see the end.
    pub async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let deleted = tx
            .query_opt(
                "DELETE FROM workq_queues WHERE name = $1 RETURNING id",
                &[&name.as_str()],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = deleted else {
            tx.rollback().await.map_err(unavailable)?;
            return Err(Error::QueueNotFound(name.clone()));
        };
        let id: i64 = row.get(0);
        // Items and finish records have no foreign key (migration 2): gone
        // here, after the queue's row (so enqueues holding it have
        // committed, and later ones find no queue).
        tx.execute(
            "WITH gone AS (SELECT $1::int8 AS id), \
             i AS (DELETE FROM workq_items WHERE queue_id = (SELECT id FROM gone)) \
             DELETE FROM workq_finished WHERE queue_id = (SELECT id FROM gone)",
            &[&id],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.notify_committed(name);
        Ok(())
    }

    /// Removes every pending and delayed item; returns how many.
    pub async fn purge(&self, name: &QueueName) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let q: QueueRow = match self.queue_row(&tx, name, "FOR SHARE").await {
            Ok(q) => q,
            Err(e) => {
                // Ended, not dropped: see `finish.rs`.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let row = tx
            .query_one(
                "WITH gone AS (DELETE FROM workq_items WHERE queue_id = $1 \
                 AND state IN ('p', 'd') \
                 RETURNING state, idem_key, size + coalesce(octet_length(idem_key), 0) AS b), \
                 keys AS (DELETE FROM workq_keys k USING gone \
                 WHERE k.queue_id = $1 AND k.key = gone.idem_key) \
                 SELECT count(*) FILTER (WHERE state = 'p'), count(*) FILTER (WHERE state = 'd'), \
                 coalesce(sum(b), 0)::int8 FROM gone",
                &[&q.id],
            )
            .await
            .map_err(unavailable)?;
        let (p, d, bytes): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        add_counters(&tx, q.id, [-(p + d), -p, -d, 0, 0, 0, 0, -bytes]).await?;
        tx.commit().await.map_err(unavailable)?;
        self.notify_committed(name);
        Ok(u64::try_from(p + d).unwrap_or(0))
    }

    /// Seals a queue.
    pub async fn seal(&self, name: &QueueName) -> Result<QueueInfo> {
        {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(unavailable)?;
            let n = tx
                .execute(
                    "UPDATE workq_queues SET sealed = true WHERE name = $1",
                    &[&name.as_str()],
                )
                .await
                .map_err(unavailable)?;
            if n == 0 {
                tx.rollback().await.map_err(unavailable)?;
                return Err(Error::QueueNotFound(name.clone()));
            }
            tx.commit().await.map_err(unavailable)?;
            self.notify_committed(name);
        }
        self.get_queue(name).await
    }

    /// Follows a queue's description: the current one, then every change
    /// any replica makes (at once when it notifies, else within
    /// [`WATCH_POLL`]); `None` once deleted.
    pub async fn watch(&self, name: &QueueName) -> Result<watch::Receiver<Option<QueueInfo>>> {
        let info = self.get_queue(name).await?;
        let waker = self.waker(name);
        let mut slot = waker.info.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref()
            && !tx.is_closed()
        {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = watch::channel(Some(info));
        *slot = Some(tx.clone());
        drop(slot);
        let (engine, name) = (self.clone(), name.clone());
        tokio::spawn(async move {
            loop {
                let changed = waker.changed.notified();
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(WATCH_POLL) => {}
                    () = tx.closed() => return,
                    () = engine.stopping() => return,
                }
                match engine.get_queue(&name).await {
                    Ok(new) => {
                        tx.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&new) {
                                false
                            } else {
                                *cur = Some(new);
                                true
                            }
                        });
                    }
                    Err(Error::QueueNotFound(_)) => {
                        tx.send_replace(None);
                        let mut slot = waker.info.lock().unwrap_or_else(|p| p.into_inner());
                        *slot = None;
                        return;
                    }
                    // The database is away: try again on the next turn.
                    Err(_) => {}
                }
            }
        });
        Ok(rx)
    }
}
