//! Compiles `workq/v1/*.proto` and KEDA's `keda/externalscaler.proto` with
//! protox (no system `protoc` needed) and writes their encoded descriptor
//! sets for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["workq/v1/queue.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("workq_descriptor.bin"), fds.encode_to_vec())?;
    // `bytes` fields become `bytes::Bytes`, so payloads are shared, not copied.
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;

    // KEDA's external scaler protocol (KEDA's copy, not our contract).
    let keda = "keda/externalscaler.proto";
    println!("cargo:rerun-if-changed={keda}");
    let fds = protox::compile([keda], ["keda"])?;
    std::fs::write(
        out.join("externalscaler_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
