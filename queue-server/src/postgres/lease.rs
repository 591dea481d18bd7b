//! Leasing on PostgreSQL: a lease, or a worker's completion and its next
//! lease (`complete_then_lease`), is one call in its queue's line of work
//! calls; concurrent calls go in one statement (`work.rs`), which takes
//! pending items in rank order (`FOR UPDATE SKIP LOCKED`, so concurrent
//! leases on any replica never wait for each other or take the same item),
//! cuts each call's share to its byte budget, and moves them to LEASED with
//! a new epoch, a fresh random secret and a deadline from the database's
//! clock. A completion whose tokens are not all live takes the judging
//! path (`finish.rs`), then leases.
//!
//! A call that finds nothing parks until a notification for its queue (an
//! enqueue on any replica), its wait ends, or a slow safety poll.

use super::work::{Took, WorkCall};
use super::{PgEngine, unavailable};
use crate::engine::LeaseOutcome;
use crate::error::Result;
use crate::names::{LeaseToken, QueueName};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Counts a parked lease call for as long as it lives.
struct Parked<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PgEngine {
    /// Leases within a byte budget (see [`crate::Engine::lease_within`]).
    pub async fn lease_within(
        &self,
        name: &QueueName,
        max: usize,
        max_bytes: usize,
        first_free: bool,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, &[], max, (max_bytes, first_free), lease, wait)
            .await
    }

    /// Completes `complete`, then leases (see
    /// [`crate::Engine::complete_then_lease`]).
    pub async fn complete_then_lease(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        max_bytes: usize,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, complete, max, (max_bytes, true), lease, wait)
            .await
    }

    async fn lease_inner(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        (max_bytes, first_free): (usize, bool),
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let limits = self.inner.limits;
        limits.check_batch("max_items", "lease max_items", max)?;
        let wait = limits.check_wait(wait)?;
        let budget = match max_bytes {
            0 => limits.answer_budget(),
            n => n.min(limits.answer_budget()),
        };
        // A lease given is checked here; the queue's default (checked when
        // it was set) is read by the lease statement itself.
        let lease_ms = match lease {
            Some(d) => Some(super::ms(limits.check_lease("lease", d)?)),
            None => None,
        };
        if !complete.is_empty() {
            self.tokens_ok("complete", complete)?;
        }
        let mut complete = complete;
        let waker = self.waker(name);
        let until = Instant::now() + wait;
        let mut last_try = wait.is_zero();
        loop {
            let notified = waker.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let took = if complete.is_empty() {
                self.take(name, max, budget, first_free, lease_ms).await?
            } else {
                let tokens = std::mem::take(&mut complete);
                match self
                    .complete_and_take(name, tokens, max, budget, first_free, lease_ms)
                    .await?
                {
                    Some(took) => took,
                    None => {
                        // A token not live (or the queue missing): nothing
                        // changed; the judging path answers, then a lease.
                        self.complete_judged(name, tokens, crate::queue::Batch::AllOrNothing)
                            .await?;
                        self.take(name, max, budget, first_free, lease_ms).await?
                    }
                }
            };
            let drained = took.sealed && took.live == 0;
            if !took.items.is_empty()
                || took.over_budget
                || drained
                || last_try
                || self.is_stopping()
            {
                return Ok(LeaseOutcome {
                    items: took.items,
                    drained,
                    empty: took.live == 0,
                    sealed: took.sealed,
                    over_budget: took.over_budget,
                });
            }
            waker.waiting.fetch_add(1, Ordering::Relaxed);
            let _parked = Parked(&waker.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => last_try = true,
                () = tokio::time::sleep(super::SAFETY_POLL) => {}
                () = self.stopping() => {}
            }
        }
    }

    /// One lease, in its queue's next group.
    async fn take(
        &self,
        name: &QueueName,
        max: usize,
        budget: usize,
        first_free: bool,
        lease_ms: Option<i64>,
    ) -> Result<Took> {
        let call = WorkCall {
            tokens: Vec::new(),
            max,
            budget,
            first_free,
            lease_ms,
        };
        // A call without tokens is never turned away (see `work.rs`).
        self.work(name, call)
            .await?
            .ok_or_else(|| unavailable("a lease was turned away by its group; retry"))
    }

    /// Completes `tokens` and leases, in the queue's next group: `None`
    /// when it changed nothing (a token not live, an item named twice, the
    /// queue missing).
    async fn complete_and_take(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        max: usize,
        budget: usize,
        first_free: bool,
        lease_ms: Option<i64>,
    ) -> Result<Option<Took>> {
        let call = WorkCall {
            tokens: tokens.to_vec(),
            max,
            budget,
            first_free,
            lease_ms,
        };
        self.work(name, call).await
    }
}
