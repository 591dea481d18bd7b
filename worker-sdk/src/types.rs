//! The SDK's vocabulary: validated names, ids and tokens, and plain-data views of
//! the wire messages. Generated proto structs stay inside the backends.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::Error;

/// The longest queue name, as for a Kubernetes DNS-1123 label.
pub const MAX_QUEUE_NAME_LEN: usize = 63;

/// A queue's name: a DNS-1123 label, as Kubernetes names objects (and as the
/// queue service requires) — 1 to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit.
///
/// ```
/// use worker_sdk::QueueName;
/// let q: QueueName = "job-1".parse().unwrap();
/// assert_eq!(q.as_str(), "job-1");
/// assert!("Bad_Name".parse::<QueueName>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QueueName(String);

impl QueueName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_QUEUE_NAME_LEN {
            Some("it is longer than 63 characters")
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            Some("use lowercase letters, digits and '-' only (a DNS-1123 label, e.g. \"job-1\")")
        } else if name.starts_with('-') || name.ends_with('-') {
            Some("it must start and end with a letter or digit")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidQueueName { name, reason }),
            None => Ok(QueueName(name)),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueueName::new(s)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An item's server-assigned id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ItemId(pub(crate) String);

impl ItemId {
    /// Wraps an id as the server spells it.
    pub fn new(id: impl Into<String>) -> Self {
        ItemId(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fencing token of one lease: renew, complete, fail and release name the
/// lease by it, and the server refuses a token whose lease has moved on.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub(crate) String);

impl LeaseToken {
    /// Wraps a token as the server spelled it.
    pub fn new(token: impl Into<String>) -> Self {
        LeaseToken(token.into())
    }

    /// The token as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({})", self.0)
    }
}

/// Per-queue settings; `None` takes the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueSettings {
    /// Lease duration used when a lease call gives none.
    pub default_lease: Option<Duration>,
    /// Attempts before an item goes dead (retriable failures and lease expiries count).
    pub max_attempts: Option<u32>,
    /// Back-off after the first retriable failure, doubled each further attempt.
    pub retry_backoff: Option<Duration>,
    /// Upper bound of the back-off.
    pub retry_backoff_max: Option<Duration>,
}

/// Exact counters of one queue. Always
/// `enqueued = pending + delayed + leased + completed + dead`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The queue's name.
    pub queue: String,
    /// Items ever added (and not purged).
    pub enqueued: u64,
    /// Items ready to be leased.
    pub pending: u64,
    /// Items waiting for a delay or a retry back-off.
    pub delayed: u64,
    /// Items leased by a worker now.
    pub leased: u64,
    /// Items completed.
    pub completed: u64,
    /// Items dead (fatal failure or attempts exhausted).
    pub dead: u64,
    /// Retriable failures and lease expiries that sent an item back.
    pub retried: u64,
    /// No more items will come.
    pub sealed: bool,
    /// Sealed, and nothing pending, delayed or leased: the work is over.
    pub drained: bool,
    /// Where the queue is in its life (the same facts as `sealed`, `drained`
    /// and [`Stats::is_empty`], as one value).
    pub state: QueueState,
}

/// Where a queue is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueState {
    /// Open for items, and some are pending, delayed or leased.
    #[default]
    Active,
    /// Open for items, and nothing is pending, delayed or leased right now:
    /// more may come.
    Empty,
    /// Sealed (no more items will come); some are still pending, delayed or
    /// leased.
    Sealed,
    /// Sealed, and nothing is pending, delayed or leased: no item will ever
    /// come.
    Drained,
}

impl QueueState {
    /// The state of a queue that is `sealed` or not and `empty` (nothing
    /// pending, delayed or leased) or not.
    pub fn of(sealed: bool, empty: bool) -> Self {
        match (sealed, empty) {
            (false, false) => QueueState::Active,
            (false, true) => QueueState::Empty,
            (true, false) => QueueState::Sealed,
            (true, true) => QueueState::Drained,
        }
    }

    /// No more items will come.
    pub fn is_sealed(self) -> bool {
        matches!(self, QueueState::Sealed | QueueState::Drained)
    }

    /// Sealed and nothing left: no item will ever come.
    pub fn is_drained(self) -> bool {
        self == QueueState::Drained
    }

    /// Nothing pending, delayed or leased now.
    pub fn is_empty(self) -> bool {
        matches!(self, QueueState::Empty | QueueState::Drained)
    }

    /// The state's name, as `wq` prints it (`active`, `empty`, `sealed`, `drained`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Active => "active",
            QueueState::Empty => "empty",
            QueueState::Sealed => "sealed",
            QueueState::Drained => "drained",
        }
    }
}

impl fmt::Display for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stats {
    /// Items that reached an end: completed plus dead.
    pub fn finished(&self) -> u64 {
        self.completed + self.dead
    }

    /// Nothing pending, delayed or leased now (the Kubernetes tutorial's `rediswq` meaning of empty).
    pub fn is_empty(&self) -> bool {
        self.pending == 0 && self.delayed == 0 && self.leased == 0
    }
}

/// A queue's settings and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Its settings, as the server applies them.
    pub settings: QueueSettings,
    /// Its counters.
    pub stats: Stats,
}

/// An item to add to a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewItem {
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// String attributes kept with the item.
    pub attributes: BTreeMap<String, String>,
    /// An item whose key the queue has already seen is not added again.
    pub idempotency_key: Option<String>,
    /// Delay before the item may be leased.
    pub delay: Option<Duration>,
}

impl NewItem {
    /// An item with this payload and nothing else.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        NewItem {
            payload: payload.into(),
            ..NewItem::default()
        }
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds an attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Sets a delay before the item may be leased.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

impl From<&str> for NewItem {
    fn from(s: &str) -> Self {
        NewItem::new(s.as_bytes().to_vec())
    }
}

impl From<String> for NewItem {
    fn from(s: String) -> Self {
        NewItem::new(s.into_bytes())
    }
}

impl From<Vec<u8>> for NewItem {
    fn from(payload: Vec<u8>) -> Self {
        NewItem::new(payload)
    }
}

/// What became of one pushed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The item's id (for a duplicate, the id of the item already there).
    pub id: ItemId,
    /// Its idempotency key matched an item the queue already had: nothing was added.
    pub duplicate: bool,
}

/// One leased item: the payload and what is needed to finish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedItem {
    /// The item's id.
    pub id: ItemId,
    /// The lease's fencing token.
    pub token: LeaseToken,
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// String attributes given at enqueue.
    pub attributes: BTreeMap<String, String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the lease ends unless renewed.
    pub lease_deadline: SystemTime,
    /// When the item was enqueued.
    pub enqueued_at: SystemTime,
}

impl LeasedItem {
    /// The payload as UTF-8 text, with invalid sequences replaced.
    pub fn payload_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }
}

/// What a lease call answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leased {
    /// The items leased (possibly none).
    pub items: Vec<LeasedItem>,
    /// The queue is sealed and nothing is pending, delayed or leased: no item will
    /// ever come.
    pub drained: bool,
    /// Nothing is pending, delayed or leased right now.
    pub empty: bool,
}

/// How to lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// At most this many items (at least 1).
    pub max_items: u32,
    /// Lease duration; `None` takes the queue's default.
    pub lease: Option<Duration>,
    /// How long to wait for a first item; zero answers at once.
    pub wait: Duration,
    /// At most this many bytes of items (payload, attributes, token and id)
    /// in the answer; the first item comes however large. `None`: only the
    /// server's own budget. The queue service only; other backends ignore it.
    pub max_bytes: Option<u64>,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            max_items: 1,
            lease: None,
            wait: Duration::ZERO,
            max_bytes: None,
        }
    }
}

/// One page of a listing (queues, dead items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// This page's entries.
    pub items: Vec<T>,
    /// Pass to the next call for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Which dead items [`Queue::requeue_dead`](crate::Queue::requeue_dead) moves back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueDead {
    /// Every dead item of the queue.
    All,
    /// These items; each must be dead (the server refuses the call
    /// otherwise: `ITEM_NOT_DEAD`, `ITEM_NOT_FOUND`). An empty list moves none.
    Ids(Vec<ItemId>),
}

/// What the queue service says of itself: its version and the limits a
/// client sizes its calls by (`GetServerInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// The server's version (semver).
    pub version: String,
    /// Largest gRPC message the server accepts or sends; the SDK's receive
    /// limit is set to it.
    pub max_message_bytes: u64,
    /// Most items in one enqueue, lease, renew, complete, fail or release call.
    pub max_batch_items: u32,
    /// Largest item: payload, attribute keys and values and idempotency key.
    pub max_item_bytes: u64,
    /// Most attributes on one item.
    pub max_attributes: u32,
    /// Most credit a work stream may have open.
    pub max_work_credit: u64,
    /// Shortest lease.
    pub min_lease: Option<Duration>,
    /// Longest lease.
    pub max_lease: Option<Duration>,
    /// Longest wait of a lease call.
    pub max_wait: Option<Duration>,
    /// Longest enqueue delay.
    pub max_delay: Option<Duration>,
    /// How long idempotency keys, request ids and finished tokens are
    /// remembered (while the server runs).
    pub idempotency_window: Option<Duration>,
    /// Largest page of a listing.
    pub max_page_size: u32,
}

/// How a leased item failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Dead at once, no retry.
    pub fatal: bool,
    /// Why; kept with the item and shown with dead items.
    pub reason: String,
    /// Overrides the queue's back-off before the retry.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure worth retrying (after the queue's back-off).
    pub fn retriable(reason: impl Into<String>) -> Self {
        Failure {
            fatal: false,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A failure that no retry will fix: the item goes dead at once.
    pub fn fatal(reason: impl Into<String>) -> Self {
        Failure {
            fatal: true,
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// A dead item and why it died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadItem {
    /// The item's id.
    pub id: ItemId,
    /// The payload.
    #[serde(serialize_with = "payload_as_text")]
    pub payload: Vec<u8>,
    /// String attributes given at enqueue.
    pub attributes: BTreeMap<String, String>,
    /// Attempts made.
    pub attempts: u32,
    /// The reason given by the last failure (or the server's, for expiries).
    pub reason: String,
    /// When it died.
    #[serde(serialize_with = "time_as_unix_ms")]
    pub died_at: SystemTime,
}

fn payload_as_text<S: serde::Serializer>(p: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(p))
}

fn time_as_unix_ms<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(to_unix_ms(*t))
}

/// A duration as whole milliseconds (0 for `None`), saturating.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn to_ms(d: Option<Duration>) -> u64 {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch to a time.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A time to milliseconds since the Unix epoch (0 before it).
pub(crate) fn to_unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(QueueName::new("a").is_ok());
        assert!(QueueName::new("job-1").is_ok());
        assert!(QueueName::new("x".repeat(63)).is_ok());
        for bad in ["", "a b", "ä", "a/b", "Job", "a_b", "-a", "a-"] {
            assert!(QueueName::new(bad).is_err(), "{bad:?}");
        }
        assert!(QueueName::new("x".repeat(64)).is_err());
        let e = QueueName::new("-a").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid queue name \"-a\": it must start and end with a letter or digit")
        );
    }

    #[test]
    fn millis() {
        assert_eq!(to_ms(None), 0);
        assert_eq!(to_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(to_unix_ms(from_unix_ms(12345)), 12345);
    }
}
