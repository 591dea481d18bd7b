//! The reaper: items whose lease key is gone go back to the queue.
//!
//! Any workq worker runs it while it polls, at most every [`REAP_EVERY`] per
//! client and queue. An item seen in `Q:processing` without a lease key twice,
//! [`REAP_GRACE`] apart, goes back to the head of `Q` (or to `Q:dead` once its
//! attempts are exhausted). The grace covers `rediswq.py`'s moment between
//! `BRPOPLPUSH` and `SETEX`, when its item is leased but has no lease key yet.

use std::time::Duration;

use tokio::time::Instant;

use super::keys::{Keys, item_digest};
use super::{REAP_GRACE, RedisBackend, redis_error};
use crate::error::Result;
use crate::types::{QueueName, to_ms};

/// How often one client runs the reaper while it polls.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The most of `Q:processing` the reaper looks at in one run.
const REAP_SCAN: isize = 5000;

impl RedisBackend {
    /// Runs the reaper on `queue` unless this client ran it there lately.
    pub(super) async fn maybe_reap(
        &self,
        queue: &QueueName,
        keys: &Keys,
        max_attempts: u32,
    ) -> Result<()> {
        {
            let mut last = self.last_reap.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match last.get(queue.as_str()) {
                Some(t) if now.duration_since(*t) < REAP_EVERY => return Ok(()),
                _ => {
                    last.insert(queue.to_string(), now);
                }
            }
        }
        self.reap(keys, max_attempts).await.map(|_| ())
    }

    /// Moves items whose lease has been gone for [`REAP_GRACE`] from
    /// `Q:processing` back to `Q` (or to `Q:dead`); answers how many.
    async fn reap(&self, keys: &Keys, max_attempts: u32) -> Result<u64> {
        let what = || format!("reaping expired leases of queue {}", keys.main);
        let processing: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&keys.processing)
            .arg(0)
            .arg(REAP_SCAN - 1)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        let whole = processing.len() < usize::try_from(REAP_SCAN).unwrap_or(usize::MAX);
        let digests: Vec<String> = processing.iter().map(|i| item_digest(i)).collect();
        let mut call = self.scripts.reap.key(&keys.main);
        call.key(&keys.processing)
            .key(&keys.attempts)
            .key(&keys.dead)
            .key(&keys.reasons)
            .key(&keys.stats)
            .key(&keys.unleased);
        for d in &digests {
            call.key(keys.lease(d));
        }
        call.arg(to_ms(Some(REAP_GRACE)))
            .arg(max_attempts)
            .arg(u8::from(whole))
            .arg(processing.len());
        for i in &processing {
            call.arg(&i[..]);
        }
        for d in &digests {
            call.arg(d);
        }
        let moved: u64 = self.invoke(&call, what()).await?;
        if moved > 0 {
            tracing::info!(queue = %keys.main, moved, "reaper: expired leases returned");
        }
        Ok(moved)
    }
}
