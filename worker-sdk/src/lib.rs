//! The workq worker SDK: a client for workq queues and a worker loop.
//!
//! Connect by URL — the scheme names the backend: `grpc://host:port` for the workq
//! queue service, `redis://host:port` for a queue laid out as the Kubernetes
//! tutorial's `rediswq.py` lays it out (module `backend::redis`), `amqp://…` for a
//! RabbitMQ queue (module `backend::amqp`) — then work with one
//! [`Queue`]:
//!
//! - **low level**: [`Queue::push`], [`Queue::lease`], [`Queue::renew`],
//!   [`Queue::complete`], [`Queue::fail`], [`Queue::release`], [`Queue::stats`],
//!   [`Queue::watch`], [`Queue::seal`], [`Queue::dead`], [`Queue::requeue_dead`],
//!   [`Queue::create`], [`Queue::update`], [`Queue::purge`], [`Queue::delete`],
//!   [`Client::list_queues`], [`Client::server_info`];
//!   [`Queue::hold`] wraps a leased item in a [`LeaseHandle`] that renews it;
//! - **high level**: [`Queue::work`], a worker loop (on the queue service, on
//!   one `Work` stream) that runs up to N items at once,
//!   renews their leases, completes or fails each by what the handler answers,
//!   stops taking work on SIGTERM/SIGINT and releases what it holds, and returns
//!   when the queue is drained;
//! - **[`Queue::producer`]**: a [`Producer`] pushing batch after batch on one
//!   stream, each send answered once its batch is durable, a bounded number
//!   in flight;
//! - **[`consume()`]**: the same loop running an unmodified program per item, which
//!   is what `wq consume` does.
//!
//! # Features
//! | feature | what | default |
//! |---|---|---|
//! | `grpc` | the `grpc://` backend (the workq queue service) | yes |
//! | `redis` | the `redis://` backend | no |
//! | `amqp` | the `amqp://` backend | no |
//! | `cli` | the `wq` binary and `worker_sdk::cli` (clap and friends), with every backend | no |
//!
//! A library that needs only the queue service takes the default: no Redis or
//! AMQP client, no clap. A URL whose backend is not compiled in is refused
//! with [`Error::UnsupportedScheme`].
//!
//! # Example
//!
//! Fill a queue, seal it, and work it until it is drained:
//!
//! ```
//! use worker_sdk::{WorkError, WorkerOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = queue_server::start(queue_server::ServerConfig::memory()).await?;
//! # let url = format!("grpc://{}", server.grpc_addr());
//! let client = worker_sdk::connect(&url).await?;
//! let queue = client.queue("squares")?;
//! queue.push((1..=10).map(|n| n.to_string())).await?;
//! queue.seal().await?;
//!
//! let summary = queue
//!     .work(WorkerOptions::default().concurrency(4), |job| async move {
//!         let text = std::str::from_utf8(job.payload())
//!             .map_err(|e| WorkError::fatal(format!("payload is not text: {e}")))?;
//!         let n: u64 = text.parse()?; // any error: retriable
//!         println!("{n}² = {}", n * n);
//!         Ok(())
//!     })
//!     .await?;
//! assert_eq!(summary.completed, 10);
//! assert!(queue.stats().await?.drained);
//! # server.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//! - **At least once.** An item leaves the queue only when a handler (or program)
//!   succeeded and the completion was acknowledged; a worker that dies mid-item
//!   loses it only until its lease expires.
//! - **Fenced.** A lease that expired or moved on is refused
//!   ([`Error::LeaseLost`], whose [`LeaseLostReason`] says what became of it): a
//!   paused worker cannot complete an item that someone else now holds.
//! - **No committed finish reported lost, no retried push added twice.**
//!   Complete, fail and release are retried when their answer did not come (they
//!   are idempotent on the queue service), and a retry's refusal that shows the
//!   first try did it is a success; each Enqueue call carries a `request_id`, so
//!   its retry adds nothing (while the server runs; across a restart only
//!   idempotency keys protect). `docs/worker-sdk.md`, "Errors and what to do",
//!   has the rules.
//! - **Graceful stop.** On SIGTERM/SIGINT nothing new is taken, and what is not
//!   finished within the grace period is released (back at once, no attempt
//!   counted).
//!
//! # Errors
//! Every call returns [`Result`], whose [`Error`] names what failed, decided by
//! the reason the server gave (its `google.rpc.ErrorInfo`), not by which call
//! failed; [`Error::is_transient`] tells whether trying again may help. The worker loop
//! and [`LeaseHandle`] retry transient errors with back-off by themselves.
//!
//! # Layout
//! | module | what |
//! |---|---|
//! | [`client`] | [`Client`] and [`Queue`]: one call per operation of the contract |
//! | [`lease`] | [`LeaseHandle`]: a held item whose lease renews itself |
//! | [`worker`] | [`Queue::work`], its options, [`Job`], [`WorkError`], [`WorkSummary`] |
//! | [`mod@consume`] | running a program per item: what `wq consume` is |
//! | `cli` | `wq consume`'s flags as a clap `Args`, and running them (feature `cli`) |
//! | [`mod@producer`] | [`Producer`]: batches pushed on an `EnqueueStream`, with back-pressure |
//! | [`ack`] | [`ack::Acker`]: completions batched in the background |
//! | [`retry`] | [`retry::Backoff`]: the one back-off, on tokio's clock |
//! | [`backend`] | the seam between the SDK and the systems that hold queues |
//! | [`types`] | validated names and plain-data views of the wire messages |
//! | [`error`] | [`Error`] |

pub mod ack;
pub mod backend;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod consume;
pub mod credentials;
pub mod error;
mod finish;
pub mod lease;
pub mod producer;
mod random;
pub mod retry;
pub mod types;
pub mod worker;

pub use backend::{QueueUrl, Scheme};
pub use client::{Client, Queue};
pub use consume::{ConsumeOptions, ConsumeReport, consume};
pub use credentials::ConnectOptions;
pub use error::{Error, LeaseLostReason, Result};
pub use lease::LeaseHandle;
pub use producer::Producer;
pub use types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, NewItem, Page, Pushed,
    QueueInfo, QueueName, QueueSettings, QueueState, RequeueDead, ServerInfo, Stats,
};
pub use worker::{Disposition, Job, StopReason, WorkError, WorkSummary, WorkerOptions};

/// Connects to the queue backend `url` names (`grpc://host:port`,
/// `redis://host:port`, `amqp://user:pass@host:port/vhost`).
///
/// Fails at once with [`Error::Unreachable`] when nothing answers, with
/// [`Error::UnsupportedScheme`] for a backend this build does not have, and
/// with [`Error::InvalidUrl`] for anything that is not a queue URL.
pub async fn connect(url: &str) -> Result<Client> {
    Client::connect(url).await
}
