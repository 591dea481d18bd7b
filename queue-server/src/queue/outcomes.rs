//! What goes into the queue's transitions and what comes out of them.

use crate::item::Attributes;
use crate::names::{ItemId, LeaseToken};
use prost::bytes::Bytes;

/// An item to add.
#[derive(Debug, Clone, Default)]
pub struct NewItem {
    /// Opaque payload.
    pub payload: Bytes,
    /// Attributes.
    pub attributes: Attributes,
    /// Deduplicates enqueues with the same key.
    pub idempotency_key: Option<Box<str>>,
    /// Delay before it may be leased, ms.
    pub delay_ms: u64,
}

/// What one enqueued item became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The item's id (the existing one for a duplicate).
    pub id: ItemId,
    /// Whether its idempotency key matched an existing item.
    pub duplicate: bool,
}

/// An item handed to a worker.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The item's id.
    pub id: ItemId,
    /// The lease's fencing token.
    pub token: LeaseToken,
    /// Payload.
    pub payload: Bytes,
    /// Attributes.
    pub attributes: Attributes,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the lease expires, ms since the Unix epoch.
    pub deadline: u64,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at: u64,
}

impl Leased {
    /// The most it adds to an answer: payload, attributes and
    /// [`crate::settings::ITEM_OVERHEAD`] (as [`crate::item::Item::answer_bytes`]).
    pub fn answer_bytes(&self) -> usize {
        self.payload.len() + self.attributes.answer_bytes() + crate::settings::ITEM_OVERHEAD
    }
}

/// A dead item, as listed for an operator.
#[derive(Debug, Clone)]
pub struct DeadItem {
    /// The item's id.
    pub id: ItemId,
    /// Payload.
    pub payload: Bytes,
    /// Attributes.
    pub attributes: Attributes,
    /// Attempts counted.
    pub attempts: u32,
    /// Why it died.
    pub reason: String,
    /// When it died, ms since the Unix epoch.
    pub died_at: u64,
}

/// What [`Queue::reap`](super::Queue::reap) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Items that became pending (delays over, leases expired).
    pub pending: usize,
    /// Items that went dead (lease expired on the last attempt).
    pub dead: usize,
    /// Leases that expired.
    pub expired: usize,
}
