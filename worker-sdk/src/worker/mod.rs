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

mod item;
mod job;
mod options;
#[cfg(feature = "grpc")]
mod stream;
mod summary;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use job::{Disposition, Job, WorkError};
pub use options::WorkerOptions;
pub use summary::{StopReason, WorkSummary};

use crate::ack::Acker;
use crate::client::Queue;
use crate::error::{Error, Result};
use crate::retry::Backoff;
use crate::types::LeaseOptions;
use item::{AbortOnDrop, Stop, joined, release_untried, run_item, spawn_signal_watch};
use summary::ItemOutcome;

/// Most items asked for in one lease call (the queue service's batch limit).
const MAX_LEASE_BATCH: usize = 1000;

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

        #[cfg(feature = "grpc")]
        if let Some(grpc) = self.grpc().filter(|_| !opts.until_empty) {
            let (ended, summary) =
                stream::work_streamed(self, grpc, &opts, handler, hard_stop.clone()).await;
            return finish_summary(summary, ended, &signal);
        }
        let (ended, summary) = self.work_unary(&opts, handler, hard_stop.clone()).await;
        finish_summary(summary, ended, &signal)
    }

    /// The worker loop on unary calls: lease, then complete in the
    /// background (Redis, RabbitMQ, and the queue service with
    /// `until_empty`, which the stream cannot tell).
    async fn work_unary<H, Fut>(
        &self,
        opts: &WorkerOptions,
        handler: Arc<H>,
        hard_stop: CancellationToken,
    ) -> (Result<StopReason>, WorkSummary)
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), WorkError>> + Send + 'static,
    {
        let shutdown = opts.shutdown.clone();
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
                max_bytes: opts.max_batch_bytes,
            };
            let leased = match self.lease(&lease_opts).await {
                Ok(l) => {
                    backoff.reset();
                    l
                }
                Err(e) if e.is_transient() => {
                    // Never sooner than the server asked (RetryInfo).
                    let delay = crate::finish::retry_delay(&mut backoff, &e);
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
        (ended, summary)
    }
}

/// The summary of a loop that ended with `ended`, with the signal seen.
fn finish_summary(
    mut summary: WorkSummary,
    ended: Result<StopReason>,
    signal: &AtomicI32,
) -> Result<WorkSummary> {
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
