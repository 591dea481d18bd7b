//! Between the wire's types (`workq.v1`) and the engine's: durations and
//! times, counters and states, items in and out.

use crate::engine::{EnqueueItem, QueueInfo};
use crate::queue::{DeadItem, Enqueued, Leased};
use crate::settings::QueueSettings;
use std::collections::HashMap;
use std::time::Duration;
use workq_proto::time;
use workq_proto::v1 as pb;

/// The wire form of a queue's settings (every field set).
pub fn settings_pb(s: &QueueSettings) -> pb::QueueSettings {
    pb::QueueSettings {
        default_lease: Some(time::duration(s.default_lease)),
        max_attempts: Some(i32::try_from(s.max_attempts).unwrap_or(i32::MAX)),
        retry_backoff: Some(time::duration(s.retry_backoff)),
        retry_backoff_max: Some(time::duration(s.retry_backoff_max)),
    }
}

/// Where a queue is in its life.
pub fn state_pb(info: &QueueInfo) -> pb::QueueState {
    match (info.sealed, info.counters.is_empty()) {
        (true, true) => pb::QueueState::Drained,
        (true, false) => pb::QueueState::Sealed,
        (false, true) => pb::QueueState::Empty,
        (false, false) => pb::QueueState::Active,
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The wire form of a queue's counters.
pub fn stats_pb(info: &QueueInfo) -> pb::QueueStats {
    let c = &info.counters;
    pb::QueueStats {
        queue: info.name.to_string(),
        enqueued: count(c.enqueued),
        pending: count(c.pending),
        delayed: count(c.delayed),
        leased: count(c.leased),
        completed: count(c.completed),
        dead: count(c.dead),
        retried: count(c.retried),
        state: state_pb(info) as i32,
    }
}

/// The wire form of a queue: name, settings and counters.
pub fn queue_pb(info: &QueueInfo) -> pb::Queue {
    pb::Queue {
        name: info.name.to_string(),
        settings: Some(settings_pb(&info.settings)),
        stats: Some(stats_pb(info)),
    }
}

fn attributes_pb(a: &crate::item::Attributes) -> HashMap<String, String> {
    a.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Items to enqueue, from their wire form; a malformed delay is refused
/// with a message naming the item (`items[3].delay`) and the field.
pub fn enqueue_items(items: Vec<pb::NewItem>) -> Result<Vec<EnqueueItem>, (String, String)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, it)| {
            let field = format!("items[{i}].delay");
            let delay = time::opt_duration(&field, it.delay.as_ref())
                .map_err(|e| (field, e))?
                .unwrap_or_default();
            Ok(EnqueueItem {
                payload: it.payload,
                attributes: it.attributes.into_iter().collect(),
                idempotency_key: (!it.idempotency_key.is_empty()).then_some(it.idempotency_key),
                delay,
            })
        })
        .collect()
}

/// The wire form of enqueued items, in order.
pub fn enqueued_pb(out: &[Enqueued]) -> Vec<pb::EnqueuedItem> {
    out.iter()
        .map(|e| pb::EnqueuedItem {
            id: e.id.text(),
            duplicate: e.duplicate,
        })
        .collect()
}

/// The wire form of a leased item.
pub fn leased_pb(l: Leased) -> pb::LeasedItem {
    let (id, lease_token) = if l.token.item == l.id {
        l.token.texts()
    } else {
        (l.id.text(), l.token.to_string())
    };
    pb::LeasedItem {
        id,
        lease_token,
        attributes: attributes_pb(&l.attributes),
        payload: l.payload,
        attempt: i32::try_from(l.attempt).unwrap_or(i32::MAX),
        lease_expire_time: Some(time::timestamp_ms(l.deadline)),
        enqueue_time: Some(time::timestamp_ms(l.enqueued_at)),
    }
}

/// The wire form of a dead item.
pub fn dead_pb(d: DeadItem) -> pb::DeadItem {
    pb::DeadItem {
        id: d.id.to_string(),
        attributes: attributes_pb(&d.attributes),
        payload: d.payload,
        attempts: i32::try_from(d.attempts).unwrap_or(i32::MAX),
        reason: d.reason,
        death_time: Some(time::timestamp_ms(d.died_at)),
    }
}

/// A duration of the wire (unset: `None`), or why it is malformed.
pub fn opt_duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<Duration>, String> {
    time::opt_duration(field, d)
}
