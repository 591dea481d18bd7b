//! The workq wire contract, package `workq.v1`, generated from
//! `proto/workq/v1/queue.proto` at build time.
//!
//! Every client in any language is generated from that file; this crate is the
//! Rust one, shared by `queue-server` (server side) and `worker-sdk` (client side).

/// Generated messages, client and server of package `workq.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("workq.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("workq_descriptor");

/// Defaults of the contract, written once for the server and every client.
///
/// A queue created without its own settings gets these; clients that keep
/// queues elsewhere (the SDK's `redis://` and `amqp://` backends) use the same
/// numbers so that a worker behaves alike on every backend.
pub mod defaults {
    use std::time::Duration;

    /// How long a lease lasts when neither the call nor the queue names a
    /// duration.
    pub const LEASE: Duration = Duration::from_secs(30);

    /// Attempts (retriable failures and lease expiries) before an item goes dead.
    pub const MAX_ATTEMPTS: u32 = 5;

    /// Back-off after the first retriable failure, doubled for each further one.
    pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);

    /// Upper bound of the retry back-off.
    pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

    /// The largest gRPC message the server accepts or sends by default
    /// (`queue-server --max-message-bytes`); clients accept answers this large.
    pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
}
