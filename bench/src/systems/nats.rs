//! NATS JetStream: a work-queue-retention file stream, publishes awaited for
//! their acks, a durable pull consumer fetching batches with explicit acks.

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream;
use futures::StreamExt;
use std::time::Duration;

/// The durable consumer every bench connection shares.
const CONSUMER: &str = "workers";

/// One JetStream context working one stream.
pub struct Conn {
    js: jetstream::Context,
    stream: String,
    consumer: Option<jetstream::consumer::PullConsumer>,
}

impl Conn {
    /// Connects to the NATS server at `addr`.
    pub async fn connect(addr: &str, queue: &str) -> Result<Conn> {
        let client = async_nats::connect(addr)
            .await
            .with_context(|| format!("connect to NATS at {addr}"))?;
        Ok(Conn {
            js: jetstream::new(client),
            stream: queue.into(),
            consumer: None,
        })
    }

    /// Creates the stream (subject `<stream>.items`) and its durable consumer.
    pub async fn create(&mut self) -> Result<()> {
        let stream = &self.stream;
        self.js
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{stream}.items")],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create stream: {e}"))?;
        let s = self
            .js
            .get_stream(stream.as_str())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        s.create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create consumer: {e}"))?;
        Ok(())
    }

    /// Deletes the stream, if it exists.
    pub async fn drop_queue(&mut self) -> Result<()> {
        let _ = self.js.delete_stream(self.stream.as_str()).await;
        Ok(())
    }

    /// Publishes `items` and waits for every ack.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        let subject = format!("{}.items", self.stream);
        let mut acks = Vec::with_capacity(items.len());
        for p in items {
            acks.push(
                self.js
                    .publish(subject.clone(), p.into())
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?,
            );
        }
        for a in acks {
            a.await.map_err(|e| anyhow!("publish ack: {e}"))?;
        }
        Ok(())
    }

    /// Fetches a batch of up to `max` (expiring after `wait`) and acks each.
    pub async fn take(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        if self.consumer.is_none() {
            let s = self
                .js
                .get_stream(self.stream.as_str())
                .await
                .map_err(|e| anyhow!("{e}"))?;
            self.consumer = Some(
                s.get_consumer(CONSUMER)
                    .await
                    .map_err(|e| anyhow!("get consumer: {e}"))?,
            );
        }
        let Some(c) = self.consumer.as_ref() else {
            return Ok(Vec::new());
        };
        let mut batch = c
            .batch()
            .max_messages(max)
            .expires(wait.max(Duration::from_millis(10)))
            .messages()
            .await
            .map_err(|e| anyhow!("fetch: {e}"))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow!("message: {e}"))?;
            if *leased_at == 0 {
                *leased_at = crate::now_ns();
            }
            m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
            out.push(m.message.payload.to_vec());
        }
        Ok(out)
    }
}
