//! Where a `rediswq` queue lives in Redis: the key of each part of queue `Q`
//! (see the layout table in [the backend's docs](super)), and the digest that
//! names an item in its lease key, as `rediswq.py` computes it.
//!
//! Public so that other tools (the bench) can read and fill a queue the same
//! way.

use sha2::{Digest, Sha224};

use crate::types::QueueName;

/// The keys of one queue `Q`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `Q`: the pending items (a list).
    pub main: String,
    /// `Q:processing`: the leased items (a list).
    pub processing: String,
    /// `Q:leased_by_session:`: followed by an item's digest, its lease key.
    pub lease_prefix: String,
    /// `Q:dead`: the dead items (a list).
    pub dead: String,
    /// `Q:dead:reasons`: digest → `"<attempts> <died unix ms> <reason>"`.
    pub reasons: String,
    /// `Q:attempts`: digest → attempts.
    pub attempts: String,
    /// `Q:stats`: `completed` and `retried` counters.
    pub stats: String,
    /// `Q:sealed`: present once the queue is sealed.
    pub sealed: String,
    /// `Q:settings`: `max_attempts`, `lease_ms`.
    pub settings: String,
    /// `Q:unleased_since`: the reaper's notes.
    pub unleased: String,
}

impl Keys {
    /// The keys of queue `q`.
    pub fn new(q: &QueueName) -> Self {
        let q = q.as_str();
        Keys {
            main: q.to_owned(),
            processing: format!("{q}:processing"),
            lease_prefix: format!("{q}:leased_by_session:"),
            dead: format!("{q}:dead"),
            reasons: format!("{q}:dead:reasons"),
            attempts: format!("{q}:attempts"),
            stats: format!("{q}:stats"),
            sealed: format!("{q}:sealed"),
            settings: format!("{q}:settings"),
            unleased: format!("{q}:unleased_since"),
        }
    }

    /// The lease key of the item whose digest is `digest`.
    pub fn lease(&self, digest: &str) -> String {
        format!("{}{digest}", self.lease_prefix)
    }
}

/// The SHA-224 hex digest of an item, as `rediswq.py`'s `_itemkey` computes it.
/// This is the name of the item in its lease key, in `Q:attempts` and
/// `Q:dead:reasons`, and the item id the SDK gives it.
pub fn item_digest(item: &[u8]) -> String {
    let digest = Sha224::digest(item);
    let mut hex = String::with_capacity(56);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}
