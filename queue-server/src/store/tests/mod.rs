//! What every store must do ([`conformance`], run on every store), and what
//! the embedded one must survive ([`embedded`]).

mod conformance;
mod embedded;

use super::*;
use crate::item::{Attributes, ItemState};
use crate::settings::QueueSettings;
use prost::bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, and where it keeps its data: each [`Fixture::open`]
/// opens the store again over the same data (after the last one was
/// dropped), as a restarted server would.
trait Fixture {
    /// Opens the store.
    fn open(&mut self) -> Arc<dyn Store>;
}

/// The memory store: keeps nothing, so every open starts empty.
struct Memory;

impl Fixture for Memory {
    fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(MemoryStore)
    }
}

/// The embedded store in a temporary directory.
struct Embedded(tempfile::TempDir);

impl Embedded {
    fn new() -> Self {
        Embedded(tempfile::tempdir().expect("tempdir"))
    }
}

impl Fixture for Embedded {
    fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(self.0.path()).expect("open"))
    }
}

fn name(s: &str) -> QueueName {
    s.parse().expect("queue name")
}

fn record(q: &str) -> QueueRecord {
    QueueRecord {
        name: name(q),
        settings: QueueSettings {
            default_lease: Duration::from_secs(7),
            ..QueueSettings::default()
        },
        sealed: true,
        completed: 5,
        retried: 2,
    }
}

fn item(id: u64, state: ItemState) -> Item {
    Item {
        id: ItemId(id),
        payload: Bytes::from(format!("payload-{id}")),
        attributes: Attributes::new(vec![("a".into(), "1".into())]),
        idempotency_key: Some(format!("key-{id}").into()),
        attempts: 2,
        enqueued_at: 1_700_000_000_000,
        state,
    }
}

fn put(queue: &str, item: Item) -> StoreOp {
    StoreOp::PutItem {
        queue: name(queue),
        item,
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn try_commit(store: &dyn Store, ops: Vec<StoreOp>) -> Result<(), StoreError> {
    block_on(store.submit(ops).wait())
}

fn commit(store: &dyn Store, ops: Vec<StoreOp>) {
    try_commit(store, ops).expect("commit");
}
