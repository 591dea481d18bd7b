//! What the engine's calls take and answer, beyond the queue's own types.

use crate::counters::Counters;
use crate::names::QueueName;
use crate::queue::{Leased, Queue};
use crate::settings::QueueSettings;
use std::time::Duration;

/// A queue's description: settings, counters, and whether it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Its name.
    pub name: QueueName,
    /// Its settings.
    pub settings: QueueSettings,
    /// Exact counters.
    pub counters: Counters,
    /// No more items will come.
    pub sealed: bool,
    /// Sealed and nothing pending, delayed or leased.
    pub drained: bool,
}

impl QueueInfo {
    pub(super) fn of(q: &Queue) -> Self {
        QueueInfo {
            name: q.name().clone(),
            settings: *q.settings(),
            counters: q.counters(),
            sealed: q.sealed(),
            drained: q.drained(),
        }
    }
}

/// What a lease call got.
#[derive(Debug, Clone, Default)]
pub struct LeaseOutcome {
    /// The leased items (maybe none, after the wait).
    pub items: Vec<Leased>,
    /// The queue is sealed and has nothing pending, delayed or leased.
    pub drained: bool,
    /// The queue has nothing pending, delayed or leased right now.
    pub empty: bool,
    /// The queue is sealed.
    pub sealed: bool,
    /// The lease stopped at an item that did not fit its byte budget.
    pub over_budget: bool,
}

/// An item to enqueue, as a caller gives it (checked by the engine).
#[derive(Debug, Clone, Default)]
pub struct EnqueueItem {
    /// Opaque payload.
    pub payload: prost::bytes::Bytes,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Deduplicates enqueues; empty means none.
    pub idempotency_key: Option<String>,
    /// Delay before it may be leased.
    pub delay: Duration,
}
