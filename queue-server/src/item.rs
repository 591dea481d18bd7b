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
        reason: ThinStr,
        /// When it died, ms since the Unix epoch.
        at: u64,
    },
}

/// A string behind one thin pointer: 8 bytes in an item against 16 for a
/// `Box<str>` and 24 for a `String`. For what few items carry (an idempotency
/// key, a reason to be dead), so that every queued item stays small.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ThinStr(Box<Box<str>>);

impl ThinStr {
    /// The string, unboxed once.
    pub fn into_boxed_str(self) -> Box<str> {
        *self.0
    }
}

impl std::ops::Deref for ThinStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ThinStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self.0, f)
    }
}

impl From<Box<str>> for ThinStr {
    fn from(s: Box<str>) -> Self {
        ThinStr(Box::new(s))
    }
}

impl From<String> for ThinStr {
    fn from(s: String) -> Self {
        s.into_boxed_str().into()
    }
}

impl From<&str> for ThinStr {
    fn from(s: &str) -> Self {
        Box::<str>::from(s).into()
    }
}

/// An item's attributes: a small string map, shared rather than copied, behind
/// one thin pointer (most items have none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::redundant_allocation)] // Arc<Vec>: thin, 8 bytes in every item
pub struct Attributes(Option<Arc<Vec<(String, String)>>>);

impl Attributes {
    /// Attributes from key/value pairs, sorted by key.
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        if pairs.is_empty() {
            return Attributes(None);
        }
        pairs.sort();
        Attributes(Some(Arc::new(pairs)))
    }

    /// What they add to an answer: key and value bytes, and each entry's
    /// framing ([`crate::settings::ATTRIBUTE_OVERHEAD`]).
    pub fn answer_bytes(&self) -> usize {
        self.iter()
            .map(|(k, v)| k.len() + v.len() + crate::settings::ATTRIBUTE_OVERHEAD)
            .sum()
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
    pub idempotency_key: Option<ThinStr>,
    /// Attempts that ended without completing: failures (retriable or
    /// fatal) and lease expiries. A release counts none.
    pub attempts: u32,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at: u64,
    /// Where it is in its life.
    pub state: ItemState,
}

/// What an item costs in memory beyond its payload, attributes and key: the
/// item itself, its place in the table and in the pending queue, allocations.
pub const ITEM_MEMORY_OVERHEAD: u64 = 200;

/// What an item of `payload` bytes with `attributes` and `key` costs in
/// memory, as counted against the queued-bytes limit.
pub fn queued_bytes(payload: usize, attributes: &[(String, String)], key: Option<&str>) -> u64 {
    let extra: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    (payload + extra + key.map_or(0, str::len)) as u64 + ITEM_MEMORY_OVERHEAD
}

impl Item {
    /// What this item costs in memory ([`queued_bytes`]).
    pub fn queued_bytes(&self) -> u64 {
        let extra: usize = self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        let key = self.idempotency_key.as_deref().map_or(0, str::len);
        (self.payload.len() + extra + key) as u64 + ITEM_MEMORY_OVERHEAD
    }

    /// The most this item adds to an answer (a leased or a dead item): its
    /// payload, attributes, reason when dead, and
    /// [`crate::settings::ITEM_OVERHEAD`] for the rest. An upper bound of its
    /// encoded size, so that answers filled up to a budget stay under it.
    pub fn answer_bytes(&self) -> usize {
        let reason = match &self.state {
            ItemState::Dead { reason, .. } => reason.len(),
            _ => 0,
        };
        self.payload.len()
            + self.attributes.answer_bytes()
            + reason
            + crate::settings::ITEM_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a queued item costs is mostly its own size: keep it small.
    #[test]
    fn an_item_fits_in_96_bytes() {
        assert!(
            std::mem::size_of::<Item>() <= 96,
            "{}",
            std::mem::size_of::<Item>()
        );
        assert_eq!(std::mem::size_of::<ItemState>(), 24);
        assert_eq!(std::mem::size_of::<Option<ThinStr>>(), 8);
        assert_eq!(std::mem::size_of::<Attributes>(), 8);
    }

    #[test]
    fn thin_strings_read_as_strings() {
        let k = ThinStr::from("key-1");
        assert_eq!(&*k, "key-1");
        assert_eq!(format!("{k:?}"), "\"key-1\"");
        assert_eq!(&*k.into_boxed_str(), "key-1");
    }
}
