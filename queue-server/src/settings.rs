//! Per-queue settings and the server's limits on what a call may ask.

use crate::error::Error;
use std::time::Duration;
use workq_proto::defaults;

/// Per-queue settings, given when the queue is created and changed by
/// UpdateQueue. The default is the
/// contract's ([`workq_proto::defaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Lease duration used when a lease call names none.
    pub default_lease: Duration,
    /// Attempts (retriable failures and lease expiries) before an item goes
    /// dead. At least 1.
    pub max_attempts: u32,
    /// Back-off after the first retriable failure, doubled for each further one.
    pub retry_backoff: Duration,
    /// Upper bound of the back-off.
    pub retry_backoff_max: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            default_lease: defaults::LEASE,
            max_attempts: defaults::MAX_ATTEMPTS,
            retry_backoff: defaults::RETRY_BACKOFF,
            retry_backoff_max: defaults::RETRY_BACKOFF_MAX,
        }
    }
}

impl QueueSettings {
    /// Every field zero: "use the server's defaults" when creating a queue.
    pub const UNSET: QueueSettings = QueueSettings {
        default_lease: Duration::ZERO,
        max_attempts: 0,
        retry_backoff: Duration::ZERO,
        retry_backoff_max: Duration::ZERO,
    };

    /// The back-off before the next attempt after `attempts` counted attempts
    /// (1 for the first failure): `retry_backoff * 2^(attempts-1)`, capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(30);
        self.retry_backoff
            .saturating_mul(1u32 << shift)
            .min(self.retry_backoff_max)
    }
}

/// Bounds on what one call may ask, checked before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest item, in bytes: its payload, attribute keys and values and
    /// idempotency key together.
    pub max_payload_bytes: usize,
    /// Largest gRPC message, in or out. Answers (Lease, Work, ListDead) are
    /// filled up to [`Limits::answer_budget`], a little under it; the largest
    /// item must fit in that budget ([`Limits::check`], at start).
    pub max_message_bytes: usize,
    /// Most credit a `Work` stream may have open (granted, not yet used); a
    /// grant beyond it is clamped.
    pub max_work_credit: u64,
    /// Most items in one enqueue, lease, renew, complete, fail or release call.
    pub max_batch: usize,
    /// Shortest lease.
    pub min_lease: Duration,
    /// Longest lease.
    pub max_lease: Duration,
    /// Longest wait of a long-polling lease call.
    pub max_wait: Duration,
    /// Longest enqueue delay.
    pub max_delay: Duration,
    /// Most attributes on one item.
    pub max_attributes: usize,
    /// Longest attribute key, attribute value or idempotency key, in bytes.
    pub max_attribute_bytes: usize,
    /// How long the idempotency key of a completed item is remembered.
    pub idempotency_window: Duration,
    /// Most queues at once (each costs about 2.5 KiB and a few metrics
    /// series); creating one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_queues: usize,
    /// Most finished leases and enqueue request ids remembered, all queues
    /// together, for idempotent retries (`--max-finished-tokens`); the
    /// oldest of a queue is forgotten first. See [`crate::queue::recall`]
    /// for what an entry costs (about 80 bytes).
    pub max_finished_tokens: u64,
    /// Largest page of ListQueues and ListDead.
    pub max_page_size: usize,
    /// Most bytes of items held in memory, all queues together (payload,
    /// attributes and key, plus [`crate::item::ITEM_MEMORY_OVERHEAD`] an
    /// item); an enqueue beyond it is refused with `RESOURCE_EXHAUSTED`.
    /// Unbounded by default; the binary derives it from the container's
    /// memory limit ([`derived_queued_bytes`]).
    pub max_queued_bytes: u64,
}

/// Half of the container's memory limit (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), when there is one: the rest is for the
/// embedded database's cache, buffers and connections.
pub fn derived_queued_bytes() -> Option<u64> {
    memory_limit().map(|l| l / 2)
}

/// The container's memory limit (cgroup v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), when there is one.
pub fn memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| parse_limit(&s))
}

/// The embedded database's page cache when it is not configured, from the
/// container's memory limit: 1/64 of it, within 8 MiB and 256 MiB (16 MiB
/// under `deploy/`'s 1 GiB: with 32 MiB, 256 MiB of payload left 1.30× the
/// payload resident, 1.33× after a restart; with 16 MiB, 1.21× and 1.28×);
/// without a limit,
/// [`DEFAULT_CACHE_BYTES`](crate::store::DEFAULT_CACHE_BYTES). The engine
/// keeps every queued item in memory, so the cache serves only start-up,
/// compaction and the pages a commit touches; half the limit is for items
/// ([`derived_queued_bytes`]), and what the cache takes comes out of the
/// rest.
pub fn derived_cache_bytes(memory_limit: Option<u64>) -> usize {
    const MIN: u64 = 8 << 20;
    const MAX: u64 = 256 << 20;
    match memory_limit {
        Some(l) => usize::try_from((l / 64).clamp(MIN, MAX)).unwrap_or(usize::MAX),
        None => crate::store::DEFAULT_CACHE_BYTES,
    }
}

/// Half of a cgroup memory limit as the file holds it; `None` for `max` or
/// v1's "no limit" (a number near `i64::MAX`).
#[cfg(test)]
fn half_of_limit(s: &str) -> Option<u64> {
    parse_limit(s).map(|l| l / 2)
}

/// A cgroup memory limit as the file holds it; `None` for `max` or v1's
/// "no limit" (a number near `i64::MAX`).
fn parse_limit(s: &str) -> Option<u64> {
    let limit: u64 = s.trim().parse().ok()?;
    (limit < 1 << 60).then_some(limit)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            max_work_credit: 1000,
            max_batch: 1000,
            min_lease: Duration::from_secs(1),
            max_lease: Duration::from_secs(24 * 3600),
            max_wait: Duration::from_secs(300),
            max_delay: Duration::from_secs(30 * 24 * 3600),
            max_attributes: 64,
            max_attribute_bytes: 4096,
            idempotency_window: Duration::from_secs(3600),
            max_queues: 10_000,
            max_finished_tokens: 1_000_000,
            max_page_size: 1000,
            max_queued_bytes: u64::MAX,
        }
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Room in an answer for what is not its items (fields beside them, framing).
const ANSWER_SLACK: usize = 1024;

/// The most a leased or dead item adds to an answer beyond its payload,
/// attributes and reason: ids, token, counters, timestamps, field tags and
/// lengths ([`crate::item::Item::answer_bytes`]).
pub const ITEM_OVERHEAD: usize = 256;

/// The most one attribute adds to an answer beyond its key and value bytes
/// (a map entry: tags and lengths).
pub const ATTRIBUTE_OVERHEAD: usize = 20;

/// Longest prefix of a dead item's reason the server adds ("attempt 3 of 5
/// failed: …").
pub const REASON_PREFIX: usize = 64;

impl Limits {
    /// The bytes of items one answer may carry: a little under
    /// [`Limits::max_message_bytes`].
    pub fn answer_budget(&self) -> usize {
        self.max_message_bytes.saturating_sub(ANSWER_SLACK)
    }

    /// The most one item can add to an answer, given these limits: the
    /// largest item, every attribute's framing, its longest reason.
    pub fn largest_answer_item(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(self.max_attributes.saturating_mul(ATTRIBUTE_OVERHEAD))
            .saturating_add(self.max_attribute_bytes)
            .saturating_add(REASON_PREFIX + ITEM_OVERHEAD)
    }

    /// Whether these limits fit together: the largest item must fit in one
    /// answer, so that every item can be delivered.
    pub fn check(&self) -> Result<(), String> {
        if self.max_batch == 0 || self.max_work_credit == 0 || self.max_page_size == 0 {
            return Err(
                "the batch limit, the Work credit limit and the page size limit must be at \
                 least 1 (queue-server --max-batch, --max-work-credit, --max-page-size)"
                    .to_string(),
            );
        }
        let need = self.largest_answer_item();
        if need > self.answer_budget() {
            return Err(format!(
                "an item of up to {} bytes (--max-payload-bytes) takes up to {need} bytes in an \
                 answer, more than the {} bytes a message of {} bytes (--max-message-bytes) \
                 leaves for items: raise --max-message-bytes to at least {} or lower \
                 --max-payload-bytes",
                self.max_payload_bytes,
                self.answer_budget(),
                self.max_message_bytes,
                need + ANSWER_SLACK
            ));
        }
        Ok(())
    }

    /// A lease duration (of request field `field`) within bounds, or the
    /// error naming them.
    pub fn check_lease(&self, field: &str, d: Duration) -> Result<Duration, Error> {
        let msg = || {
            format!(
                "{field}: lease duration {} is out of bounds: use {} to {}",
                human(d),
                human(self.min_lease),
                human(self.max_lease)
            )
        };
        if d < self.min_lease {
            return Err(Error::limit(
                field,
                "min_lease",
                secs(self.min_lease),
                msg(),
            ));
        }
        if d > self.max_lease {
            return Err(Error::limit(
                field,
                "max_lease",
                secs(self.max_lease),
                msg(),
            ));
        }
        Ok(d)
    }

    /// A long-poll wait within bounds.
    pub fn check_wait(&self, d: Duration) -> Result<Duration, Error> {
        if d > self.max_wait {
            return Err(Error::limit(
                "wait",
                "max_wait",
                secs(self.max_wait),
                format!(
                    "wait of {} is too long: use at most {} and call again",
                    human(d),
                    human(self.max_wait)
                ),
            ));
        }
        Ok(d)
    }

    /// A batch size of request field `field` (for `what`) within bounds (at
    /// least one).
    pub fn check_batch(&self, field: &str, what: &str, n: usize) -> Result<(), Error> {
        if n == 0 {
            return Err(Error::invalid(
                field,
                format!("{what}: the batch is empty; pass at least one"),
            ));
        }
        if n > self.max_batch {
            return Err(Error::limit(
                field,
                "max_batch_items",
                self.max_batch,
                format!(
                    "{what}: a batch of {n} is too large; the limit is {} per call, split it",
                    self.max_batch
                ),
            ));
        }
        Ok(())
    }

    /// A page size within bounds (0: the largest page).
    pub fn check_page_size(&self, n: usize) -> Result<usize, Error> {
        match n {
            0 => Ok(self.max_page_size),
            n if n > self.max_page_size => Err(Error::limit(
                "page_size",
                "max_page_size",
                self.max_page_size,
                format!(
                    "page_size {n} is too large: use at most {} (or 0 for the largest page)",
                    self.max_page_size
                ),
            )),
            n => Ok(n),
        }
    }

    /// Checks one new item's payload, attributes, key and delay (item
    /// `index` of the request's `items`).
    pub fn check_item(
        &self,
        index: usize,
        payload_len: usize,
        attributes: &[(String, String)],
        key: Option<&str>,
        delay: Duration,
    ) -> Result<(), Error> {
        let extra: usize = attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + key.map_or(0, str::len);
        let size = payload_len.saturating_add(extra);
        if size > self.max_payload_bytes {
            return Err(Error::limit(
                format!("items[{index}].payload"),
                "max_item_bytes",
                self.max_payload_bytes,
                format!(
                    "item {index}: {size} bytes (payload {payload_len}, attributes and key \
                     {extra}) exceed the limit of {} bytes per item (queue-server \
                     --max-payload-bytes); store large data elsewhere and enqueue a reference",
                    self.max_payload_bytes
                ),
            ));
        }
        if attributes.len() > self.max_attributes {
            return Err(Error::limit(
                format!("items[{index}].attributes"),
                "max_attributes",
                self.max_attributes,
                format!(
                    "item {index}: {} attributes exceed the limit of {}",
                    attributes.len(),
                    self.max_attributes
                ),
            ));
        }
        for (k, v) in attributes {
            let msg = || {
                format!(
                    "item {index}: attribute {} must have a non-empty key, and key and value \
                     of at most {} bytes",
                    crate::names::quoted(k),
                    self.max_attribute_bytes
                )
            };
            let field = || format!("items[{index}].attributes");
            if k.is_empty() {
                return Err(Error::invalid(field(), msg()));
            }
            if k.len() > self.max_attribute_bytes || v.len() > self.max_attribute_bytes {
                return Err(Error::limit(
                    field(),
                    "max_attribute_bytes",
                    self.max_attribute_bytes,
                    msg(),
                ));
            }
        }
        if let Some(key) = key
            && key.len() > self.max_attribute_bytes
        {
            return Err(Error::limit(
                format!("items[{index}].idempotency_key"),
                "max_attribute_bytes",
                self.max_attribute_bytes,
                format!(
                    "item {index}: idempotency key of {} bytes exceeds the limit of {} bytes",
                    key.len(),
                    self.max_attribute_bytes
                ),
            ));
        }
        if delay > self.max_delay {
            return Err(Error::limit(
                format!("items[{index}].delay"),
                "max_delay",
                secs(self.max_delay),
                format!(
                    "item {index}: delay of {} exceeds the limit of {}",
                    human(delay),
                    human(self.max_delay)
                ),
            ));
        }
        Ok(())
    }

    /// Queue settings from `given`: each field set in it, the others from
    /// `base` — within bounds. Fields are named as in a request
    /// (`settings.default_lease`).
    pub fn check_settings(
        &self,
        given: SettingsPatch,
        base: &QueueSettings,
    ) -> Result<QueueSettings, Error> {
        let s = given.over(base);
        self.check_lease("settings.default_lease", s.default_lease)?;
        if s.max_attempts == 0 {
            return Err(Error::invalid(
                "settings.max_attempts",
                "max_attempts is 0: use 1 to 1000",
            ));
        }
        if s.max_attempts > MAX_ATTEMPTS {
            return Err(Error::limit(
                "settings.max_attempts",
                "max_attempts",
                MAX_ATTEMPTS,
                format!(
                    "max_attempts {} is too large: use 1 to 1000",
                    s.max_attempts
                ),
            ));
        }
        for (field, d) in [
            ("settings.retry_backoff", s.retry_backoff),
            ("settings.retry_backoff_max", s.retry_backoff_max),
        ] {
            if d > self.max_delay {
                return Err(Error::limit(
                    field,
                    "max_delay",
                    secs(self.max_delay),
                    format!(
                        "{field}: retry back-off is too long: use at most {}",
                        human(self.max_delay)
                    ),
                ));
            }
        }
        Ok(s)
    }
}

/// The most attempts a queue may allow.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Settings as a call gives them: each field set or not. Unset fields take
/// the server's defaults when a queue is created, and are left as they are
/// when it is updated (unless the update names them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// Lease duration used when a lease call names none.
    pub default_lease: Option<Duration>,
    /// Attempts before an item goes dead.
    pub max_attempts: Option<u32>,
    /// Back-off after the first retriable failure (zero: retry at once).
    pub retry_backoff: Option<Duration>,
    /// Upper bound of the back-off.
    pub retry_backoff_max: Option<Duration>,
}

impl SettingsPatch {
    /// `base` with the fields set here replaced.
    pub fn over(&self, base: &QueueSettings) -> QueueSettings {
        QueueSettings {
            default_lease: self.default_lease.unwrap_or(base.default_lease),
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            retry_backoff: self.retry_backoff.unwrap_or(base.retry_backoff),
            retry_backoff_max: self.retry_backoff_max.unwrap_or(base.retry_backoff_max),
        }
    }
}

impl From<QueueSettings> for SettingsPatch {
    /// Zero fields unset ([`QueueSettings::UNSET`]: every field unset).
    fn from(s: QueueSettings) -> Self {
        let d = |d: Duration| (!d.is_zero()).then_some(d);
        SettingsPatch {
            default_lease: d(s.default_lease),
            max_attempts: (s.max_attempts != 0).then_some(s.max_attempts),
            retry_backoff: d(s.retry_backoff),
            retry_backoff_max: d(s.retry_backoff_max),
        }
    }
}

/// A duration as limits' metadata gives it: seconds, as in the JSON form of
/// `google.protobuf.Duration` (`1s`, `0.5s`).
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queued_bytes_default_is_half_the_cgroup_limit() {
        assert_eq!(half_of_limit("1073741824\n"), Some(512 << 20));
        assert_eq!(half_of_limit("max\n"), None);
        assert_eq!(half_of_limit("9223372036854771712"), None);
    }

    #[test]
    fn the_cache_default_is_a_sixty_fourth_of_the_limit_within_bounds() {
        assert_eq!(derived_cache_bytes(Some(1 << 30)), 16 << 20);
        assert_eq!(derived_cache_bytes(Some(4 << 30)), 64 << 20);
        assert_eq!(derived_cache_bytes(Some(64 << 20)), 8 << 20);
        assert_eq!(derived_cache_bytes(Some(64 << 30)), 256 << 20);
        assert_eq!(derived_cache_bytes(None), crate::store::DEFAULT_CACHE_BYTES);
    }
}
