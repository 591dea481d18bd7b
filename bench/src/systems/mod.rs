//! One workload driver per system, with the same operations: create and drop
//! a queue, enqueue a batch, lease-and-complete up to a batch (waiting a
//! little for the first item), seal where the system can.
//!
//! Each speaks its system's own protocol the way its users do:
//!
//! | module | system |
//! |---|---|
//! | [`sdk`] | workq or Redis through the worker SDK (worker loop, producer): what users run |
//! | [`workq`] | workq over gRPC, unary or streaming ([`AckMode`]): the raw modes |
//! | [`redis`] | Redis with the tutorial's `rediswq.py` protocol |
//! | [`amqp`] | RabbitMQ, persistent messages, confirms, manual acks |
//! | [`nats`] | NATS JetStream, a work-queue stream and a pull consumer |

pub mod amqp;
pub mod nats;
pub mod redis;
pub mod sdk;
pub mod workq;

use anyhow::Result;
use std::time::Duration;

pub use workq::AckMode;

/// A system `--systems` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SystemName {
    /// workq, memory store.
    WorkqMemory,
    /// workq, embedded (durable) store.
    WorkqEmbedded,
    /// Redis, rediswq protocol.
    Redis,
    /// Redis at its best: the worker SDK's own Redis backend (Lua batch
    /// lease and complete, pipelined).
    RedisSdk,
    /// RabbitMQ.
    Amqp,
    /// NATS JetStream.
    Nats,
}

impl SystemName {
    /// The name as written on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SystemName::WorkqMemory => "workq-memory",
            SystemName::WorkqEmbedded => "workq-embedded",
            SystemName::Redis => "redis",
            SystemName::RedisSdk => "redis-sdk",
            SystemName::Amqp => "amqp",
            SystemName::Nats => "nats",
        }
    }
}

/// Which system, and where it is.
#[derive(Debug, Clone)]
pub enum System {
    /// workq over gRPC at this URL (`http://host:port`), driven this way.
    Workq(String, AckMode),
    /// Redis at this URL, rediswq layout.
    Redis(String),
    /// Through the worker SDK at this URL (`grpc://…` or `redis://…`).
    Sdk(String),
    /// RabbitMQ at this AMQP URL.
    Amqp(String),
    /// NATS JetStream at this address.
    Nats(String),
}

/// One connection to a system, for one queue. (Few exist, and each lives
/// for a whole measurement: the size difference of the variants is moot.)
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// workq.
    Workq(workq::Conn),
    /// Redis.
    Redis(redis::Conn),
    /// Through the worker SDK.
    Sdk(sdk::Conn),
    /// RabbitMQ.
    Amqp(amqp::Conn),
    /// NATS JetStream.
    Nats(nats::Conn),
}

impl System {
    /// Creates (or recreates, empty) the queue.
    pub async fn reset(&self, queue: &str) -> Result<()> {
        self.drop_queue(queue).await?;
        match self.connect(queue).await? {
            Conn::Workq(mut c) => c.create().await,
            // A Redis list exists once something is pushed.
            Conn::Redis(_) => Ok(()),
            Conn::Sdk(mut c) => c.create().await,
            Conn::Amqp(mut c) => c.create().await,
            Conn::Nats(mut c) => c.create().await,
        }
    }

    /// Removes the queue.
    pub async fn drop_queue(&self, queue: &str) -> Result<()> {
        match self.connect(queue).await? {
            Conn::Workq(mut c) => c.drop_queue().await,
            Conn::Redis(mut c) => c.drop_queue().await,
            Conn::Sdk(mut c) => c.drop_queue().await,
            Conn::Amqp(mut c) => c.drop_queue().await,
            Conn::Nats(mut c) => c.drop_queue().await,
        }
    }

    /// A new connection working `queue`.
    pub async fn connect(&self, queue: &str) -> Result<Conn> {
        Ok(match self {
            System::Workq(url, mode) => Conn::Workq(workq::Conn::connect(url, queue, *mode).await?),
            System::Redis(url) => Conn::Redis(redis::Conn::connect(url, queue).await?),
            System::Sdk(url) => Conn::Sdk(sdk::Conn::connect(url, queue).await?),
            System::Amqp(url) => Conn::Amqp(amqp::Conn::connect(url, queue).await?),
            System::Nats(addr) => Conn::Nats(nats::Conn::connect(addr, queue).await?),
        })
    }
}

impl Conn {
    /// Enqueues `items`; returns once the system acknowledged them.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        match self {
            Conn::Workq(c) => c.enqueue(items).await,
            Conn::Redis(c) => c.enqueue(items).await,
            Conn::Sdk(c) => c.enqueue(items).await,
            Conn::Amqp(c) => c.enqueue(items).await,
            Conn::Nats(c) => c.enqueue(items).await,
        }
    }

    /// Completes whatever this connection still holds (only workq defers
    /// completions).
    pub async fn finish(&mut self) -> Result<()> {
        match self {
            Conn::Workq(c) => c.finish().await,
            _ => Ok(()),
        }
    }

    /// Whether this connection holds leases it has not completed yet.
    pub fn holds(&self) -> bool {
        match self {
            Conn::Workq(c) => c.holds(),
            _ => false,
        }
    }

    /// Says no more items will come, where the system can (workq's seal:
    /// waiting consumers answer at once when the queue is drained).
    pub async fn seal(&mut self) -> Result<()> {
        match self {
            Conn::Workq(c) => c.seal().await,
            Conn::Sdk(c) => c.seal().await,
            _ => Ok(()),
        }
    }

    /// Leases up to `max` items, waiting up to `wait` for the first, and
    /// completes them (workq may hand the completion in later, see
    /// [`Conn::finish`]). Returns their payloads and when the lease answered
    /// (ns since the Unix epoch), before the completion.
    pub async fn take(&mut self, max: usize, wait: Duration) -> Result<(Vec<Vec<u8>>, u64)> {
        let mut leased_at = 0;
        let items = match self {
            Conn::Workq(c) => c.take(max, wait, &mut leased_at).await?,
            Conn::Redis(c) => c.take(wait, &mut leased_at).await?,
            Conn::Sdk(c) => c.take(max, wait, &mut leased_at).await?,
            Conn::Amqp(c) => c.take(max, wait, &mut leased_at).await?,
            Conn::Nats(c) => c.take(max, wait, &mut leased_at).await?,
        };
        Ok((items, leased_at))
    }
}
