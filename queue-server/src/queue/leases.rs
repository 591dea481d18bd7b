//! The transitions out of LEASED: renew, complete, fail, release, and the
//! end of an attempt that an expiry shares with a failure; and the fencing
//! check every one of them makes first.

use super::{Failure, Journal, KeyEntry, Queue};
use crate::error::{Error, Result};
use crate::item::ItemState;
use crate::names::{ItemId, LeaseToken};
use crate::store::StoreOp;
use std::cmp::Reverse;

impl Queue {
    /// Drops the deadline entries of leases that ended (completed, failed,
    /// released or renewed) once they outnumber the live ones: left to wait
    /// for their deadline, a fast queue with long leases would hold millions
    /// of them. Amortized: between two passes at least as many entries are added
    /// as leases are live, and 1,024 more.
    pub(super) fn compact_leases(&mut self) {
        let live = usize::try_from(self.counters.leased).unwrap_or(usize::MAX);
        if self.leases.len() <= live.saturating_mul(2).saturating_add(1024) {
            return;
        }
        let items = &self.items;
        self.leases.retain(|Reverse((deadline, id, seq))| {
            matches!(
                items.get(id).map(|i| &i.state),
                Some(ItemState::Leased { seq: s, deadline: d }) if s == seq && d == deadline
            )
        });
    }

    /// Why `token` is not a live lease at `now`, if it is not.
    fn check(&self, now: u64, token: LeaseToken) -> Result<()> {
        let why = match self.items.get(&token.item).map(|i| &i.state) {
            None => "the item is no longer in the queue (completed, or purged)",
            Some(ItemState::Leased { seq, deadline }) if *seq == token.seq => {
                if *deadline > now {
                    return Ok(());
                }
                "the lease expired and the item goes back to the queue"
            }
            Some(ItemState::Leased { .. }) => {
                "the lease expired or was released, and another worker now holds the item"
            }
            Some(ItemState::Pending | ItemState::Delayed { .. }) => {
                "the lease expired or was released, and the item is back in the queue"
            }
            Some(ItemState::Dead { .. }) => "the item is dead",
        };
        Err(Error::StaleLease { token, why })
    }

    /// Whether `token` is a live lease at `now`.
    pub fn is_live(&self, now: u64, token: LeaseToken) -> bool {
        self.check(now, token).is_ok()
    }

    fn check_all(&self, now: u64, tokens: &[LeaseToken]) -> Result<()> {
        let mut seen = rustc_hash::FxHashSet::default();
        seen.reserve(tokens.len());
        for t in tokens {
            if !seen.insert(t.item) {
                return Err(Error::InvalidArgument(format!(
                    "item {} is named twice in one call; pass each lease token once",
                    t.item
                )));
            }
            self.check(now, *t)?;
        }
        Ok(())
    }

    /// Extends live leases to `now + lease_ms`; returns the new deadlines.
    pub fn renew(&mut self, now: u64, tokens: &[LeaseToken], lease_ms: u64) -> Result<Vec<u64>> {
        self.check_all(now, tokens)?;
        let deadline = now.saturating_add(lease_ms);
        for t in tokens {
            if let Some(item) = self.items.get_mut(&t.item) {
                item.state = ItemState::Leased {
                    seq: t.seq,
                    deadline,
                };
                self.leases.push(Reverse((deadline, t.item, t.seq)));
            }
        }
        Ok(vec![deadline; tokens.len()])
    }

    /// Completes leased items: they leave the queue, their count stays.
    pub fn complete(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        journal: &mut Journal,
    ) -> Result<()> {
        self.check_all(now, tokens)?;
        for t in tokens {
            let Some(item) = self.items.remove(&t.item) else {
                continue;
            };
            self.bytes -= item.queued_bytes();
            self.counters.leased -= 1;
            self.counters.completed += 1;
            journal.push(|| StoreOp::DeleteItem {
                queue: self.name.clone(),
                id: item.id,
            });
            if let Some(key) = item.idempotency_key {
                self.remember_completed_key(now, key.into_boxed_str(), item.id, journal);
            }
        }
        journal.push(|| StoreOp::PutQueue(self.record()));
        Ok(())
    }

    fn remember_completed_key(
        &mut self,
        now: u64,
        key: Box<str>,
        item: ItemId,
        journal: &mut Journal,
    ) {
        if self.idempotency_window_ms == 0 {
            self.keys.remove(&key);
            return;
        }
        let expires = now.saturating_add(self.idempotency_window_ms);
        self.keys.insert(
            key.clone(),
            KeyEntry {
                item,
                expires: Some(expires),
            },
        );
        journal.push(|| StoreOp::PutKey {
            queue: self.name.clone(),
            key: key.clone(),
            item,
            expires,
        });
        self.key_expiry.push_back((expires, key));
    }

    /// Fails leased items. Fatal: dead at once. Retriable: the attempt is
    /// counted, and the item goes dead when attempts are exhausted, else back
    /// to the queue after `retry_after_ms` (or the queue's back-off when 0).
    /// Returns how many went dead.
    pub fn fail(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after_ms: u64,
        journal: &mut Journal,
    ) -> Result<usize> {
        self.check_all(now, tokens)?;
        let mut dead = 0;
        for t in tokens {
            self.counters.leased -= 1;
            let outcome = if fatal {
                Failure::Fatal(reason)
            } else {
                Failure::Retriable {
                    reason,
                    retry_after_ms,
                }
            };
            if self.end_attempt(now, t.item, outcome, journal) {
                dead += 1;
            }
        }
        journal.push(|| StoreOp::PutQueue(self.record()));
        Ok(dead)
    }

    /// Ends a leased (or just expired) item's attempt; the caller has taken it
    /// out of the `leased` count. Returns whether it went dead.
    pub(super) fn end_attempt(
        &mut self,
        now: u64,
        id: ItemId,
        outcome: Failure,
        journal: &mut Journal,
    ) -> bool {
        let max = self.settings.max_attempts.max(1);
        let Some(item) = self.items.get_mut(&id) else {
            return false;
        };
        item.attempts += 1;
        let fatal_reason = match outcome {
            Failure::Fatal(reason) => Some(format!(
                "failed fatally on attempt {}: {reason}",
                item.attempts
            )),
            Failure::Retriable { reason, .. } | Failure::Expired(reason) => (item.attempts >= max)
                .then(|| format!("attempt {} of {max} failed: {reason}", item.attempts)),
        };
        if let Some(reason) = fatal_reason {
            item.state = ItemState::Dead {
                reason: reason.into(),
                at: now,
            };
            self.counters.dead += 1;
        } else {
            self.counters.retried += 1;
            let delay = match outcome {
                Failure::Retriable { retry_after_ms, .. } if retry_after_ms > 0 => retry_after_ms,
                Failure::Retriable { .. } => {
                    u64::try_from(self.settings.backoff(item.attempts).as_millis())
                        .unwrap_or(u64::MAX)
                }
                _ => 0,
            };
            if delay == 0 {
                item.state = ItemState::Pending;
                self.pending.push_front(id);
                self.counters.pending += 1;
            } else {
                let due = now.saturating_add(delay);
                item.state = ItemState::Delayed { due };
                self.delayed.push(Reverse((due, id)));
                self.counters.delayed += 1;
            }
        }
        let dead = matches!(item.state, ItemState::Dead { .. });
        journal.push(|| StoreOp::PutItem {
            queue: self.name.clone(),
            item: item.clone(),
        });
        dead
    }

    /// Gives leased items back at once, first in line, no attempt counted.
    pub fn release(&mut self, now: u64, tokens: &[LeaseToken]) -> Result<()> {
        self.check_all(now, tokens)?;
        for t in tokens.iter().rev() {
            if let Some(item) = self.items.get_mut(&t.item) {
                item.state = ItemState::Pending;
                self.pending.push_front(t.item);
            }
        }
        self.counters.leased -= tokens.len() as u64;
        self.counters.pending += tokens.len() as u64;
        Ok(())
    }

    /// Gives back, first in line and counting no attempt, those of `tokens`
    /// that are live leases at `now`; skips the rest. Returns how many.
    pub fn release_live(&mut self, now: u64, tokens: &[LeaseToken]) -> usize {
        let live: Vec<LeaseToken> = {
            let mut seen = rustc_hash::FxHashSet::default();
            tokens
                .iter()
                .filter(|t| seen.insert(t.item) && self.check(now, **t).is_ok())
                .copied()
                .collect()
        };
        for t in live.iter().rev() {
            if let Some(item) = self.items.get_mut(&t.item) {
                item.state = ItemState::Pending;
                self.pending.push_front(t.item);
            }
        }
        self.counters.leased -= live.len() as u64;
        self.counters.pending += live.len() as u64;
        live.len()
    }
}
