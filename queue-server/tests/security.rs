//! Issue 13 against a real server (in-process, on real ports): every verb
//! without a credential (UNAUTHENTICATED), without its grant
//! (PERMISSION_DENIED naming verb and queue), with it (passes); a grants file
//! changed on disk; Kubernetes ServiceAccount JWTs; health open; ListQueues
//! filtered; and the lease-token guessing attack.

#![allow(missing_docs)]

#[path = "common/pki.rs"]
mod pki;

use pki::{Ca, ca, leaf, now, sa_token, signer};
use queue_server::auth::AuthConfig;
use queue_server::{RunningServer, ServerConfig};
use std::path::Path;
use std::time::Duration;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use workq_proto::v1 as pb;
use workq_proto::v1::ErrorReason;
use workq_proto::v1::queue_service_client::QueueServiceClient;

/// Adds `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| Status::internal("header"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

type Client = QueueServiceClient<InterceptedService<Channel, Bearer>>;

async fn client(server: &RunningServer, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    QueueServiceClient::with_interceptor(channel, Bearer(token.map(str::to_string)))
}

const RELOAD: Duration = Duration::from_millis(50);

async fn start(dir: &Path, grants: &str, jwks: Option<&str>) -> RunningServer {
    let tokens_file = dir.join("grants.yaml");
    std::fs::write(&tokens_file, grants).expect("write grants");
    let jwks_file = jwks.map(|j| {
        let p = dir.join("jwks.json");
        std::fs::write(&p, j).expect("write jwks");
        p
    });
    let config = ServerConfig {
        auth: AuthConfig {
            tokens_file: Some(tokens_file),
            jwks_file,
            issuer: Some(ISSUER.into()),
            metrics_auth: true,
            reload_interval: RELOAD,
            ..AuthConfig::default()
        },
        ..ServerConfig::memory()
    };
    queue_server::start(config).await.expect("start")
}

const ISSUER: &str = "https://kubernetes.default.svc";

/// One grant per verb on `job-*`, one of everything, one of nothing.
const GRANTS: &str = r#"
- name: producer
  token: produce-token
  grants: [{verbs: [produce], queues: ["job-*"]}]
- name: consumer
  token: consume-token
  grants: [{verbs: [consume], queues: ["job-*"]}]
- name: reader
  token: read-token
  grants: [{verbs: [read], queues: ["job-*"]}]
- name: admin
  token: admin-token
  grants: [{verbs: [admin], queues: ["job-*"]}]
- name: root
  token: root-token
  grants: [{verbs: ["*"], queues: ["*"]}]
- name: nobody
  token: nobody-token
- name: jobs
  serviceaccounts: [{namespace: jobs, name: "worker-*"}]
  grants: [{verbs: [read, consume], queues: ["job-*"]}]
"#;

fn reason(s: &Status) -> Option<(ErrorReason, std::collections::HashMap<String, String>)> {
    workq_proto::errors::reason(s)
}

/// A well-formed lease token that is no lease's.
fn token() -> String {
    format!("1.1.{}", "0".repeat(32))
}

/// Calls `rpc` on `queue`; Ok if the call got past authorization (it may
/// still be refused for another reason, e.g. a made-up lease token).
async fn call(c: &mut Client, rpc: &str, queue: &str) -> Result<(), Status> {
    let q = queue.to_string();
    let t = vec![token()];
    let r = match rpc {
        "CreateQueue" => c
            .create_queue(pb::CreateQueueRequest {
                name: q,
                ..Default::default()
            })
            .await
            .map(drop),
        "UpdateQueue" => c
            .update_queue(pb::UpdateQueueRequest {
                queue: Some(pb::Queue {
                    name: q,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        "DeleteQueue" => c
            .delete_queue(pb::DeleteQueueRequest {
                name: q,
                allow_missing: true,
            })
            .await
            .map(drop),
        "PurgeQueue" => c
            .purge_queue(pb::PurgeQueueRequest { name: q })
            .await
            .map(drop),
        "RequeueDead" => c
            .requeue_dead(pb::RequeueDeadRequest {
                queue: q,
                all: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "SealQueue" => c
            .seal_queue(pb::SealQueueRequest { name: q })
            .await
            .map(drop),
        "Enqueue" => c
            .enqueue(pb::EnqueueRequest {
                queue: q,
                items: vec![pb::NewItem {
                    payload: b"x".to_vec().into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .map(drop),
        "EnqueueStream" => {
            let first = pb::EnqueueStreamRequest {
                queue: q,
                items: vec![pb::NewItem {
                    payload: b"x".to_vec().into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            match c.enqueue_stream(futures::stream::iter([first])).await {
                Ok(resp) => {
                    let mut s = resp.into_inner();
                    s.message().await.map(drop)
                }
                Err(e) => Err(e),
            }
        }
        "GetQueue" => c.get_queue(pb::GetQueueRequest { name: q }).await.map(drop),
        "Watch" => c
            .watch(pb::WatchRequest {
                queue: q,
                ..Default::default()
            })
            .await
            .map(drop),
        "ListDead" => c
            .list_dead(pb::ListDeadRequest {
                queue: q,
                ..Default::default()
            })
            .await
            .map(drop),
        "Lease" => c
            .lease(pb::LeaseRequest {
                queue: q,
                max_items: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        "Work" => {
            let first = pb::WorkRequest {
                queue: q,
                credit: 1,
                ..Default::default()
            };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(first).await.expect("send");
            let r = c
                .work(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(drop);
            drop(tx);
            r
        }
        "Renew" => c
            .renew(pb::RenewRequest {
                queue: q,
                lease_tokens: t,
                per_token_results: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "Complete" => c
            .complete(pb::CompleteRequest {
                queue: q,
                lease_tokens: t,
                per_token_results: true,
            })
            .await
            .map(drop),
        "Fail" => c
            .fail(pb::FailRequest {
                queue: q,
                lease_tokens: t,
                per_token_results: true,
                ..Default::default()
            })
            .await
            .map(drop),
        "Release" => c
            .release(pb::ReleaseRequest {
                queue: q,
                lease_tokens: t,
                per_token_results: true,
            })
            .await
            .map(drop),
        other => panic!("no such rpc {other}"),
    };
    match r {
        Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => Err(s),
        _ => Ok(()),
    }
}

/// Each RPC with the verb the issue gives it, in an order that leaves the
/// queue in place until DeleteQueue.
const RPCS: [(&str, &str); 18] = [
    ("CreateQueue", "admin"),
    ("UpdateQueue", "admin"),
    ("Enqueue", "produce"),
    ("EnqueueStream", "produce"),
    ("GetQueue", "read"),
    ("Watch", "read"),
    ("ListDead", "read"),
    ("Lease", "consume"),
    ("Work", "consume"),
    ("Renew", "consume"),
    ("Complete", "consume"),
    ("Fail", "consume"),
    ("Release", "consume"),
    ("RequeueDead", "admin"),
    ("SealQueue", "produce"),
    ("PurgeQueue", "admin"),
    ("DeleteQueue", "admin"),
    ("CreateQueue", "admin"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_needs_a_credential_and_its_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), GRANTS, None).await;
    let mut anonymous = client(&server, None).await;
    let mut unknown = client(&server, Some("not-a-token")).await;
    let mut nobody = client(&server, Some("nobody-token")).await;
    for (rpc, verb) in RPCS {
        let queue = "job-1";
        // No credential, or one the server does not know.
        for c in [&mut anonymous, &mut unknown] {
            let s = call(c, rpc, queue).await.expect_err(rpc);
            assert_eq!(s.code(), Code::Unauthenticated, "{rpc}: {s:?}");
            let (r, meta) = reason(&s).expect("reason");
            assert_eq!(r, ErrorReason::Unauthenticated, "{rpc}");
            assert_eq!(
                meta.get("expected").map(String::as_str),
                Some("bearer token")
            );
            assert!(
                s.message().contains("authorization: Bearer"),
                "{}",
                s.message()
            );
        }
        // Authenticated, without the grant: no grant at all, a grant of
        // this verb on other queues, grants of every other verb.
        let mut with_verb = client(&server, Some(&format!("{verb}-token"))).await;
        for (c, q) in [(&mut nobody, queue), (&mut with_verb, "other-1")] {
            let s = call(c, rpc, q).await.expect_err(rpc);
            assert_eq!(s.code(), Code::PermissionDenied, "{rpc}: {s:?}");
            let (r, meta) = reason(&s).expect("reason");
            assert_eq!(r, ErrorReason::PermissionDenied);
            assert_eq!(meta.get("verb").map(String::as_str), Some(verb), "{rpc}");
            assert_eq!(meta.get("queue").map(String::as_str), Some(q), "{rpc}");
            assert!(meta.contains_key("identity"), "{meta:?}");
            assert!(
                s.message().contains(verb) && s.message().contains(q),
                "{}",
                s.message()
            );
        }
        for (_, other) in RPCS.iter().filter(|(_, v)| *v != verb) {
            let mut c = client(&server, Some(&format!("{other}-token"))).await;
            let s = call(&mut c, rpc, queue).await.expect_err(rpc);
            assert_eq!(s.code(), Code::PermissionDenied, "{rpc} as {other}");
        }
        // With it.
        call(&mut with_verb, rpc, queue)
            .await
            .unwrap_or_else(|s| panic!("{rpc} with {verb}: {s:?}"));
    }
    // GetServerInfo: any authenticated caller.
    let info = |mut c: Client| async move { c.get_server_info(pb::GetServerInfoRequest {}).await };
    assert_eq!(
        info(anonymous).await.expect_err("anonymous").code(),
        Code::Unauthenticated
    );
    info(nobody).await.expect("any authenticated caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_creating_a_queue_needs_admin_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), GRANTS, None).await;
    let mut producer = client(&server, Some("produce-token")).await;
    let req = |q: &str| pb::EnqueueRequest {
        queue: q.into(),
        create_queue: true,
        items: vec![pb::NewItem {
            payload: b"x".to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let s = producer.enqueue(req("job-new")).await.expect_err("create");
    let (_, meta) = reason(&s).expect("reason");
    assert_eq!(meta.get("verb").map(String::as_str), Some("admin"));
    let mut root = client(&server, Some("root-token")).await;
    root.enqueue(req("job-new")).await.expect("root creates");
    producer
        .enqueue(req("job-new"))
        .await
        .expect("an existing queue needs produce only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_shows_only_what_the_caller_may_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), GRANTS, None).await;
    let mut root = client(&server, Some("root-token")).await;
    for q in ["job-a", "job-b", "secret-c"] {
        call(&mut root, "CreateQueue", q).await.expect("create");
    }
    let names = |mut c: Client| async move {
        c.list_queues(pb::ListQueuesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .queues
            .into_iter()
            .map(|q| q.name)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(root).await, ["job-a", "job-b", "secret-c"]);
    assert_eq!(
        names(client(&server, Some("read-token")).await).await,
        ["job-a", "job-b"]
    );
    assert!(
        names(client(&server, Some("nobody-token")).await)
            .await
            .is_empty()
    );
}

/// Polls `cond` every reload interval until it holds (a readiness wait:
/// fails only if it never does within 200 intervals).
async fn eventually<F: Future<Output = bool>>(mut cond: impl FnMut() -> F, what: &str) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(RELOAD).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_grants_file_takes_effect_without_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), GRANTS, None).await;
    let addr = server.grpc_addr();
    let get = move |t: &'static str| async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut c = QueueServiceClient::with_interceptor(channel, Bearer(Some(t.into())));
        c.get_server_info(pb::GetServerInfoRequest {}).await
    };
    assert_eq!(
        get("new-token").await.expect_err("unknown").code(),
        Code::Unauthenticated
    );
    let path = dir.path().join("grants.yaml");
    std::fs::write(&path, format!("{GRANTS}- name: new\n  token: new-token\n")).expect("write");
    eventually(
        || async { get("new-token").await.is_ok() },
        "the new token is accepted",
    )
    .await;
    // A broken file keeps what is in force.
    std::fs::write(&path, "- name: [broken").expect("write");
    tokio::time::sleep(RELOAD * 5).await;
    get("new-token")
        .await
        .expect("still accepted after a bad file");
    // A token taken out is refused.
    std::fs::write(&path, GRANTS).expect("write");
    eventually(
        || async { get("new-token").await.is_err() },
        "the token is withdrawn",
    )
    .await;
    get("root-token").await.expect("root stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_open_and_metrics_need_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), GRANTS, None).await;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "workq.v1.QueueService".into(),
        })
        .await
        .expect("health without a credential")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let http = server.http_addr().expect("http");
    let get = |path: &str, token: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).expect("connect");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        body
    };
    assert!(get("/healthz", None).starts_with("HTTP/1.1 200"));
    let refused = get("/metrics", None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("Bearer"), "{refused}");
    assert!(get("/metrics", Some("nobody-token")).starts_with("HTTP/1.1 200"));
}

// ---- ServiceAccount tokens (signers and tokens: common/pki.rs) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serviceaccount_tokens_are_verified_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = signer("cluster-key");
    let stranger = signer("cluster-key-2");
    let jwks = serde_json::json!({ "keys": [cluster.jwk] }).to_string();
    let server = start(dir.path(), GRANTS, Some(&jwks)).await;
    let mut root = client(&server, Some("root-token")).await;
    call(&mut root, "CreateQueue", "job-1")
        .await
        .expect("create");
    let later = now() + 600;
    let good = sa_token(&cluster, ISSUER, "workq", later, ("jobs", "worker-1"));
    let mut c = client(&server, Some(&good)).await;
    call(&mut c, "GetQueue", "job-1")
        .await
        .expect("a good token reads");
    call(&mut c, "Lease", "job-1").await.expect("and consumes");
    let s = call(&mut c, "Enqueue", "job-1")
        .await
        .expect_err("no produce");
    assert_eq!(s.code(), Code::PermissionDenied);
    let (_, meta) = reason(&s).expect("reason");
    assert_eq!(
        meta.get("identity").map(String::as_str),
        Some("system:serviceaccount:jobs:worker-1")
    );
    // Another ServiceAccount: authenticated, granted nothing.
    let other = sa_token(&cluster, ISSUER, "workq", later, ("default", "worker-1"));
    let s = call(
        &mut client(&server, Some(&other)).await,
        "GetQueue",
        "job-1",
    )
    .await
    .expect_err("not granted");
    assert_eq!(s.code(), Code::PermissionDenied);
    for (bad, why) in [
        (
            sa_token(
                &cluster,
                ISSUER,
                "https://kubernetes.default.svc",
                later,
                ("jobs", "worker-1"),
            ),
            "audience",
        ),
        (
            sa_token(
                &cluster,
                "https://evil",
                "workq",
                later,
                ("jobs", "worker-1"),
            ),
            "issuer",
        ),
        (
            sa_token(
                &cluster,
                ISSUER,
                "workq",
                now() - 3600,
                ("jobs", "worker-1"),
            ),
            "expired",
        ),
        (
            sa_token(&stranger, ISSUER, "workq", later, ("jobs", "worker-1")),
            "not in the server's JWKS",
        ),
    ] {
        let s = call(&mut client(&server, Some(&bad)).await, "GetQueue", "job-1")
            .await
            .expect_err(why);
        assert_eq!(s.code(), Code::Unauthenticated, "{why}: {s:?}");
        assert!(s.message().contains(why), "{why}: {}", s.message());
        let (_, meta) = reason(&s).expect("reason");
        assert_eq!(
            meta.get("expected").map(String::as_str),
            Some("bearer token, kubernetes serviceaccount token")
        );
    }
}

// ---- Lease tokens ----

/// Issue 13's attack: holding one lease token, 76 guesses at neighbouring
/// item ids and sequence numbers (with the held token's secret, and with a
/// made-up one) complete nothing; the holders' own tokens still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_neighbouring_lease_tokens_completes_nothing() {
    let server = queue_server::start(ServerConfig::memory())
        .await
        .expect("start");
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut c = QueueServiceClient::new(channel);
    let q = "victims".to_string();
    c.enqueue(pb::EnqueueRequest {
        queue: q.clone(),
        create_queue: true,
        items: (0..5)
            .map(|i| pb::NewItem {
                payload: vec![i].into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    // Each victim leases on its own; the attacker holds the last token.
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let l = c
            .lease(pb::LeaseRequest {
                queue: q.clone(),
                max_items: 1,
                ..Default::default()
            })
            .await
            .expect("lease")
            .into_inner();
        tokens.push(l.items[0].lease_token.clone());
    }
    let held = tokens.pop().expect("held");
    let mut parts = held.split('.');
    let (id, seq, secret) = (
        parts
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .expect("id"),
        parts
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .expect("seq"),
        parts.next().expect("secret").to_string(),
    );
    assert_eq!(secret.len(), 32, "{held}");
    let mut guesses = Vec::new();
    for d_id in 1..=4u64 {
        for d_seq in 0..=9u64 {
            for s in [secret.clone(), "0".repeat(32)] {
                let (Some(i), Some(n)) = (id.checked_sub(d_id), seq.checked_sub(d_seq)) else {
                    continue;
                };
                guesses.push(format!("{i}.{n:x}.{s}"));
            }
        }
    }
    guesses.truncate(76);
    assert_eq!(guesses.len(), 76);
    let mut completed = 0;
    for g in &guesses {
        let r = c
            .complete(pb::CompleteRequest {
                queue: q.clone(),
                lease_tokens: vec![g.clone()],
                per_token_results: true,
            })
            .await
            .expect("complete")
            .into_inner();
        completed += r.completed;
        let problem = r.results[0].problem.as_ref().expect("refused");
        assert_eq!(
            problem.reason(),
            ErrorReason::LeaseTaken,
            "{g}: {problem:?} (refused as a stale token of a leased item)"
        );
    }
    assert_eq!(completed, 0, "a guess completed a victim's lease");
    let stats = c
        .get_queue(pb::GetQueueRequest { name: q.clone() })
        .await
        .expect("get")
        .into_inner()
        .queue
        .expect("queue")
        .stats
        .expect("stats");
    assert_eq!((stats.leased, stats.completed), (5, 0));
    tokens.push(held);
    let r = c
        .complete(pb::CompleteRequest {
            queue: q,
            lease_tokens: tokens,
            per_token_results: false,
        })
        .await
        .expect("the holders complete")
        .into_inner();
    assert_eq!(r.completed, 5);
}

// ---- TLS (CAs and leaf certificates: common/pki.rs) ----

async fn tls_server(dir: &Path, server_ca: &Ca, client_ca: Option<&Ca>) -> RunningServer {
    let (cert, key) = leaf(server_ca, "workq-server", false);
    std::fs::write(dir.join("tls.crt"), cert).expect("write");
    std::fs::write(dir.join("tls.key"), key).expect("write");
    let client_ca = client_ca.map(|ca| {
        let p = dir.join("client-ca.crt");
        std::fs::write(&p, &ca.pem).expect("write");
        p
    });
    let auth = if client_ca.is_some() {
        let p = dir.join("grants.yaml");
        std::fs::write(
            &p,
            "- name: ops\n  certificates: [\"ops-*\"]\n  grants: [{verbs: [read], queues: [\"*\"]}]\n",
        )
        .expect("write");
        AuthConfig {
            tokens_file: Some(p),
            reload_interval: RELOAD,
            ..AuthConfig::default()
        }
    } else {
        AuthConfig::default()
    };
    queue_server::start(ServerConfig {
        tls: Some(queue_server::tls::TlsConfig {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca,
        }),
        auth,
        ..ServerConfig::memory()
    })
    .await
    .expect("start")
}

/// A client over TLS trusting `ca_pem`, presenting `cert` if given.
async fn tls_client(
    server: &RunningServer,
    ca_pem: &str,
    cert: Option<&(String, String)>,
) -> Result<QueueServiceClient<Channel>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let addr = server.grpc_addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("localhost").expect("name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(QueueServiceClient::new(channel))
}

async fn info_over_tls(
    server: &RunningServer,
    ca_pem: &str,
    cert: Option<&(String, String)>,
) -> Result<(), String> {
    let mut c = tls_client(server, ca_pem, cert).await?;
    c.get_server_info(pb::GetServerInfoRequest {})
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_works_and_the_wrong_ca_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (right, wrong) = (ca("right"), ca("wrong"));
    let server = tls_server(dir.path(), &right, None).await;
    info_over_tls(&server, &right.pem, None)
        .await
        .expect("the right CA");
    let err = info_over_tls(&server, &wrong.pem, None)
        .await
        .expect_err("the wrong CA");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // Plaintext to a TLS port fails too.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await;
    if let Ok(ch) = plain {
        QueueServiceClient::new(ch)
            .get_server_info(pb::GetServerInfoRequest {})
            .await
            .expect_err("plaintext");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_and_names_its_cn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, client_ca, other_ca) = (ca("server"), ca("clients"), ca("other"));
    let server = tls_server(dir.path(), &server_ca, Some(&client_ca)).await;
    info_over_tls(&server, &server_ca.pem, None)
        .await
        .expect_err("no client certificate");
    let stranger = leaf(&other_ca, "ops-1", true);
    info_over_tls(&server, &server_ca.pem, Some(&stranger))
        .await
        .expect_err("a certificate of another CA");
    let ops = leaf(&client_ca, "ops-1", true);
    let mut c = tls_client(&server, &server_ca.pem, Some(&ops))
        .await
        .expect("connect");
    c.list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("ops may read");
    let s = c
        .purge_queue(pb::PurgeQueueRequest {
            name: "job-1".into(),
        })
        .await
        .expect_err("ops may not purge");
    let (_, meta) = reason(&s).expect("reason");
    assert_eq!(meta.get("identity").map(String::as_str), Some("cert:ops-1"));
    let dev = leaf(&client_ca, "dev-1", true);
    let mut c = tls_client(&server, &server_ca.pem, Some(&dev))
        .await
        .expect("connect");
    let s = c
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .map(|r| r.into_inner().queues.len());
    assert_eq!(s.expect("authenticated, sees nothing"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (ca("old"), ca("new"));
    let server = tls_server(dir.path(), &old, None).await;
    info_over_tls(&server, &old.pem, None).await.expect("old");
    let (cert, key) = leaf(&new, "workq-server", false);
    // As a rotation does: the new files appear whole.
    std::fs::write(dir.path().join("tls.key.new"), key).expect("write");
    std::fs::write(dir.path().join("tls.crt.new"), cert).expect("write");
    std::fs::rename(dir.path().join("tls.key.new"), dir.path().join("tls.key")).expect("mv");
    std::fs::rename(dir.path().join("tls.crt.new"), dir.path().join("tls.crt")).expect("mv");
    let s = &server;
    let new_pem = new.pem.clone();
    eventually(
        || {
            let new_pem = new_pem.clone();
            async move { info_over_tls(s, &new_pem, None).await.is_ok() }
        },
        "the new certificate is served",
    )
    .await;
    info_over_tls(&server, &old.pem, None)
        .await
        .expect_err("the old CA no longer verifies it");
}
