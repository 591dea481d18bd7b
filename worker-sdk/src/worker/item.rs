//! One item's task: run the handler, then complete, fail or release the item
//! (on a `Work` stream: hand the completion to the loop);
//! and the shutdown plumbing the loop shares with those tasks.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::job::{Disposition, Job, Lost, WorkError};
use super::summary::ItemOutcome;
use crate::ack::Acker;
use crate::client::Queue;
use crate::error::{Error, Result};
use crate::finish::{FinishKind, Finished, finish_retrying};
use crate::types::{Failure, ItemId, LeaseToken, LeasedItem};
use tokio::time::Instant;

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches SIGTERM and SIGINT: the first cancels `shutdown`, the next `hard_stop`.
pub(super) fn spawn_signal_watch(
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
pub(super) async fn release_untried(queue: &Queue, items: Vec<LeasedItem>) {
    if items.is_empty() {
        return;
    }
    let tokens: Vec<_> = items.iter().map(|i| i.token.clone()).collect();
    if let Err(e) = queue.release(&tokens).await {
        tracing::warn!(queue = %queue.name(), error = %e, "could not release untried items; they return when their lease expires");
    }
}

/// The outcome of a finished item task.
pub(super) fn joined(r: std::result::Result<ItemOutcome, tokio::task::JoinError>) -> ItemOutcome {
    r.unwrap_or_else(|e| {
        // Handler panics are caught in run_item; this is a panic in the SDK itself
        // or a cancelled task. The lease runs out and the item comes back.
        tracing::error!(error = %e, "item task ended abnormally");
        ItemOutcome::Lost
    })
}

/// The two stages of a shutdown, as an item task sees them.
pub(super) struct Stop {
    /// Take no more work; handlers may wind down.
    pub(super) shutdown: CancellationToken,
    /// The grace period is over: drop the handler, release the item.
    pub(super) hard_stop: CancellationToken,
}

/// Runs one item to its end: handler, then complete / fail / release.
pub(super) async fn run_item<H, Fut>(
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
        queue: Arc::new(queue.name().clone()),
        shutdown: Arc::new(shutdown),
        lease_lost: Lost::Token(handle.lost().clone()),
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

/// What an item task ends with.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(super) enum Done {
    /// The handler succeeded: complete it on the stream.
    Complete,
    /// Failed, released or lost, by a unary call.
    Finished(ItemOutcome),
}

/// What a handler yields, its panics caught.
type Answer = std::result::Result<(), WorkError>;

/// A handler's future, boxed to be moved into a task once polled.
type Work = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A streamed item's handler, started.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(super) enum Started {
    /// It answered in its first poll.
    Answered(Answer),
    /// It has yet to answer: run it to its end with [`finish_streamed_item`].
    Running(Work),
}

/// Calls `handler` on `job` and, when `poll_now`, polls its future once here,
/// so that a handler that answers at once needs no task of its own. A panic
/// (in the call or a poll) is the handler failing, retriably.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(super) fn start_streamed_item<H, Fut>(handler: Arc<H>, job: Job, poll_now: bool) -> Started
where
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let mut work: Work = Box::pin(async move {
        let panicked = || Err(WorkError::retry("the handler panicked"));
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler(job))) {
            Ok(f) => AssertUnwindSafe(f)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| panicked()),
            Err(_) => panicked(),
        }
    });
    if !poll_now {
        return Started::Running(work);
    }
    // The task that takes it over polls it again with its own waker.
    let mut cx = Context::from_waker(Waker::noop());
    match work.as_mut().poll(&mut cx) {
        Poll::Ready(answer) => Started::Answered(answer),
        Poll::Pending => Started::Running(work),
    }
}

/// Runs a started item to its end: waits for its handler (dropped when
/// `hard_stop` comes first), then fails or releases it by a unary call, or
/// answers that it is to be completed.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
pub(super) async fn finish_streamed_item(
    queue: Queue,
    (id, token): (ItemId, LeaseToken),
    started: Started,
    hard_stop: CancellationToken,
    lease: Duration,
) -> Done {
    let answer = match started {
        Started::Answered(answer) => Some(answer),
        Started::Running(work) => tokio::select! {
            biased;
            r = work => Some(r),
            () = hard_stop.cancelled() => None,
        },
    };
    let what = format!("item {id}");
    let give_up = Instant::now() + lease.max(workq_proto::defaults::LEASE);
    let tokens = [token];
    let release = || async {
        finish_retrying(FinishKind::Release, &what, give_up, || {
            queue.release(&tokens)
        })
        .await
        .map(|_| ItemOutcome::Released)
    };
    let finished = match answer {
        Some(Ok(())) => return Done::Complete,
        None => {
            tracing::info!(item = %id, "grace period over: releasing");
            release().await
        }
        Some(Err(e)) => match e.disposition {
            Disposition::Release => release().await,
            Disposition::Retry { after } => {
                tracing::warn!(queue = %queue.name(), item = %id, reason = %e.reason, "item failed (retriable)");
                let failure = Failure {
                    fatal: false,
                    reason: e.reason,
                    retry_after: after,
                };
                fail(&queue, &tokens, failure, &what, give_up).await
            }
            Disposition::Fatal => {
                tracing::warn!(queue = %queue.name(), item = %id, reason = %e.reason, "item failed (fatal)");
                fail(&queue, &tokens, Failure::fatal(e.reason), &what, give_up).await
            }
        },
    };
    Done::Finished(finished.unwrap_or_else(|e| {
        tracing::warn!(item = %id, error = %e, "could not finish item");
        ItemOutcome::Lost
    }))
}

/// Fails `tokens` (one item), retrying as a lease handle does.
#[cfg_attr(not(feature = "grpc"), allow(dead_code))]
async fn fail(
    queue: &Queue,
    tokens: &[LeaseToken; 1],
    failure: Failure,
    what: &str,
    give_up: Instant,
) -> Result<ItemOutcome> {
    let fatal = failure.fatal;
    let kind = if fatal {
        FinishKind::FailFatal
    } else {
        FinishKind::FailRetry
    };
    let done = finish_retrying(kind, what, give_up, || queue.fail(tokens, &failure)).await?;
    let dead = match done {
        Finished::Answered(dead) => dead > 0,
        Finished::Anyway { dead } => dead,
    };
    Ok(ItemOutcome::Failed { fatal, dead })
}
