//! The one type the gRPC layer, the streams and the server talk to: either
//! the local engine ([`Engine`]: every item in memory, persisted by the
//! memory or embedded store) or the shared PostgreSQL engine
//! ([`PgEngine`](crate::postgres::PgEngine): the database is the state, any
//! number of replicas share it).
//!
//! # Why an enum, not a trait
//! There are two engines and there will not be many more; an enum keeps
//! every call a plain `async fn` (no boxed futures, no `async_trait`, no
//! object safety to design around), lets the local engine keep its
//! synchronous fast paths (`enqueue_request_now`, whose change is made the
//! moment a stream reads its message), and makes a missing arm a compile
//! error. A method answers the same way on both: the local engine's
//! semantics are the contract, the PostgreSQL engine reproduces them.
//!
//! Methods that may need the database are `async`; those that only read
//! what a replica keeps in memory (limits, parked calls, shutdown) are not.

use crate::engine::{Engine, EnqueueItem, LeaseOutcome, QueueInfo};
use crate::error::Result;
use crate::names::{ItemId, LeaseToken, QueueName};
use crate::postgres::PgEngine;
use crate::queue::{Batch, DeadItem, Enqueued, TokenResult};
use crate::settings::{Limits, QueueSettings, SettingsPatch};
use crate::store::{Commit, StoreError};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;

/// Either engine. Cheap to clone; clones share the queues.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Items in this process's memory, persisted by a local store.
    Local(Engine),
    /// Items in a PostgreSQL database shared by every replica.
    Postgres(PgEngine),
}

impl From<Engine> for Backend {
    fn from(e: Engine) -> Self {
        Backend::Local(e)
    }
}

impl From<PgEngine> for Backend {
    fn from(e: PgEngine) -> Self {
        Backend::Postgres(e)
    }
}

/// Calls `$m` with the same arguments on whichever engine it is.
macro_rules! each {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            Backend::Local($e) => $body,
            Backend::Postgres($e) => $body,
        }
    };
}

/// An enqueue made in order on a stream, answered once durable
/// ([`Backend::enqueue_in_order`]).
pub struct Pending(PendingKind);

/// A database call that enqueues: its items and whether it was a replay.
type EnqueueCall = Pin<Box<dyn Future<Output = Result<(Vec<Enqueued>, bool)>> + Send>>;

enum PendingKind {
    /// Made in memory; durable once the commit is.
    Commit((Vec<Enqueued>, bool), Commit),
    /// A database call, run after the stream's previous batch.
    Call(EnqueueCall),
}

impl Pending {
    /// The items (and whether the call was a replay), once durable; or why
    /// the batch was refused.
    pub async fn wait(self) -> Result<(Vec<Enqueued>, bool)> {
        match self.0 {
            PendingKind::Commit(out, commit) => {
                commit.wait().await?;
                Ok(out)
            }
            PendingKind::Call(f) => f.await,
        }
    }
}

/// Keeps one stream's batches in the order they were read
/// ([`Backend::enqueue_in_order`]): each waits for the one before.
#[derive(Default)]
pub struct EnqueueOrder {
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Backend {
    /// The local engine, if this is it (for in-process tests and tools).
    pub fn local(&self) -> Option<&Engine> {
        match self {
            Backend::Local(e) => Some(e),
            Backend::Postgres(_) => None,
        }
    }

    /// The limits calls are checked against.
    pub fn limits(&self) -> &Limits {
        each!(self, e => e.limits())
    }

    /// The settings a new queue gets for fields it leaves at zero.
    pub fn default_settings(&self) -> &QueueSettings {
        each!(self, e => e.default_settings())
    }

    /// Creates a queue; zero settings take the defaults. Returns the queue
    /// and whether it was created (false: it existed with these settings).
    pub async fn create_queue(
        &self,
        name: &QueueName,
        settings: QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        self.create_queue_with(name, settings.into()).await
    }

    /// Creates a queue; unset settings take the defaults.
    pub async fn create_queue_with(
        &self,
        name: &QueueName,
        settings: SettingsPatch,
    ) -> Result<(QueueInfo, bool)> {
        each!(self, e => e.create_queue_with(name, settings).await)
    }

    /// Describes one queue.
    pub async fn get_queue(&self, name: &QueueName) -> Result<QueueInfo> {
        match self {
            Backend::Local(e) => e.get_queue(name),
            Backend::Postgres(e) => e.get_queue(name).await,
        }
    }

    /// Describes every queue, by name.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        Ok(self.list_queues_page(None, usize::MAX).await?.0)
    }

    /// Describes the queues named after `after`, in name order, at most
    /// `limit`; and whether more follow.
    pub async fn list_queues_page(
        &self,
        after: Option<&QueueName>,
        limit: usize,
    ) -> Result<(Vec<QueueInfo>, bool)> {
        match self {
            Backend::Local(e) => Ok(e.list_queues_page(after, limit)),
            Backend::Postgres(e) => e.list_queues_page(after, limit).await,
        }
    }

    /// Changes a queue's settings (those set in `patch`).
    pub async fn update_queue(&self, name: &QueueName, patch: SettingsPatch) -> Result<QueueInfo> {
        each!(self, e => e.update_queue(name, patch).await)
    }

    /// Deletes a queue and all its items.
    pub async fn delete_queue(&self, name: &QueueName) -> Result<()> {
        each!(self, e => e.delete_queue(name).await)
    }

    /// Removes every pending and delayed item; returns how many.
    pub async fn purge(&self, name: &QueueName) -> Result<u64> {
        each!(self, e => e.purge(name).await)
    }

    /// Seals a queue: no more items may be added.
    pub async fn seal(&self, name: &QueueName) -> Result<QueueInfo> {
        each!(self, e => e.seal(name).await)
    }

    /// Adds a batch of items, all or nothing (see [`Engine::enqueue`]).
    pub async fn enqueue(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        create: bool,
    ) -> Result<Vec<Enqueued>> {
        Ok(self.enqueue_request(name, items, create, None).await?.0)
    }

    /// Adds a batch named by `request_id` (see [`Engine::enqueue_request`]).
    pub async fn enqueue_request(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        create: bool,
        request_id: Option<&str>,
    ) -> Result<(Vec<Enqueued>, bool)> {
        each!(self, e => e.enqueue_request(name, items, create, request_id).await)
    }

    /// A batch of a stream: batches passed with the same `order` are added
    /// in the order of these calls; each answers once durable. The local
    /// engine adds it before this returns (a refusal is the `Err`); the
    /// PostgreSQL engine runs it after the previous batch of `order` (a
    /// refusal comes from [`Pending::wait`]).
    pub fn enqueue_in_order(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        request_id: Option<&str>,
        order: &mut EnqueueOrder,
    ) -> Result<Pending> {
        match self {
            Backend::Local(e) => {
                let (out, commit) = e.enqueue_request_now(name, items, request_id)?;
                Ok(Pending(PendingKind::Commit(out, commit)))
            }
            Backend::Postgres(e) => {
                let (e, name) = (e.clone(), name.clone());
                let request_id = request_id.map(str::to_owned);
                let previous = order.previous.take();
                let (done, next) = tokio::sync::oneshot::channel();
                order.previous = Some(next);
                Ok(Pending(PendingKind::Call(Box::pin(async move {
                    if let Some(p) = previous {
                        // Dropped or sent: the previous batch has ended.
                        let _ = p.await;
                    }
                    let out = e
                        .enqueue_request(&name, items, false, request_id.as_deref())
                        .await;
                    let _ = done.send(());
                    out
                }))))
            }
        }
    }

    /// Leases up to `max` items (see [`Engine::lease`]).
    pub async fn lease(
        &self,
        name: &QueueName,
        max: usize,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.complete_then_lease(name, &[], max, 0, lease, wait)
            .await
    }

    /// Leases within a byte budget (see [`Engine::lease_within`]).
    pub async fn lease_within(
        &self,
        name: &QueueName,
        max: usize,
        max_bytes: usize,
        first_free: bool,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        each!(self, e => e.lease_within(name, max, max_bytes, first_free, lease, wait).await)
    }

    /// Completes, then leases (see [`Engine::complete_then_lease`]).
    pub async fn complete_then_lease(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        max_bytes: usize,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        each!(self, e => e.complete_then_lease(name, complete, max, max_bytes, lease, wait).await)
    }

    /// Extends leases, judged as `batch` says.
    pub async fn renew_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        each!(self, e => e.renew_as(name, tokens, lease, batch).await)
    }

    /// Extends leases, all or nothing.
    pub async fn renew(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<TokenResult>> {
        self.renew_as(name, tokens, lease, Batch::AllOrNothing)
            .await
    }

    /// Completes leased items, judged as `batch` says.
    pub async fn complete_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        each!(self, e => e.complete_as(name, tokens, batch).await)
    }

    /// Completes leased items, all or nothing.
    pub async fn complete(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<TokenResult>> {
        self.complete_as(name, tokens, Batch::AllOrNothing).await
    }

    /// Fails leased items (see [`Engine::fail_as`]).
    pub async fn fail_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after: Option<Duration>,
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        each!(self, e => e.fail_as(name, tokens, fatal, reason, retry_after, batch).await)
    }

    /// Fails leased items, all or nothing.
    pub async fn fail(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        fatal: bool,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<Vec<TokenResult>> {
        self.fail_as(
            name,
            tokens,
            fatal,
            reason,
            retry_after,
            Batch::AllOrNothing,
        )
        .await
    }

    /// Gives leased items back, judged as `batch` says.
    pub async fn release_as(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
        batch: Batch,
    ) -> Result<Vec<TokenResult>> {
        each!(self, e => e.release_as(name, tokens, batch).await)
    }

    /// Gives leased items back, all or nothing.
    pub async fn release(
        &self,
        name: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<TokenResult>> {
        self.release_as(name, tokens, Batch::AllOrNothing).await
    }

    /// Gives back those of `tokens` still live (see [`Engine::release_held`]).
    pub async fn release_held(&self, name: &QueueName, tokens: &[LeaseToken]) -> Result<usize> {
        each!(self, e => e.release_held(name, tokens).await)
    }

    /// Keeps in `tokens` only the leases still live.
    pub async fn retain_live(&self, name: &QueueName, tokens: &mut HashSet<LeaseToken>) {
        match self {
            Backend::Local(e) => e.retain_live(name, tokens),
            Backend::Postgres(e) => e.retain_live(name, tokens).await,
        }
    }

    /// [`Backend::retain_live`] of a map keyed by token.
    pub async fn retain_live_map<V: Send, S: std::hash::BuildHasher + Send>(
        &self,
        name: &QueueName,
        tokens: &mut HashMap<LeaseToken, V, S>,
    ) {
        match self {
            Backend::Local(e) => e.retain_live_map(name, tokens),
            Backend::Postgres(e) => e.retain_live_map(name, tokens).await,
        }
    }

    /// Dead items, oldest first, at most `limit`.
    pub async fn list_dead(&self, name: &QueueName, limit: usize) -> Result<Vec<DeadItem>> {
        Ok(self.list_dead_page(name, None, limit).await?.0)
    }

    /// Dead items after `after`, at most `limit`; and whether more follow.
    pub async fn list_dead_page(
        &self,
        name: &QueueName,
        after: Option<ItemId>,
        limit: usize,
    ) -> Result<(Vec<DeadItem>, bool)> {
        match self {
            Backend::Local(e) => e.list_dead_page(name, after, limit),
            Backend::Postgres(e) => e.list_dead_page(name, after, limit).await,
        }
    }

    /// Moves dead items (all when `ids` is empty) back to pending.
    pub async fn requeue_dead(&self, name: &QueueName, ids: &[ItemId]) -> Result<u64> {
        each!(self, e => e.requeue_dead(name, ids).await)
    }

    /// Follows a queue's description: the current one, then every change
    /// (on PostgreSQL: changes by any replica); `None` once deleted.
    pub async fn watch(&self, name: &QueueName) -> Result<watch::Receiver<Option<QueueInfo>>> {
        match self {
            Backend::Local(e) => e.watch(name),
            Backend::Postgres(e) => e.watch(name).await,
        }
    }

    /// Lease calls on `name` parked in this replica, waiting for an item.
    pub fn waiting_leases(&self, name: &QueueName) -> Result<usize> {
        each!(self, e => e.waiting_leases(name))
    }

    /// Bytes of items held in memory (the local engine's; zero on
    /// PostgreSQL, whose items are in the database).
    pub fn queued_bytes(&self) -> u64 {
        each!(self, e => e.queued_bytes())
    }

    /// Finished leases and request ids remembered for retries (in memory,
    /// or in the database: then of every replica).
    pub async fn remembered(&self) -> u64 {
        match self {
            Backend::Local(e) => e.remembered(),
            Backend::Postgres(e) => e.remembered().await,
        }
    }

    /// Makes waiting lease calls answer at once, now and from now on.
    pub fn begin_shutdown(&self) {
        each!(self, e => e.begin_shutdown())
    }

    /// Whether [`Backend::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        each!(self, e => e.is_stopping())
    }

    /// Resolves once [`Backend::begin_shutdown`] has been called.
    pub async fn stopping(&self) {
        each!(self, e => e.stopping().await)
    }

    /// The local store's failure, if it failed: the server then refuses
    /// every call and exits. (The PostgreSQL engine never fails for good:
    /// an unreachable database is [`Backend::health`]'s business.)
    pub fn failure(&self) -> Option<StoreError> {
        match self {
            Backend::Local(e) => e.failure(),
            Backend::Postgres(_) => None,
        }
    }

    /// Resolves once the local store has failed (never on PostgreSQL).
    pub async fn failed(&self) -> StoreError {
        match self {
            Backend::Local(e) => e.failed().await,
            Backend::Postgres(_) => std::future::pending().await,
        }
    }

    /// Whether it serves now, or why not: stopping, the store failed, the
    /// database unreachable.
    pub fn health(&self) -> std::result::Result<(), String> {
        if let Some(err) = self.failure() {
            return Err(format!("store failed: {err}"));
        }
        if self.is_stopping() {
            return Err("stopping".to_string());
        }
        match self {
            Backend::Local(_) => Ok(()),
            Backend::Postgres(e) => e.health(),
        }
    }

    /// Resolves when [`Backend::health`] may have changed.
    pub async fn health_changed(&self) {
        match self {
            Backend::Local(e) => {
                // Neither comes back: nothing changes after either.
                if e.failure().is_some() || e.is_stopping() {
                    std::future::pending::<()>().await;
                }
                tokio::select! {
                    _ = e.failed() => {}
                    () = e.stopping() => {}
                }
            }
            Backend::Postgres(e) => e.health_changed().await,
        }
    }

    /// Stops background work and closes the store or the pool. Call after
    /// the last call has been answered.
    pub async fn close(&self) -> Result<()> {
        each!(self, e => e.close().await)
    }
}
