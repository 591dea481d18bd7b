//! One queue's item state machine: the only code that changes item state.
//!
//! ```text
//!    new ─── enqueue ───────────────────────────────> PENDING
//!    new ─── enqueue with a delay ──────────────────> DELAYED
//!    DELAYED ─── due (reap) ────────────────────────> PENDING
//!    PENDING ─── lease (token T, deadline) ─────────> LEASED
//!    LEASED ──── complete(T) ───────────────────────> COMPLETED (deleted, counted)
//!    LEASED ──── release(T) ────────────────────────> PENDING   (no attempt counted)
//!    LEASED ──── lease deadline passed (reap) ──────> PENDING   (attempt counted)
//!    LEASED ──── fail(T), retriable, attempts < max > DELAYED   until the back-off
//!                                                               (or retry_after) is
//!                                                               due; PENDING if zero
//!    LEASED ──── fail(T) fatal, or attempts used up > DEAD      (also by expiry)
//!    DEAD ────── requeue (operator) ────────────────> PENDING
//!    PENDING, DELAYED ─── purge ────────────────────> removed
//! ```
//!
//! # Guarantees
//! - Every transition is one method; each checks everything first and changes
//!   nothing when it refuses (batches are all-or-nothing).
//! - Leases are fenced: a token names the lease's sequence number, and a token
//!   whose lease expired, was released or re-granted is refused.
//! - Time is an argument (`now`, ms since the Unix epoch): expiry of leases and
//!   delays is [`Queue::reap`]`(now)`, driven by two deadline heaps, never by a
//!   scan of all items.
//! - [`Counters`] are exact after every call.
//! - Every durable change is appended to the caller's [`Journal`] in order.
//! - Finishing is idempotent while the queue remembers the lease
//!   ([`recall`]): a finish repeated with the token that did it is answered
//!   "already done" and changes nothing; so is an enqueue repeated with its
//!   `request_id`. That memory is not persisted: after a restart a retried
//!   finish is refused with the reason that says what became of the item
//!   (ITEM_COMPLETED, ITEM_DEAD, LEASE_EXPIRED).

use crate::counters::Counters;
use crate::error::{Error, Result};
use crate::item::{Item, ItemState, ThinStr};
use crate::item_table::ItemTable;
use crate::names::{ItemId, LeaseToken, QueueName};
use crate::settings::QueueSettings;
use crate::store::{QueueRecord, StoreOp, StoredKey};
use recall::Recall;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

pub use crate::journal::Journal;
pub use leases::{Batch, Outcome, TokenResult};
pub use outcomes::{DeadItem, Enqueued, Leased, NewItem, Reaped};
pub use recall::{Finished, RecallBudget};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct KeyEntry {
    item: ItemId,
    /// Set once the item completed: when the key is forgotten.
    expires: Option<u64>,
}

/// One queue: its items, their order and deadlines, and its counters.
#[derive(Debug)]
pub struct Queue {
    name: QueueName,
    settings: QueueSettings,
    sealed: bool,
    /// Live items by id.
    items: ItemTable,
    /// Exactly the pending items, in the order they are leased.
    pending: VecDeque<ItemId>,
    /// Due times of delayed items; an entry is stale when the item is no
    /// longer delayed until that time.
    delayed: BinaryHeap<Reverse<(u64, ItemId)>>,
    /// Deadlines of leases; an entry is stale when the item is no longer held
    /// by that lease until that deadline.
    leases: BinaryHeap<Reverse<(u64, ItemId, u64)>>,
    keys: HashMap<Box<str>, KeyEntry>,
    /// Keys of completed items in the order they expire.
    key_expiry: VecDeque<(u64, Box<str>)>,
    counters: Counters,
    idempotency_window_ms: u64,
    /// What the items held cost in memory ([`Item::queued_bytes`] summed).
    bytes: u64,
    /// Finished leases and enqueue request ids, for retries.
    recall: Recall,
}

impl Queue {
    /// An empty queue, remembering finished leases within a budget of its
    /// own (the default `--max-finished-tokens`).
    pub fn new(name: QueueName, settings: QueueSettings, idempotency_window_ms: u64) -> Self {
        let budget = RecallBudget::new(crate::settings::Limits::default().max_finished_tokens);
        Queue::with_budget(name, settings, idempotency_window_ms, budget)
    }

    /// An empty queue, remembering finished leases within the server-wide
    /// `budget`.
    pub fn with_budget(
        name: QueueName,
        settings: QueueSettings,
        idempotency_window_ms: u64,
        budget: Arc<RecallBudget>,
    ) -> Self {
        Queue {
            name,
            settings,
            sealed: false,
            items: ItemTable::default(),
            pending: VecDeque::new(),
            delayed: BinaryHeap::new(),
            leases: BinaryHeap::new(),
            keys: HashMap::new(),
            key_expiry: VecDeque::new(),
            counters: Counters::default(),
            idempotency_window_ms,
            bytes: 0,
            recall: Recall::new(budget, idempotency_window_ms),
        }
    }

    /// A queue as stored, with its stored items and keys (leased items come
    /// back pending; delays already over come back pending).
    pub fn restore(
        record: QueueRecord,
        items: impl IntoIterator<Item = Item>,
        keys: impl IntoIterator<Item = StoredKey>,
        idempotency_window_ms: u64,
        now: u64,
        budget: Arc<RecallBudget>,
    ) -> Self {
        let mut q = Queue::with_budget(record.name, record.settings, idempotency_window_ms, budget);
        q.sealed = record.sealed;
        q.counters.completed = record.completed;
        q.counters.retried = record.retried;
        q.counters.enqueued = record.completed;
        for mut item in items {
            if let Some(key) = &item.idempotency_key {
                q.keys.insert(
                    Box::from(&**key),
                    KeyEntry {
                        item: item.id,
                        expires: None,
                    },
                );
            }
            match &item.state {
                ItemState::Dead { .. } => q.counters.dead += 1,
                ItemState::Delayed { due } if *due > now => {
                    q.delayed.push(Reverse((*due, item.id)));
                    q.counters.delayed += 1;
                }
                _ => {
                    item.state = ItemState::Pending;
                    q.pending.push_back(item.id);
                    q.counters.pending += 1;
                }
            }
            q.counters.enqueued += 1;
            q.bytes += item.queued_bytes();
            q.items.insert(item);
        }
        let mut keys: Vec<StoredKey> = keys.into_iter().collect();
        keys.sort_by_key(|k| k.expires);
        for k in keys {
            q.keys.insert(
                k.key.clone(),
                KeyEntry {
                    item: k.item,
                    expires: Some(k.expires),
                },
            );
            q.key_expiry.push_back((k.expires, k.key));
        }
        q
    }

    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// The queue's settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Changes the queue's settings: leases and delays already running keep
    /// their deadlines; every later lease, failure and expiry uses these.
    pub fn set_settings(&mut self, settings: QueueSettings, journal: &mut Journal) {
        self.settings = settings;
        journal.push(|| StoreOp::PutQueue(self.record()));
    }

    /// Whether the queue is sealed.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    /// Sealed, and nothing pending, delayed or leased.
    pub fn drained(&self) -> bool {
        self.sealed && self.counters.is_empty()
    }

    /// The exact counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The queue as stored.
    pub fn record(&self) -> QueueRecord {
        QueueRecord {
            name: self.name.clone(),
            settings: self.settings,
            sealed: self.sealed,
            completed: self.counters.completed,
            retried: self.counters.retried,
        }
    }

    /// One item, if live.
    pub fn item(&self, id: ItemId) -> Option<&Item> {
        self.items.get(&id)
    }

    /// Every live item (any order).
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// The earliest time [`Queue::reap`] may have work: a delay ending, a
    /// lease expiring, a key to forget. May be early (stale heap entries),
    /// never late.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.delayed.peek().map(|Reverse((t, _))| *t),
            self.leases.peek().map(|Reverse((t, _, _))| *t),
            self.key_expiry.front().map(|(t, _)| *t),
            self.recall.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// [`Queue::enqueue`] of a call named by `request_id`: a call with the
    /// id of one remembered is answered with that call's items (and `true`:
    /// replayed), adding nothing; the same id with another number of items
    /// is refused.
    pub fn enqueue_request(
        &mut self,
        now: u64,
        request_id: Option<&str>,
        items: Vec<NewItem>,
        next_id: impl FnMut() -> ItemId,
        journal: &mut Journal,
    ) -> Result<(Vec<Enqueued>, bool)> {
        let Some(id) = request_id.filter(|r| !r.is_empty()) else {
            return Ok((self.enqueue(now, items, next_id, journal)?, false));
        };
        if let Some(earlier) = self.recall.request(id) {
            if earlier.len() != items.len() {
                return Err(Error::RequestIdReused {
                    request_id: crate::names::quoted(id),
                    earlier: earlier.len(),
                    now: items.len(),
                });
            }
            return Ok((earlier.to_vec(), true));
        }
        let out = self.enqueue(now, items, next_id, journal)?;
        self.recall.remember_request(now, id, &out);
        Ok((out, false))
    }

    /// Adds items, all or nothing. Items whose idempotency key names a live
    /// item, or one completed within the idempotency window, are not added.
    pub fn enqueue(
        &mut self,
        now: u64,
        items: Vec<NewItem>,
        mut next_id: impl FnMut() -> ItemId,
        journal: &mut Journal,
    ) -> Result<Vec<Enqueued>> {
        if self.sealed {
            return Err(Error::Sealed(self.name.clone()));
        }
        let mut out = Vec::with_capacity(items.len());
        for new in items {
            if let Some(key) = &new.idempotency_key
                && let Some(entry) = self.keys.get(key)
            {
                out.push(Enqueued {
                    id: entry.item,
                    duplicate: true,
                });
                continue;
            }
            let id = next_id();
            if let Some(key) = &new.idempotency_key {
                self.keys.insert(
                    key.clone(),
                    KeyEntry {
                        item: id,
                        expires: None,
                    },
                );
            }
            let state = if new.delay_ms > 0 {
                let due = now.saturating_add(new.delay_ms);
                self.delayed.push(Reverse((due, id)));
                self.counters.delayed += 1;
                ItemState::Delayed { due }
            } else {
                self.pending.push_back(id);
                self.counters.pending += 1;
                ItemState::Pending
            };
            let item = Item {
                id,
                payload: new.payload,
                attributes: new.attributes,
                idempotency_key: new.idempotency_key.map(ThinStr::from),
                attempts: 0,
                enqueued_at: now,
                state,
            };
            journal.push(|| StoreOp::PutItem {
                queue: self.name.clone(),
                item: item.clone(),
            });
            self.bytes += item.queued_bytes();
            self.items.insert(item);
            self.counters.enqueued += 1;
            out.push(Enqueued {
                id,
                duplicate: false,
            });
        }
        Ok(out)
    }

    /// What the items it holds (pending, delayed, leased, dead) cost in
    /// memory: [`Item::queued_bytes`] summed.
    pub fn queued_bytes(&self) -> u64 {
        self.bytes
    }

    /// Leases up to `max` pending items (oldest first) until `now + lease_ms`.
    /// Delays that are over are honoured first. Leases are not journaled.
    pub fn lease(
        &mut self,
        now: u64,
        max: usize,
        lease_ms: u64,
        next_seq: impl FnMut() -> u64,
    ) -> Vec<Leased> {
        self.lease_within(now, max, usize::MAX, lease_ms, next_seq)
    }

    /// [`Queue::lease`] into an answer of at most `max_bytes`
    /// ([`crate::item::Item::answer_bytes`] summed): it stops before the
    /// first item that would not fit, which stays pending, first in line, no
    /// attempt counted. The first item is taken whatever its size (the
    /// limits checked at start make every item fit), so a queue never sticks.
    pub fn lease_within(
        &mut self,
        now: u64,
        max: usize,
        max_bytes: usize,
        lease_ms: u64,
        next_seq: impl FnMut() -> u64,
    ) -> Vec<Leased> {
        self.lease_bounded(now, max, max_bytes, true, lease_ms, next_seq)
            .0
    }

    /// [`Queue::lease_within`], where the first item is taken whatever its
    /// size only when `first_free`; also says whether it stopped at an item
    /// that did not fit (rather than for want of items or of `max`).
    pub fn lease_bounded(
        &mut self,
        now: u64,
        max: usize,
        max_bytes: usize,
        first_free: bool,
        lease_ms: u64,
        mut next_seq: impl FnMut() -> u64,
    ) -> (Vec<Leased>, bool) {
        self.promote_delayed(now);
        let mut over = false;
        let deadline = now.saturating_add(lease_ms);
        let mut out = Vec::with_capacity(max.min(self.pending.len()));
        let mut bytes = 0usize;
        while out.len() < max {
            let Some(&id) = self.pending.front() else {
                break;
            };
            let Some(item) = self.items.get_mut(&id) else {
                self.pending.pop_front();
                continue;
            };
            let size = item.answer_bytes();
            if (first_free && out.is_empty()) || bytes.saturating_add(size) <= max_bytes {
                self.pending.pop_front();
            } else {
                over = true;
                break;
            }
            bytes = bytes.saturating_add(size);
            let seq = next_seq();
            item.state = ItemState::Leased { seq, deadline };
            self.leases.push(Reverse((deadline, id, seq)));
            out.push(Leased {
                id,
                token: LeaseToken::mint(id, seq),
                payload: item.payload.clone(),
                attributes: item.attributes.clone(),
                attempt: item.attempts + 1,
                deadline,
                enqueued_at: item.enqueued_at,
            });
        }
        self.counters.pending -= out.len() as u64;
        self.counters.leased += out.len() as u64;
        self.compact_leases();
        (out, over)
    }

    fn promote_delayed(&mut self, now: u64) -> usize {
        let mut n = 0;
        while let Some(Reverse((due, id))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if let Some(item) = self.items.get_mut(&id)
                && item.state == (ItemState::Delayed { due })
            {
                item.state = ItemState::Pending;
                self.pending.push_back(id);
                self.counters.delayed -= 1;
                self.counters.pending += 1;
                n += 1;
            }
        }
        n
    }

    /// Everything that is due at `now`: delays over become pending, expired
    /// leases end their attempt (pending again, or dead on the last one),
    /// idempotency keys past their window are forgotten.
    pub fn reap(&mut self, now: u64, journal: &mut Journal) -> Reaped {
        let mut reaped = Reaped {
            pending: self.promote_delayed(now),
            ..Reaped::default()
        };
        let mut expired = false;
        while let Some(Reverse((deadline, id, seq))) = self.leases.peek().copied() {
            if deadline > now {
                break;
            }
            self.leases.pop();
            let live = matches!(
                self.items.get(&id).map(|i| &i.state),
                Some(ItemState::Leased { seq: s, deadline: d }) if *s == seq && *d == deadline
            );
            if live {
                self.counters.leased -= 1;
                expired = true;
                reaped.expired += 1;
                if self.end_attempt(now, id, Failure::Expired("the lease expired"), journal) {
                    reaped.dead += 1;
                } else {
                    reaped.pending += 1;
                }
            }
        }
        if expired {
            journal.push(|| StoreOp::PutQueue(self.record()));
        }
        self.recall.expire(now);
        while let Some((expires, _)) = self.key_expiry.front() {
            if *expires > now {
                break;
            }
            let Some((expires, key)) = self.key_expiry.pop_front() else {
                break;
            };
            if self
                .keys
                .get(&key)
                .is_some_and(|e| e.expires == Some(expires))
            {
                self.keys.remove(&key);
                journal.push(|| StoreOp::DeleteKey {
                    queue: self.name.clone(),
                    key,
                });
            }
        }
        reaped
    }

    /// Seals the queue: no more items will come. Returns whether it changed.
    pub fn seal(&mut self, journal: &mut Journal) -> bool {
        if self.sealed {
            return false;
        }
        self.sealed = true;
        journal.push(|| StoreOp::PutQueue(self.record()));
        true
    }

    /// Removes every pending and delayed item; returns how many.
    pub fn purge(&mut self, journal: &mut Journal) -> u64 {
        let doomed: Vec<ItemId> = self
            .items
            .values()
            .filter(|i| matches!(i.state, ItemState::Pending | ItemState::Delayed { .. }))
            .map(|i| i.id)
            .collect();
        for id in &doomed {
            if let Some(item) = self.items.remove(id) {
                self.bytes -= item.queued_bytes();
                if let Some(key) = item.idempotency_key {
                    self.keys.remove(&*key);
                }
                journal.push(|| StoreOp::DeleteItem {
                    queue: self.name.clone(),
                    id: *id,
                });
            }
        }
        self.pending.clear();
        self.delayed.clear();
        let n = doomed.len() as u64;
        self.counters.enqueued -= n;
        self.counters.pending = 0;
        self.counters.delayed = 0;
        n
    }

    /// Dead items, oldest id first, at most `limit`.
    pub fn dead_items(&self, limit: usize) -> Vec<DeadItem> {
        self.dead_items_within(limit, usize::MAX)
    }

    /// Dead items with ids after `after` (all when `None`), in id order, at
    /// most `limit` and `max_bytes` ([`crate::item::Item::answer_bytes`]
    /// summed; the first is always listed); and whether more follow.
    pub fn dead_page(
        &self,
        after: Option<ItemId>,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<DeadItem>, bool) {
        let mut dead: Vec<&Item> = self
            .items
            .values()
            .filter(|i| matches!(i.state, ItemState::Dead { .. }))
            .filter(|i| after.is_none_or(|a| i.id > a))
            .collect();
        dead.sort_by_key(|i| i.id);
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for i in dead.iter().take(limit) {
            let size = i.answer_bytes();
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            if let ItemState::Dead { reason, at } = &i.state {
                out.push(DeadItem {
                    id: i.id,
                    payload: i.payload.clone(),
                    attributes: i.attributes.clone(),
                    attempts: i.attempts,
                    reason: reason.to_string(),
                    died_at: *at,
                });
            }
        }
        let more = out.len() < dead.len();
        (out, more)
    }

    /// [`Queue::dead_items`] into an answer of at most `max_bytes`
    /// ([`crate::item::Item::answer_bytes`] summed; the first is always
    /// listed). The caller pages on by requeueing or purging what it saw.
    pub fn dead_items_within(&self, limit: usize, max_bytes: usize) -> Vec<DeadItem> {
        self.dead_page(None, limit, max_bytes).0
    }

    /// Moves dead items (all when `ids` is empty) back to pending with their
    /// attempts reset. Ids that are not dead items are refused.
    pub fn requeue_dead(&mut self, ids: &[ItemId], journal: &mut Journal) -> Result<u64> {
        let chosen: Vec<ItemId> = if ids.is_empty() {
            let mut all: Vec<ItemId> = self
                .items
                .values()
                .filter(|i| matches!(i.state, ItemState::Dead { .. }))
                .map(|i| i.id)
                .collect();
            all.sort();
            all
        } else {
            for id in ids {
                match self.items.get(id).map(|i| &i.state) {
                    Some(ItemState::Dead { .. }) => {}
                    Some(_) => {
                        return Err(Error::ItemNotDead {
                            queue: self.name.clone(),
                            item: *id,
                        });
                    }
                    None => {
                        return Err(Error::ItemNotFound {
                            queue: self.name.clone(),
                            item: *id,
                        });
                    }
                }
            }
            let mut ids = ids.to_vec();
            ids.sort();
            ids.dedup();
            ids
        };
        for id in &chosen {
            if let Some(item) = self.items.get_mut(id) {
                item.state = ItemState::Pending;
                item.attempts = 0;
                self.pending.push_back(*id);
                journal.push(|| StoreOp::PutItem {
                    queue: self.name.clone(),
                    item: item.clone(),
                });
            }
        }
        let n = chosen.len() as u64;
        self.counters.dead -= n;
        self.counters.pending += n;
        Ok(n)
    }
}

#[derive(Clone, Copy)]
enum Failure<'a> {
    Fatal(&'a str),
    Retriable {
        reason: &'a str,
        retry_after_ms: Option<u64>,
    },
    Expired(&'a str),
}

mod leases;
mod outcomes;
pub mod recall;
#[cfg(test)]
mod tests;
