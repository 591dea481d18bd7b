//! KEDA's external scaler against the real `queue-server` binary, with a
//! client generated from our copy of KEDA's `externalscaler.proto`: exact
//! counts after enqueue, lease, complete and lease expiry; `IsActive`
//! following the queue; `StreamIsActive` pushing each flip; refusals of bad
//! metadata and unknown queues; authorization with a bearer token.

mod common;

use common::{ServerProcess, Store, unique_queue};
use std::collections::HashMap;
use std::time::Duration;
use tonic::Code;
use workq_proto::externalscaler as es;
use workq_proto::v1 as pb;

type Scaler = es::external_scaler_client::ExternalScalerClient<tonic::transport::Channel>;
type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// Generous: a bound on a hang, not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn object(m: HashMap<String, String>) -> es::ScaledObjectRef {
    es::ScaledObjectRef {
        name: "workers".into(),
        namespace: "jobs".into(),
        scaler_metadata: m,
    }
}

async fn scaler(server: &ServerProcess) -> Scaler {
    Scaler::connect(server.url()).await.expect("connect")
}

/// The metric for `queue` counting `count`.
async fn metric(s: &mut Scaler, queue: &str, count: &str) -> i64 {
    let req = es::GetMetricsRequest {
        scaled_object_ref: Some(object(meta(&[("queue", queue), ("count", count)]))),
        metric_name: "s0-workq".into(),
    };
    let values = s.get_metrics(req).await.expect("GetMetrics").into_inner();
    assert_eq!(values.metric_values.len(), 1);
    let v = &values.metric_values[0];
    assert_eq!(v.metric_name, "s0-workq", "the name KEDA asked for");
    assert_eq!(v.metric_value_float, v.metric_value as f64);
    v.metric_value
}

async fn counts(s: &mut Scaler, queue: &str) -> (i64, i64) {
    (
        metric(s, queue, "pending").await,
        metric(s, queue, "pending+leased").await,
    )
}

async fn active(s: &mut Scaler, queue: &str, count: &str) -> bool {
    s.is_active(object(meta(&[("queue", queue), ("count", count)])))
        .await
        .expect("IsActive")
        .into_inner()
        .result
}

async fn enqueue(c: &mut Client, q: &str, n: usize) {
    c.enqueue(pb::EnqueueRequest {
        queue: q.into(),
        items: (0..n)
            .map(|i| pb::NewItem {
                payload: format!("item-{i}").into_bytes().into(),
                ..Default::default()
            })
            .collect(),
        create_queue: true,
        ..Default::default()
    })
    .await
    .expect("enqueue");
}

async fn lease(c: &mut Client, q: &str, n: i32, secs: u64) -> Vec<String> {
    let items = c
        .lease(pb::LeaseRequest {
            queue: q.into(),
            max_items: n,
            lease: Some(workq_proto::time::duration(Duration::from_secs(secs))),
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner()
        .items;
    assert_eq!(items.len(), n as usize, "leased");
    items.into_iter().map(|i| i.lease_token).collect()
}

async fn complete(c: &mut Client, q: &str, tokens: Vec<String>) {
    c.complete(pb::CompleteRequest {
        queue: q.into(),
        lease_tokens: tokens,
        per_token_results: false,
    })
    .await
    .expect("complete");
}

/// Waits, on the queue's Watch stream, until nothing of `q` is leased.
async fn until_nothing_leased(c: &mut Client, q: &str) {
    let mut w = c
        .watch(pb::WatchRequest {
            queue: q.into(),
            until_drained: false,
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(PATIENCE, async {
        while let Some(msg) = w.message().await.expect("watch message") {
            if msg.stats.is_some_and(|s| s.leased == 0) {
                return;
            }
        }
        panic!("the watch ended with items still leased");
    })
    .await
    .expect("the lease expired");
}

async fn metrics_are_exact_through_enqueue_lease_complete_and_expiry(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let (mut c, mut s) = (server.client().await, scaler(&server).await);
    let q = unique_queue("keda");
    enqueue(&mut c, &q, 5).await;
    assert_eq!(counts(&mut s, &q).await, (5, 5), "after enqueue");

    let held = lease(&mut c, &q, 2, 60).await;
    assert_eq!(counts(&mut s, &q).await, (3, 5), "after lease");

    complete(&mut c, &q, held).await;
    assert_eq!(counts(&mut s, &q).await, (3, 3), "after complete");

    // A lease of one second expires: its item is pending again.
    let _expiring = lease(&mut c, &q, 1, 1).await;
    assert_eq!(counts(&mut s, &q).await, (2, 3), "while leased");
    until_nothing_leased(&mut c, &q).await;
    assert_eq!(counts(&mut s, &q).await, (3, 3), "after expiry");

    // The spec names the metric and the target per pod.
    let spec = s
        .get_metric_spec(object(meta(&[
            ("queue", &q),
            ("count", "pending+leased"),
            ("target", "4"),
        ])))
        .await
        .expect("GetMetricSpec")
        .into_inner();
    assert_eq!(spec.metric_specs.len(), 1);
    assert_eq!(spec.metric_specs[0].target_size, 4);
    assert_eq!(spec.metric_specs[0].target_size_float, 4.0);
    assert_eq!(
        spec.metric_specs[0].metric_name,
        format!("workq-{q}-pending-leased")
    );
}

async fn is_active_follows_the_queue(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let (mut c, mut s) = (server.client().await, scaler(&server).await);
    let q = unique_queue("keda-active");
    enqueue(&mut c, &q, 1).await;
    assert!(active(&mut s, &q, "pending").await);
    assert!(active(&mut s, &q, "pending+leased").await);
    let held = lease(&mut c, &q, 1, 60).await;
    assert!(!active(&mut s, &q, "pending").await, "nothing ready");
    assert!(active(&mut s, &q, "pending+leased").await, "one in flight");
    complete(&mut c, &q, held).await;
    assert!(!active(&mut s, &q, "pending").await);
    assert!(!active(&mut s, &q, "pending+leased").await);
}

async fn stream_is_active_pushes_the_first_enqueue_and_the_drain(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let (mut c, mut s) = (server.client().await, scaler(&server).await);
    let q = unique_queue("keda-stream");
    c.create_queue(pb::CreateQueueRequest {
        name: q.clone(),
        settings: None,
    })
    .await
    .expect("create");
    let mut stream = s
        .stream_is_active(object(meta(&[("queue", &q), ("count", "pending+leased")])))
        .await
        .expect("StreamIsActive")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message within the patience")
            .expect("stream")
            .expect("a message")
            .result
    };
    assert!(!next().await, "empty at first");
    let sent = std::time::Instant::now();
    enqueue(&mut c, &q, 2).await;
    assert!(next().await, "active on the first enqueue");
    // Observed, not asserted (speed lives in benchmarks): the push's delay.
    let to_active = sent.elapsed();
    // Leasing and completing one item changes counts but not the answer:
    // the next message is the drain, not a repeat of `true`.
    let first = lease(&mut c, &q, 1, 60).await;
    complete(&mut c, &q, first).await;
    let last = lease(&mut c, &q, 1, 60).await;
    c.seal_queue(pb::SealQueueRequest { name: q.clone() })
        .await
        .expect("seal");
    let sent = std::time::Instant::now();
    complete(&mut c, &q, last).await;
    assert!(!next().await, "inactive at the drain");
    eprintln!(
        "StreamIsActive ({store:?}): true {to_active:?} after the enqueue call began, \
         false {:?} after the last complete call began",
        sent.elapsed()
    );
}

/// The tests above on each store.
macro_rules! on_store {
    ($store:ident, $variant:expr) => {
        mod $store {
            use super::*;

            #[tokio::test]
            async fn metrics_are_exact_through_enqueue_lease_complete_and_expiry() {
                super::metrics_are_exact_through_enqueue_lease_complete_and_expiry($variant).await;
            }

            #[tokio::test]
            async fn is_active_follows_the_queue() {
                super::is_active_follows_the_queue($variant).await;
            }

            #[tokio::test]
            async fn stream_is_active_pushes_the_first_enqueue_and_the_drain() {
                super::stream_is_active_pushes_the_first_enqueue_and_the_drain($variant).await;
            }
        }
    };
}

on_store!(memory, Store::Memory);
on_store!(postgres, Store::Postgres);

#[tokio::test]
async fn bad_metadata_and_unknown_queues_are_refused_clearly() {
    let server = ServerProcess::memory();
    let mut s = scaler(&server).await;
    for (m, code, says) in [
        (meta(&[]), Code::InvalidArgument, "names no queue"),
        (
            meta(&[("queue", "q"), ("count", "everything")]),
            Code::InvalidArgument,
            "pending+leased",
        ),
        (
            meta(&[("queue", "q"), ("target", "0")]),
            Code::InvalidArgument,
            "target",
        ),
        (
            meta(&[("queue", "no-such-queue")]),
            Code::NotFound,
            "no-such-queue",
        ),
    ] {
        let err = s.is_active(object(m.clone())).await.expect_err("refused");
        assert_eq!(err.code(), code, "{m:?}: {}", err.message());
        assert!(err.message().contains(says), "{m:?}: {}", err.message());
        let err = s
            .get_metrics(es::GetMetricsRequest {
                scaled_object_ref: Some(object(m.clone())),
                metric_name: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{m:?}: {}", err.message());
        let err = s
            .stream_is_active(object(m.clone()))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{m:?}: {}", err.message());
        // The spec needs good metadata, not the queue (it may come later).
        let spec = s.get_metric_spec(object(m.clone())).await;
        match code {
            Code::NotFound => assert!(spec.is_ok(), "{m:?}: {spec:?}"),
            _ => assert_eq!(spec.expect_err("refused").code(), code, "{m:?}"),
        }
    }
}

const GRANTS: &str = r#"
- name: keda
  token: keda-token
  grants: [{verbs: [read], queues: ["keda-*"]}]
- name: producer
  token: produce-token
  grants: [{verbs: [produce, admin], queues: ["*"]}]
- name: other
  token: other-token
  grants: [{verbs: [read], queues: ["other-*"]}]
"#;

#[tokio::test]
async fn with_auth_on_the_scaler_needs_read_on_its_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grants = dir.path().join("grants.yaml");
    std::fs::write(&grants, GRANTS).expect("write grants");
    let server = ServerProcess::start(&[
        "--store",
        "memory",
        "--auth-tokens-file",
        grants.to_str().expect("utf-8"),
    ]);
    let q = unique_queue("keda-auth");
    {
        let channel = tonic::transport::Channel::from_shared(server.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut c = pb::queue_service_client::QueueServiceClient::with_interceptor(
            channel,
            |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(
                    "authorization",
                    tonic::metadata::MetadataValue::from_static("Bearer produce-token"),
                );
                Ok(r)
            },
        );
        c.enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: vec![pb::NewItem::default()],
            create_queue: true,
            ..Default::default()
        })
        .await
        .expect("enqueue");
    }
    let mut s = scaler(&server).await;
    // The token in the trigger's metadata (how KEDA sends it).
    let with = |token: &str| object(meta(&[("queue", &q), ("token", token)]));
    assert!(
        s.is_active(with("keda-token"))
            .await
            .expect("granted")
            .into_inner()
            .result
    );
    // The token in the authorization header.
    let mut req = tonic::Request::new(object(meta(&[("queue", &q)])));
    req.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::from_static("Bearer keda-token"),
    );
    assert!(s.is_active(req).await.expect("granted").into_inner().result);
    // A token without read on this queue; none at all; an unknown one.
    let err = s
        .is_active(with("other-token"))
        .await
        .expect_err("no grant");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("read"), "{}", err.message());
    let err = s
        .get_metrics(es::GetMetricsRequest {
            scaled_object_ref: Some(object(meta(&[("queue", &q)]))),
            metric_name: String::new(),
        })
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let err = s
        .is_active(with("made-up"))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
}

// ---- Mutual TLS: KEDA's TriggerAuthentication tlsClientCert/tlsClientKey ----

/// A CA (PEM) and its issuer.
fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = p.self_signed(&key).expect("ca").pem();
    (pem, rcgen::Issuer::new(p, key))
}

/// A certificate and key (PEM) signed by `issuer`: a server's on localhost,
/// or a client's named `cn`.
fn leaf(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    cn: &str,
    client: bool,
) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().expect("key");
    let sans = if client {
        vec![]
    } else {
        vec!["localhost".to_string()]
    };
    let mut p = CertificateParams::new(sans).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// A scaler client over TLS trusting `ca_pem`, presenting `cert`.
async fn tls_scaler(addr: std::net::SocketAddr, ca_pem: &str, cert: &(String, String)) -> Scaler {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let chain = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
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
        .expect("connect over TLS");
    Scaler::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_a_scaler_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ((server_ca, server_issuer), (client_ca, client_issuer)) = (ca("server"), ca("clients"));
    let (cert, key) = leaf(&server_issuer, "workq", false);
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("tls.crt"), cert).expect("write");
    std::fs::write(path("tls.key"), key).expect("write");
    std::fs::write(path("client-ca.crt"), &client_ca).expect("write");
    std::fs::write(
        path("grants.yaml"),
        "- name: keda\n  certificates: [\"keda-operator\"]\n  grants: [{verbs: [read], queues: [\"keda-*\"]}]\n",
    )
    .expect("write");
    let server = ServerProcess::start(&[
        "--store",
        "memory",
        "--tls-cert",
        path("tls.crt").to_str().expect("utf-8"),
        "--tls-key",
        path("tls.key").to_str().expect("utf-8"),
        "--tls-client-ca",
        path("client-ca.crt").to_str().expect("utf-8"),
        "--auth-tokens-file",
        path("grants.yaml").to_str().expect("utf-8"),
    ]);
    let keda = leaf(&client_issuer, "keda-operator", true);
    let mut s = tls_scaler(server.grpc, &server_ca, &keda).await;
    // Authenticated as cert:keda-operator: the queue is looked up (none yet).
    let q = unique_queue("keda-tls");
    let err = s
        .is_active(object(meta(&[("queue", &q)])))
        .await
        .expect_err("no such queue");
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    // Outside its grant: refused, naming the certificate's identity.
    let err = s
        .is_active(object(meta(&[("queue", "other")])))
        .await
        .expect_err("no grant");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("cert:keda-operator"),
        "{}",
        err.message()
    );
}
