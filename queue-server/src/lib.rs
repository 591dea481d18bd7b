//! The workq queue service: queues of items with fenced leases, exact
//! counters and completion tracking, served over gRPC (`workq.v1`).
//!
//! # Layout
//! - [`names`], [`settings`], [`item`], [`counters`]: the domain's types;
//!   [`item_table`]: where a queue keeps its items.
//! - [`queue`]: one queue's item state machine — the only code that changes
//!   item state; [`journal`]: the changes it made, for the store.
//! - [`backend`]: what the gRPC layer talks to: the local [`engine`] or
//!   the shared PostgreSQL one;
//! - [`engine`]: every queue, their locks, waiters and timers, and the store;
//!   [`clock`]: the time it reads, which tests pause.
//! - [`store`]: persistence (`memory`, and the durable `embedded` default).
//! - [`postgres`]: the shared engine of `--store postgres`: the database is
//!   the state, any number of replicas serve it.
//! - [`grpc`]: the thin gRPC adapter (errors become reasons in one place,
//!   `grpc::rejection`); [`work_stream`], [`enqueue_stream`]: the two
//!   bidirectional streams; [`server`]: ports, health, metrics, shutdown;
//!   [`reflection`]: gRPC server reflection, v1 and v1alpha; [`keda`]: KEDA's
//!   external scaler; [`dashboard`]: the web dashboard on the HTTP port.
//!
//! # Idempotent retries
//! Each queue remembers, in memory for the idempotency window and within
//! `--max-finished-tokens` server-wide, how each item's last lease finished
//! and the answers to enqueues that named a `request_id`
//! ([`queue::recall`]): a finish retried with the token that did it answers
//! "already done" and counts nothing twice; a retried enqueue answers the
//! first call's items. This memory is not persisted: after a restart a
//! retried finish is refused with the reason that says what became of the
//! item (ITEM_COMPLETED, ITEM_DEAD, LEASE_EXPIRED), and only idempotency
//! keys deduplicate a retried enqueue.
//!
//! # Starting a server in-process
//! ```no_run
//! # async fn run() -> Result<(), queue_server::ServerError> {
//! let server = queue_server::start(queue_server::ServerConfig::memory()).await?;
//! println!("serving on {}", server.grpc_addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod backend;
pub mod clock;
pub mod counters;
pub mod dashboard;
pub mod engine;
pub mod enqueue_stream;
pub mod error;
pub mod grpc;
pub mod idle;
pub mod item;
pub mod item_table;
pub mod journal;
pub mod keda;
pub mod names;
pub mod postgres;
pub mod queue;
pub mod reflection;
pub mod server;
pub mod settings;
pub mod store;
pub mod tls;
pub mod work_stream;

pub use backend::Backend;
pub use engine::Engine;
pub use error::{Error, Result};
pub use server::{RunningServer, ServerConfig, ServerError, StoreKind, start, start_with_store};
