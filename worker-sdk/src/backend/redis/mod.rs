//! The `redis://` backend: a queue laid out exactly as the Kubernetes tutorial's `rediswq.py`
//! lays it out, so that workers using the original `rediswq.py` and workq
//! workers (`wq consume`, [`Queue::work`](crate::Queue::work)) share one queue.
//!
//! # Layout (queue `Q`)
//! | key | type | what |
//! |---|---|---|
//! | `Q` | list | pending items (producers `RPUSH`; workers take from the tail) |
//! | `Q:processing` | list | leased items |
//! | `Q:leased_by_session:<sha224 hex of the item>` | string, with a TTL | the lease: the leasing session's id; the TTL is the lease |
//! | `Q:dead` | list | dead items (workq only) |
//! | `Q:dead:reasons` | hash | sha224 hex → `"<attempts> <died unix ms> <reason>"` |
//! | `Q:attempts` | hash | sha224 hex → attempts of an item workq leased |
//! | `Q:stats` | hash | `completed`, `retried` by workq workers |
//! | `Q:sealed` | string | present once the queue is sealed (workq only; `rediswq.py` ignores it) |
//! | `Q:settings` | hash | `max_attempts`, `lease_ms` given by `create` |
//! | `Q:unleased_since` | hash | the reaper's notes: sha224 hex → when it first saw the item in `Q:processing` without a lease |
//!
//! The first three are `rediswq.py`'s own; the rest are workq's and unknown to
//! `rediswq.py`, which leaves them alone.
//!
//! # Lifecycle
//! - **lease**: one Lua script checks that the tail of `Q` is what the client
//!   read (the client hashes the items: Redis's Lua has no SHA-224), moves those
//!   items to the head of `Q:processing` (as `RPOPLPUSH` does), sets each lease
//!   key to a fresh session id with the lease as TTL (`PX`), and counts an
//!   attempt. If another worker took the tail in between, nothing changes and the
//!   client reads again. Every lease gets its own session id, which is its fencing
//!   token.
//! - **renew / complete / fail / release**: one script each that first checks,
//!   for every token, that its lease key still holds that session id (else:
//!   [`Error::LeaseLost`], nothing changed), then extends the TTL / removes the
//!   item from `Q:processing` and deletes the lease key / moves it back or to
//!   `Q:dead` / pushes it back to the tail untried.
//! - **reaper** (module `reaper`): any workq worker, while it polls, runs a script over
//!   `Q:processing`: an item whose lease key has been absent for at least
//!   [`REAP_GRACE`] (seen twice by the reaper) goes back to the head of `Q` (or
//!   to `Q:dead` when its attempts are exhausted). The grace covers the moment
//!   between `rediswq.py`'s `BRPOPLPUSH` and its `SETEX`, when its item is
//!   leased but has no lease key yet.
//!
//! # Order
//! Workers take from the tail, as `rediswq.py`'s `BRPOPLPUSH` does, so with
//! `RPUSH` producers (the tutorial's `redis-cli rpush`, and `wq push`) the order
//! is last in, first out. Released items go back to the tail (taken next);
//! failed and expired items to the head (taken after everything else).
//!
//! # Empty and drained
//! Empty is what `rediswq.py`'s `empty()` says: both `Q` and `Q:processing` are
//! empty. Drained is empty and sealed (`Q:sealed` exists).

mod keys;
mod leases;
mod reaper;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::RedisError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

pub use keys::{Keys, item_digest};

use super::QueueUrl;
use crate::error::{Error, Result};
use crate::types::{
    DeadItem, ItemId, NewItem, Pushed, QueueInfo, QueueName, QueueSettings, Stats, from_unix_ms,
    to_ms,
};
use leases::Held;
use scripts::Scripts;

/// Attempts before an item goes dead, unless `create` set another limit (the
/// contract's default, [`workq_proto::defaults::MAX_ATTEMPTS`]).
pub const DEFAULT_MAX_ATTEMPTS: u32 = workq_proto::defaults::MAX_ATTEMPTS;

/// Lease used when a lease call names none and `create` set none (the
/// contract's default, [`workq_proto::defaults::LEASE`]).
pub const DEFAULT_LEASE: Duration = workq_proto::defaults::LEASE;

/// How long an item must be seen in `Q:processing` without a lease key before
/// the reaper takes it back.
pub const REAP_GRACE: Duration = Duration::from_secs(1);

/// Deadline of one Redis call.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a Redis server holding `rediswq`-style queues.
#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    scripts: Arc<Scripts>,
    held: Arc<Mutex<HashMap<String, Held>>>,
    last_reap: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Per-queue settings as stored in `Q:settings`.
struct Settings {
    max_attempts: u32,
    lease: Duration,
}

fn redis_error(what: impl Into<String>) -> impl FnOnce(RedisError) -> Error {
    let what = what.into();
    move |e| {
        use redis::RetryMethod;
        let transient = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.retry_method(),
                RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
            );
        Error::Backend {
            backend: "redis",
            what,
            reason: crate::error::root_cause(&e),
            transient,
            source: Box::new(e),
        }
    }
}

fn lost(queue: &QueueName, message: impl Into<String>) -> Error {
    Error::LeaseLost {
        queue: queue.to_string(),
        reason: crate::error::LeaseLostReason::Unknown,
        item: None,
        message: message.into(),
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::NotSupported {
        backend: "redis",
        what: what.into(),
    }
}

impl RedisBackend {
    /// Connects at once, so that an unreachable server is reported by `connect`.
    pub(crate) async fn connect(url: &QueueUrl, connect_timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url.url.as_str()).map_err(|e| Error::InvalidUrl {
            url: url.redacted(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| Error::Unreachable {
                url: url.redacted(),
                reason: crate::error::root_cause(&e),
                source: Box::new(e),
            })?;
        Ok(RedisBackend {
            conn,
            scripts: Arc::new(Scripts::new()),
            held: Arc::new(Mutex::new(HashMap::new())),
            last_reap: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs a prepared script call; `what` names the step in an error.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
        what: String,
    ) -> Result<T> {
        call.invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(what))
    }

    async fn settings(&self, keys: &Keys) -> Result<Settings> {
        let (max, lease): (Option<u32>, Option<u64>) = redis::cmd("HMGET")
            .arg(&keys.settings)
            .arg("max_attempts")
            .arg("lease_ms")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(format!(
                "reading the settings of {}",
                keys.main
            )))?;
        Ok(Settings {
            max_attempts: max.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            lease: lease
                .filter(|ms| *ms > 0)
                .map_or(DEFAULT_LEASE, Duration::from_millis),
        })
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        if settings.retry_backoff.is_some() || settings.retry_backoff_max.is_some() {
            return Err(unsupported(
                "delay retries: a failed item goes back to the head of the list at once (taken after everything pending)",
            ));
        }
        let keys = Keys::new(queue);
        let max = settings.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        let lease = to_ms(Some(settings.default_lease.unwrap_or(DEFAULT_LEASE)));
        let mut call = self.scripts.create.key(&keys.settings);
        call.arg(max).arg(lease);
        let answer: i64 = self
            .invoke(&call, format!("creating queue {queue}"))
            .await?;
        if answer < 0 {
            return Err(Error::Refused {
                queue: queue.to_string(),
                code: tonic::Code::AlreadyExists,
                reason: Some("QUEUE_EXISTS"),
                message: format!("queue {queue} exists with other settings"),
            });
        }
        Ok((self.get_queue(queue).await?, answer == 1))
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        let keys = Keys::new(queue);
        type Row = (
            u64,
            u64,
            u64,
            Option<u64>,
            Option<u64>,
            bool,
            (Option<u32>, Option<u64>),
        );
        let (pending, leased, dead, completed, retried, sealed, (max, lease)): Row = redis::pipe()
            .atomic()
            .llen(&keys.main)
            .llen(&keys.processing)
            .llen(&keys.dead)
            .hget(&keys.stats, "completed")
            .hget(&keys.stats, "retried")
            .exists(&keys.sealed)
            .cmd("HMGET")
            .arg(&keys.settings)
            .arg("max_attempts")
            .arg("lease_ms")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("reading queue {queue}")))?;
        let completed = completed.unwrap_or(0);
        let stats = Stats {
            queue: queue.to_string(),
            enqueued: pending + leased + completed + dead,
            pending,
            delayed: 0,
            leased,
            completed,
            dead,
            retried: retried.unwrap_or(0),
            sealed,
            drained: sealed && pending == 0 && leased == 0,
            state: crate::types::QueueState::of(sealed, pending == 0 && leased == 0),
        };
        Ok(QueueInfo {
            name: queue.to_string(),
            settings: QueueSettings {
                default_lease: Some(
                    lease
                        .filter(|ms| *ms > 0)
                        .map_or(DEFAULT_LEASE, Duration::from_millis),
                ),
                max_attempts: Some(max.unwrap_or(DEFAULT_MAX_ATTEMPTS)),
                retry_backoff: None,
                retry_backoff_max: None,
            },
            stats,
        })
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        Err(unsupported(
            "list queues: Redis keeps no registry of rediswq queues; name one with -q",
        ))
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        let keys = Keys::new(queue);
        let mut conn = self.conn();
        let what = || format!("deleting queue {queue}");
        let mut lease_keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", keys.lease_prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error(what()))?;
            lease_keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut del = redis::cmd("DEL");
        del.arg(&keys.main)
            .arg(&keys.processing)
            .arg(&keys.dead)
            .arg(&keys.reasons)
            .arg(&keys.attempts)
            .arg(&keys.stats)
            .arg(&keys.sealed)
            .arg(&keys.settings)
            .arg(&keys.unleased)
            .arg(&lease_keys);
        let n: u64 = del
            .query_async(&mut conn)
            .await
            .map_err(redis_error(what()))?;
        Ok(n > 0)
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let keys = Keys::new(queue);
        let call = self.scripts.purge.key(&keys.main);
        self.invoke(&call, format!("purging queue {queue}")).await
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        let keys = Keys::new(queue);
        let () = redis::cmd("SET")
            .arg(&keys.sealed)
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("sealing queue {queue}")))?;
        self.get_queue(queue).await
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        _create: bool,
    ) -> Result<Vec<Pushed>> {
        if items.iter().any(|i| i.idempotency_key.is_some()) {
            return Err(unsupported(
                "deduplicate items (--dedupe): a rediswq list has no idempotency keys",
            ));
        }
        if items.iter().any(|i| !i.attributes.is_empty()) {
            return Err(unsupported(
                "keep item attributes: a rediswq list holds bare payloads",
            ));
        }
        if items.iter().any(|i| i.delay.is_some_and(|d| !d.is_zero())) {
            return Err(unsupported(
                "delay items: a rediswq list has no delayed items",
            ));
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys = Keys::new(queue);
        let mut call = self.scripts.push.key(&keys.main);
        call.key(&keys.sealed);
        for i in &items {
            call.arg(&i.payload[..]);
        }
        let answer: i64 = self
            .invoke(&call, format!("pushing to queue {queue}"))
            .await?;
        if answer < 0 {
            return Err(Error::QueueSealed {
                queue: queue.to_string(),
            });
        }
        Ok(items
            .iter()
            .map(|i| Pushed {
                id: ItemId(item_digest(&i.payload)),
                duplicate: false,
            })
            .collect())
    }

    pub(crate) async fn list_dead(&self, queue: &QueueName, limit: u32) -> Result<Vec<DeadItem>> {
        let keys = Keys::new(queue);
        let limit = if limit == 0 { 1000 } else { limit };
        let what = || format!("listing dead items of queue {queue}");
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&keys.dead)
            .arg(0)
            .arg(i64::from(limit) - 1)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let digests: Vec<String> = items.iter().map(|i| item_digest(i)).collect();
        let reasons: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.reasons)
            .arg(&digests)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        Ok(items
            .into_iter()
            .zip(digests)
            .zip(reasons)
            .map(|((payload, digest), record)| {
                let record = record.unwrap_or_default();
                let mut parts = record.splitn(3, ' ');
                let attempts = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
                let died = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                DeadItem {
                    id: ItemId(digest),
                    payload,
                    attributes: Default::default(),
                    attempts,
                    reason: parts.next().unwrap_or("").to_owned(),
                    died_at: from_unix_ms(died),
                }
            })
            .collect())
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, ids: &[ItemId]) -> Result<u64> {
        let keys = Keys::new(queue);
        let what = || format!("requeueing dead items of queue {queue}");
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&keys.dead)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        let wanted: HashSet<&str> = ids.iter().map(ItemId::as_str).collect();
        let chosen: Vec<(Vec<u8>, String)> = items
            .into_iter()
            .map(|i| {
                let d = item_digest(&i);
                (i, d)
            })
            .filter(|(_, d)| wanted.is_empty() || wanted.contains(d.as_str()))
            .collect();
        if chosen.is_empty() {
            return Ok(0);
        }
        let mut call = self.scripts.requeue.key(&keys.main);
        call.key(&keys.dead).key(&keys.reasons).key(&keys.attempts);
        call.arg(chosen.len());
        for (i, _) in &chosen {
            call.arg(&i[..]);
        }
        for (_, d) in &chosen {
            call.arg(d);
        }
        self.invoke(&call, what()).await
    }
}

#[cfg(test)]
mod tests;
