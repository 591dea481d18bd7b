//! What a queue remembers, in memory only, so that retried calls are
//! answered as the first try was: the finished lease of each item (item →
//! lease sequence, how it finished) and the answers to enqueues that named a
//! `request_id`.
//!
//! Both are kept for the idempotency window and bounded server-wide by
//! [`RecallBudget`] (`--max-finished-tokens`): when it is full, the queue
//! that adds an entry forgets its own oldest first; if it has none, the new
//! entry is not remembered (a retry then gets the refusal that says what
//! became of the item, LEASE_EXPIRED, ITEM_COMPLETED, ...).
//!
//! # Memory
//! A finished lease costs its map entry (item id, then sequence, deadline,
//! how and whether it died: 32 bytes, plus the hash table's control byte
//! and spare capacity, 37 to 73 bytes) and its place in the expiry order
//! (24 bytes, up to 48 with the ring buffer's spare capacity): about 80
//! bytes on average, 60 to 120. A remembered enqueue counts as 1 entry plus
//! 1 per item (each item's answer is 16 bytes, plus the request id). At the
//! default of 1,000,000 entries that is about 80 MB at most.
//!
//! # Not persisted
//! Nothing here survives a restart: after one, a retried finish is refused
//! with the reason that says what became of the item (ITEM_COMPLETED when
//! it was completed, ITEM_DEAD, LEASE_EXPIRED when it went back), and a
//! retried enqueue is only deduplicated by idempotency keys.

use super::Enqueued;
use crate::error::Finish;
use crate::names::ItemId;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server-wide bound on what every queue remembers.
#[derive(Debug)]
pub struct RecallBudget {
    used: AtomicU64,
    max: u64,
}

impl RecallBudget {
    /// A budget of `max` entries.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(RecallBudget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Entries remembered now, all queues together.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn full(&self, more: u64) -> bool {
        self.used().saturating_add(more) > self.max
    }
}

/// How one item's last finished lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The lease's sequence number.
    pub seq: u64,
    /// How it finished.
    pub how: Finish,
    /// A failure that sent the item dead.
    pub dead: bool,
    expires: u64,
}

#[derive(Debug)]
struct Request {
    items: Box<[Enqueued]>,
    expires: u64,
}

/// Hashes an item id for the finished-lease map so that ids finished one
/// after another — they mostly are: items are leased in order — land in
/// neighbouring buckets: the id itself in the low bits (which pick the
/// bucket), a mix of it in the top 7 (the table's tag byte). The map holds
/// up to a million entries (`--max-finished-tokens`), and with a scattering
/// hash every remembered and every forgotten lease was a cache and TLB miss
/// (a fifth of the server's CPU, `docs/BENCHMARKS.md`); this way both ends
/// walk the table like a ring. Item ids are the server's, so no client can
/// choose them to collide.
#[derive(Debug, Default, Clone, Copy)]
struct ById;

impl std::hash::BuildHasher for ById {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`ById`].
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        const LOW: u64 = u64::MAX >> 7;
        (self.0 & LOW) | (self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) & !LOW)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One queue's memory of finished leases and enqueue request ids.
#[derive(Debug)]
pub(super) struct Recall {
    budget: Arc<RecallBudget>,
    window_ms: u64,
    finished: std::collections::HashMap<ItemId, Finished, ById>,
    /// (expires, item, seq) in the order added; stale when the item's entry
    /// was replaced since.
    finished_order: VecDeque<(u64, ItemId, u64)>,
    requests: FxHashMap<Box<str>, Request>,
    request_order: VecDeque<(u64, Box<str>)>,
    /// Entries this queue holds against the budget.
    held: u64,
}

impl Drop for Recall {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl Recall {
    pub(super) fn new(budget: Arc<RecallBudget>, window_ms: u64) -> Self {
        Recall {
            budget,
            window_ms,
            finished: std::collections::HashMap::default(),
            finished_order: VecDeque::new(),
            requests: FxHashMap::default(),
            request_order: VecDeque::new(),
            held: 0,
        }
    }

    fn take(&mut self, n: u64) {
        self.held += n;
        self.budget.used.fetch_add(n, Ordering::Relaxed);
    }

    fn give(&mut self, n: u64) {
        self.held -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// How `item`'s last remembered lease finished.
    pub(super) fn finished(&self, item: ItemId) -> Option<Finished> {
        self.finished.get(&item).copied()
    }

    /// Remembers that lease `seq` of `item` finished `how`.
    pub(super) fn finish(&mut self, now: u64, item: ItemId, seq: u64, how: Finish, dead: bool) {
        if self.window_ms == 0 {
            return;
        }
        let expires = now.saturating_add(self.window_ms);
        let entry = Finished {
            seq,
            how,
            dead,
            expires,
        };
        if let Some(e) = self.finished.get_mut(&item) {
            *e = entry;
        } else {
            if !self.make_room(1) {
                return;
            }
            self.finished.insert(item, entry);
            self.take(1);
        }
        self.finished_order.push_back((expires, item, seq));
    }

    /// The answer to the enqueue with `request_id`, if remembered.
    pub(super) fn request(&self, request_id: &str) -> Option<&[Enqueued]> {
        self.requests.get(request_id).map(|r| &*r.items)
    }

    /// Remembers the answer to the enqueue with `request_id`.
    pub(super) fn remember_request(&mut self, now: u64, request_id: &str, items: &[Enqueued]) {
        if self.window_ms == 0 || self.requests.contains_key(request_id) {
            return;
        }
        let cost = 1 + items.len() as u64;
        if !self.make_room(cost) {
            return;
        }
        let expires = now.saturating_add(self.window_ms);
        let key: Box<str> = request_id.into();
        self.requests.insert(
            key.clone(),
            Request {
                items: items.into(),
                expires,
            },
        );
        self.take(cost);
        self.request_order.push_back((expires, key));
    }

    /// Forgets this queue's oldest entries until `more` fit in the budget;
    /// false when they do not.
    fn make_room(&mut self, more: u64) -> bool {
        while self.budget.full(more) {
            let f = self.finished_order.front().map(|e| e.0);
            let r = self.request_order.front().map(|e| e.0);
            match (f, r) {
                (None, None) => return false,
                (Some(f), Some(r)) if r < f => self.forget_request(),
                (Some(_), _) => self.forget_finished(),
                (None, Some(_)) => self.forget_request(),
            };
        }
        true
    }

    fn forget_finished(&mut self) -> bool {
        let Some((expires, item, seq)) = self.finished_order.pop_front() else {
            return false;
        };
        if self
            .finished
            .get(&item)
            .is_some_and(|e| e.seq == seq && e.expires == expires)
        {
            self.finished.remove(&item);
            self.give(1);
            return true;
        }
        false
    }

    fn forget_request(&mut self) -> bool {
        let Some((expires, key)) = self.request_order.pop_front() else {
            return false;
        };
        if self.requests.get(&key).is_none_or(|r| r.expires != expires) {
            return false;
        }
        match self.requests.remove(&key) {
            Some(r) => {
                self.give(1 + r.items.len() as u64);
                true
            }
            None => false,
        }
    }

    /// Forgets what is past the window at `now`.
    pub(super) fn expire(&mut self, now: u64) {
        while self.finished_order.front().is_some_and(|e| e.0 <= now) {
            self.forget_finished();
        }
        while self.request_order.front().is_some_and(|e| e.0 <= now) {
            self.forget_request();
        }
    }

    /// When [`Recall::expire`] next has work.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let f = self.finished_order.front().map(|e| e.0);
        let r = self.request_order.front().map(|e| e.0);
        f.into_iter().chain(r).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_every_queue_and_the_oldest_is_forgotten_first() {
        let budget = RecallBudget::new(3);
        let mut a = Recall::new(budget.clone(), 1000);
        let mut b = Recall::new(budget.clone(), 1000);
        for i in 1..=3 {
            a.finish(i, ItemId(i), i, Finish::Completed, false);
        }
        assert_eq!(budget.used(), 3);
        // Full: b has nothing of its own to forget, so it remembers nothing.
        b.finish(4, ItemId(10), 1, Finish::Released, false);
        assert_eq!((b.finished(ItemId(10)), budget.used()), (None, 3));
        // a forgets its oldest.
        a.finish(5, ItemId(4), 4, Finish::Failed, true);
        assert!(a.finished(ItemId(1)).is_none());
        assert_eq!(
            a.finished(ItemId(4)).map(|f| (f.how, f.dead)),
            Some((Finish::Failed, true))
        );
        // A new finish of the same item replaces its entry, costing nothing.
        a.finish(6, ItemId(4), 5, Finish::Completed, false);
        assert_eq!(budget.used(), 3);
        // The window passes; a request's answer costs 1 + its items.
        a.expire(1006);
        assert_eq!(budget.used(), 0);
        let items = [Enqueued {
            id: ItemId(7),
            duplicate: false,
        }];
        a.remember_request(1006, "r", &items);
        assert_eq!(
            (a.request("r").map(<[_]>::len), budget.used()),
            (Some(1), 2)
        );
        drop(a);
        assert_eq!(budget.used(), 0, "a dropped queue gives its entries back");
    }

    #[test]
    fn item_ids_keep_their_order_in_the_buckets_and_differ_in_the_tag() {
        use std::hash::BuildHasher;
        let hash = |id: u64| ById.hash_one(ItemId(id));
        let low = u64::MAX >> 7;
        for id in [0u64, 1, 2, 1_000_000, 1 << 40] {
            assert_eq!(hash(id) & low, id, "the id picks the bucket");
        }
        let tags: std::collections::HashSet<u64> = (0..1000).map(|id| hash(id) >> 57).collect();
        assert!(tags.len() > 64, "tags spread: {} of 128 used", tags.len());
    }
}
