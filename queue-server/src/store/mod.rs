//! Persistence: one [`Store`] trait, a `memory` store and the durable
//! `embedded` store.
//!
//! # Layout
//! The engine keeps every live item in memory and sends each change to the
//! store as a [`StoreOp`], in the order it made them, while it holds the
//! queue's lock. The store applies them in that order, so what is on disk is
//! always a prefix of what the engine did. A call answers only once its ops
//! are durable ([`Commit::wait`]).
//!
//! # What is stored
//! Queues (settings, sealed, completed and retried counts), live items
//! (pending, delayed, dead; a leased item is stored as it was before its
//! lease), and the idempotency keys of completed items until they expire.
//! Leases are not stored: after a restart, items that were leased are pending
//! again, with no attempt counted (the server, not the worker, failed).
//! Completed items are deleted; only their count is kept.
//!
//! # Tests
//! `tests.rs` holds one conformance suite that runs every case on every store
//! (a store is one line there), and the embedded store's own cases.
//! `fault` (tests and the `fault-injection` feature) makes storage or
//! commits fail on purpose.

mod embedded;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod memory;

pub use embedded::{DEFAULT_CACHE_BYTES, EmbeddedStore};
pub use memory::MemoryStore;

use crate::item::Item;
use crate::names::{ItemId, QueueName};
use crate::settings::QueueSettings;
use std::path::PathBuf;
use tokio::sync::oneshot;

/// What a store could not do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error(
        "data directory {0} is in use by another queue-server (its database is locked); \
         stop that server or pass another --data-dir"
    )]
    Locked(PathBuf),
    /// The data directory could not be created, read or written.
    #[error("data directory {path}: {message}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The data on disk is not what this version writes.
    #[error("data directory {path}: {message}")]
    Format {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A write to the database failed.
    #[error("database write failed: {0}")]
    Write(String),
    /// The store was closed or failed earlier.
    #[error("the store is closed")]
    Closed,
}

/// A queue as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Its name.
    pub name: QueueName,
    /// Its settings.
    pub settings: QueueSettings,
    /// Whether it is sealed.
    pub sealed: bool,
    /// Items completed so far.
    pub completed: u64,
    /// Retriable failures and expiries so far.
    pub retried: u64,
}

/// One change for the store to make.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Create or update a queue.
    PutQueue(QueueRecord),
    /// Delete a queue with its items and keys.
    DeleteQueue(QueueName),
    /// Create or update an item (a leased item is stored as pending).
    PutItem {
        /// Its queue.
        queue: QueueName,
        /// The item.
        item: Item,
    },
    /// Delete an item (completed or purged).
    DeleteItem {
        /// Its queue.
        queue: QueueName,
        /// The item.
        id: ItemId,
    },
    /// Remember a completed item's idempotency key until `expires`.
    PutKey {
        /// Its queue.
        queue: QueueName,
        /// The key.
        key: Box<str>,
        /// The item it named.
        item: ItemId,
        /// When to forget it, ms since the Unix epoch.
        expires: u64,
    },
    /// Forget an idempotency key.
    DeleteKey {
        /// Its queue.
        queue: QueueName,
        /// The key.
        key: Box<str>,
    },
}

/// A remembered idempotency key of a completed item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Its queue.
    pub queue: QueueName,
    /// The key.
    pub key: Box<str>,
    /// The item it named.
    pub item: ItemId,
    /// When to forget it, ms since the Unix epoch.
    pub expires: u64,
}

/// Everything a store holds, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Queues.
    pub queues: Vec<QueueRecord>,
    /// Live items, in id order within each queue.
    pub items: Vec<(QueueName, Item)>,
    /// Idempotency keys of completed items.
    pub keys: Vec<StoredKey>,
    /// The next free item id.
    pub next_item_id: u64,
}

/// Called with the error when a commit fails (see [`Commit::on_failure`]).
pub type FailureHook = std::sync::Arc<dyn Fn(&StoreError) + Send + Sync>;

/// A pending commit: resolves once the submitted ops are durable.
#[must_use = "a change is acknowledged only once its commit is durable"]
pub struct Commit {
    rx: Option<oneshot::Receiver<Result<(), StoreError>>>,
    on_failure: Option<FailureHook>,
}

impl Commit {
    /// Already durable (nothing to write, or a store that keeps nothing).
    pub fn done() -> Self {
        Commit {
            rx: None,
            on_failure: None,
        }
    }

    /// Durable once `rx` answers `Ok`.
    pub fn pending(rx: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Commit {
            rx: Some(rx),
            on_failure: None,
        }
    }

    /// Already failed with `err`.
    pub fn failed(err: StoreError) -> Self {
        let (done, rx) = oneshot::channel();
        let _ = done.send(Err(err));
        Commit::pending(rx)
    }

    /// Calls `hook` with the error if this commit fails (when it is waited
    /// on): how the engine learns that its store failed.
    pub fn on_failure(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Waits until the ops are durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        let result = match self.rx {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
        };
        if let (Err(e), Some(hook)) = (&result, &self.on_failure) {
            hook(e);
        }
        result
    }
}

/// A place the engine's changes go.
pub trait Store: Send + Sync + 'static {
    /// Whether this store keeps anything; when false the engine sends no ops.
    fn durable(&self) -> bool;
    /// Reads everything stored.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Queues ops to be applied after every op submitted before them.
    fn submit(&self, ops: Vec<StoreOp>) -> Commit;
    /// Resolves once every op submitted before it is durable, and fails if
    /// the store has failed: a lease waits on it, so that no item is handed
    /// out before its enqueue is durable. A store that keeps nothing is
    /// always done.
    fn barrier(&self) -> Commit {
        Commit::done()
    }
    /// Applies everything submitted, then stops taking ops.
    fn close(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests;
