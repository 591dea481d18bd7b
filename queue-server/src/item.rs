//! One item of a queue and the state it is in.

use crate::names::ItemId;
use prost::bytes::Bytes;
use std::sync::Arc;

/// Where an item is in its life (see the diagram on [`crate::queue`]).
/// Completed items are not kept; only their count is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// Ready to be leased.
    Pending,
    /// Waiting until `due` (ms since the Unix epoch) for a delay or back-off.
    Delayed {
        /// When it becomes pending.
        due: u64,
    },
    /// Held by the lease with sequence number `seq` until `deadline`.
    Leased {
        /// The lease's sequence number (the token's fencing part).
        seq: u64,
        /// When the lease expires, ms since the Unix epoch.
        deadline: u64,
    },
    /// Failed fatally or out of attempts.
    Dead {
        /// Why, as the worker or the server said it.
        reason: String,
        /// When it died, ms since the Unix epoch.
        at: u64,
    },
}

/// An item's attributes: a small string map, shared rather than copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(Option<Arc<[(String, String)]>>);

impl Attributes {
    /// Attributes from key/value pairs, sorted by key.
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        if pairs.is_empty() {
            return Attributes(None);
        }
        pairs.sort();
        Attributes(Some(pairs.into()))
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|a| a.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Server-assigned id.
    pub id: ItemId,
    /// Opaque payload.
    pub payload: Bytes,
    /// Attributes given at enqueue.
    pub attributes: Attributes,
    /// The client's idempotency key, if it gave one.
    pub idempotency_key: Option<Box<str>>,
    /// Attempts that ended without completing: failures (retriable or
    /// fatal) and lease expiries. A release counts none.
    pub attempts: u32,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at: u64,
    /// Where it is in its life.
    pub state: ItemState,
}
