//! Server reflection in both versions against the real binary: a client of
//! `grpc.reflection.v1` and one of `grpc.reflection.v1alpha` (what Python's
//! stock `grpcio-reflection`, older grpcurl, Postman and Evans speak) list
//! the same services, and v1alpha resolves a file by symbol.

mod common;

use common::ServerProcess;
use std::collections::BTreeSet;
use tonic_reflection::pb::{v1, v1alpha};

const EXPECTED: [&str; 5] = [
    "workq.v1.QueueService",
    "grpc.health.v1.Health",
    "externalscaler.ExternalScaler",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn channel(server: &ServerProcess) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn list_v1(server: &ServerProcess) -> BTreeSet<String> {
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel(server).await);
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let msg = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    match msg.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("v1: not a service list: {other:?}"),
    }
}

async fn v1alpha_client(
    server: &ServerProcess,
) -> v1alpha::server_reflection_client::ServerReflectionClient<tonic::transport::Channel> {
    v1alpha::server_reflection_client::ServerReflectionClient::new(channel(server).await)
}

async fn ask_v1alpha(
    server: &ServerProcess,
    req: v1alpha::server_reflection_request::MessageRequest,
) -> v1alpha::server_reflection_response::MessageResponse {
    let mut c = v1alpha_client(server).await;
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(req),
    };
    let mut answers = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let msg = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    msg.message_response.expect("a response")
}

#[tokio::test]
async fn v1_and_v1alpha_list_every_service() {
    let server = ServerProcess::memory();
    let v1 = list_v1(&server).await;
    let v1alpha = match ask_v1alpha(
        &server,
        v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await
    {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l) => l
            .service
            .into_iter()
            .map(|s| s.name)
            .collect::<BTreeSet<_>>(),
        other => panic!("v1alpha: not a service list: {other:?}"),
    };
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| (*s).to_string()).collect();
    assert_eq!(v1, expected, "services through v1");
    assert_eq!(v1alpha, expected, "services through v1alpha");
}

#[tokio::test]
async fn v1alpha_resolves_the_contract_by_symbol() {
    let server = ServerProcess::memory();
    let answer = ask_v1alpha(
        &server,
        v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "workq.v1.QueueService".into(),
        ),
    )
    .await;
    let v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files) =
        answer
    else {
        panic!("v1alpha: no file descriptor: {answer:?}");
    };
    use prost::Message;
    let names: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| {
            prost_types::FileDescriptorProto::decode(b.as_slice())
                .expect("a file descriptor")
                .name()
                .to_string()
        })
        .collect();
    assert!(
        names.iter().any(|n| n == "workq/v1/queue.proto"),
        "files: {names:?}"
    );
}

/// What Python's stock `grpcio-reflection` client (which speaks v1alpha)
/// sees: the services, and the contract's file by symbol.
const PYTHON_CLIENT: &str = r#"
import sys, grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(sys.argv[1]))
for s in db.get_services():
    print("service", s)
print("file", db.FindFileContainingSymbol("workq.v1.QueueService").name)
"#;

#[test]
fn pythons_stock_grpcio_reflection_sees_every_service() {
    if !workq_testkit::python_module(
        "grpc_reflection",
        "pip install grpcio-reflection (.ci/run installs it)",
    ) {
        return;
    }
    let server = ServerProcess::memory();
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON_CLIENT, &server.grpc.to_string()])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in EXPECTED {
        assert!(
            text.lines().any(|l| l == format!("service {s}")),
            "{s} not listed:\n{text}"
        );
    }
    assert!(text.contains("file workq/v1/queue.proto"), "{text}");
}
