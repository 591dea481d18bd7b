//! Security settings that change while the server runs, against a real
//! server (in-process, on real ports): the cluster's signing keys fetched
//! from a JWKS URL and rotated; TLS on the HTTP port with the gRPC port's
//! certificate; a Work stream whose `consume` grant is withdrawn.

#![allow(missing_docs)]

#[path = "common/pki.rs"]
mod pki;

use pki::{Ca, ca, leaf, now, sa_token, signer};
use queue_server::auth::AuthConfig;
use queue_server::auth::jwks_fetch::JwksSource;
use queue_server::{RunningServer, ServerConfig};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_client::QueueServiceClient;

const ISSUER: &str = "https://kubernetes.default.svc";
const RELOAD: Duration = Duration::from_millis(50);

async fn eventually<F: Future<Output = bool>>(mut cond: impl FnMut() -> F, what: &str) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 10 s: {what}");
}

/// Writes a server certificate signed by `ca` and its key into `dir`.
fn server_cert(dir: &Path, ca: &Ca, name: &str) -> queue_server::tls::TlsConfig {
    let (cert, key) = leaf(ca, "server", false);
    let tls = queue_server::tls::TlsConfig {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        client_ca: None,
    };
    std::fs::write(&tls.cert, cert).expect("write");
    std::fs::write(&tls.key, key).expect("write");
    tls
}

// ---- JWKS from a URL ----

/// A JWKS endpoint over HTTPS that answers only callers with its bearer
/// token, as the API server's `/openid/v1/jwks` does.
struct JwksEndpoint {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_endpoint(dir: &Path, ca: &Ca, token: &'static str) -> JwksEndpoint {
    let tls = server_cert(dir, ca, "jwks");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        queue_server::tls::server_config(&tls, &[b"http/1.1"]).expect("tls"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let body = Arc::new(Mutex::new(String::new()));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (b, f) = (body.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, b, f) = (acceptor.clone(), b.clone(), f.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).to_lowercase();
                let (status, text) = if req.starts_with("get /openid/v1/jwks ")
                    && req.contains(&format!("authorization: bearer {token}\r\n"))
                {
                    f.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", b.lock().expect("lock").clone())
                } else {
                    ("401 Unauthorized", "{}".to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    JwksEndpoint {
        url: format!("https://localhost:{port}/openid/v1/jwks"),
        body,
        fetches,
    }
}

const SA_GRANTS: &str = r#"
- name: jobs
  serviceaccounts: [{namespace: jobs, name: "*"}]
  grants: [{verbs: [read], queues: ["*"]}]
"#;

async fn server_fetching(dir: &Path, source: JwksSource) -> RunningServer {
    let grants = dir.join("grants.yaml");
    std::fs::write(&grants, SA_GRANTS).expect("write");
    queue_server::start(ServerConfig {
        auth: AuthConfig {
            tokens_file: Some(grants),
            jwks_url: Some(source),
            issuer: Some(ISSUER.into()),
            reload_interval: RELOAD,
            ..AuthConfig::default()
        },
        ..ServerConfig::memory()
    })
    .await
    .expect("start")
}

/// ListQueues with `token`: Ok, or the refusal's code and message.
async fn list_with(server: &RunningServer, token: &str) -> Result<(), (Code, String)> {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut req = Request::new(pb::ListQueuesRequest::default());
    let v: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
    req.metadata_mut().insert("authorization", v);
    QueueServiceClient::new(channel)
        .list_queues(req)
        .await
        .map(drop)
        .map_err(|s| (s.code(), s.message().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_from_a_jwks_url_follow_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api_ca = ca("cluster");
    let endpoint = jwks_endpoint(dir.path(), &api_ca, "reader-token").await;
    let (old, new) = (signer("key-1"), signer("key-2"));
    *endpoint.body.lock().expect("lock") = serde_json::json!({ "keys": [old.jwk] }).to_string();
    std::fs::write(dir.path().join("ca.crt"), &api_ca.pem).expect("write");
    std::fs::write(dir.path().join("sa-token"), "reader-token\n").expect("write");
    let server = server_fetching(
        dir.path(),
        JwksSource {
            ca_file: Some(dir.path().join("ca.crt")),
            token_file: Some(dir.path().join("sa-token")),
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_millis(50),
            ..JwksSource::from_flag(&endpoint.url)
        },
    )
    .await;
    assert_eq!(
        endpoint.fetches.load(Ordering::SeqCst),
        1,
        "fetched at start"
    );
    let later = now() + 600;
    let sa = ("jobs", "worker");
    list_with(&server, &sa_token(&old, ISSUER, "workq", later, sa))
        .await
        .expect("a token signed by the fetched key");
    // The issuer is still checked.
    let (code, msg) = list_with(&server, &sa_token(&old, "https://evil", "workq", later, sa))
        .await
        .expect_err("another issuer");
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("issuer"), "{msg}");
    // The cluster rotates to a new key: the first token signed by it is
    // refused, and has the keys fetched again; then it passes.
    let rotated = sa_token(&new, ISSUER, "workq", later, sa);
    *endpoint.body.lock().expect("lock") = serde_json::json!({ "keys": [new.jwk] }).to_string();
    let (code, msg) = list_with(&server, &rotated)
        .await
        .expect_err("not fetched yet");
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("not in the server's JWKS"), "{msg}");
    let s = &server;
    eventually(
        || async { list_with(s, &rotated).await.is_ok() },
        "the rotated key is fetched",
    )
    .await;
    assert_eq!(endpoint.fetches.load(Ordering::SeqCst), 2, "one fetch more");
    let (code, msg) = list_with(&server, &sa_token(&old, ISSUER, "workq", later, sa))
        .await
        .expect_err("the retired key");
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("not in the server's JWKS"), "{msg}");
    // A token of a key nobody has does not make it fetch more than every
    // min_refetch: many refusals, few fetches.
    let stranger = sa_token(&signer("key-x"), ISSUER, "workq", later, sa);
    let before = endpoint.fetches.load(Ordering::SeqCst);
    for _ in 0..20 {
        list_with(&server, &stranger)
            .await
            .expect_err("an unknown key");
    }
    let during = endpoint.fetches.load(Ordering::SeqCst) - before;
    assert!(during <= 20, "{during} fetches for 20 refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_again_periodically_and_a_failed_fetch_is_said() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api_ca = ca("cluster");
    let endpoint = jwks_endpoint(dir.path(), &api_ca, "reader-token").await;
    let key = signer("key-1");
    *endpoint.body.lock().expect("lock") = serde_json::json!({ "keys": [key.jwk] }).to_string();
    std::fs::write(dir.path().join("ca.crt"), &api_ca.pem).expect("write");
    std::fs::write(dir.path().join("sa-token"), "reader-token").expect("write");
    let periodic = JwksSource {
        ca_file: Some(dir.path().join("ca.crt")),
        token_file: Some(dir.path().join("sa-token")),
        refresh: Duration::from_millis(100),
        min_refetch: Duration::from_millis(50),
        ..JwksSource::from_flag(&endpoint.url)
    };
    let server = server_fetching(dir.path(), periodic.clone()).await;
    let f = &endpoint.fetches;
    eventually(
        || async { f.load(Ordering::SeqCst) >= 3 },
        "fetched every refresh",
    )
    .await;
    drop(server);
    // Without the endpoint's token the fetch fails, and the refusal says why.
    std::fs::write(dir.path().join("wrong-token"), "guess").expect("write");
    let server = server_fetching(
        dir.path(),
        JwksSource {
            token_file: Some(dir.path().join("wrong-token")),
            ..periodic
        },
    )
    .await;
    let token = sa_token(&key, ISSUER, "workq", now() + 600, ("jobs", "w"));
    let (code, msg) = list_with(&server, &token).await.expect_err("no keys");
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        msg.contains("signing keys are not available") && msg.contains("401"),
        "{msg}"
    );
}

// ---- TLS on the HTTP port ----

/// GET `path` over TLS trusting `ca_pem`: the status line, or the error.
async fn https_get(addr: std::net::SocketAddr, ca_pem: &str, path: &str) -> Result<String, String> {
    let connector = tokio_rustls::TlsConnector::from(pki::client_config(ca_pem, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_https_with_the_grpc_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, client_ca, wrong) = (ca("server"), ca("clients"), ca("wrong"));
    let mut tls = server_cert(dir.path(), &server_ca, "tls");
    // Mutual TLS on gRPC: the HTTP port still takes probes and scrapes that
    // present no client certificate.
    std::fs::write(dir.path().join("client-ca.crt"), &client_ca.pem).expect("write");
    tls.client_ca = Some(dir.path().join("client-ca.crt"));
    let server = queue_server::start(ServerConfig {
        tls: Some(tls),
        ..ServerConfig::memory()
    })
    .await
    .expect("start");
    let http = server.http_addr().expect("http");
    assert_eq!(
        https_get(http, &server_ca.pem, "/healthz")
            .await
            .expect("healthz"),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        https_get(http, &server_ca.pem, "/metrics")
            .await
            .expect("metrics"),
        "HTTP/1.1 200 OK"
    );
    let err = https_get(http, &wrong.pem, "/healthz")
        .await
        .expect_err("another CA");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // Plaintext gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(http).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plaintext answered");
    // A silent client holds up no probe.
    let _silent = tokio::net::TcpStream::connect(http).await.expect("connect");
    assert_eq!(
        https_get(http, &server_ca.pem, "/healthz")
            .await
            .expect("healthz"),
        "HTTP/1.1 200 OK"
    );
    // The certificate rotates on the HTTP port too.
    let new_ca = ca("new");
    let (cert, key) = leaf(&new_ca, "server", false);
    std::fs::write(dir.path().join("new.key"), key).expect("write");
    std::fs::write(dir.path().join("new.crt"), cert).expect("write");
    std::fs::rename(dir.path().join("new.key"), dir.path().join("tls.key")).expect("mv");
    std::fs::rename(dir.path().join("new.crt"), dir.path().join("tls.crt")).expect("mv");
    let pem = &new_ca.pem;
    eventually(
        || async move { https_get(http, pem, "/healthz").await.is_ok() },
        "the new certificate on the HTTP port",
    )
    .await;
}

// ---- A Work stream whose grant is withdrawn ----

fn grants(revoked_may_consume: bool) -> String {
    let verbs = if revoked_may_consume {
        "[consume, read]"
    } else {
        "[read]"
    };
    format!(
        "- name: root\n  token: root-token\n  grants: [{{verbs: [\"*\"], queues: [\"*\"]}}]\n\
         - name: revoked\n  token: revoked-token\n  grants: [{{verbs: {verbs}, queues: [\"job-*\"]}}]\n\
         - name: kept\n  token: kept-token\n  grants: [{{verbs: [consume], queues: [\"job-*\"]}}]\n"
    )
}

type Root = QueueServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(Request<()>) -> Result<Request<()>, tonic::Status>,
    >,
>;

fn root_token(mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer root-token"),
    );
    Ok(req)
}

type WorkTx = tokio::sync::mpsc::Sender<pb::WorkRequest>;

/// Opens a Work stream on `queue` with `token` and `credit`.
async fn work(
    server: &RunningServer,
    token: &str,
    queue: &str,
    credit: i32,
) -> (WorkTx, tonic::Streaming<pb::WorkResponse>) {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WorkRequest {
        queue: queue.into(),
        credit,
        ..Default::default()
    })
    .await
    .expect("send");
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let v: MetadataValue<_> = format!("Bearer {token}").parse().expect("header");
    req.metadata_mut().insert("authorization", v);
    let stream = QueueServiceClient::new(channel)
        .work(req)
        .await
        .expect("work")
        .into_inner();
    (tx, stream)
}

/// Reads pushes until `n` items arrived.
async fn items(stream: &mut tonic::Streaming<pb::WorkResponse>, n: usize) -> Vec<pb::LeasedItem> {
    let mut got = Vec::new();
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an item within 10 s")
            .expect("a message")
            .expect("not ended");
        got.extend(msg.items);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_consume_grant_ends_the_work_stream_and_releases_its_items() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("grants.yaml");
    std::fs::write(&file, grants(true)).expect("write");
    let server = queue_server::start(ServerConfig {
        auth: AuthConfig {
            tokens_file: Some(file.clone()),
            reload_interval: RELOAD,
            ..AuthConfig::default()
        },
        ..ServerConfig::memory()
    })
    .await
    .expect("start");
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut root: Root = QueueServiceClient::with_interceptor(channel, root_token);
    root.enqueue(pb::EnqueueRequest {
        queue: "job-1".into(),
        items: (0..6)
            .map(|i| pb::NewItem {
                payload: vec![i].into(),
                ..Default::default()
            })
            .collect(),
        create_queue: true,
        ..Default::default()
    })
    .await
    .expect("enqueue");
    let (_revoked_tx, mut revoked) = work(&server, "revoked-token", "job-1", 3).await;
    assert_eq!(items(&mut revoked, 3).await.len(), 3);
    let (kept_tx, mut kept) = work(&server, "kept-token", "job-1", 1).await;
    assert_eq!(items(&mut kept, 1).await.len(), 1);

    // The grants file changes: `revoked` may only read now.
    std::fs::write(&file, grants(false)).expect("write");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), revoked.message())
            .await
            .expect("the stream ends within 10 s")
        {
            Ok(Some(m)) => assert!(m.items.is_empty(), "no item after the change"),
            Ok(None) => panic!("ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert!(
        end.message().contains("consume") && end.message().contains("job-1"),
        "{}",
        end.message()
    );
    // Its three items are pending again (released when the stream ended,
    // not at their lease's expiry: the default lease is far longer than the
    // wait here), no attempt counted.
    let stats = |mut root: Root| async move {
        let s = root
            .get_queue(pb::GetQueueRequest {
                name: "job-1".into(),
            })
            .await
            .expect("get")
            .into_inner()
            .queue
            .and_then(|q| q.stats)
            .expect("stats");
        (s.pending, s.leased)
    };
    let r = &root;
    eventually(
        || async move { stats(r.clone()).await == (5, 1) },
        "three items released",
    )
    .await;
    // The stream that keeps its grant goes on: more credit, more items,
    // each on its first attempt.
    kept_tx
        .send(pb::WorkRequest {
            credit: 5,
            ..Default::default()
        })
        .await
        .expect("send");
    let more = items(&mut kept, 5).await;
    assert!(more.iter().all(|i| i.attempt == 1), "{more:?}");
}
