//! The `redis://` backend: a queue laid out exactly as the seeds' `rediswq.py`
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
//! - **reaper**: any workq worker, while it polls, runs a script over
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use sha2::{Digest, Sha224};

use super::QueueUrl;
use crate::error::{Error, Result};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, NewItem, Pushed,
    QueueInfo, QueueName, QueueSettings, Stats, from_unix_ms, to_ms,
};

/// Attempts before an item goes dead, unless `create` set another limit (the
/// queue service's default too).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Lease used when a lease call names none and `create` set none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long an item must be seen in `Q:processing` without a lease key before
/// the reaper takes it back.
pub const REAP_GRACE: Duration = Duration::from_secs(1);

/// How often one client runs the reaper while it polls.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The most of `Q:processing` the reaper looks at in one run.
const REAP_SCAN: isize = 5000;

/// Longest pause between two polls of an empty queue during a lease call's wait.
const MAX_POLL_PAUSE: Duration = Duration::from_millis(200);

/// Deadline of one Redis call.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Lease `n` items from the tail of `KEYS[1]` if it still ends with the items the
/// client read. KEYS: main, processing, attempts, lease keys…; ARGV: lease ms, n,
/// items (tail first)…, tokens…, digests…. Answers `{-1}` on a mismatch, else
/// `{0, attempt…}`.
const LEASE: &str = r"
local n = tonumber(ARGV[2])
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
if #tail ~= n then return {-1} end
for i = 1, n do
  if tail[n - i + 1] ~= ARGV[2 + i] then return {-1} end
end
local out = {0}
for i = 1, n do
  redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
  redis.call('SET', KEYS[3 + i], ARGV[2 + n + i], 'PX', ARGV[1])
  out[i + 1] = redis.call('HINCRBY', KEYS[3], ARGV[2 + 2 * n + i], 1)
end
return out
";

/// Checks that every lease key `KEYS[first + i]` holds token `ARGV[tok + i]`;
/// answers the 1-based index of the first that does not, or 0.
const CHECK: &str = r"
local function check(first, tok, n)
  for i = 1, n do
    if redis.call('GET', KEYS[first + i]) ~= ARGV[tok + i] then return i end
  end
  return 0
end
";

/// KEYS: lease keys…; ARGV: lease ms, n, tokens….
const RENEW: &str = r"
local n = tonumber(ARGV[2])
local bad = check(0, 2, n)
if bad > 0 then return bad end
for i = 1, n do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 0
";

/// KEYS: processing, attempts, stats, lease keys…; ARGV: n, tokens…, items…, digests….
const COMPLETE: &str = r"
local n = tonumber(ARGV[1])
local bad = check(3, 1, n)
if bad > 0 then return bad end
for i = 1, n do
  redis.call('LREM', KEYS[1], -1, ARGV[1 + n + i])
  redis.call('DEL', KEYS[3 + i])
  redis.call('HDEL', KEYS[2], ARGV[1 + 2 * n + i])
end
redis.call('HINCRBY', KEYS[3], 'completed', n)
return 0
";

/// KEYS: main, processing, attempts, dead, reasons, stats, lease keys…;
/// ARGV: n, fatal (0/1), max attempts, reason, tokens…, items…, digests….
/// Answers `{bad index, 0}` or `{0, dead}`.
const FAIL: &str = r"
local n = tonumber(ARGV[1])
local bad = check(6, 4, n)
if bad > 0 then return {bad, 0} end
local fatal = ARGV[2] == '1'
local max = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local dead = 0
for i = 1, n do
  local item = ARGV[4 + n + i]
  local digest = ARGV[4 + 2 * n + i]
  redis.call('LREM', KEYS[2], -1, item)
  redis.call('DEL', KEYS[6 + i])
  local attempts = tonumber(redis.call('HGET', KEYS[3], digest) or '1')
  if fatal or (max > 0 and attempts >= max) then
    redis.call('RPUSH', KEYS[4], item)
    redis.call('HSET', KEYS[5], digest, attempts .. ' ' .. now .. ' ' .. ARGV[4])
    redis.call('HDEL', KEYS[3], digest)
    dead = dead + 1
  else
    redis.call('LPUSH', KEYS[1], item)
    redis.call('HINCRBY', KEYS[6], 'retried', 1)
  end
end
return {0, dead}
";

/// KEYS: main, processing, attempts, lease keys…; ARGV: n, tokens…, items…, digests….
const RELEASE: &str = r"
local n = tonumber(ARGV[1])
local bad = check(3, 1, n)
if bad > 0 then return bad end
for i = 1, n do
  local item = ARGV[1 + n + i]
  local digest = ARGV[1 + 2 * n + i]
  redis.call('LREM', KEYS[2], -1, item)
  redis.call('DEL', KEYS[3 + i])
  if redis.call('HINCRBY', KEYS[3], digest, -1) <= 0 then redis.call('HDEL', KEYS[3], digest) end
  redis.call('RPUSH', KEYS[1], item)
end
return 0
";

/// The reaper. KEYS: main, processing, attempts, dead, reasons, stats,
/// unleased_since, lease keys…; ARGV: grace ms, max attempts, whole list (0/1),
/// n, items…, digests…. Answers how many items it moved.
const REAP: &str = r"
local grace = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local moved = 0
local present = {}
for i = 1, n do
  local item = ARGV[4 + i]
  local digest = ARGV[4 + n + i]
  present[digest] = true
  if redis.call('EXISTS', KEYS[7 + i]) == 1 then
    redis.call('HDEL', KEYS[7], digest)
  else
    local seen = redis.call('HGET', KEYS[7], digest)
    if not seen then
      redis.call('HSET', KEYS[7], digest, now)
    elseif now - tonumber(seen) >= grace then
      redis.call('HDEL', KEYS[7], digest)
      if redis.call('LREM', KEYS[2], -1, item) == 1 then
        local attempts = tonumber(redis.call('HGET', KEYS[3], digest) or '0')
        if max > 0 and attempts >= max then
          redis.call('RPUSH', KEYS[4], item)
          redis.call('HSET', KEYS[5], digest, attempts .. ' ' .. now .. ' lease expired ' .. attempts .. ' times')
          redis.call('HDEL', KEYS[3], digest)
        else
          redis.call('LPUSH', KEYS[1], item)
          redis.call('HINCRBY', KEYS[6], 'retried', 1)
        end
        moved = moved + 1
      end
    end
  end
end
if ARGV[3] == '1' then
  for _, digest in ipairs(redis.call('HKEYS', KEYS[7])) do
    if not present[digest] then redis.call('HDEL', KEYS[7], digest) end
  end
end
return moved
";

/// KEYS: main, sealed; ARGV: items…. Answers -1 when sealed, else the list length.
const PUSH: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return redis.call('RPUSH', KEYS[1], unpack(ARGV))
";

/// KEYS: settings; ARGV: max attempts, lease ms. Answers 1 created, 0 same, -1 different.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local have = redis.call('HMGET', KEYS[1], 'max_attempts', 'lease_ms')
  if have[1] == ARGV[1] and have[2] == ARGV[2] then return 0 end
  return -1
end
redis.call('HSET', KEYS[1], 'max_attempts', ARGV[1], 'lease_ms', ARGV[2])
return 1
";

/// KEYS: main. Answers how many items were removed.
const PURGE: &str = r"
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
";

/// KEYS: main, dead, reasons, attempts; ARGV: n, items…, digests…. Answers how many moved.
const REQUEUE: &str = r"
local n = tonumber(ARGV[1])
local moved = 0
for i = 1, n do
  local item = ARGV[1 + i]
  local digest = ARGV[1 + n + i]
  if redis.call('LREM', KEYS[2], 1, item) == 1 then
    redis.call('HDEL', KEYS[3], digest)
    redis.call('HDEL', KEYS[4], digest)
    redis.call('RPUSH', KEYS[1], item)
    moved = moved + 1
  end
end
return moved
";

/// The scripts, compiled once per client.
struct Scripts {
    lease: Script,
    renew: Script,
    complete: Script,
    fail: Script,
    release: Script,
    reap: Script,
    push: Script,
    create: Script,
    purge: Script,
    requeue: Script,
}

impl Scripts {
    fn new() -> Self {
        let checked = |body: &str| Script::new(&format!("{CHECK}{body}"));
        Scripts {
            lease: Script::new(LEASE),
            renew: checked(RENEW),
            complete: checked(COMPLETE),
            fail: checked(FAIL),
            release: checked(RELEASE),
            reap: Script::new(REAP),
            push: Script::new(PUSH),
            create: Script::new(CREATE),
            purge: Script::new(PURGE),
            requeue: Script::new(REQUEUE),
        }
    }
}

/// The keys of one queue.
struct Keys {
    main: String,
    processing: String,
    lease_prefix: String,
    dead: String,
    reasons: String,
    attempts: String,
    stats: String,
    sealed: String,
    settings: String,
    unleased: String,
}

impl Keys {
    fn new(q: &QueueName) -> Self {
        let q = q.as_str();
        Keys {
            main: q.to_owned(),
            processing: format!("{q}:processing"),
            lease_prefix: format!("{q}:leased_by_session:"),
            dead: format!("{q}:dead"),
            reasons: format!("{q}:dead:reasons"),
            attempts: format!("{q}:attempts"),
            stats: format!("{q}:stats"),
            sealed: format!("{q}:sealed"),
            settings: format!("{q}:settings"),
            unleased: format!("{q}:unleased_since"),
        }
    }

    fn lease(&self, digest: &str) -> String {
        format!("{}{digest}", self.lease_prefix)
    }
}

/// The SHA-224 hex digest of an item, as `rediswq.py`'s `_itemkey` computes it.
pub fn item_digest(item: &[u8]) -> String {
    let digest = Sha224::digest(item);
    let mut hex = String::with_capacity(56);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// An item this client holds a lease on.
#[derive(Clone)]
struct Held {
    item: Vec<u8>,
    digest: String,
}

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
        let answer: i64 = self
            .scripts
            .create
            .key(&keys.settings)
            .arg(max)
            .arg(lease)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("creating queue {queue}")))?;
        if answer < 0 {
            return Err(Error::Refused {
                queue: queue.to_string(),
                code: tonic::Code::AlreadyExists,
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
        self.scripts
            .purge
            .key(&keys.main)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("purging queue {queue}")))
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
        let answer: i64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("pushing to queue {queue}")))?;
        if answer < 0 {
            return Err(Error::Refused {
                queue: queue.to_string(),
                code: tonic::Code::FailedPrecondition,
                message: format!("queue {queue} is sealed"),
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

    pub(crate) async fn lease(&self, queue: &QueueName, opts: &LeaseOptions) -> Result<Leased> {
        let keys = Keys::new(queue);
        let settings = self.settings(&keys).await?;
        let lease = opts.lease.unwrap_or(settings.lease);
        let lease_ms = to_ms(Some(lease)).max(1);
        let give_up = Instant::now() + opts.wait;
        let mut pause = Duration::from_millis(10);
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
            tokio::time::sleep(pause.min(give_up - now)).await;
            pause = (pause * 2).min(MAX_POLL_PAUSE);
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
        let tokens: Vec<String> = items
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
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
        let answer: Vec<i64> = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
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

    /// Runs the reaper on `queue` unless this client ran it there lately.
    async fn maybe_reap(&self, queue: &QueueName, keys: &Keys, max_attempts: u32) -> Result<()> {
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
        let moved: u64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))?;
        if moved > 0 {
            tracing::info!(queue = %keys.main, moved, "reaper: expired leases returned");
        }
        Ok(moved)
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
        let bad: i64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("renewing leases on queue {queue}")))?;
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
        let bad: i64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("completing items of queue {queue}")))?;
        self.check_answer(queue, tokens, bad)?;
        self.forget(tokens);
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
        let (bad, dead): (i64, u32) = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("failing items of queue {queue}")))?;
        self.check_answer(queue, tokens, bad)?;
        self.forget(tokens);
        Ok(dead)
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let keys = Keys::new(queue);
        let held = self.held(queue, tokens)?;
        let mut call = self.scripts.release.key(&keys.main);
        call.key(&keys.processing).key(&keys.attempts);
        push_tokens(&mut call, &keys, tokens, &held);
        let bad: i64 = call
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(format!("releasing items of queue {queue}")))?;
        self.check_answer(queue, tokens, bad)?;
        self.forget(tokens);
        Ok(())
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
        call.invoke_async(&mut self.conn())
            .await
            .map_err(redis_error(what()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_rediswq_item_keys() {
        // hashlib.sha224(b"apple").hexdigest()
        assert_eq!(
            item_digest(b"apple"),
            "b7bbfdf1a1012999b3c466fdeb906a629caa5e3e022428d1eb702281"
        );
        let k = Keys::new(&QueueName::new("job2").expect("valid"));
        assert_eq!(k.processing, "job2:processing");
        assert!(k.lease("ab").starts_with("job2:leased_by_session:"));
    }
}
