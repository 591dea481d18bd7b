//! The worker loop on a `Work` stream: what [`Queue::work`] runs on the queue
//! service.
//!
//! # How it runs
//! One stream per loop. The loop grants credit for what it can take — free
//! slots ([`WorkerOptions::concurrency`]) plus [`WorkerOptions::prefetch`]
//! items waiting for a slot — and the server pushes items as they come.
//! Each item's handler is polled once on the loop; one that does not answer
//! at once goes on in a task of its own (every item does, once handlers'
//! first polls are slow: [`Loop::start`]). When its handler succeeds, its
//! token joins the next completion message, sent once half a window gathered
//! or the oldest waited 1 ms, at once when nothing else runs (at most four
//! unanswered): the batch grows with the load. Completions go all or
//! nothing, token by token once a batch was refused. Failures and releases are
//! unary calls, as the stream carries none. Every lease held — running,
//! waiting for a slot, or waiting for its completion's answer — is renewed
//! on the stream every third of [`WorkerOptions::lease`]; a refused renewal
//! cancels the item's [`Job::lease_lost`].
//!
//! # When the stream breaks
//! A stream the server ended without saying "drained", or a lost connection,
//! is opened again with back-off. The server gave back what the old stream
//! held (or, after a restart, every lease is gone): released when it ended
//! the stream itself, each counting an attempt when the connection broke
//! (it cannot tell which were started). So the items waiting for a slot are
//! dropped (they come again); running handlers go on, and completions whose
//! answer did not come are sent again on the new stream, where "already
//! done" (or, as for unary retries, a refusal whose reason shows the item
//! completed) counts as completed. An item is never completed twice: the
//! server fences every token.
//!
//! # How it ends
//! Once nothing runs and every completion is answered, the loop half-closes
//! its side and reads until the server ends the stream: a clean end, so the
//! server releases what it still holds (items pushed but never started)
//! counting no attempt.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::item::{Done, Started, finish_streamed_item, release_untried, start_streamed_item};
use super::job::{Job, Lost, LostFlag, WorkError};
use super::options::WorkerOptions;
use super::summary::{ItemOutcome, StopReason, WorkSummary};
use crate::backend::grpc::{GrpcBackend, WorkEvent, WorkStream};
use crate::client::Queue;
use crate::error::{Error, Result};
use crate::finish::retry_delay;
use crate::retry::Backoff;
use crate::types::{LeaseToken, LeasedItem, QueueName};
use requests::{FLUSH_AFTER, Sent};

mod requests;

/// How long a clean close waits for the server to end the stream.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// A handler's first poll, run on the loop itself, longer than this is slow.
const INLINE_AT_MOST: Duration = Duration::from_micros(200);

/// Slow first polls in a row that send every later item to a task of its own.
const SLOW_POLLS_TO_SPAWN: u32 = 3;

/// Renewal never more often than this.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(50);

/// A lease the loop holds.
struct Held {
    /// Set when a renewal is refused.
    lost: Arc<LostFlag>,
    /// When it was last renewed (or leased).
    renewed: Instant,
    /// Its item, hashed: two leases of one item (one given back while its
    /// handler ran, then leased again) never go in one completion message.
    item: u64,
}

/// The loop's state between turns.
struct Loop<'a> {
    queue: &'a Queue,
    grpc: &'a GrpcBackend,
    opts: &'a WorkerOptions,
    /// The queue's name, as each [`Job`] holds it.
    job_queue: Arc<QueueName>,
    /// Whether handlers are first polled on the loop (see [`Loop::start`]).
    inline: bool,
    /// First polls in a row that were slow.
    slow_in_a_row: u32,
    /// Completions refused in an all-or-nothing message: until each has its
    /// own answer, a message holding one goes token by token (to learn
    /// which was refused); the others keep going all or nothing.
    refused_as_batch: FxHashSet<LeaseToken>,
    stream: Option<WorkStream>,
    /// Granted and not yet received.
    open_credit: usize,
    /// Received, waiting for a slot.
    waiting: VecDeque<LeasedItem>,
    /// Every lease held, by token (hashed with Fx: the tokens are the
    /// server's, a few hundred at most, looked up once or twice each).
    held: FxHashMap<LeaseToken, Held>,
    /// Task of each running item.
    running: HashMap<Id, LeaseToken>,
    /// Succeeded, to be completed; with whether sent before.
    to_complete: Vec<(LeaseToken, bool)>,
    sent: HashMap<i64, Sent>,
    /// Completion messages in `sent`.
    completions_in_flight: usize,
    /// Since when `to_complete` holds tokens not sent.
    pending_since: Option<Instant>,
    next_sequence: i64,
    drained: bool,
    summary: WorkSummary,
}

/// Runs the worker loop on `grpc`'s `Work` stream; the shutdown plumbing
/// (signals, grace timer) is the caller's.
pub(super) async fn work_streamed<H, Fut>(
    queue: &Queue,
    grpc: &GrpcBackend,
    opts: &WorkerOptions,
    handler: Arc<H>,
    hard_stop: CancellationToken,
) -> (Result<StopReason>, WorkSummary)
where
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), WorkError>> + Send + 'static,
{
    let mut l = Loop {
        queue,
        grpc,
        opts,
        job_queue: Arc::new(queue.name().clone()),
        inline: true,
        slow_in_a_row: 0,
        refused_as_batch: FxHashSet::default(),
        stream: None,
        open_credit: 0,
        waiting: VecDeque::new(),
        held: FxHashMap::default(),
        running: HashMap::new(),
        to_complete: Vec::new(),
        sent: HashMap::new(),
        completions_in_flight: 0,
        pending_since: None,
        next_sequence: 0,
        drained: false,
        summary: WorkSummary::new(),
    };
    let ended = l.run(handler, hard_stop).await;
    (ended, l.summary)
}

impl Loop<'_> {
    #[allow(clippy::too_many_lines)]
    async fn run<H, Fut>(
        &mut self,
        handler: Arc<H>,
        hard_stop: CancellationToken,
    ) -> Result<StopReason>
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), WorkError>> + Send + 'static,
    {
        let shutdown = self.opts.shutdown.clone();
        // One for every job, shared.
        let job_shutdown = Arc::new(shutdown.clone());
        let renew_every = (self.opts.lease / 3).max(MIN_RENEW_EVERY);
        // Ticks twice per period: a lease is renewed within half its duration.
        let tick = renew_every / 2;
        let mut renew_tick = tokio::time::interval_at(Instant::now() + tick, tick);
        renew_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks: JoinSet<(LeaseToken, Done)> = JoinSet::new();
        let mut backoff = Backoff::for_server();
        let mut reconnect_at: Option<Instant> = None;
        // Set once the loop takes no more work: how it ends.
        let mut ending: Option<Result<StopReason>> = None;

        loop {
            while let Some(r) = tasks.try_join_next_with_id() {
                self.task_done(r);
            }
            if ending.is_none() {
                if shutdown.is_cancelled() {
                    ending = Some(Ok(StopReason::Shutdown { signal: None }));
                    // What waits for a slot goes back at once.
                    let waiting: Vec<LeasedItem> = self.waiting.drain(..).collect();
                    for i in &waiting {
                        self.held.remove(&i.token);
                    }
                    release_untried(self.queue, waiting).await;
                } else if self
                    .opts
                    .max_items
                    .is_some_and(|m| self.summary.leased >= m)
                {
                    ending = Some(Ok(StopReason::Limit));
                } else if self.drained && self.waiting.is_empty() {
                    ending = Some(Ok(StopReason::Drained));
                }
            }
            // Start what waits, in free slots.
            while tasks.len() < self.opts.concurrency && !shutdown.is_cancelled() {
                let Some(item) = self.waiting.pop_front() else {
                    break;
                };
                let Some(lost) = self.held.get(&item.token).map(|h| Arc::clone(&h.lost)) else {
                    continue;
                };
                if lost.is_cancelled() {
                    // Its lease ran out while it waited: it comes again.
                    self.held.remove(&item.token);
                    continue;
                }
                self.summary.leased += 1;
                if ending.is_none()
                    && self
                        .opts
                        .max_items
                        .is_some_and(|m| self.summary.leased >= m)
                {
                    ending = Some(Ok(StopReason::Limit));
                }
                let lease = (item.id.clone(), item.token.clone());
                let job = Job {
                    item,
                    queue: self.job_queue.clone(),
                    shutdown: Arc::clone(&job_shutdown),
                    lease_lost: Lost::Flag(lost),
                };
                let started = self.start(handler.clone(), job);
                if let Started::Answered(Ok(())) = started {
                    self.pending_since.get_or_insert_with(Instant::now);
                    self.to_complete.push((lease.1, false));
                    continue;
                }
                let key = lease.1.clone();
                let finish = finish_streamed_item(
                    self.queue.clone(),
                    lease,
                    started,
                    hard_stop.clone(),
                    self.opts.lease,
                );
                let token = key.clone();
                let id = tasks.spawn(async move { (token, finish.await) }).id();
                self.running.insert(id, key);
            }
            let unanswered_completions = self.to_complete.len()
                + self.sent.values().map(|s| s.complete.len()).sum::<usize>();
            if ending.is_some() && tasks.is_empty() && unanswered_completions == 0 {
                break;
            }
            let unreachable = self.stream.is_none() && hard_stop.is_cancelled();
            if (unreachable || ending.as_ref().is_some_and(Result::is_err)) && tasks.is_empty() {
                // The queue is gone: what waits for an answer will not get one.
                for _ in 0..unanswered_completions {
                    self.summary.add(ItemOutcome::Lost);
                }
                break;
            }
            // A stream, while one is of use.
            let wanted = ending.is_none() || unanswered_completions > 0;
            let can_reopen = !ending.as_ref().is_some_and(Result::is_err);
            if self.stream.is_none()
                && wanted
                && can_reopen
                && reconnect_at.is_none_or(|t| t <= Instant::now())
            {
                match self
                    .grpc
                    .open_work(
                        self.queue.name(),
                        self.opts.lease,
                        self.opts.max_batch_bytes,
                    )
                    .await
                {
                    Ok(s) => {
                        backoff.reset();
                        reconnect_at = None;
                        self.stream = Some(s);
                    }
                    Err(e) if e.is_transient() => {
                        let delay = retry_delay(&mut backoff, &e);
                        tracing::warn!(queue = %self.queue.name(), error = %e, ?delay, "opening the work stream failed; retrying");
                        reconnect_at = Some(Instant::now() + delay);
                    }
                    Err(e) => {
                        ending = Some(Err(e));
                        continue;
                    }
                }
            }
            if self.stream.is_some() {
                let room = if ending.is_none() && !self.drained {
                    self.room(tasks.len())
                } else {
                    0
                };
                if let Err(e) = self.send(room, tasks.is_empty()).await {
                    self.lose_stream(&e);
                    reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    continue;
                }
            }

            tokio::select! {
                biased;
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => self.task_done(done),
                event = async {
                    match self.stream.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => match event {
                    Ok(Some(event)) => {
                        if let Err(e) = self.event(event, ending.is_some()).await {
                            ending.get_or_insert(Err(e));
                        }
                    }
                    Ok(None) if self.drained => self.end_drained_stream(),
                    Ok(None) => {
                        let e = Error::Unavailable {
                            code: tonic::Code::Unavailable,
                            message: "the server ended the work stream".into(),
                            retry_after: None,
                        };
                        self.lose_stream(&e);
                        reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    }
                    Err(e) if e.is_transient() => {
                        self.lose_stream(&e);
                        reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    }
                    Err(e) => {
                        self.lose_stream(&e);
                        ending.get_or_insert(Err(e));
                    }
                },
                _ = renew_tick.tick() => {
                    if let Err(e) = self.renew_due(renew_every).await {
                        self.lose_stream(&e);
                        reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    }
                }
                () = async {
                    match self.pending_since {
                        Some(t) => tokio::time::sleep_until(t + FLUSH_AFTER).await,
                        None => std::future::pending().await,
                    }
                }, if self.stream.is_some() && !self.to_complete.is_empty() => {}
                () = shutdown.cancelled(), if ending.is_none() => {}
                () = async {
                    match reconnect_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                }, if self.stream.is_none() => {}
            }
        }
        // Whatever the stream still holds (items pushed after a shutdown) is
        // released by the server when it ends: cleanly, so with no attempt.
        if let Some(stream) = self.stream.take() {
            stream.close(CLOSE_WITHIN).await;
        }
        ending.unwrap_or(Ok(StopReason::Drained))
    }

    /// Starts an item's handler: polled once here while handlers answer
    /// quickly (no task for one that answers at once); once
    /// [`SLOW_POLLS_TO_SPAWN`] first polls in a row take longer than
    /// [`INLINE_AT_MOST`], in a task each, so that slow handlers run side by
    /// side and do not hold up the loop.
    fn start<H, Fut>(&mut self, handler: Arc<H>, job: Job) -> Started
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), WorkError>> + Send + 'static,
    {
        if !self.inline {
            return start_streamed_item(handler, job, false);
        }
        let began = std::time::Instant::now();
        let started = start_streamed_item(handler, job, true);
        if began.elapsed() <= INLINE_AT_MOST {
            self.slow_in_a_row = 0;
        } else {
            // One slow poll may be the thread preempted; several in a row
            // are the handler.
            self.slow_in_a_row += 1;
            if self.slow_in_a_row >= SLOW_POLLS_TO_SPAWN {
                tracing::debug!(queue = %self.queue.name(), "handlers' first polls are slow: each item runs in a task of its own from now on");
                self.inline = false;
            }
        }
        started
    }

    /// Items more the loop can take: free slots and prefetch, less what it
    /// holds or was promised, within `max_items`.
    fn room(&self, running: usize) -> usize {
        let window = self.opts.concurrency + self.opts.prefetch;
        let have = running + self.waiting.len() + self.open_credit;
        let mut room = window.saturating_sub(have);
        if let Some(max) = self.opts.max_items {
            let taken = self.summary.leased as usize + self.waiting.len() + self.open_credit;
            room = room.min(
                usize::try_from(max)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(taken),
            );
        }
        room
    }

    /// Takes in one message of the stream. Items that come once the loop
    /// takes no more work are released at once.
    async fn event(&mut self, event: WorkEvent, ending: bool) -> Result<()> {
        if let Some(answer) = event.answer {
            self.answer(answer)?;
        }
        self.open_credit = self.open_credit.saturating_sub(event.items.len());
        if ending {
            release_untried(self.queue, event.items).await;
        } else {
            let now = Instant::now();
            for item in event.items {
                self.held.insert(
                    item.token.clone(),
                    Held {
                        lost: Arc::default(),
                        renewed: now,
                        item: std::hash::BuildHasher::hash_one(
                            &rustc_hash::FxBuildHasher,
                            &item.id,
                        ),
                    },
                );
                self.waiting.push_back(item);
            }
        }
        if event.drained {
            self.drained = true;
        }
        Ok(())
    }

    /// An item task ended.
    fn task_done(
        &mut self,
        r: std::result::Result<(Id, (LeaseToken, Done)), tokio::task::JoinError>,
    ) {
        let (token, done) = match r {
            Ok((id, done)) => {
                self.running.remove(&id);
                done
            }
            Err(e) => {
                // Handler panics are caught in the task; this is a panic in
                // the SDK itself. The lease runs out and the item comes back.
                tracing::error!(error = %e, "item task ended abnormally");
                if let Some(t) = self.running.remove(&e.id()) {
                    self.held.remove(&t);
                }
                self.summary.add(ItemOutcome::Lost);
                return;
            }
        };
        match done {
            Done::Complete => {
                self.pending_since.get_or_insert_with(Instant::now);
                self.to_complete.push((token, false));
            }
            Done::Finished(outcome) => {
                self.held.remove(&token);
                self.summary.add(outcome);
            }
        }
    }

    /// The server ended the stream cleanly after saying the queue drained.
    /// It answers every message it read before it ends, and reads none
    /// after deciding to: a message it did not answer (a completion sent as
    /// it ended — of a stale lease, since the queue drained) was not read,
    /// so it goes again on another stream as it was, not as one in doubt.
    /// Otherwise the loop would wait for its answer forever.
    fn end_drained_stream(&mut self) {
        self.stream = None;
        self.take_back_unanswered(false);
    }

    /// The stream is gone (`why`): what it held is the server's again.
    fn lose_stream(&mut self, why: &Error) {
        if self.stream.take().is_none() {
            return;
        }
        tracing::warn!(queue = %self.queue.name(), error = %why, "work stream lost; opening another");
        for item in self.waiting.drain(..) {
            self.held.remove(&item.token);
        }
        self.take_back_unanswered(true);
    }

    /// After a stream ended: no credit is open on it, and the completions
    /// of its unanswered messages go again on the next — as in doubt
    /// (`in_doubt`: the server may have done them) or as they were.
    fn take_back_unanswered(&mut self, in_doubt: bool) {
        self.open_credit = 0;
        for (_, sent) in self.sent.drain() {
            self.to_complete.extend(
                sent.complete
                    .into_iter()
                    .map(|(t, before)| (t, before || in_doubt)),
            );
        }
        if !self.to_complete.is_empty() {
            self.pending_since.get_or_insert_with(Instant::now);
        }
        self.completions_in_flight = 0;
    }
}
