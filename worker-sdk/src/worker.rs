//! The worker loop: [`Queue::work`].
//!
//! # Lifecycle
//! 1. Lease as many items as there are free slots (up to
//!    [`WorkerOptions::concurrency`]), long-polling up to
//!    [`WorkerOptions::poll_wait`] for a first one.
//! 2. Run the handler on each, in its own task, while a [`LeaseHandle`](crate::LeaseHandle) renews the
//!    lease every third of [`WorkerOptions::lease`].
//! 3. Finish each item by what the handler answered: `Ok(())` completes it
//!    (items that finish together are completed in one call, the lease renewed
//!    until the server has answered); `Err(`[`WorkError`]`)` fails it (retriable
//!    or fatal) or releases it.
//! 4. Return when the queue is drained (sealed and nothing left), or empty with
//!    [`WorkerOptions::until_empty`], or [`WorkerOptions::max_items`] were taken and
//!    finished, or on shutdown.
//!
//! # Shutdown
//! SIGTERM or SIGINT (with [`WorkerOptions::handle_signals`], the default) or
//! cancelling [`WorkerOptions::shutdown_token`] stops the loop taking work, and
//! cancels [`Job::shutdown`] so handlers may wind down. Handlers still running after
//! [`WorkerOptions::grace`] are dropped and their items released: back to the
//! queue at once, no attempt counted. A second signal ends the grace period at once.
//!
//! # Errors
//! Transient errors (a lost connection, an unavailable server) are retried with
//! back-off; the loop does not end on them. It ends with an error on what retrying
//! cannot fix, such as a queue that does not exist, after letting the items it
//! holds finish.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ack::Acker;
use crate::client::Queue;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::types::{Failure, LeaseOptions, LeasedItem, QueueName};

/// Most items asked for in one lease call (the queue service's batch limit).
const MAX_LEASE_BATCH: usize = 1000;

/// How the worker loop runs. Build with [`WorkerOptions::default`] and the setters.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    concurrency: usize,
    lease: Duration,
    poll_wait: Duration,
    max_items: Option<u64>,
    until_empty: bool,
    grace: Duration,
    handle_signals: bool,
    shutdown: CancellationToken,
}

impl Default for WorkerOptions {
    /// One item at a time, 30 s leases, 2 s long polls, until drained, 20 s grace,
    /// SIGTERM and SIGINT handled.
    fn default() -> Self {
        WorkerOptions {
            concurrency: 1,
            lease: Duration::from_secs(30),
            poll_wait: Duration::from_secs(2),
            max_items: None,
            until_empty: false,
            grace: Duration::from_secs(20),
            handle_signals: true,
            shutdown: CancellationToken::new(),
        }
    }
}

impl WorkerOptions {
    /// Items run at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Lease duration; the lease is renewed every third of it while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long one lease call waits for an item. Also bounds how long a shutdown
    /// waits for a lease call in flight (whose items are then released).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// Take at most this many items, then return once they are finished.
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = Some(n);
        self
    }

    /// Return as soon as the queue is empty (nothing pending, delayed or leased),
    /// sealed or not: the seeds' `rediswq` meaning. Without it the loop returns
    /// only once the queue is drained (sealed and empty).
    pub fn until_empty(mut self, yes: bool) -> Self {
        self.until_empty = yes;
        self
    }

    /// How long running handlers may take to finish after a shutdown.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether SIGTERM and SIGINT start a shutdown (default: yes).
    ///
    /// The handlers are tokio's, and tokio does not uninstall them: after the
    /// loop returns, these signals no longer end the process by default. A
    /// program that goes on to other work and must stay killable should turn
    /// this off and cancel [`WorkerOptions::shutdown_token`] itself.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// A token whose cancellation starts a shutdown, as a signal would.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The token whose cancellation starts a shutdown.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// One item given to a handler.
#[derive(Debug)]
pub struct Job {
    item: LeasedItem,
    queue: QueueName,
    shutdown: CancellationToken,
    lease_lost: CancellationToken,
}

impl Job {
    /// The item.
    pub fn item(&self) -> &LeasedItem {
        &self.item
    }

    /// The item, by value.
    pub fn into_item(self) -> LeasedItem {
        self.item
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.item.payload
    }

    /// The queue the item came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// Cancelled when the worker is shutting down: finish quickly, or return
    /// [`WorkError::release`] to give the item back.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Cancelled when the lease was lost (it expired, someone else may hold the
    /// item now): the result of this handler will be refused.
    pub fn lease_lost(&self) -> &CancellationToken {
        &self.lease_lost
    }
}

/// What should happen to an item whose handler did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back to the queue after a back-off (the queue's, or this one), or dead once
    /// attempts are exhausted.
    Retry {
        /// Overrides the queue's back-off.
        after: Option<Duration>,
    },
    /// Dead at once: no retry will help.
    Fatal,
    /// Back to the queue at once, no attempt counted (the work was not tried).
    Release,
}

/// A handler's failure: a reason, and what should happen to the item.
///
/// Any `std::error::Error` converts into a retriable `WorkError`, so `?` works in
/// handlers; use [`WorkError::fatal`] for failures no retry will fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkError {
    disposition: Disposition,
    reason: String,
}

impl WorkError {
    /// Retry later, after the queue's back-off.
    pub fn retry(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Retry { after: None },
            reason: reason.into(),
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(reason: impl Into<String>, delay: Duration) -> Self {
        WorkError {
            disposition: Disposition::Retry { after: Some(delay) },
            reason: reason.into(),
        }
    }

    /// Give up: the item goes dead with this reason.
    pub fn fatal(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Fatal,
            reason: reason.into(),
        }
    }

    /// Give the item back untried (no attempt counted), for example on shutdown.
    pub fn release(reason: impl Into<String>) -> Self {
        WorkError {
            disposition: Disposition::Release,
            reason: reason.into(),
        }
    }

    /// What should happen to the item.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for WorkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl<E: std::error::Error> From<E> for WorkError {
    fn from(e: E) -> Self {
        let mut reason = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            reason.push_str(": ");
            reason.push_str(&c.to_string());
            cause = c.source();
        }
        WorkError::retry(reason)
    }
}

/// Why the worker loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The queue is sealed and nothing is left: the work is over.
    Drained,
    /// The queue was empty ([`WorkerOptions::until_empty`]).
    Empty,
    /// [`WorkerOptions::max_items`] items were taken and finished.
    Limit,
    /// A shutdown was asked for.
    Shutdown {
        /// The signal that asked, if one did.
        signal: Option<i32>,
    },
}

/// What the worker loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkSummary {
    /// Why it returned.
    pub stop: StopReason,
    /// Items leased.
    pub leased: u64,
    /// Items completed.
    pub completed: u64,
    /// Items failed as retriable (they go back to the queue, or dead once their
    /// attempts are exhausted).
    pub failed: u64,
    /// Items failed as fatal.
    pub fatal: u64,
    /// Items failed (either way) that went dead.
    pub dead: u64,
    /// Items given back untried (shutdown, or the handler asked).
    pub released: u64,
    /// Items whose lease was lost before they could be finished.
    pub lost: u64,
    /// The signal that asked for a shutdown, if one did (whatever the stop reason:
    /// a signal may come while the last items are finishing).
    pub signal: Option<i32>,
}

impl WorkSummary {
    fn new() -> Self {
        WorkSummary {
            stop: StopReason::Drained,
            leased: 0,
            completed: 0,
            failed: 0,
            fatal: 0,
            dead: 0,
            released: 0,
            lost: 0,
            signal: None,
        }
    }

    fn add(&mut self, o: ItemOutcome) {
        match o {
            ItemOutcome::Completed => self.completed += 1,
            ItemOutcome::Failed { fatal, dead } => {
                if fatal {
                    self.fatal += 1;
                } else {
                    self.failed += 1;
                }
                if dead {
                    self.dead += 1;
                }
            }
            ItemOutcome::Released => self.released += 1,
            ItemOutcome::Lost => self.lost += 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum ItemOutcome {
    Completed,
    Failed { fatal: bool, dead: bool },
    Released,
    Lost,
}

impl Queue {
    /// Works the queue with `handler` until it is drained (see the
    /// [module docs](crate::worker) for the whole lifecycle).
    ///
    /// ```no_run
    /// # async fn run(queue: worker_sdk::Queue) -> worker_sdk::Result<()> {
    /// use worker_sdk::{WorkError, WorkerOptions};
    /// let summary = queue
    ///     .work(WorkerOptions::default().concurrency(4), |job| async move {
    ///         let n: u64 = std::str::from_utf8(job.payload())
    ///             .map_err(|e| WorkError::fatal(format!("not text: {e}")))?
    ///             .trim()
    ///             .parse()?; // a parse error is retriable, like any error
    ///         println!("{n} squared is {}", n * n);
    ///         Ok(())
    ///     })
    ///     .await?;
    /// println!("completed {}", summary.completed);
    /// # Ok(()) }
    /// ```
    pub async fn work<H, Fut>(&self, opts: WorkerOptions, handler: H) -> Result<WorkSummary>
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), WorkError>> + Send + 'static,
    {
        if !opts.until_empty && opts.max_items.is_none() && !self.can_seal() {
            return Err(Error::NotSupported {
                backend: "amqp",
                what: "work until the queue is drained: an AMQP queue cannot be sealed, so it is never drained; stop when it is empty (until_empty; wq consume --until-empty) or after N items (max_items; wq consume -c N)".into(),
            });
        }
        let handler = Arc::new(handler);
        let shutdown = opts.shutdown.clone();
        let hard_stop = CancellationToken::new();
        let signal = Arc::new(AtomicI32::new(0));
        let signals = if opts.handle_signals {
            Some(spawn_signal_watch(
                shutdown.clone(),
                hard_stop.clone(),
                signal.clone(),
            )?)
        } else {
            None
        };
        let _stop_signal_watch = signals.map(|h| h.abort_handle()).map(AbortOnDrop);
        // The grace period runs from the shutdown, whatever the loop is doing then.
        let _grace_timer = AbortOnDrop(
            tokio::spawn({
                let (shutdown, hard_stop, grace) =
                    (shutdown.clone(), hard_stop.clone(), opts.grace);
                async move {
                    shutdown.cancelled().await;
                    tokio::time::sleep(grace).await;
                    hard_stop.cancel();
                }
            })
            .abort_handle(),
        );

        let slots = Arc::new(Semaphore::new(opts.concurrency));
        // Batched completions pay off only when several items finish together.
        let acker = (opts.concurrency > 1).then(|| Acker::start(self.clone()));
        let mut tasks: JoinSet<ItemOutcome> = JoinSet::new();
        let mut summary = WorkSummary::new();
        let mut backoff = Backoff::for_server();
        let mut idle_but_not_empty = false;

        let ended: Result<StopReason> = loop {
            while let Some(done) = tasks.try_join_next() {
                summary.add(joined(done));
            }
            if shutdown.is_cancelled() {
                break Ok(StopReason::Shutdown { signal: None });
            }
            let remaining = opts.max_items.map(|m| m.saturating_sub(summary.leased));
            if remaining == Some(0) {
                break Ok(StopReason::Limit);
            }
            // Wait for a free slot (reaping finished items meanwhile), then take
            // every free slot, up to what is left to take.
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break Err(Error::Protocol("worker slots closed".into())),
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    summary.add(joined(done));
                    continue;
                }
                () = shutdown.cancelled() => continue,
            };
            let mut permits = vec![first];
            let cap = remaining
                .map_or(usize::MAX, |r| usize::try_from(r).unwrap_or(usize::MAX))
                .min(MAX_LEASE_BATCH);
            while permits.len() < cap {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            // Until-empty asks without waiting first, so that an empty queue is
            // seen at once; it long-polls only while others hold or delay items.
            let wait = if opts.until_empty && !idle_but_not_empty {
                Duration::ZERO
            } else {
                opts.poll_wait
            };
            let lease_opts = LeaseOptions {
                max_items: u32::try_from(permits.len()).unwrap_or(u32::MAX),
                lease: Some(opts.lease),
                wait,
            };
            let leased = match self.lease(&lease_opts).await {
                Ok(l) => {
                    backoff = Backoff::for_server();
                    l
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(queue = %self.name(), error = %e, ?delay, "lease failed; retrying");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
                Err(e) => break Err(e),
            };
            let (drained, empty, got) = (leased.drained, leased.empty, leased.items.len());
            tracing::debug!(queue = %self.name(), got, drained, empty, "leased");
            idle_but_not_empty = got == 0 && !empty;
            let mut items = leased.items.into_iter();
            if shutdown.is_cancelled() {
                // A shutdown came while the call was in flight: give back at once.
                release_untried(self, items.collect()).await;
                continue;
            }
            for (item, permit) in items.by_ref().zip(permits.drain(..)) {
                summary.leased += 1;
                let queue = self.clone();
                let (handler, acker) = (handler.clone(), acker.clone());
                let (shutdown, hard_stop, lease) =
                    (shutdown.clone(), hard_stop.clone(), opts.lease);
                tasks.spawn(async move {
                    let stop = Stop {
                        shutdown,
                        hard_stop,
                    };
                    let outcome = run_item(queue, item, handler, lease, stop, acker).await;
                    drop(permit);
                    outcome
                });
            }
            // More than was asked for (a misbehaving server): not ours to keep.
            release_untried(self, items.collect()).await;
            if got == 0 {
                if drained {
                    break Ok(StopReason::Drained);
                }
                if opts.until_empty && empty {
                    break Ok(StopReason::Empty);
                }
            }
        };

        // Let what is running finish; after a shutdown, the grace timer drops
        // what is still running when the grace period is over.
        while let Some(done) = tasks.join_next().await {
            summary.add(joined(done));
        }

        summary.signal = match signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        };
        summary.stop = match ended? {
            StopReason::Shutdown { .. } => StopReason::Shutdown {
                signal: summary.signal,
            },
            other => other,
        };
        Ok(summary)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches SIGTERM and SIGINT: the first cancels `shutdown`, the next `hard_stop`.
fn spawn_signal_watch(
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    seen: Arc<AtomicI32>,
) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| Error::Io {
        what: "installing signal handlers".into(),
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    Ok(tokio::spawn(async move {
        loop {
            let signo = tokio::select! {
                _ = term.recv() => libc_signo(nix::sys::signal::Signal::SIGTERM),
                _ = int.recv() => libc_signo(nix::sys::signal::Signal::SIGINT),
            };
            if shutdown.is_cancelled() {
                tracing::warn!(signal = signo, "second signal: stopping now");
                hard_stop.cancel();
            } else {
                tracing::info!(
                    signal = signo,
                    "signal: finishing running items, taking no more"
                );
                seen.store(signo, Ordering::SeqCst);
                shutdown.cancel();
            }
        }
    }))
}

fn libc_signo(s: nix::sys::signal::Signal) -> i32 {
    s as i32
}

/// Releases items that were leased but never handed to a handler.
async fn release_untried(queue: &Queue, items: Vec<LeasedItem>) {
    if items.is_empty() {
        return;
    }
    let tokens: Vec<_> = items.iter().map(|i| i.token.clone()).collect();
    if let Err(e) = queue.release(&tokens).await {
        tracing::warn!(queue = %queue.name(), error = %e, "could not release untried items; they return when their lease expires");
    }
}

fn joined(r: std::result::Result<ItemOutcome, tokio::task::JoinError>) -> ItemOutcome {
    r.unwrap_or_else(|e| {
        // Handler panics are caught in run_item; this is a panic in the SDK itself
        // or a cancelled task. The lease runs out and the item comes back.
        tracing::error!(error = %e, "item task ended abnormally");
        ItemOutcome::Lost
    })
}

/// The two stages of a shutdown, as an item task sees them.
struct Stop {
    /// Take no more work; handlers may wind down.
    shutdown: CancellationToken,
    /// The grace period is over: drop the handler, release the item.
    hard_stop: CancellationToken,
}

/// Runs one item to its end: handler, then complete / fail / release.
async fn run_item<H, Fut>(
    queue: Queue,
    item: LeasedItem,
    handler: Arc<H>,
    lease: Duration,
    stop: Stop,
    acker: Option<Acker>,
) -> ItemOutcome
where
    H: Fn(Job) -> Fut,
    Fut: Future<Output = std::result::Result<(), WorkError>>,
{
    let handle = queue.hold(item.clone(), lease);
    let id = item.id.clone();
    let Stop {
        shutdown,
        hard_stop,
    } = stop;
    let job = Job {
        item,
        queue: queue.name().clone(),
        shutdown,
        lease_lost: handle.lost().clone(),
    };
    let work = AssertUnwindSafe(handler(job)).catch_unwind();
    let answer = tokio::select! {
        biased;
        r = work => Some(r.unwrap_or_else(|_| Err(WorkError::retry("the handler panicked")))),
        () = hard_stop.cancelled() => None,
    };
    let finished = match answer {
        None => {
            tracing::info!(item = %id, "grace period over: releasing");
            handle.release().await.map(|()| ItemOutcome::Released)
        }
        Some(Ok(())) => match acker {
            Some(acker) => {
                // The handle keeps renewing until the batched completion is answered.
                let done = acker.complete(&queue, handle.item().token.clone()).await;
                drop(handle);
                done.map(|()| ItemOutcome::Completed)
            }
            None => handle.complete().await.map(|()| ItemOutcome::Completed),
        },
        Some(Err(e)) => match e.disposition {
            Disposition::Release => handle.release().await.map(|()| ItemOutcome::Released),
            Disposition::Retry { after } => {
                tracing::warn!(queue = %queue.name(), item = %id, reason = %e.reason, "item failed (retriable)");
                let failure = Failure {
                    fatal: false,
                    reason: e.reason,
                    retry_after: after,
                };
                handle
                    .fail(failure)
                    .await
                    .map(|dead| ItemOutcome::Failed { fatal: false, dead })
            }
            Disposition::Fatal => {
                tracing::warn!(queue = %queue.name(), item = %id, reason = %e.reason, "item failed (fatal)");
                handle
                    .fail(Failure::fatal(e.reason))
                    .await
                    .map(|dead| ItemOutcome::Failed { fatal: true, dead })
            }
        },
    };
    finished.unwrap_or_else(|e| {
        tracing::warn!(item = %id, error = %e, "could not finish item");
        ItemOutcome::Lost
    })
}
