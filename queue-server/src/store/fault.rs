//! Faults on purpose: storage and stores that fail when a test says so, to
//! test what happens after a failed commit or on a full disk.
//!
//! Compiled for this crate's tests and with the `fault-injection` feature
//! (this crate's integration tests turn it on); never in a release build
//! otherwise.
//!
//! # Two seams
//! - [`FaultyBackend`]: the embedded store's storage (redb's
//!   [`StorageBackend`]) over the real file, failing the Nth write or sync
//!   from when it is armed — so the store's own failure path runs
//!   ([`EmbeddedStore::open_with_faults`](super::EmbeddedStore::open_with_faults)).
//! - [`FaultyStore`]: any [`Store`] whose Nth commit fails before it reaches
//!   the store — for engine tests of a store that has no storage seam.
//!
//! Both take their orders from a [`Faults`] handle the test keeps.
//!
//! ```
//! use queue_server::store::fault::{FaultKind, Faults, Op};
//! let faults = Faults::new();
//! faults.fail(Op::Sync, 1, FaultKind::NoSpace); // the next sync fails
//! ```

use super::{Commit, Snapshot, Store, StoreError, StoreOp};
use redb::StorageBackend;
use redb::backends::FileBackend;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

/// An operation a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A write to the storage, or a change of its length ([`FaultyBackend`]).
    Write,
    /// A sync of the storage to the disk ([`FaultyBackend`]).
    Sync,
    /// A commit submitted to a [`FaultyStore`].
    Commit,
}

/// How a fault fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// An I/O error (`EIO`-like).
    Io,
    /// The disk is full (`ENOSPC`-like: [`io::ErrorKind::StorageFull`]).
    NoSpace,
}

impl FaultKind {
    /// The error this fault raises.
    pub fn error(self) -> io::Error {
        match self {
            FaultKind::Io => io::Error::other("input/output error (injected)"),
            FaultKind::NoSpace => io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    write: u64,
    sync: u64,
    commit: u64,
}

impl Counts {
    fn of(&mut self, op: Op) -> &mut u64 {
        match op {
            Op::Write => &mut self.write,
            Op::Sync => &mut self.sync,
            Op::Commit => &mut self.commit,
        }
    }
}

#[derive(Debug)]
struct Armed {
    op: Op,
    /// Fails when the op's count reaches this.
    at: u64,
    kind: FaultKind,
}

#[derive(Debug, Default)]
struct State {
    counts: Counts,
    armed: Option<Armed>,
    injected: u64,
}

/// The orders of a faulty backend or store: which operation fails, from
/// when, and how. Cheap to clone; clones share the orders.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<State>>);

impl Faults {
    /// No faults yet.
    pub fn new() -> Self {
        Faults::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the `nth` `op` from now (1: the next one) and every one after
    /// it, as a full or broken disk stays so, until [`Faults::clear`].
    pub fn fail(&self, op: Op, nth: u64, kind: FaultKind) {
        let mut s = self.state();
        let at = *s.counts.of(op) + nth.max(1);
        s.armed = Some(Armed { op, at, kind });
    }

    /// Lets every operation succeed again.
    pub fn clear(&self) {
        self.state().armed = None;
    }

    /// How many operations of this kind were tried so far.
    pub fn count(&self, op: Op) -> u64 {
        *self.state().counts.of(op)
    }

    /// How many operations failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// Counts one `op` and says whether it fails.
    fn check(&self, op: Op) -> Result<(), io::Error> {
        let mut s = self.state();
        let n = {
            let n = s.counts.of(op);
            *n += 1;
            *n
        };
        match &s.armed {
            Some(a) if a.op == op && n >= a.at => {
                let err = a.kind.error();
                s.injected += 1;
                Err(err)
            }
            _ => Ok(()),
        }
    }
}

/// redb storage over a real file that fails when its [`Faults`] say so.
#[derive(Debug)]
pub struct FaultyBackend {
    file: FileBackend,
    faults: Faults,
}

impl FaultyBackend {
    /// Storage in `file`, failing on `faults`' orders.
    pub fn new(file: std::fs::File, faults: Faults) -> Result<Self, redb::DatabaseError> {
        Ok(FaultyBackend {
            file: FileBackend::new(file)?,
            faults,
        })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check(Op::Write)?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check(Op::Sync)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.check(Op::Write)?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Any store whose commits fail when its [`Faults`] say so ([`Op::Commit`]):
/// a failed commit answers [`StoreError::Write`] and never reaches the inner
/// store; the others pass through.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
    /// The first injected failure: barriers fail from then on, as a real
    /// store's do once a commit failed.
    failed: Mutex<Option<StoreError>>,
}

impl<S: Store> FaultyStore<S> {
    /// `inner`, failing on `faults`' orders.
    pub fn new(inner: S, faults: Faults) -> Self {
        FaultyStore {
            inner,
            faults,
            failed: Mutex::new(None),
        }
    }

    /// The store inside.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn durable(&self) -> bool {
        self.inner.durable()
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        if ops.is_empty() {
            // Not a commit (the engine's reapers submit empty batches).
            return self.inner.submit(ops);
        }
        match self.faults.check(Op::Commit) {
            Ok(()) => self.inner.submit(ops),
            Err(e) => {
                let err = StoreError::Write(e.to_string());
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get_or_insert_with(|| err.clone());
                Commit::failed(err)
            }
        }
    }

    fn barrier(&self) -> Commit {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match &*failed {
            Some(err) => Commit::failed(err.clone()),
            None => self.inner.barrier(),
        }
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

/// The environment variable a test sets to arm faults in the
/// `queue-server` binary (honoured only with the `fault-injection`
/// feature): `OP:N`, with OP `commit`, `write` or `sync`, fails the Nth
/// such operation after the store is open and every one after it, as a
/// full disk (`ENOSPC`).
pub const ENV: &str = "WQ_TEST_FAULT";

/// A fault order read from [`ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// Which operation fails.
    pub op: Op,
    /// From which one on (1: the first).
    pub nth: u64,
}

impl Order {
    /// The order in [`ENV`], if it is set.
    pub fn from_env() -> Result<Option<Order>, String> {
        match std::env::var(ENV) {
            Ok(v) if !v.is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl std::str::FromStr for Order {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{ENV}={s:?}: expected OP:N with OP commit, write or sync");
        let (op, nth) = s.split_once(':').ok_or_else(bad)?;
        let op = match op {
            "commit" => Op::Commit,
            "write" => Op::Write,
            "sync" => Op::Sync,
            _ => return Err(bad()),
        };
        let nth = nth.parse().map_err(|_| bad())?;
        Ok(Order { op, nth })
    }
}
