//! workq and Redis driven through the worker SDK, as its users run them: the
//! worker loop ([`worker_sdk::Queue::work`]: on workq one `Work` stream per
//! worker; on Redis batch leases and completions by Lua scripts, pipelined)
//! and the producer ([`worker_sdk::Queue::producer`]: on workq an
//! `EnqueueStream`).
//!
//! The latency measurement takes one item at a time with the SDK's own
//! `lease` and `complete` calls (there is no "take one" in a worker loop).

use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use worker_sdk::{Job, LeaseOptions, WorkError, WorkerOptions};

/// One SDK connection working one queue.
pub struct Conn {
    queue: worker_sdk::Queue,
    producer: worker_sdk::Producer,
}

/// Connects the SDK to `url` (`grpc://…` or `redis://…`).
async fn queue(url: &str, queue: &str) -> Result<worker_sdk::Queue> {
    let client = worker_sdk::connect(url)
        .await
        .with_context(|| format!("connect the SDK to {url}"))?;
    Ok(client.queue(queue)?)
}

impl Conn {
    /// Connects to `url` (`grpc://…` or `redis://…`).
    pub async fn connect(url: &str, name: &str) -> Result<Conn> {
        let queue = queue(url, name).await?;
        // One batch in flight per producer, as for the other systems.
        let producer = queue.producer().with_in_flight(1);
        Ok(Conn { queue, producer })
    }

    /// Creates the queue with default settings.
    pub async fn create(&mut self) -> Result<()> {
        self.queue.create(&Default::default()).await?;
        Ok(())
    }

    /// Deletes the queue, if it exists.
    pub async fn drop_queue(&mut self) -> Result<()> {
        self.queue.delete().await?;
        Ok(())
    }

    /// Sends a batch; returns once it is durable.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        self.producer.send(items).await?;
        Ok(())
    }

    /// Seals the queue: the worker loops end once it is drained.
    pub async fn seal(&mut self) -> Result<()> {
        self.queue.seal().await?;
        Ok(())
    }

    /// Leases up to `max` items with the SDK's `lease`, then completes them.
    pub async fn take(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        let leased = self
            .queue
            .lease(&LeaseOptions {
                max_items: u32::try_from(max).unwrap_or(u32::MAX),
                wait,
                ..Default::default()
            })
            .await?;
        *leased_at = crate::now_ns();
        if !leased.items.is_empty() {
            let tokens: Vec<_> = leased.items.iter().map(|i| i.token.clone()).collect();
            self.queue.complete(&tokens).await?;
        }
        Ok(leased.items.into_iter().map(|i| i.payload).collect())
    }
}

/// Works `name` at `url` with `consumers` worker loops (each on a connection
/// of its own, `batch` items at once and `batch` prefetched) until the queue
/// is drained; checks that `items` were handled.
pub async fn consume(
    url: &str,
    name: &str,
    items: u64,
    batch: usize,
    consumers: usize,
) -> Result<()> {
    let handled = Arc::new(AtomicU64::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..consumers {
        let q = queue(url, name).await?;
        let handled = handled.clone();
        loops.spawn(async move {
            let opts = WorkerOptions::default()
                .concurrency(batch)
                .prefetch(batch)
                .lease(Duration::from_secs(60))
                .poll_wait(Duration::from_millis(100))
                .handle_signals(false);
            q.work(opts, move |_job: Job| {
                handled.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<(), WorkError>(()))
            })
            .await
        });
    }
    while let Some(r) = loops.join_next().await {
        let summary = r??;
        anyhow::ensure!(summary.lost == 0, "a worker lost items: {summary:?}");
    }
    let n = handled.load(Ordering::Relaxed);
    anyhow::ensure!(n >= items, "worker loops handled {n} of {items} items");
    Ok(())
}
