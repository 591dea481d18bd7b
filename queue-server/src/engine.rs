//! The engine: every queue, its lock, its waiters, its expiry timer, and the
//! store behind them.
//!
//! # Lifecycle
//! [`Engine::open`] reads the store and restores every queue (leased items
//! come back pending). Each queue has one reaper task that sleeps until the
//! queue's next deadline ([`Queue::next_deadline`]) and then calls
//! [`Queue::reap`]. [`Engine::begin_shutdown`] makes waiting lease calls
//! answer at once; [`Engine::close`] flushes and closes the store.
//!
//! # Guarantees
//! - A call that changes items answers only once the change is durable.
//! - Changes reach the store in the order they were made on each queue (ops
//!   are submitted under the queue's lock).
//! - A waiting lease call is woken the moment an item becomes pending (a
//!   `Notify` per queue; each successful lease passes the wake-up on while
//!   items remain), and at once when the queue drains or is deleted.
//! - An item is handed out only once its enqueue is durable: a lease waits
//!   on a store barrier ([`Store::barrier`]) before it answers.
//!
//! # A failed store
//! When a commit fails (a full or broken disk), the engine can no longer
//! trust its memory against the disk: from then on every call is refused
//! with [`Error::Store`], nothing more is leased, and parked lease calls
//! answer at once. [`Engine::failed`] resolves then; the server reports
//! NOT_SERVING and exits, to restart on what is durable.

use crate::error::{Error, Result};
use crate::names::{ItemId, LeaseToken, QueueName};
use crate::queue::{Enqueued, Journal, NewItem, Queue, RecallBudget};
use crate::settings::{Limits, QueueSettings};
use crate::store::{Commit, FailureHook, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

mod cell;
mod dead;
mod finish;
pub(crate) use finish::fail_reason;
mod outcomes;
mod queues;

pub use crate::clock::Clock;
use cell::{Parked, QueueCell};
pub use outcomes::{EnqueueItem, LeaseOutcome, QueueInfo};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Inner {
    queues: RwLock<HashMap<QueueName, Arc<QueueCell>>>,
    store: Arc<dyn Store>,
    durable: bool,
    limits: Limits,
    defaults: QueueSettings,
    /// What every queue remembers for retries ([`crate::queue::recall`]).
    recall: Arc<RecallBudget>,
    clock: Clock,
    next_id: AtomicU64,
    next_seq: AtomicU64,
    stopping: AtomicBool,
    stopped: watch::Sender<bool>,
    /// What every queue's items cost in memory ([`Queue::queued_bytes`]).
    queued_bytes: AtomicU64,
    /// Why the store failed, once it has.
    failure: watch::Sender<Option<StoreError>>,
    /// Given to every commit: records the store's failure.
    on_failure: FailureHook,
}

impl Inner {
    fn record_failure(&self, err: &StoreError) {
        let first = self.failure.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            *f = Some(err.clone());
            true
        });
        if first {
            tracing::error!("the store failed: {err}; refusing every call from now on");
            metrics::counter!("workq_store_failures_total").increment(1);
            let cells: Vec<_> = self
                .queues
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for cell in cells {
                cell.available.notify_waiters();
            }
        }
    }
}

/// Every queue of one server. Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Restores every queue from `store` and starts their reapers. Must be
    /// called inside a tokio runtime.
    pub fn open(store: Arc<dyn Store>, limits: Limits, defaults: QueueSettings) -> Result<Self> {
        limits
            .check()
            .map_err(|e| Error::invalid("limits", format!("queue-server limits: {e}")))?;
        let recall = RecallBudget::new(limits.max_finished_tokens);
        let snapshot = store.load()?;
        let clock = Clock::new();
        let now = clock.now_ms();
        let window = millis(limits.idempotency_window);
        let mut items: HashMap<QueueName, Vec<_>> = HashMap::new();
        for (q, item) in snapshot.items {
            items.entry(q).or_default().push(item);
        }
        let mut keys: HashMap<QueueName, Vec<_>> = HashMap::new();
        for k in snapshot.keys {
            keys.entry(k.queue.clone()).or_default().push(k);
        }
        let mut queues = HashMap::new();
        for record in snapshot.queues {
            let name = record.name.clone();
            let q = Queue::restore(
                record,
                items.remove(&name).unwrap_or_default(),
                keys.remove(&name).unwrap_or_default(),
                window,
                now,
                recall.clone(),
            );
            queues.insert(name, Arc::new(QueueCell::new(q)));
        }
        if !items.is_empty() {
            tracing::warn!(
                "the store holds items of {} queue(s) with no queue record; ignoring them",
                items.len()
            );
        }
        let seed = fastrand::u64(..) >> 2;
        let engine = Engine {
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
                durable: store.durable(),
                store,
                limits,
                defaults,
                recall,
                clock,
                next_id: AtomicU64::new(snapshot.next_item_id.max(1)),
                next_seq: AtomicU64::new(seed),
                stopping: AtomicBool::new(false),
                stopped: watch::Sender::new(false),
                queued_bytes: AtomicU64::new(
                    queues.values().map(|c| c.lock().queue.queued_bytes()).sum(),
                ),
                failure: watch::Sender::new(None),
                on_failure: {
                    let weak = weak.clone();
                    Arc::new(move |err: &StoreError| {
                        if let Some(inner) = weak.upgrade() {
                            inner.record_failure(err);
                        }
                    })
                },
                queues: RwLock::new(HashMap::new()),
            }),
        };
        for (name, cell) in queues {
            engine.spawn_reaper(cell.clone());
            engine.write_map().insert(name, cell);
        }
        Ok(engine)
    }

    /// The limits calls are checked against.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The settings a new queue gets for fields it leaves at zero.
    pub fn default_settings(&self) -> &QueueSettings {
        &self.inner.defaults
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<QueueName, Arc<QueueCell>>> {
        self.inner.queues.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<QueueName, Arc<QueueCell>>> {
        self.inner.queues.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses every call once the store has failed.
    fn check_alive(&self) -> Result<()> {
        match &*self.inner.failure.borrow() {
            Some(err) => Err(Error::Store(err.clone())),
            None => Ok(()),
        }
    }

    /// Why the store failed, if it has: the engine then refuses every call.
    pub fn failure(&self) -> Option<StoreError> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves once the store has failed, with why.
    pub async fn failed(&self) -> StoreError {
        let mut rx = self.inner.failure.subscribe();
        let failure = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|f| f.clone());
        match failure {
            Some(err) => err,
            // Unreachable while `self` holds the sender; never resolve then.
            None => std::future::pending().await,
        }
    }

    fn cell(&self, name: &QueueName) -> Result<Arc<QueueCell>> {
        self.check_alive()?;
        self.read_map()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::QueueNotFound(name.clone()))
    }

    fn journal(&self) -> Journal {
        Journal::new(self.inner.durable)
    }

    fn spawn_reaper(&self, cell: Arc<QueueCell>) {
        let store = self.inner.store.clone();
        let durable = self.inner.durable;
        let clock = self.inner.clock;
        let on_failure = self.inner.on_failure.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut slot = cell.lock();
                    if slot.deleted {
                        return;
                    }
                    let mut journal = Journal::new(durable);
                    let reaped = slot.queue.reap(clock.now_ms(), &mut journal);
                    if reaped.expired > 0 {
                        metrics::counter!("workq_lease_expiries_total")
                            .increment(reaped.expired as u64);
                    }
                    // Ordered behind earlier changes; no caller waits on
                    // it, but its failure must still fail the engine.
                    let ops = journal.into_ops();
                    if !ops.is_empty() {
                        let commit = store.submit(ops).on_failure(on_failure.clone());
                        tokio::spawn(async move {
                            let _ = commit.wait().await;
                        });
                    }
                    slot.armed = slot.queue.next_deadline();
                    cell.changed(&slot);
                    slot.armed
                };
                match next {
                    Some(t) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(clock.instant(t)) => {}
                            () = cell.timer.notified() => {}
                        }
                    }
                    None => cell.timer.notified().await,
                }
            }
        });
    }

    /// Runs `f` on a queue under its lock, submits what it journaled, wakes
    /// who should be woken, and waits until the change is durable.
    async fn mutate<T>(
        &self,
        name: &QueueName,
        f: impl FnOnce(&mut Queue, u64, &mut Journal) -> Result<T>,
    ) -> Result<T> {
        let (out, commit) = self.mutate_now(name, f)?;
        commit.wait().await?;
        Ok(out)
    }

    /// [`Engine::mutate`] without the wait: the change is made (and visible)
    /// when this returns; the commit says when it is durable.
    fn mutate_now<T>(
        &self,
        name: &QueueName,
        f: impl FnOnce(&mut Queue, u64, &mut Journal) -> Result<T>,
    ) -> Result<(T, Commit)> {
        let cell = self.cell(name)?;
        let mut slot = cell.lock();
        if slot.deleted {
            return Err(Error::QueueNotFound(name.clone()));
        }
        let mut journal = self.journal();
        let before = slot.queue.queued_bytes();
        let out = f(&mut slot.queue, self.inner.clock.now_ms(), &mut journal);
        let after = slot.queue.queued_bytes();
        self.inner
            .queued_bytes
            .fetch_add(after.wrapping_sub(before), Ordering::Relaxed);
        let out = out?;
        let commit = self
            .inner
            .store
            .submit(journal.into_ops())
            .on_failure(self.inner.on_failure.clone());
        cell.changed(&slot);
        Ok((out, commit))
    }

    fn read<T>(&self, name: &QueueName, f: impl FnOnce(&Queue) -> T) -> Result<T> {
        let cell = self.cell(name)?;
        let slot = cell.lock();
        if slot.deleted {
            return Err(Error::QueueNotFound(name.clone()));
        }
        Ok(f(&slot.queue))
    }

    /// Adds a batch of items, all or nothing, creating the queue with default
    /// settings when `create` is set and it does not exist.
    pub async fn enqueue(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        create: bool,
    ) -> Result<Vec<Enqueued>> {
        Ok(self.enqueue_request(name, items, create, None).await?.0)
    }

    /// [`Engine::enqueue`] of a call named by `request_id`: a retry of a call
    /// remembered is answered with its items and `true` (replayed), adding
    /// nothing.
    pub async fn enqueue_request(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        create: bool,
        request_id: Option<&str>,
    ) -> Result<(Vec<Enqueued>, bool)> {
        self.check_items(&items)?;
        if create && self.cell(name).is_err() {
            self.create_queue(name, QueueSettings::UNSET).await?;
        }
        let (out, commit) = self.enqueue_checked(name, items, request_id)?;
        commit.wait().await?;
        Ok(out)
    }

    /// Adds a batch of items, all or nothing, before it returns; the commit
    /// says when they are durable (acknowledge only then). Batches submitted
    /// one after the other are added in that order.
    pub fn enqueue_now(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
    ) -> Result<(Vec<Enqueued>, Commit)> {
        self.check_items(&items)?;
        let ((out, _), commit) = self.enqueue_checked(name, items, None)?;
        Ok((out, commit))
    }

    /// [`Engine::enqueue_now`] of a batch named by `request_id` (see
    /// [`Engine::enqueue_request`]).
    pub fn enqueue_request_now(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        request_id: Option<&str>,
    ) -> Result<((Vec<Enqueued>, bool), Commit)> {
        self.check_items(&items)?;
        self.enqueue_checked(name, items, request_id)
    }

    fn enqueue_checked(
        &self,
        name: &QueueName,
        items: Vec<EnqueueItem>,
        request_id: Option<&str>,
    ) -> Result<((Vec<Enqueued>, bool), Commit)> {
        let new: Vec<NewItem> = items
            .into_iter()
            .map(|it| NewItem {
                // Its own allocation: a payload decoded from a request is a
                // view into that request's whole receive buffer (8 KiB or
                // more), which would otherwise stay alive as long as the item.
                payload: prost::bytes::Bytes::copy_from_slice(&it.payload),
                attributes: crate::item::Attributes::new(it.attributes),
                idempotency_key: it.idempotency_key.filter(|k| !k.is_empty()).map(Into::into),
                delay_ms: millis(it.delay),
            })
            .collect();
        let n = new.len() as u64;
        let next_id = &self.inner.next_id;
        let out = self.mutate_now(name, |q, now, j| {
            q.enqueue_request(
                now,
                request_id,
                new,
                || ItemId(next_id.fetch_add(1, Ordering::Relaxed)),
                j,
            )
        })?;
        metrics::counter!("workq_items_enqueued_total").increment(n);
        Ok(out)
    }

    /// What every queue's items cost in memory, as counted against
    /// [`Limits::max_queued_bytes`].
    pub fn queued_bytes(&self) -> u64 {
        self.inner.queued_bytes.load(Ordering::Relaxed)
    }

    fn check_items(&self, items: &[EnqueueItem]) -> Result<()> {
        let limits = &self.inner.limits;
        let cost: u64 = items
            .iter()
            .map(|it| {
                crate::item::queued_bytes(
                    it.payload.len(),
                    &it.attributes,
                    it.idempotency_key.as_deref(),
                )
            })
            .sum();
        let queued = self.queued_bytes();
        if queued.saturating_add(cost) > limits.max_queued_bytes {
            return Err(Error::Exhausted {
                limit: "max_queued_bytes",
                max: limits.max_queued_bytes,
                message: format!(
                    "the server holds {queued} bytes of items, and {cost} more would exceed \
                     its limit of {} bytes (queue-server --max-queued-bytes); consume or purge \
                     items, or retry later",
                    limits.max_queued_bytes
                ),
            });
        }
        limits.check_batch("items", "enqueue", items.len())?;
        for (i, it) in items.iter().enumerate() {
            limits.check_item(
                i,
                it.payload.len(),
                &it.attributes,
                it.idempotency_key.as_deref(),
                it.delay,
            )?;
        }
        Ok(())
    }

    /// Leases up to `max` items for `lease` (the queue's default when
    /// `None`), waiting up to `wait` for the first one. Answers at once when
    /// the queue is drained.
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

    /// [`Engine::lease`] of at most `max_bytes` of items (0: no bound but
    /// the answer's). The first item is given whatever its size only when
    /// `first_free`; otherwise a lease that stops at an item too large
    /// answers at once, saying so ([`LeaseOutcome::over_budget`]).
    pub async fn lease_within(
        &self,
        name: &QueueName,
        max: usize,
        max_bytes: usize,
        first_free: bool,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, &[], max, (max_bytes, first_free), lease, wait)
            .await
    }

    /// Completes `complete` (all or nothing, as [`Engine::complete`]), then
    /// leases as [`Engine::lease`]: a worker's finished items and its next
    /// ones in one call. The lease's arguments are checked first: when they
    /// or the completion are refused, nothing is completed or leased. (Once
    /// the completion is durable it stands, even if the lease then fails —
    /// the queue deleted meanwhile.)
    pub async fn complete_then_lease(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        max_bytes: usize,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        self.lease_inner(name, complete, max, (max_bytes, true), lease, wait)
            .await
    }

    async fn lease_inner(
        &self,
        name: &QueueName,
        complete: &[LeaseToken],
        max: usize,
        (max_bytes, first_free): (usize, bool),
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<LeaseOutcome> {
        let limits = &self.inner.limits;
        limits.check_batch("max_items", "lease max_items", max)?;
        let wait = limits.check_wait(wait)?;
        let budget = match max_bytes {
            0 => limits.answer_budget(),
            n => n.min(limits.answer_budget()),
        };
        let cell = self.cell(name)?;
        let lease = match lease {
            Some(d) => d,
            None => cell.lock().queue.settings().default_lease,
        };
        let lease_ms = millis(limits.check_lease("lease", lease)?);
        if !complete.is_empty() {
            self.complete(name, complete).await?;
        }
        let until = Instant::now() + wait;
        let mut last_try = wait.is_zero();
        loop {
            let notified = cell.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outcome = {
                let mut slot = cell.lock();
                if slot.deleted {
                    return Err(Error::QueueNotFound(name.clone()));
                }
                self.check_alive()?;
                let now = self.inner.clock.now_ms();
                let next_seq = &self.inner.next_seq;
                let (items, over_budget) =
                    slot.queue
                        .lease_bounded(now, max, budget, first_free, lease_ms, || {
                            next_seq.fetch_add(1, Ordering::Relaxed)
                        });
                let drained = slot.queue.drained();
                let empty = slot.queue.counters().is_empty();
                if !items.is_empty() {
                    cell.changed(&slot);
                }
                (!items.is_empty()
                    || over_budget
                    || drained
                    || last_try
                    || self.inner.stopping.load(Ordering::Relaxed))
                .then_some(LeaseOutcome {
                    items,
                    drained,
                    empty,
                    sealed: slot.queue.sealed(),
                    over_budget,
                })
            };
            if let Some(outcome) = outcome {
                if !outcome.items.is_empty() && self.inner.durable {
                    // Not before their enqueue is durable: a failed commit's
                    // items are never handed out. Should the caller go away
                    // meanwhile (this future dropped), the guard gives the
                    // items back at once, counting no attempt.
                    let tokens = outcome.items.iter().map(|i| i.token).collect();
                    let unanswered = finish::Unanswered::new(self, name, tokens);
                    self.inner
                        .store
                        .barrier()
                        .on_failure(self.inner.on_failure.clone())
                        .wait()
                        .await?;
                    unanswered.answer();
                }
                metrics::counter!("workq_items_leased_total").increment(outcome.items.len() as u64);
                return Ok(outcome);
            }
            let _parked = Parked::new(&cell.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => last_try = true,
            }
        }
    }

    /// How many lease calls on `name` are parked, waiting for an item (the
    /// `workq_lease_calls_waiting` gauge).
    pub fn waiting_leases(&self, name: &QueueName) -> Result<usize> {
        Ok(self.cell(name)?.waiting.load(Ordering::Relaxed))
    }

    /// Follows a queue's description: the current one, then every change.
    /// The value becomes `None` when the queue is deleted.
    pub fn watch(&self, name: &QueueName) -> Result<watch::Receiver<Option<QueueInfo>>> {
        Ok(self.cell(name)?.info.subscribe())
    }

    /// Makes waiting lease calls answer at once, now and from now on.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        self.inner.stopped.send_replace(true);
        for cell in self.read_map().values() {
            cell.available.notify_waiters();
        }
    }

    /// Whether [`Engine::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Resolves once [`Engine::begin_shutdown`] has been called: streams
    /// end then, so that a graceful shutdown does not wait on them.
    pub async fn stopping(&self) {
        let mut rx = self.inner.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops the reapers and flushes and closes the store. Call after the
    /// last call has been answered.
    pub async fn close(&self) -> Result<()> {
        self.begin_shutdown();
        let cells: Vec<_> = self.write_map().drain().map(|(_, c)| c).collect();
        for cell in cells {
            cell.lock().deleted = true;
            cell.timer.notify_one();
        }
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|_| Error::Store(crate::store::StoreError::Closed))??;
        Ok(())
    }
}
