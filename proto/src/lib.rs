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
