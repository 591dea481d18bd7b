//! The transitions out of LEASED: renew, complete, fail, release, and the
//! end of an attempt that an expiry shares with a failure; and the fencing
//! check every one of them makes first ([`Queue::judge`]).
//!
//! A finish (complete, fail, release) with the token that already did it is
//! answered [`Outcome::AlreadyDone`] and changes nothing, while the queue
//! remembers that lease ([`super::recall`]). Batches are all-or-nothing
//! (`*_all`: one refused token refuses the call) or judged token by token
//! (`*_each`).

use super::{Failure, Journal, KeyEntry, Queue};
use crate::error::{Error, Finish, Result, StaleCause};
use crate::item::ItemState;
use crate::names::{ItemId, LeaseToken};
use crate::store::StoreOp;
use std::cmp::Reverse;

/// What one token of a batch came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Done by this call.
    Done,
    /// Already done by an earlier call with this token; nothing changed.
    AlreadyDone,
    /// Refused; nothing changed for this token.
    Refused(Error),
}

/// One token's result.
#[derive(Debug, Clone)]
pub struct TokenResult {
    /// The token.
    pub token: LeaseToken,
    /// What it came to.
    pub outcome: Outcome,
    /// Renew: the lease's new deadline (ms since the Unix epoch).
    pub deadline: Option<u64>,
    /// Fail: the item went dead.
    pub dead: bool,
}

impl TokenResult {
    fn new(token: LeaseToken, outcome: Outcome) -> Self {
        TokenResult {
            token,
            outcome,
            deadline: None,
            dead: false,
        }
    }

    /// Whether this call did it.
    pub fn done(&self) -> bool {
        matches!(self.outcome, Outcome::Done)
    }

    /// Whether an earlier call did it.
    pub fn already_done(&self) -> bool {
        matches!(self.outcome, Outcome::AlreadyDone)
    }
}

/// How a batch is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// One refused token refuses the call; nothing changes then.
    AllOrNothing,
    /// Each token on its own.
    EachToken,
}

/// What a token is, against what a call wants to do with it.
enum Verdict {
    Live,
    AlreadyDone(bool),
    Refused(Error),
}

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

    fn stale(&self, token: LeaseToken, cause: StaleCause) -> Error {
        Error::StaleLease {
            queue: self.name.clone(),
            token,
            cause,
        }
    }

    /// What `token` is at `now` for a call that would finish it `op` (a
    /// renewal: `None`).
    ///
    /// A token whose secret does not match its item and sequence is judged
    /// as a token of another lease of the item: the same refusal a stale
    /// token gets, so a guess learns nothing.
    fn judge(&self, now: u64, token: LeaseToken, op: Option<Finish>) -> Verdict {
        let authentic = token.is_authentic();
        if let Some(f) = self.recall.finished(token.item)
            && f.seq == token.seq
            && authentic
        {
            return if Some(f.how) == op {
                Verdict::AlreadyDone(f.dead)
            } else {
                Verdict::Refused(self.stale(token, StaleCause::Finished(f.how)))
            };
        }
        let cause = match self.items.get(&token.item).map(|i| &i.state) {
            None => StaleCause::ItemCompleted,
            Some(ItemState::Leased { seq, deadline }) if *seq == token.seq && authentic => {
                if *deadline > now {
                    return Verdict::Live;
                }
                StaleCause::Expired
            }
            Some(ItemState::Leased { .. }) => StaleCause::Taken,
            Some(ItemState::Pending | ItemState::Delayed { .. }) => StaleCause::Expired,
            Some(ItemState::Dead { .. }) => StaleCause::ItemDead,
        };
        Verdict::Refused(self.stale(token, cause))
    }

    /// Whether `token` is a live lease at `now`.
    pub fn is_live(&self, now: u64, token: LeaseToken) -> bool {
        matches!(self.judge(now, token, None), Verdict::Live)
    }

    /// Every token judged (a second token of the same item is refused as a
    /// duplicate); all-or-nothing: the first refusal, if any.
    fn judge_all(
        &self,
        now: u64,
        tokens: &[LeaseToken],
        op: Option<Finish>,
        batch: Batch,
    ) -> Result<Vec<Verdict>> {
        let mut seen = rustc_hash::FxHashSet::default();
        seen.reserve(tokens.len());
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            let v = if seen.insert(t.item) {
                self.judge(now, *t, op)
            } else {
                Verdict::Refused(Error::DuplicateToken { item: t.item })
            };
            if let (Batch::AllOrNothing, Verdict::Refused(e)) = (batch, &v) {
                return Err(e.clone());
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Judges `tokens`, then applies `apply` to each live one (in order):
    /// the results, one per token.
    fn finish_with(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        op: Option<Finish>,
        batch: Batch,
        mut apply: impl FnMut(&mut Self, LeaseToken, &mut TokenResult),
    ) -> Result<Vec<TokenResult>> {
        let verdicts = self.judge_all(now, tokens, op, batch)?;
        let mut out = Vec::with_capacity(tokens.len());
        for (t, v) in tokens.iter().zip(verdicts) {
            let mut r = match v {
                Verdict::Live => TokenResult::new(*t, Outcome::Done),
                Verdict::AlreadyDone(dead) => TokenResult {
                    dead,
                    ..TokenResult::new(*t, Outcome::AlreadyDone)
                },
                Verdict::Refused(e) => TokenResult::new(*t, Outcome::Refused(e)),
            };
            if r.done() {
                apply(self, *t, &mut r);
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Extends live leases to `now + lease_ms`; the results carry the new
    /// deadlines.
    pub fn renew(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        lease_ms: u64,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        let deadline = now.saturating_add(lease_ms);
        self.finish_with(now, tokens, None, batch, |q, t, r| {
            if let Some(item) = q.items.get_mut(&t.item) {
                item.state = ItemState::Leased {
                    seq: t.seq,
                    deadline,
                };
                q.leases.push(Reverse((deadline, t.item, t.seq)));
                r.deadline = Some(deadline);
            }
        })
    }

    /// Completes leased items: they leave the queue, their count stays.
    pub fn complete(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        batch: Batch,
        journal: &mut Journal,
    ) -> Result<Vec<TokenResult>> {
        let out = self.finish_with(now, tokens, Some(Finish::Completed), batch, |q, t, _| {
            let Some(item) = q.items.remove(&t.item) else {
                return;
            };
            q.bytes -= item.queued_bytes();
            q.counters.leased -= 1;
            q.counters.completed += 1;
            q.recall
                .finish(now, t.item, t.seq, Finish::Completed, false);
            journal.push(|| StoreOp::DeleteItem {
                queue: q.name.clone(),
                id: item.id,
            });
            if let Some(key) = item.idempotency_key {
                q.remember_completed_key(now, key.into_boxed_str(), item.id, journal);
            }
        })?;
        if out.iter().any(TokenResult::done) {
            journal.push(|| StoreOp::PutQueue(self.record()));
        }
        Ok(out)
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
    /// to the queue after `retry_after_ms` (the queue's back-off when
    /// `None`; zero: at once). The results say which went dead.
    #[allow(clippy::too_many_arguments)]
    pub fn fail(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after_ms: Option<u64>,
        batch: Batch,
        journal: &mut Journal,
    ) -> Result<Vec<TokenResult>> {
        let out = self.finish_with(now, tokens, Some(Finish::Failed), batch, |q, t, r| {
            q.counters.leased -= 1;
            let outcome = if fatal {
                Failure::Fatal(reason)
            } else {
                Failure::Retriable {
                    reason,
                    retry_after_ms,
                }
            };
            r.dead = q.end_attempt(now, t.item, outcome, journal);
            q.recall.finish(now, t.item, t.seq, Finish::Failed, r.dead);
        })?;
        if out.iter().any(TokenResult::done) {
            journal.push(|| StoreOp::PutQueue(self.record()));
        }
        Ok(out)
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
                Failure::Retriable {
                    retry_after_ms: Some(ms),
                    ..
                } => ms,
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
    pub fn release(
        &mut self,
        now: u64,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        let verdicts = self.judge_all(now, tokens, Some(Finish::Released), batch)?;
        let mut out: Vec<TokenResult> = tokens
            .iter()
            .zip(verdicts)
            .map(|(t, v)| match v {
                Verdict::Live => TokenResult::new(*t, Outcome::Done),
                Verdict::AlreadyDone(_) => TokenResult::new(*t, Outcome::AlreadyDone),
                Verdict::Refused(e) => TokenResult::new(*t, Outcome::Refused(e)),
            })
            .collect();
        // In reverse, so that they go back first in line in the order given.
        for r in out.iter_mut().rev().filter(|r| r.done()) {
            let t = r.token;
            if let Some(item) = self.items.get_mut(&t.item) {
                item.state = ItemState::Pending;
                self.pending.push_front(t.item);
                self.counters.leased -= 1;
                self.counters.pending += 1;
                self.recall
                    .finish(now, t.item, t.seq, Finish::Released, false);
            }
        }
        Ok(out)
    }

    /// Gives back, first in line and counting no attempt, those of `tokens`
    /// that are live leases at `now`; skips the rest. Returns how many.
    pub fn release_live(&mut self, now: u64, tokens: &[LeaseToken]) -> usize {
        self.release(now, tokens, Batch::EachToken)
            .map(|r| r.iter().filter(|r| r.done()).count())
            .unwrap_or(0)
    }
}
