//! The `embedded` store: a redb database in the data directory, written by
//! one writer thread with group commit.
//!
//! # Layout
//! `DATA_DIR/workq.redb`, four tables: `queues` (name → record), `items`
//! ((queue, id) → record), `keys` ((queue, key) → (item, expires)) and `meta`
//! (`format_version`, `next_item_id`). Records are protobuf messages, so fields
//! can be added without a migration; `format_version` changes only when the
//! layout does.
//!
//! # Group commit
//! The engine's calls queue their ops on a channel; the writer takes
//! everything queued, applies it in one write transaction and commits it with
//! one sync, then answers every call in the group. Concurrent calls share a
//! sync; a lone call waits for one sync only.
//!
//! # Failure
//! A failed commit fails its callers and every later one: the in-memory state
//! is ahead of the disk, so the server must be restarted from what is durable.

use super::{Commit, QueueRecord, Snapshot, Store, StoreError, StoreOp, StoredKey};
use crate::item::{Attributes, Item, ItemState};
use crate::names::{ItemId, QueueName};
use crate::settings::QueueSettings;
use prost::Message;
use prost::bytes::Bytes;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use rustc_hash::FxHashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const ITEMS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("items");
const KEYS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The on-disk layout this version reads and writes.
const FORMAT_VERSION: u64 = 1;
/// The database file's name inside the data directory.
pub const DB_FILE: &str = "workq.redb";
/// Most ops applied in one transaction.
const MAX_GROUP_OPS: usize = 100_000;

#[derive(Clone, PartialEq, prost::Message)]
struct AttrRecord {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ItemRecord {
    #[prost(bytes = "bytes", tag = "1")]
    payload: Bytes,
    #[prost(message, repeated, tag = "2")]
    attributes: Vec<AttrRecord>,
    #[prost(string, optional, tag = "3")]
    idempotency_key: Option<String>,
    #[prost(uint32, tag = "4")]
    attempts: u32,
    #[prost(uint64, tag = "5")]
    enqueued_at: u64,
    /// 0 pending, 1 delayed, 2 dead.
    #[prost(uint32, tag = "6")]
    state: u32,
    /// Delayed: when due. Dead: when it died.
    #[prost(uint64, tag = "7")]
    at: u64,
    #[prost(string, tag = "8")]
    reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct QueueRecordPb {
    #[prost(uint64, tag = "1")]
    default_lease_ms: u64,
    #[prost(uint32, tag = "2")]
    max_attempts: u32,
    #[prost(uint64, tag = "3")]
    retry_backoff_ms: u64,
    #[prost(uint64, tag = "4")]
    retry_backoff_max_ms: u64,
    #[prost(bool, tag = "5")]
    sealed: bool,
    #[prost(uint64, tag = "6")]
    completed: u64,
    #[prost(uint64, tag = "7")]
    retried: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn encode_item(item: &Item) -> Vec<u8> {
    let (state, at, reason) = match &item.state {
        ItemState::Pending | ItemState::Leased { .. } => (0, 0, String::new()),
        ItemState::Delayed { due } => (1, *due, String::new()),
        ItemState::Dead { reason, at } => (2, *at, reason.to_string()),
    };
    ItemRecord {
        payload: item.payload.clone(),
        attributes: item
            .attributes
            .iter()
            .map(|(k, v)| AttrRecord {
                key: k.to_owned(),
                value: v.to_owned(),
            })
            .collect(),
        idempotency_key: item.idempotency_key.as_deref().map(str::to_owned),
        attempts: item.attempts,
        enqueued_at: item.enqueued_at,
        state,
        at,
        reason,
    }
    .encode_to_vec()
}

fn decode_item(id: u64, bytes: &[u8]) -> Result<Item, prost::DecodeError> {
    let r = ItemRecord::decode(bytes)?;
    Ok(Item {
        id: ItemId(id),
        payload: r.payload,
        attributes: Attributes::new(r.attributes.into_iter().map(|a| (a.key, a.value)).collect()),
        idempotency_key: r.idempotency_key.map(Into::into),
        attempts: r.attempts,
        enqueued_at: r.enqueued_at,
        state: match r.state {
            1 => ItemState::Delayed { due: r.at },
            2 => ItemState::Dead {
                reason: r.reason.into(),
                at: r.at,
            },
            _ => ItemState::Pending,
        },
    })
}

fn encode_queue(q: &QueueRecord) -> Vec<u8> {
    QueueRecordPb {
        default_lease_ms: ms(q.settings.default_lease),
        max_attempts: q.settings.max_attempts,
        retry_backoff_ms: ms(q.settings.retry_backoff),
        retry_backoff_max_ms: ms(q.settings.retry_backoff_max),
        sealed: q.sealed,
        completed: q.completed,
        retried: q.retried,
    }
    .encode_to_vec()
}

fn decode_queue(name: QueueName, bytes: &[u8]) -> Result<QueueRecord, prost::DecodeError> {
    let r = QueueRecordPb::decode(bytes)?;
    Ok(QueueRecord {
        name,
        settings: QueueSettings {
            default_lease: Duration::from_millis(r.default_lease_ms),
            max_attempts: r.max_attempts,
            retry_backoff: Duration::from_millis(r.retry_backoff_ms),
            retry_backoff_max: Duration::from_millis(r.retry_backoff_max_ms),
        },
        sealed: r.sealed,
        completed: r.completed,
        retried: r.retried,
    })
}

enum Msg {
    Ops(Vec<StoreOp>, oneshot::Sender<Result<(), StoreError>>),
    Close(mpsc::Sender<Result<(), StoreError>>),
}

/// The embedded database's page cache unless configured (the binary derives
/// it from the container's memory limit when there is one:
/// [`crate::settings::derived_cache_bytes`]): small, as the engine keeps
/// every queued item in memory anyway (redb's own default, 1 GiB, came on
/// top of them; 64 MiB left the resident set at 1.45× the payload).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A durable store in one redb file, with one writer thread.
pub struct EmbeddedStore {
    path: PathBuf,
    /// Pages the cache evicted while the store was read at open (0: it held
    /// them all; counted only with redb's `cache_metrics`, as in tests).
    evictions_at_open: u64,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    snapshot: Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("evictions_at_open", &self.evictions_at_open)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, reads it, and starts its
    /// writer. Refuses a directory another server holds.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_with(data_dir, |path| {
            Database::builder().set_cache_size(cache_bytes).create(path)
        })
    }

    /// Pages the cache evicted while the store was read at open.
    #[cfg(test)]
    pub(crate) fn evictions_at_open(&self) -> u64 {
        self.evictions_at_open
    }

    /// [`EmbeddedStore::open`] on storage that fails on `faults`' orders
    /// (tests and the `fault-injection` feature).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn open_with_faults(
        data_dir: &Path,
        faults: super::fault::Faults,
    ) -> Result<Self, StoreError> {
        Self::open_with(data_dir, |path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            let backend = super::fault::FaultyBackend::new(file, faults)?;
            Database::builder().create_with_backend(backend)
        })
    }

    fn open_with(
        data_dir: &Path,
        create: impl FnOnce(&Path) -> Result<Database, DatabaseError>,
    ) -> Result<Self, StoreError> {
        let io = |message: String| StoreError::Io {
            path: data_dir.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io(format!("cannot create it: {e}")))?;
        let path = data_dir.join(DB_FILE);
        let mut db = match create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked(data_dir.to_path_buf()));
            }
            Err(DatabaseError::Storage(redb::StorageError::Io(e))) => {
                return Err(io(format!("cannot open {}: {e}", path.display())));
            }
            Err(e) => {
                return Err(StoreError::Format {
                    path,
                    message: format!("not a workq database, or damaged: {e}"),
                });
            }
        };
        let format = |message: String| StoreError::Format {
            path: path.clone(),
            message,
        };
        let snapshot = prepare(&db).map_err(format)?;
        let evictions_at_open = db.cache_stats().evictions();
        // Reclaims the space of deleted (completed) items left by the last
        // run. Both lines are what `workq-bench soak --compaction-kills`
        // aims its kills by.
        tracing::info!("compacting the store");
        match db.compact() {
            Ok(_) => tracing::info!("store compacted"),
            Err(e) => tracing::warn!("compacting {} failed: {e}", path.display()),
        }
        let (tx, rx) = mpsc::channel();
        let next_id = snapshot.next_item_id;
        let writer = std::thread::Builder::new()
            .name("workq-store-writer".into())
            .spawn(move || writer_loop(db, rx, next_id))
            .map_err(|e| io(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            path,
            evictions_at_open,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            snapshot: Mutex::new(Some(snapshot)),
        })
    }
}

/// Checks the format version (writing it into a new database) and reads
/// everything.
fn prepare(db: &Database) -> Result<Snapshot, String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let version = meta
            .get("format_version")
            .map_err(|e| e.to_string())?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert("format_version", FORMAT_VERSION)
                    .map_err(|e| e.to_string())?;
            }
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "format version {v}, but this queue-server reads version {FORMAT_VERSION}; \
                     use the queue-server that wrote it"
                ));
            }
        }
        txn.open_table(QUEUES).map_err(|e| e.to_string())?;
        txn.open_table(ITEMS).map_err(|e| e.to_string())?;
        txn.open_table(KEYS).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;

    let read = db.begin_read().map_err(|e| e.to_string())?;
    let s = |e: redb::StorageError| e.to_string();
    let t = |e: redb::TableError| e.to_string();
    let name = |n: &str| -> Result<QueueName, String> {
        n.parse().map_err(|e: crate::names::ParseError| e.0)
    };
    let mut snap = Snapshot::default();
    for row in read.open_table(QUEUES).map_err(t)?.iter().map_err(s)? {
        let (k, v) = row.map_err(s)?;
        let record = decode_queue(name(k.value())?, v.value())
            .map_err(|e| format!("queue {}: {e}", k.value()))?;
        snap.queues.push(record);
    }
    let mut max_id = 0;
    for row in read.open_table(ITEMS).map_err(t)?.iter().map_err(s)? {
        let (k, v) = row.map_err(s)?;
        let (queue, id) = k.value();
        let item = decode_item(id, v.value()).map_err(|e| format!("item {id}: {e}"))?;
        max_id = max_id.max(id + 1);
        snap.items.push((name(queue)?, item));
    }
    for row in read.open_table(KEYS).map_err(t)?.iter().map_err(s)? {
        let (k, v) = row.map_err(s)?;
        let (queue, key) = k.value();
        let (item, expires) = v.value();
        snap.keys.push(StoredKey {
            queue: name(queue)?,
            key: key.into(),
            item: ItemId(item),
            expires,
        });
    }
    let stored_next = read
        .open_table(META)
        .map_err(t)?
        .get("next_item_id")
        .map_err(s)?
        .map(|v| v.value())
        .unwrap_or(0);
    snap.next_item_id = stored_next.max(max_id).max(1);
    Ok(snap)
}

/// The ops of one commit that still matter once it lands as a whole: of
/// several writes to one item, idempotency key or queue record, only the last
/// (an item enqueued and completed within one commit is never written at
/// all). Kept ops stay in order, so a queue's deletion still comes before
/// whatever was written after it.
fn coalesce<'a>(ops: &[&'a StoreOp]) -> Vec<&'a StoreOp> {
    let mut items: FxHashSet<(&str, u64)> = FxHashSet::default();
    let mut keys: FxHashSet<(&str, &str)> = FxHashSet::default();
    let mut queues: FxHashSet<&str> = FxHashSet::default();
    let mut out: Vec<&StoreOp> = ops
        .iter()
        .rev()
        .copied()
        .filter(|op| match op {
            StoreOp::PutQueue(q) => queues.insert(q.name.as_str()),
            StoreOp::DeleteQueue(_) => true,
            StoreOp::PutItem { queue, item } => items.insert((queue.as_str(), item.id.0)),
            StoreOp::DeleteItem { queue, id } => items.insert((queue.as_str(), id.0)),
            StoreOp::PutKey { queue, key, .. } | StoreOp::DeleteKey { queue, key } => {
                keys.insert((queue.as_str(), &**key))
            }
        })
        .collect();
    out.reverse();
    out
}

fn apply(db: &Database, ops: &[&StoreOp], next_id: &mut u64) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let old_next = *next_id;
    // Every id handed out counts, also of items that never reach the disk.
    for op in ops {
        if let StoreOp::PutItem { item, .. } = op {
            *next_id = (*next_id).max(item.id.0 + 1);
        }
    }
    let ops = coalesce(ops);
    let txn = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut queues = txn.open_table(QUEUES).map_err(|x| e(&x))?;
        let mut items = txn.open_table(ITEMS).map_err(|x| e(&x))?;
        let mut keys = txn.open_table(KEYS).map_err(|x| e(&x))?;
        let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
        for op in ops {
            match op {
                StoreOp::PutQueue(q) => {
                    queues
                        .insert(q.name.as_str(), encode_queue(q).as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteQueue(name) => {
                    let name = name.as_str();
                    queues.remove(name).map_err(|x| e(&x))?;
                    items
                        .retain_in((name, 0)..=(name, u64::MAX), |_, _| false)
                        .map_err(|x| e(&x))?;
                    let doomed: Vec<String> = keys
                        .range((name, "")..)
                        .map_err(|x| e(&x))?
                        .map_while(|row| {
                            let (k, _) = row.ok()?;
                            let (q, key) = k.value();
                            (q == name).then(|| key.to_owned())
                        })
                        .collect();
                    for key in doomed {
                        keys.remove((name, key.as_str())).map_err(|x| e(&x))?;
                    }
                }
                StoreOp::PutItem { queue, item } => {
                    items
                        .insert((queue.as_str(), item.id.0), encode_item(item).as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteItem { queue, id } => {
                    items.remove((queue.as_str(), id.0)).map_err(|x| e(&x))?;
                }
                StoreOp::PutKey {
                    queue,
                    key,
                    item,
                    expires,
                } => {
                    keys.insert((queue.as_str(), &**key), (item.0, *expires))
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteKey { queue, key } => {
                    keys.remove((queue.as_str(), &**key)).map_err(|x| e(&x))?;
                }
            }
        }
        if *next_id != old_next {
            meta.insert("next_item_id", *next_id).map_err(|x| e(&x))?;
        }
    }
    txn.commit().map_err(|x| e(&x))
}

fn writer_loop(db: Database, rx: mpsc::Receiver<Msg>, mut next_id: u64) {
    let mut failed: Option<StoreError> = None;
    let mut closing: Option<mpsc::Sender<Result<(), StoreError>>> = None;
    while closing.is_none() {
        let Ok(first) = rx.recv() else {
            break;
        };
        let mut group = Vec::new();
        let mut n_ops = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Ops(ops, done) => {
                    n_ops += ops.len();
                    group.push((ops, done));
                }
                Msg::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if n_ops < MAX_GROUP_OPS {
                next = rx.try_recv().ok();
            }
        }
        let result = match &failed {
            Some(err) => Err(err.clone()),
            None => {
                let ops: Vec<&StoreOp> = group.iter().flat_map(|(ops, _)| ops.iter()).collect();
                if ops.is_empty() {
                    Ok(())
                } else {
                    let started = std::time::Instant::now();
                    let applied = apply(&db, &ops, &mut next_id);
                    metrics::histogram!("workq_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("workq_store_commit_ops").record(ops.len() as f64);
                    applied.map_err(|msg| {
                        tracing::error!("store commit failed: {msg}; refusing further changes");
                        let err = StoreError::Write(msg);
                        failed = Some(err.clone());
                        err
                    })
                }
            }
        };
        for (_, done) in group {
            let _ = done.send(result.clone());
        }
    }
    drop(db);
    if let Some(done) = closing {
        let _ = done.send(failed.map_or(Ok(()), Err));
    }
}

impl Store for EmbeddedStore {
    fn durable(&self) -> bool {
        true
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = self.snapshot.lock().map_err(|_| StoreError::Closed)?;
        snap.take().ok_or(StoreError::Closed)
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        if ops.is_empty() {
            return Commit::done();
        }
        let (done, rx) = oneshot::channel();
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|tx| tx.as_ref().map(|tx| tx.send(Msg::Ops(ops, done)).is_ok()));
        if sent != Some(true) {
            return Commit::failed(StoreError::Closed);
        }
        Commit::pending(rx)
    }

    fn barrier(&self) -> Commit {
        // An empty group: the writer answers it after the ops before it,
        // with the store's failure if it failed.
        let (done, rx) = oneshot::channel();
        let sent = self.tx.lock().ok().and_then(|tx| {
            tx.as_ref()
                .map(|tx| tx.send(Msg::Ops(Vec::new(), done)).is_ok())
        });
        if sent != Some(true) {
            return Commit::failed(StoreError::Closed);
        }
        Commit::pending(rx)
    }

    fn close(&self) -> Result<(), StoreError> {
        let tx = self.tx.lock().map_err(|_| StoreError::Closed)?.take();
        let Some(tx) = tx else {
            return Ok(());
        };
        let (done, rx) = mpsc::channel();
        let result = if tx.send(Msg::Close(done)).is_ok() {
            rx.recv().unwrap_or(Err(StoreError::Closed))
        } else {
            Err(StoreError::Closed)
        };
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = writer.join();
        }
        result
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
