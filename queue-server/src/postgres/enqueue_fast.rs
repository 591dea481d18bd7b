//! The one-statement enqueue, grouped: concurrent batches without
//! idempotency keys on one queue go in one `INSERT … SELECT FROM unnest(…)`
//! (`combine.rs` forms the groups).
//!
//! The statement takes the queue's row (shared lock: a seal waits), gives
//! every item of the group an id in order, remembers each batch's request
//! id (`ON CONFLICT DO NOTHING`), adds the items of every batch that is
//! new (no request id, or one not remembered), and moves one counter
//! stripe. A batch it cannot add (a request id already used, a sealed or
//! missing queue) is unchanged by it and answered "take your own path":
//! the general path (`enqueue.rs`) answers it — a replay, or the refusal —
//! exactly as alone. Two batches of one group never share a request id: a
//! later one waits for the next group, so it sees the first one's row.

use super::combine::{Driving, Waiting};
use super::{PgEngine, attrs_text, unavailable};
use crate::engine::EnqueueItem;
use crate::error::Result;
use crate::names::{ItemId, QueueName};
use crate::queue::Enqueued;
use std::collections::HashSet;
use std::sync::Arc;

/// Most items one grouped statement adds: a group stops before a batch
/// that would pass it (a batch alone may).
const GROUP_ITEMS: usize = 2000;

/// One batch in a group.
pub(crate) struct EnqueueCall {
    pub(crate) items: Vec<EnqueueItem>,
    pub(crate) request_id: Option<String>,
}

/// What a batch is answered.
pub(crate) enum Fast {
    /// Added: its items' ids, in order.
    Added(Vec<Enqueued>),
    /// Not added, nothing changed: the general path answers (its items
    /// back).
    Own(Vec<EnqueueItem>),
}

type EnqueueAnswer = Result<Fast>;

/// A line of enqueue batches.
pub(crate) type EnqueueLine = super::combine::Combiner<EnqueueCall, EnqueueAnswer>;

const GROUPED: &str = "\
WITH q AS (SELECT id FROM workq_queues WHERE name = $1 AND NOT sealed FOR SHARE), \
calls AS (SELECT c, r, n FROM unnest($6::text[], $7::int4[]) WITH ORDINALITY AS u(r, n, c)), \
new AS MATERIALIZED (SELECT nextval('workq_item_id') AS id, t.d, t.p, t.a, t.s, t.c, t.o \
    FROM q, unnest($2::int8[], $3::bytea[], $4::text[], $5::int4[], $9::int8[]) \
    WITH ORDINALITY AS t(d, p, a, s, c, o)), \
req AS (INSERT INTO workq_requests (queue_id, request_id, ids, duplicates, at) \
    SELECT q.id, k.r, (SELECT array_agg(id ORDER BY o) FROM new WHERE new.c = k.c), \
    array_fill(false, ARRAY[k.n]), workq_ms() FROM q, calls k WHERE k.r IS NOT NULL \
    ON CONFLICT DO NOTHING RETURNING request_id), \
ok AS (SELECT c FROM calls WHERE r IS NULL OR r IN (SELECT request_id FROM req)), \
ins AS (INSERT INTO workq_items (queue_id, id, rank, state, due_at, enqueued_at, size, \
    payload, attrs) \
    SELECT q.id, new.id, new.id, CASE WHEN d > 0 THEN 'd' ELSE 'p' END::\"char\", \
    CASE WHEN d > 0 THEN workq_ms() + d END, workq_ms(), s, p, a FROM q, new \
    WHERE new.c IN (SELECT c FROM ok) RETURNING state, size), \
cnt AS (UPDATE workq_counters SET enqueued = enqueued + (SELECT count(*) FROM ins), \
    pending = pending + (SELECT count(*) FROM ins WHERE state = 'p'), \
    delayed = delayed + (SELECT count(*) FROM ins WHERE state = 'd'), \
    bytes = bytes + (SELECT sum(size) FROM ins) \
    WHERE queue_id = (SELECT id FROM q) AND stripe = $8 AND EXISTS (SELECT 1 FROM ins)) \
SELECT EXISTS (SELECT 1 FROM q), (SELECT array_agg(c) FROM ok), \
    (SELECT array_agg(id ORDER BY o) FROM new), (SELECT count(*) FROM ins), \
    (SELECT count(*) FROM ins WHERE state = 'p'), (SELECT count(*) FROM ins WHERE state = 'd')";

impl PgEngine {
    /// Adds a batch without idempotency keys in its queue's next group.
    pub(super) async fn enqueue_fast(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        request_id: Option<&str>,
    ) -> Result<Fast> {
        let waker = self.waker(name);
        let call = EnqueueCall {
            items,
            request_id: request_id.map(str::to_owned),
        };
        let (answer, start) = waker.enqueue.join(call, self.inner.per_queue);
        if start {
            let (engine, name) = (self.clone(), name.clone());
            tokio::spawn(async move { engine.drive_enqueue(&name, waker).await });
        }
        answer
            .await
            .map_err(|_| unavailable("the statement's task ended before it answered"))?
    }

    async fn drive_enqueue(&self, name: &QueueName, waker: Arc<super::Waker>) {
        let mut driving = Driving::new(&waker.enqueue);
        while let Some(group) = waker.enqueue.next(GROUP_ITEMS, |c| c.items.len()) {
            // A request id once per group: a later batch with it goes in
            // the next group, after the first one's row is there.
            let mut ids = HashSet::new();
            let (now, later): (Vec<_>, Vec<_>) = group.into_iter().partition(|w| {
                w.call
                    .request_id
                    .as_ref()
                    .is_none_or(|r| ids.insert(r.clone()))
            });
            if !later.is_empty() {
                waker.enqueue.put_back(later);
            }
            self.enqueue_group(name, now).await;
        }
        driving.done = true;
    }

    /// Runs one group and answers its batches.
    async fn enqueue_group(
        &self,
        name: &QueueName,
        group: Vec<Waiting<EnqueueCall, EnqueueAnswer>>,
    ) {
        match self.enqueue_statement(name, &group).await {
            Err(e) => {
                let text = e.to_string();
                for w in group {
                    let _ = w.answer.send(Err(unavailable(&text)));
                }
            }
            Ok(added) => {
                for (w, ids) in group.into_iter().zip(added) {
                    let answer = match ids {
                        Some(ids) => {
                            metrics::counter!("workq_items_enqueued_total")
                                .increment(ids.len() as u64);
                            Fast::Added(ids)
                        }
                        None => Fast::Own(w.call.items),
                    };
                    let _ = w.answer.send(Ok(answer));
                }
            }
        }
    }

    /// One grouped statement (and, once it committed, the wake-ups it
    /// calls for): per batch its items' ids, or `None` when it was not
    /// added.
    async fn enqueue_statement(
        &self,
        name: &QueueName,
        group: &[Waiting<EnqueueCall, EnqueueAnswer>],
    ) -> Result<Vec<Option<Vec<Enqueued>>>> {
        let n: usize = group.iter().map(|w| w.call.items.len()).sum();
        let (mut delays, mut payloads, mut attrs, mut sizes, mut calls) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (c, w) in group.iter().enumerate() {
            for it in &w.call.items {
                delays.push(i64::try_from(it.delay.as_millis()).unwrap_or(i64::MAX));
                payloads.push(it.payload.as_ref());
                attrs.push(attrs_text(&it.attributes));
                sizes.push(super::enqueue::answer_size(it));
                calls.push(i64::try_from(c + 1).unwrap_or(i64::MAX));
            }
        }
        let request_ids: Vec<Option<&str>> =
            group.iter().map(|w| w.call.request_id.as_deref()).collect();
        let counts: Vec<i32> = group
            .iter()
            .map(|w| i32::try_from(w.call.items.len()).unwrap_or(i32::MAX))
            .collect();
        let client = self.client().await?;
        let stmt = client.prepare_cached(GROUPED).await.map_err(unavailable)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &name.as_str(),
                    &delays,
                    &payloads,
                    &attrs,
                    &sizes,
                    &request_ids,
                    &counts,
                    &super::stripe(),
                    &calls,
                ],
            )
            .await
            .map_err(unavailable)?;
        metrics::counter!("workq_postgres_statements_total", "kind" => "enqueue").increment(1);
        metrics::counter!("workq_postgres_statement_calls_total", "kind" => "enqueue")
            .increment(group.len() as u64);
        if !row.get::<_, bool>(0) {
            // No such queue, or sealed: each batch's own path says which.
            return Ok(group.iter().map(|_| None).collect());
        }
        let ok: HashSet<i64> = row
            .get::<_, Option<Vec<i64>>>(1)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let ids: Vec<i64> = row.get::<_, Option<Vec<i64>>>(2).unwrap_or_default();
        let inserted: i64 = row.get(3);
        let expected: usize = group
            .iter()
            .enumerate()
            .filter(|(c, _)| ok.contains(&(*c as i64 + 1)))
            .map(|(_, w)| w.call.items.len())
            .sum();
        if ids.len() != n || inserted != expected as i64 {
            return Err(unavailable(format!(
                "a grouped enqueue added {inserted} items where {expected} were expected"
            )));
        }
        if row.get::<_, i64>(4) > 0 {
            self.notify_committed(name);
        }
        if row.get::<_, i64>(5) > 0 {
            self.inner.reaper.notify_one();
        }
        let mut at = 0;
        Ok(group
            .iter()
            .enumerate()
            .map(|(c, w)| {
                let mine = &ids[at..at + w.call.items.len()];
                at += w.call.items.len();
                ok.contains(&(c as i64 + 1)).then(|| {
                    mine.iter()
                        .map(|id| Enqueued {
                            id: ItemId(u64::try_from(*id).unwrap_or(0)),
                            duplicate: false,
                        })
                        .collect()
                })
            })
            .collect())
    }
}
