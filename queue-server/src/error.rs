//! The engine's one error type. The gRPC adapter maps each variant to a
//! status code in exactly one place (`grpc::status`).

use crate::names::{LeaseToken, QueueName};

/// What went wrong, or why a call was refused. Nothing changed when a call
/// returns an error — except after [`Error::Store`]: the change was made in
/// memory but is not durable, and every later change is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call's arguments are malformed or out of bounds; the message names
    /// the argument and the bound.
    #[error("{0}")]
    InvalidArgument(String),
    /// No queue has this name.
    #[error("queue {0} not found: create it first (wq push creates it, or CreateQueue)")]
    QueueNotFound(QueueName),
    /// The queue exists with other settings.
    #[error(
        "queue {0} already exists with different settings: delete it first or use its settings"
    )]
    QueueExists(QueueName),
    /// Enqueue into a sealed queue.
    #[error("queue {0} is sealed: no more items can be added to it (create a new queue)")]
    Sealed(QueueName),
    /// A lease token whose lease expired, was released, or moved on.
    #[error("lease {token} is no longer held: {why}")]
    StaleLease {
        /// The refused token.
        token: LeaseToken,
        /// What happened to the lease.
        why: &'static str,
    },
    /// The store could not persist a change; the server refuses every
    /// further call (UNAVAILABLE), reports NOT_SERVING and exits, to be
    /// restarted on what is durable.
    #[error(
        "the store failed ({0}): this server takes no more calls and restarts on what is durable; \
         retry on the restarted server (free disk space if the disk is full)"
    )]
    Store(#[from] crate::store::StoreError),
    /// A server-wide resource limit is reached; the message names the limit
    /// and the setting that raises it.
    #[error("{0}")]
    Exhausted(String),
    /// The server is stopping and takes no new calls.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
