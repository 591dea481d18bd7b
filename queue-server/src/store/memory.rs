//! The `memory` store: keeps nothing; for tests and benchmarks.

use super::{Commit, Snapshot, Store, StoreError, StoreOp};

/// Keeps nothing: every change is "durable" at once and lost on exit.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn durable(&self) -> bool {
        false
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    fn submit(&self, _ops: Vec<StoreOp>) -> Commit {
        Commit::done()
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
