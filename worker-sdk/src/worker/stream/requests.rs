//! What the worker loop sends on its `Work` stream — credit, completions
//! and renewals, batched — and how it takes in the answers.

use std::time::Duration;

use tokio::time::Instant;

use super::Loop;
use crate::backend::grpc::{WorkAnswer, WorkRequest};
use crate::error::{Error, Result};
use crate::finish::FinishKind;
use crate::types::LeaseToken;
use crate::worker::summary::ItemOutcome;

/// Most tokens in one message (the queue service's batch limit).
const MAX_TOKENS: usize = 1000;

/// Completion messages unanswered at once, at most.
const COMPLETIONS_IN_FLIGHT: usize = 4;

/// A completion waits at most this long for others to go with it.
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// A message sent and not yet answered.
pub(super) struct Sent {
    /// Tokens to complete, each with whether it was sent before.
    pub(super) complete: Vec<(LeaseToken, bool)>,
    renew: Vec<LeaseToken>,
    /// Answered token by token; otherwise its completions are all or nothing.
    per_token: bool,
}

impl Loop<'_> {
    /// Sends the completions due and credit for `room`, when worth a
    /// message: completions once half a window gathered or the oldest waited
    /// [`FLUSH_AFTER`], at once when nothing runs; credit once half a window
    /// is free, with completions, or at once when nothing else is coming.
    pub(super) async fn send(&mut self, room: usize, idle: bool) -> Result<()> {
        let window = self.opts.concurrency + self.opts.prefetch;
        let half = (window / 2).max(1);
        let overdue = self
            .pending_since
            .is_some_and(|t| t + FLUSH_AFTER <= Instant::now());
        let flush = !self.to_complete.is_empty()
            && (idle
                || ((overdue || self.to_complete.len() >= half)
                    && self.completions_in_flight < COMPLETIONS_IN_FLIGHT)
                || self.to_complete.len() >= MAX_TOKENS);
        let starving = self.open_credit == 0 && self.waiting.is_empty();
        let grant = room >= half || (room > 0 && (starving || flush));
        if !grant && !flush {
            return Ok(());
        }
        let credit = if grant { room } else { 0 };
        let complete: Vec<(LeaseToken, bool)> = if flush {
            self.take_completions(MAX_TOKENS)
        } else {
            Vec::new()
        };
        self.send_request(credit, complete, Vec::new()).await
    }

    /// Up to `max` tokens to complete, in order, no two of one item. A
    /// handler may give its own lease back and the item come again while it
    /// runs: the stale token and the live one must not share a message,
    /// which the server refuses whole, and token by token refuses the
    /// second as naming the item twice (`DUPLICATE_TOKEN`) — the live
    /// lease would be counted lost and held until it expired. The later
    /// token waits for the next message.
    fn take_completions(&mut self, max: usize) -> Vec<(LeaseToken, bool)> {
        if self.to_complete.len() <= 1 {
            return std::mem::take(&mut self.to_complete);
        }
        let mut items = rustc_hash::FxHashSet::with_capacity_and_hasher(
            self.to_complete.len().min(max),
            rustc_hash::FxBuildHasher,
        );
        let mut out = Vec::with_capacity(self.to_complete.len().min(max));
        let mut later = Vec::new();
        for (token, sent_before) in self.to_complete.drain(..) {
            let first_of_its_item = self.held.get(&token).is_none_or(|h| items.insert(h.item));
            if out.len() < max && first_of_its_item {
                out.push((token, sent_before));
            } else {
                later.push((token, sent_before));
            }
        }
        self.to_complete = later;
        out
    }

    async fn send_request(
        &mut self,
        credit: usize,
        complete: Vec<(LeaseToken, bool)>,
        renew: Vec<LeaseToken>,
    ) -> Result<()> {
        let Some(stream) = self.stream.as_ref() else {
            self.to_complete.extend(complete);
            return Ok(());
        };
        self.next_sequence += 1;
        let sequence = self.next_sequence;
        // Completions alone, none sent before, go all or nothing: the answer
        // then carries no result per token for the server to show and us to
        // match. Renewals, completions sent again (whose "already done" must
        // be told apart) and completions refused in an all-or-nothing message
        // go token by token.
        let per_token = !renew.is_empty()
            || complete.iter().any(|(_, sent_before)| *sent_before)
            || (!self.refused_as_batch.is_empty()
                && complete
                    .iter()
                    .any(|(t, _)| self.refused_as_batch.contains(t)));
        let sent = stream
            .send(WorkRequest {
                sequence,
                credit: u32::try_from(credit).unwrap_or(u32::MAX),
                complete: &complete,
                renew: &renew,
                per_token,
            })
            .await;
        if sent.is_err() {
            // Not handed over (the stream was already gone): nothing was
            // done, so these go again as they were, not as in doubt.
            self.to_complete.extend(complete);
            self.pending_since.get_or_insert_with(Instant::now);
            return sent;
        }
        self.open_credit += credit;
        if !complete.is_empty() {
            self.completions_in_flight += 1;
        }
        if !complete.is_empty() || !renew.is_empty() {
            self.sent.insert(
                sequence,
                Sent {
                    complete,
                    renew,
                    per_token,
                },
            );
        }
        self.pending_since = if self.to_complete.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        sent
    }

    /// Renews every lease not renewed for `every`.
    pub(super) async fn renew_due(&mut self, every: Duration) -> Result<()> {
        if self.stream.is_none() {
            // Renewed on the next stream, at the next tick.
            return Ok(());
        }
        let now = Instant::now();
        let due: Vec<LeaseToken> = self
            .held
            .iter_mut()
            .filter(|(_, h)| !h.lost.is_cancelled() && h.renewed + every <= now)
            .map(|(t, h)| {
                h.renewed = now;
                t.clone()
            })
            .collect();
        for chunk in due.chunks(MAX_TOKENS) {
            self.send_request(0, Vec::new(), chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Takes in the answer to a request's completions and renewals.
    pub(super) fn answer(&mut self, answer: WorkAnswer) -> Result<()> {
        let Some(sent) = self.sent.remove(&answer.sequence) else {
            return Ok(());
        };
        if !sent.complete.is_empty() {
            self.completions_in_flight -= 1;
        }
        let expected = if sent.per_token {
            sent.complete.len() + sent.renew.len()
        } else {
            sent.renew.len()
        };
        let results = match answer.outcome {
            Ok(r) if r.len() == expected => r,
            Ok(r) => {
                let e = Error::Protocol(format!(
                    "a work stream answer of {} results where {expected} were due",
                    r.len(),
                ));
                return Err(self.refused(sent, e));
            }
            Err(e) if e.is_transient() => {
                // Nothing was done: again.
                self.pending_since.get_or_insert_with(Instant::now);
                self.to_complete.extend(sent.complete);
                return Ok(());
            }
            // All or nothing and one token: the refusal is its verdict.
            Err(e) if !sent.per_token && sent.complete.len() == 1 && sent.renew.is_empty() => {
                vec![Err(e)]
            }
            Err(e) if !sent.per_token => {
                // All or nothing, and a token was refused: nothing was done.
                // Again, these token by token, to learn which.
                tracing::debug!(queue = %self.queue.name(), error = %e, "completions refused as a batch; sending them token by token");
                self.refused_as_batch
                    .extend(sent.complete.iter().map(|(t, _)| t.clone()));
                self.pending_since.get_or_insert_with(Instant::now);
                self.to_complete.extend(sent.complete);
                return Ok(());
            }
            Err(e) => return Err(self.refused(sent, e)),
        };
        // One result per token: asked for, or the one token's refusal.
        let per_token = sent.per_token || results.len() > expected;
        let mut results = results.into_iter();
        for (token, retried) in sent.complete {
            // All or nothing: answered, so all done.
            let r = if per_token {
                results.next().unwrap_or(Ok(()))
            } else {
                Ok(())
            };
            self.held.remove(&token);
            self.refused_as_batch.remove(&token);
            match r {
                Ok(()) => self.summary.add(ItemOutcome::Completed),
                Err(e) if retried && FinishKind::Complete.done_anyway(&e).is_some() => {
                    self.summary.add(ItemOutcome::Completed);
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue.name(), error = %e, "could not complete an item; it comes again");
                    self.summary.add(ItemOutcome::Lost);
                }
            }
        }
        for (token, r) in sent.renew.into_iter().zip(results) {
            if let Err(e) = r
                && let Some(h) = self.held.get(&token)
            {
                if matches!(e, Error::LeaseLost { .. }) {
                    tracing::warn!(queue = %self.queue.name(), error = %e, "lease lost");
                    h.lost.cancel();
                } else {
                    tracing::debug!(queue = %self.queue.name(), error = %e, "renewal refused; trying again");
                }
            }
        }
        Ok(())
    }

    /// A whole request refused with `e`: its completions are lost.
    fn refused(&mut self, sent: Sent, e: Error) -> Error {
        for (token, _) in sent.complete {
            self.held.remove(&token);
            self.refused_as_batch.remove(&token);
            self.summary.add(ItemOutcome::Lost);
        }
        tracing::warn!(queue = %self.queue.name(), error = %e, "work stream request refused");
        e
    }
}
