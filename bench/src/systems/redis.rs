//! Redis driven with the Kubernetes tutorial's `rediswq.py` protocol:
//! `RPUSH`; `BRPOPLPUSH` into `Q:processing` plus a `SETEX` lease key; then
//! `LREM` + `DEL` to complete. It has no batch lease, so it takes one item
//! per round trip.

use anyhow::{Context, Result};
use std::time::Duration;
use worker_sdk::backend::redis::{Keys, item_digest};

/// One connection working one queue.
pub struct Conn {
    conn: redis::aio::MultiplexedConnection,
    keys: Keys,
    session: String,
}

impl Conn {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str, queue: &str) -> Result<Conn> {
        Ok(Conn {
            // No response timeout: BRPOPLPUSH blocks for whole seconds.
            conn: redis::Client::open(url)?
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                )
                .await
                .with_context(|| format!("connect to Redis at {url}"))?,
            keys: Keys::new(&worker_sdk::QueueName::new(queue)?),
            session: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Removes the queue's lists.
    pub async fn drop_queue(&mut self) -> Result<()> {
        redis::cmd("DEL")
            .arg(&self.keys.main)
            .arg(&self.keys.processing)
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(())
    }

    /// `RPUSH`es `items`.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        redis::cmd("RPUSH")
            .arg(&self.keys.main)
            .arg(items)
            .query_async::<()>(&mut self.conn)
            .await?;
        Ok(())
    }

    /// rediswq's `lease()` then `complete()` of one item.
    pub async fn take(&mut self, wait: Duration, leased_at: &mut u64) -> Result<Vec<Vec<u8>>> {
        let Conn {
            conn,
            keys,
            session,
        } = self;
        // BRPOPLPUSH takes whole seconds.
        let (queue, processing) = (&keys.main, &keys.processing);
        let item: Option<Vec<u8>> = if wait.is_zero() {
            redis::cmd("RPOPLPUSH")
                .arg(queue)
                .arg(processing)
                .query_async(conn)
                .await?
        } else {
            redis::cmd("BRPOPLPUSH")
                .arg(queue)
                .arg(processing)
                .arg(wait.as_secs().max(1))
                .query_async(conn)
                .await?
        };
        let Some(item) = item else {
            return Ok(Vec::new());
        };
        let key = keys.lease(&item_digest(&item));
        *leased_at = crate::now_ns();
        redis::cmd("SETEX")
            .arg(&key)
            .arg(60)
            .arg(&*session)
            .query_async::<()>(conn)
            .await?;
        // rediswq.complete()
        redis::cmd("LREM")
            .arg(processing)
            .arg(0)
            .arg(&item)
            .query_async::<()>(conn)
            .await?;
        redis::cmd("DEL").arg(&key).query_async::<()>(conn).await?;
        Ok(vec![item])
    }
}
