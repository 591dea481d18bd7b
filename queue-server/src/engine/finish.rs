//! Ending and extending leases: renew, complete, fail and release, all or
//! nothing or token by token ([`Batch`]); and what a `Work` stream needs to
//! forget or give back what it held.

use super::{Engine, millis};
use crate::error::{Error, Result};
use crate::names::{LeaseToken, QueueName};
use crate::queue::{Batch, TokenResult};
use std::time::Duration;

impl Engine {
    fn tokens_ok(&self, what: &str, tokens: &[LeaseToken]) -> Result<()> {
        self.inner
            .limits
            .check_batch("lease_tokens", what, tokens.len())
    }

    /// Extends leases by `lease` (the queue's default when `None`), all or
    /// nothing; the results carry the new deadlines.
    pub async fn renew(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<TokenResult>> {
        self.renew_as(name, tokens, lease, Batch::AllOrNothing)
            .await
    }

    /// [`Engine::renew`], judging the batch as `batch` says.
    pub async fn renew_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("renew", tokens)?;
        let limits = self.inner.limits;
        self.mutate(name, |q, now, _| {
            let lease = lease.unwrap_or(q.settings().default_lease);
            let lease_ms = millis(limits.check_lease("lease", lease)?);
            q.renew(now, tokens, lease_ms, batch)
        })
        .await
    }

    /// Completes leased items, all or nothing; tokens that already completed
    /// their item are answered "already done".
    pub async fn complete(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<TokenResult>> {
        self.complete_as(name, tokens, Batch::AllOrNothing).await
    }

    /// [`Engine::complete`], judging the batch as `batch` says.
    pub async fn complete_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("complete", tokens)?;
        let out = self
            .mutate(name, |q, now, j| q.complete(now, tokens, batch, j))
            .await?;
        let done = out.iter().filter(|r| r.done()).count();
        metrics::counter!("workq_items_completed_total").increment(done as u64);
        Ok(out)
    }

    /// Fails leased items, all or nothing (see [`Engine::fail_as`]).
    pub async fn fail(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<Vec<TokenResult>> {
        self.fail_as(
            name,
            tokens,
            fatal,
            reason,
            retry_after,
            Batch::AllOrNothing,
        )
        .await
    }

    /// Fails leased items: back to the queue after `retry_after` (the
    /// queue's back-off when `None`) or dead; fatally: dead at once. The
    /// results say which went dead.
    pub async fn fail_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("fail", tokens)?;
        let reason = fail_reason(&self.inner.limits, reason, retry_after)?;
        let out = self
            .mutate(name, |q, now, j| {
                q.fail(
                    now,
                    tokens,
                    fatal,
                    reason,
                    retry_after.map(millis),
                    batch,
                    j,
                )
            })
            .await?;
        let done = out.iter().filter(|r| r.done()).count();
        metrics::counter!("workq_items_failed_total").increment(done as u64);
        Ok(out)
    }

    /// Gives leased items back at once, no attempt counted, all or nothing.
    pub async fn release(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<TokenResult>> {
        self.release_as(name, tokens, Batch::AllOrNothing).await
    }

    /// [`Engine::release`], judging the batch as `batch` says.
    pub async fn release_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        self.tokens_ok("release", tokens)?;
        self.mutate(name, |q, now, _| q.release(now, tokens, batch))
            .await
    }

    /// Keeps in `tokens` only the leases still live (none when the queue is
    /// gone): for a `Work` stream to forget items completed or failed over
    /// unary calls.
    pub fn retain_live(
        &self,
        name: &QueueName,
        tokens: &mut std::collections::HashSet<LeaseToken>,
    ) {
        let now = self.inner.clock.now_ms();
        if self
            .read(name, |q| tokens.retain(|t| q.is_live(now, *t)))
            .is_err()
        {
            tokens.clear();
        }
    }

    /// [`Engine::retain_live`] of a map keyed by token.
    pub fn retain_live_map<V, S: std::hash::BuildHasher>(
        &self,
        name: &QueueName,
        tokens: &mut std::collections::HashMap<LeaseToken, V, S>,
    ) {
        let now = self.inner.clock.now_ms();
        if self
            .read(name, |q| tokens.retain(|t, _| q.is_live(now, *t)))
            .is_err()
        {
            tokens.clear();
        }
    }

    /// Gives back, at once and counting no attempt, those of `tokens` that
    /// are still live leases; the others (completed, failed, expired, or the
    /// queue gone) are skipped. Returns how many were released. For a `Work`
    /// stream that ended with items in hand; any number of tokens.
    pub async fn release_held(&self, name: &QueueName, tokens: &[LeaseToken]) -> Result<usize> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let n = self
            .mutate(name, |q, now, _| Ok(q.release_live(now, tokens)))
            .await?;
        if n > 0 {
            metrics::counter!("workq_items_released_total").increment(n as u64);
        }
        Ok(n)
    }
}

/// The items a lease took and has not answered yet: if the lease's future is
/// dropped before it answers — its caller gone while it waits on the store
/// barrier — they are released at once, counting no attempt, instead of
/// staying leased to nobody until they expire. [`Unanswered::answer`]
/// disarms it.
pub(super) struct Unanswered<'a> {
    engine: &'a Engine,
    name: &'a QueueName,
    tokens: Vec<LeaseToken>,
}

impl<'a> Unanswered<'a> {
    /// Guards `tokens`, just leased from `name`.
    pub(super) fn new(engine: &'a Engine, name: &'a QueueName, tokens: Vec<LeaseToken>) -> Self {
        Unanswered {
            engine,
            name,
            tokens,
        }
    }

    /// The lease answers: its items are the caller's.
    pub(super) fn answer(mut self) {
        self.tokens.clear();
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.tokens.is_empty() {
            return;
        }
        // Released in memory now; the commit (releases journal nothing
        // durable a restart would need: leases are not stored) goes to the
        // store unawaited — there is no one left to tell.
        let tokens = std::mem::take(&mut self.tokens);
        if let Ok((n, _commit)) = self
            .engine
            .mutate_now(self.name, |q, now, _| Ok(q.release_live(now, &tokens)))
            && n > 0
        {
            metrics::counter!("workq_items_released_total").increment(n as u64);
        }
    }
}

/// A failure's reason as kept (cut to `max_attribute_bytes` on a character
/// boundary; "no reason given" when empty), once its `retry_after` is within
/// `max_delay`: the same checks on every store.
pub(crate) fn fail_reason<'a>(
    limits: &crate::settings::Limits,
    reason: &'a str,
    retry_after: Option<Duration>,
) -> Result<&'a str> {
    if let Some(after) = retry_after
        && after > limits.max_delay
    {
        return Err(Error::limit(
            "retry_after",
            "max_delay",
            crate::settings::secs(limits.max_delay),
            format!(
                "retry_after: {} ms is longer than the limit of {} ms",
                after.as_millis(),
                limits.max_delay.as_millis()
            ),
        ));
    }
    let reason = if reason.is_empty() {
        "no reason given"
    } else {
        reason
    };
    let mut cut = reason.len().min(limits.max_attribute_bytes);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    Ok(&reason[..cut])
}
