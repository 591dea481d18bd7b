//! RabbitMQ: a durable queue, persistent messages published with publisher
//! confirms, consumed with manual acks and a prefetch of the batch size.

use anyhow::{Context, Result};
use futures::StreamExt;
use std::time::Duration;

/// One channel working one queue.
pub struct Conn {
    channel: lapin::Channel,
    queue: String,
    consumer: Option<lapin::Consumer>,
}

fn name(s: &str) -> lapin::types::ShortString {
    s.into()
}

impl Conn {
    /// Connects to the RabbitMQ at `url` and opens a confirming channel.
    pub async fn connect(url: &str, queue: &str) -> Result<Conn> {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .with_context(|| format!("connect to RabbitMQ at {url}"))?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(Default::default()).await?;
        Ok(Conn {
            channel,
            queue: queue.into(),
            consumer: None,
        })
    }

    /// Declares the queue, durable.
    pub async fn create(&mut self) -> Result<()> {
        self.channel
            .queue_declare(
                name(&self.queue),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes the queue, if it exists.
    pub async fn drop_queue(&mut self) -> Result<()> {
        let _ = self
            .channel
            .queue_delete(name(&self.queue), Default::default())
            .await;
        Ok(())
    }

    /// Publishes `items` persistent and waits for every confirm.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        let mut confirms = Vec::with_capacity(items.len());
        for p in &items {
            confirms.push(
                self.channel
                    .basic_publish(
                        name(""),
                        name(&self.queue),
                        Default::default(),
                        p,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
        Ok(())
    }

    /// Takes up to `max` deliveries (waiting up to `wait` for the first) and
    /// acks them with one `multiple` ack.
    pub async fn take(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        if self.consumer.is_none() {
            self.channel
                .basic_qos(u16::try_from(max).unwrap_or(u16::MAX), Default::default())
                .await?;
            self.consumer = Some(
                self.channel
                    .basic_consume(
                        name(&self.queue),
                        name(&uuid::Uuid::new_v4().to_string()),
                        Default::default(),
                        Default::default(),
                    )
                    .await?,
            );
        }
        let Some(c) = self.consumer.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut last = None;
        let first = tokio::time::timeout(wait.max(Duration::from_millis(1)), c.next()).await;
        let mut next = match first {
            Ok(Some(d)) => Some(d),
            _ => return Ok(out),
        };
        *leased_at = crate::now_ns();
        while let Some(d) = next.take() {
            let d = d?;
            last = Some(d.acker.clone());
            out.push(d.data);
            if out.len() >= max {
                break;
            }
            next = match futures::FutureExt::now_or_never(c.next()) {
                Some(Some(d)) => Some(d),
                _ => None,
            };
        }
        if let Some(acker) = last {
            acker
                .ack(lapin::options::BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(out)
    }
}
