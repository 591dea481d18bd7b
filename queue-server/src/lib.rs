//! The workq queue service: queues of items with fenced leases, exact
//! counters and completion tracking, served over gRPC (`workq.v1`).
//!
//! # Layout
//! - [`names`], [`settings`], [`item`], [`counters`]: the domain's types;
//!   [`item_table`]: where a queue keeps its items.
//! - [`queue`]: one queue's item state machine — the only code that changes
//!   item state; [`journal`]: the changes it made, for the store.
//! - [`engine`]: every queue, their locks, waiters and timers, and the store;
//!   [`clock`]: the time it reads, which tests pause.
//! - [`store`]: persistence (`memory`, and the durable `embedded` default).
//! - [`grpc`]: the thin gRPC adapter; [`server`]: ports, health, metrics,
//!   shutdown.
//!
//! # Starting a server in-process
//! ```no_run
//! # async fn run() -> Result<(), queue_server::ServerError> {
//! let server = queue_server::start(queue_server::ServerConfig::memory()).await?;
//! println!("serving on {}", server.grpc_addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod clock;
pub mod counters;
pub mod engine;
pub mod enqueue_stream;
pub mod error;
pub mod grpc;
pub mod item;
pub mod item_table;
pub mod journal;
pub mod names;
pub mod queue;
pub mod server;
pub mod settings;
pub mod store;
pub mod work_stream;

pub use engine::Engine;
pub use error::{Error, Result};
pub use server::{RunningServer, ServerConfig, ServerError, StoreKind, start, start_with_store};
