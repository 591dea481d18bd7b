//! gRPC server reflection in both versions clients speak: `grpc.reflection.v1`
//! (grpcurl, current grpcio) and `grpc.reflection.v1alpha` (Python's stock
//! `grpcio-reflection`, older grpcurl, Postman, Evans). Both describe every
//! service the port serves, the two reflection services included.

use crate::server::ServerError;
use tonic_reflection::server::{Builder, v1, v1alpha};

/// Every descriptor set the gRPC port serves, but the reflection services'
/// own (each builder adds its version's; the other is added here).
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(workq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(workq_proto::externalscaler::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The v1 and v1alpha reflection services.
pub fn services() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    ServerError,
> {
    let err = |e: tonic_reflection::server::Error| ServerError::Task(format!("reflection: {e}"));
    let v1 = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(err)?;
    let v1alpha = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(err)?;
    Ok((v1, v1alpha))
}
