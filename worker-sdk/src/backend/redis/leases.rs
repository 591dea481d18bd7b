//! Leases on a `rediswq` queue: taking items, and renewing, completing,
//! failing and releasing them under their session id (the fencing token).

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::keys::{Keys, item_digest};
use super::{RedisBackend, lost, redis_error};
use crate::error::Result;
use crate::random::random_uuid;
use crate::retry::Backoff;
use crate::types::{
    Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, QueueName, to_ms,
};

/// Longest pause between two polls of an empty queue during a lease call's wait.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

/// An item this client holds a lease on.
#[derive(Clone)]
pub(super) struct Held {
    item: Vec<u8>,
    digest: String,
}

impl RedisBackend {
    pub(crate) async fn lease(&self, queue: &QueueName, opts: &LeaseOptions) -> Result<Leased> {
        let keys = Keys::new(queue);
        let settings = self.settings(&keys).await?;
        let lease = opts.lease.unwrap_or(settings.lease);
        let lease_ms = to_ms(Some(lease)).max(1);
        let give_up = Instant::now() + opts.wait;
        let mut pause = Backoff::for_poll(MAX_POLL_PAUSE);
        loop {
            self.maybe_reap(queue, &keys, settings.max_attempts).await?;
            let Some(leased) = self
                .try_lease(&keys, opts.max_items.max(1), lease_ms)
                .await?
            else {
                // Another worker took the tail first: read it again at once.
                continue;
            };
            let now = Instant::now();
            if !leased.items.is_empty() || leased.drained || now >= give_up {
                return Ok(leased);
            }
            tokio::time::sleep(pause.next_delay().min(give_up - now)).await;
        }
    }

    /// One optimistic lease; `None` when the tail changed under it.
    async fn try_lease(
        &self,
        keys: &Keys,
        max_items: u32,
        lease_ms: u64,
    ) -> Result<Option<Leased>> {
        let n = isize::try_from(max_items.min(1000)).unwrap_or(1000);
        let what = || format!("leasing from queue {}", keys.main);
        let (tail, processing, sealed): (Vec<Vec<u8>>, u64, bool) = redis::pipe()
            .lrange(&keys.main, -n, -1)
            .llen(&keys.processing)
            .exists(&keys.sealed)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        if tail.is_empty() {
            let empty = processing == 0;
            return Ok(Some(Leased {
                items: Vec::new(),
                drained: sealed && empty,
                empty,
            }));
        }
        // Tail first, as RPOPLPUSH takes them; stop before a repeated item, whose
        // lease key would be the same.
        let mut items: Vec<(Vec<u8>, String)> = Vec::new();
        let mut seen = HashSet::new();
        for item in tail.into_iter().rev() {
            let digest = item_digest(&item);
            if !seen.insert(digest.clone()) {
                break;
            }
            items.push((item, digest));
        }
        let tokens: Vec<String> = items.iter().map(|_| random_uuid()).collect();
        let mut call = self.scripts.lease.key(&keys.main);
        call.key(&keys.processing).key(&keys.attempts);
        for (_, digest) in &items {
            call.key(keys.lease(digest));
        }
        call.arg(lease_ms).arg(items.len());
        for (item, _) in &items {
            call.arg(&item[..]);
        }
        for t in &tokens {
            call.arg(t);
        }
        for (_, digest) in &items {
            call.arg(digest);
        }
        let answer: Vec<i64> = self.invoke(&call, what()).await?;
        if answer.first() != Some(&0) {
            return Ok(None);
        }
        let deadline = SystemTime::now() + Duration::from_millis(lease_ms);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let leased = items
            .into_iter()
            .zip(tokens)
            .zip(answer.into_iter().skip(1))
            .map(|(((item, digest), token), attempt)| {
                held.insert(
                    token.clone(),
                    Held {
                        item: item.clone(),
                        digest: digest.clone(),
                    },
                );
                LeasedItem {
                    id: ItemId(digest),
                    token: LeaseToken(token),
                    payload: item,
                    attributes: Default::default(),
                    attempt: u32::try_from(attempt.max(1)).unwrap_or(u32::MAX),
                    lease_deadline: deadline,
                    enqueued_at: UNIX_EPOCH,
                }
            })
            .collect();
        Ok(Some(Leased {
            items: leased,
            drained: false,
            empty: false,
        }))
    }

    /// The held items of `tokens`, or LeaseLost for one this client does not hold.
    fn held(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<Vec<Held>> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .iter()
            .map(|t| {
                held.get(t.as_str()).cloned().ok_or_else(|| {
                    lost(
                        queue,
                        format!("lease {} is not held by this client", t.as_str()),
                    )
                })
            })
            .collect()
    }

    fn forget(&self, tokens: &[LeaseToken]) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for t in tokens {
            held.remove(t.as_str());
        }
    }

    /// Maps a finishing script's answer (see [`Self::check_answer`]); the
    /// tokens are forgotten once the script took them all.
    fn settle(&self, queue: &QueueName, tokens: &[LeaseToken], bad: i64) -> Result<()> {
        self.check_answer(queue, tokens, bad)?;
        self.forget(tokens);
        Ok(())
    }

    /// Maps a script's "index of the first stale token" answer.
    fn check_answer(&self, queue: &QueueName, tokens: &[LeaseToken], bad: i64) -> Result<()> {
        if bad == 0 {
            return Ok(());
        }
        let token = usize::try_from(bad - 1)
            .ok()
            .and_then(|i| tokens.get(i))
            .cloned();
        if let Some(t) = &token {
            self.forget(std::slice::from_ref(t));
        }
        Err(lost(
            queue,
            format!(
                "lease {} expired or was taken over (its lease key no longer holds its session id)",
                token.as_ref().map_or("?", |t| t.as_str())
            ),
        ))
    }

    pub(crate) async fn renew(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<SystemTime>> {
        let keys = Keys::new(queue);
        let held = self.held(queue, tokens)?;
        let lease = match lease {
            Some(l) => l,
            None => self.settings(&keys).await?.lease,
        };
        let ms = to_ms(Some(lease)).max(1);
        let mut call = self.scripts.renew.prepare_invoke();
        for h in &held {
            call.key(keys.lease(&h.digest));
        }
        call.arg(ms).arg(tokens.len());
        for t in tokens {
            call.arg(t.as_str());
        }
        let bad: i64 = self
            .invoke(&call, format!("renewing leases on queue {queue}"))
            .await?;
        self.check_answer(queue, tokens, bad)?;
        let deadline = SystemTime::now() + Duration::from_millis(ms);
        Ok(vec![deadline; tokens.len()])
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let keys = Keys::new(queue);
        let held = self.held(queue, tokens)?;
        let mut call = self.scripts.complete.key(&keys.processing);
        call.key(&keys.attempts).key(&keys.stats);
        push_tokens(&mut call, &keys, tokens, &held);
        let bad: i64 = self
            .invoke(&call, format!("completing items of queue {queue}"))
            .await?;
        self.settle(queue, tokens, bad)?;
        Ok(())
    }

    pub(crate) async fn fail(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        failure: &Failure,
    ) -> Result<u32> {
        let keys = Keys::new(queue);
        let held = self.held(queue, tokens)?;
        let settings = self.settings(&keys).await?;
        let mut call = self.scripts.fail.key(&keys.main);
        call.key(&keys.processing)
            .key(&keys.attempts)
            .key(&keys.dead)
            .key(&keys.reasons)
            .key(&keys.stats);
        for h in &held {
            call.key(keys.lease(&h.digest));
        }
        call.arg(tokens.len())
            .arg(u8::from(failure.fatal))
            .arg(settings.max_attempts)
            .arg(&failure.reason);
        push_token_args(&mut call, tokens, &held);
        let (bad, dead): (i64, u32) = self
            .invoke(&call, format!("failing items of queue {queue}"))
            .await?;
        self.settle(queue, tokens, bad)?;
        Ok(dead)
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let keys = Keys::new(queue);
        let held = self.held(queue, tokens)?;
        let mut call = self.scripts.release.key(&keys.main);
        call.key(&keys.processing).key(&keys.attempts);
        push_tokens(&mut call, &keys, tokens, &held);
        let bad: i64 = self
            .invoke(&call, format!("releasing items of queue {queue}"))
            .await?;
        self.settle(queue, tokens, bad)?;
        Ok(())
    }
}

/// Adds the lease keys, then `n, tokens…, items…, digests…`.
fn push_tokens(
    call: &mut redis::ScriptInvocation<'_>,
    keys: &Keys,
    tokens: &[LeaseToken],
    held: &[Held],
) {
    for h in held {
        call.key(keys.lease(&h.digest));
    }
    call.arg(tokens.len());
    push_token_args(call, tokens, held);
}

/// Adds `tokens…, items…, digests…`.
fn push_token_args(call: &mut redis::ScriptInvocation<'_>, tokens: &[LeaseToken], held: &[Held]) {
    for t in tokens {
        call.arg(t.as_str());
    }
    for h in held {
        call.arg(&h.item[..]);
    }
    for h in held {
        call.arg(&h.digest);
    }
}
