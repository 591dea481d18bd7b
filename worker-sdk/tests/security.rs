//! The client side of a secured queue service: `grpcs://` with a CA file, a
//! bearer token from a file on every call, and errors that say whether the
//! certificate, the token or a grant is the problem.
//!
//! The server here is the real queue service's gRPC implementation behind
//! tonic's rustls TLS and an interceptor that demands a token and answers as
//! the contract says (UNAUTHENTICATED with `expected`, PERMISSION_DENIED with
//! verb, queue and identity). Certificates are made with the `openssl` command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use worker_sdk::{Client, ConnectOptions, Error};
use workq_proto::errors::Rejection;
use workq_proto::v1::ErrorReason;
use workq_proto::v1::queue_service_server::QueueServiceServer;

use common::{Output, run_at};

/// The token the test server accepts with every grant.
const GOOD_TOKEN: &str = "s3cret-good-token";
/// A token the server knows but that holds no grant.
const UNGRANTED_TOKEN: &str = "s3cret-no-grants";

/// A CA, a server certificate it signs for `localhost` and 127.0.0.1, and a
/// second CA that signed nothing of this server's.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn make() -> Option<Pki> {
        if !workq_testkit::command("openssl", "apt-get install openssl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = StdCommand::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=workq test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Some(Pki { dir })
    }
}

/// What the test server's interceptor does with a call's credential: no
/// token → UNAUTHENTICATED (expected: a bearer token); the ungranted token →
/// PERMISSION_DENIED; the good token → through.
fn check_token(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let auth = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match auth.as_deref() {
        Some(v) if v == format!("Bearer {GOOD_TOKEN}") => Ok(req),
        Some(v) if v == format!("Bearer {UNGRANTED_TOKEN}") => Err(Rejection::new(
            tonic::Code::PermissionDenied,
            ErrorReason::PermissionDenied,
            "no grant of produce on queue jobs",
        )
        .meta("verb", "produce")
        .meta("queue", "jobs")
        .meta("identity", "token:ci")
        .to_status()),
        _ => Err(Rejection::new(
            tonic::Code::Unauthenticated,
            ErrorReason::Unauthenticated,
            "no credential on the call",
        )
        .meta("expected", "bearer token (authorization: Bearer <token>)")
        .to_status()),
    }
}

/// A TLS queue server on 127.0.0.1 demanding a token; its address.
async fn tls_server(pki: &Pki) -> (SocketAddr, queue_server::RunningServer) {
    let inner = queue_server::start(queue_server::ServerConfig::memory())
        .await
        .expect("server starts");
    let service = QueueServiceServer::with_interceptor(
        queue_server::grpc::GrpcService::new(inner.engine().clone()),
        check_token,
    );
    let identity = Identity::from_pem(
        std::fs::read(pki.path("server.pem")).unwrap(),
        std::fs::read(pki.path("server.key")).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .expect("TLS config")
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("TLS server runs");
    });
    (addr, inner)
}

fn write_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

async fn wq(url: &str, args: &[&str]) -> Output {
    run_at(url, "jobs", args).await
}

#[tokio::test]
async fn wq_over_grpcs_with_the_right_ca_and_token_works() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://localhost:{}", addr.port());
    let token = write_token(pki.dir.path(), "token", GOOD_TOKEN);
    let ca = pki.path("ca.pem");
    let common = [
        "--ca-file",
        ca.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let out = wq(&url, &[&common[..], &["push", "a", "b"]].concat()).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let out = wq(&url, &[&common[..], &["stats", "--json"]].concat()).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let stats: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(stats["pending"], 2, "{stats}");

    // The same through the environment, as a pod sets it.
    let out = common::wq_at(&url, "jobs")
        .env("WQ_CA_FILE", &ca)
        .env("WQ_TOKEN_FILE", &token)
        .args(["stats"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn wq_with_the_wrong_ca_fails_naming_the_certificate() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://localhost:{}", addr.port());
    let token = write_token(pki.dir.path(), "token", GOOD_TOKEN);
    let other = pki.path("other-ca.pem");
    let out = wq(
        &url,
        &[
            "--ca-file",
            other.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "stats",
        ],
    )
    .await;
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains("certificate") && out.stderr.contains("not signed by a CA"),
        "the error says the certificate is the problem: {out:?}"
    );
    assert!(out.stderr.contains("--ca-file"), "and what to do: {out:?}");
}

#[tokio::test]
async fn the_sdk_reports_a_wrong_ca_as_a_tls_error_not_retried() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://127.0.0.1:{}", addr.port());
    let wrong_ca = ConnectOptions {
        ca_file: Some(pki.path("other-ca.pem")),
        ..ConnectOptions::default()
    };
    let err = Client::connect_with(&url, std::time::Duration::from_secs(30), &wrong_ca)
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    // With the right CA (the address is among the certificate's names).
    let right_ca = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        ..ConnectOptions::default()
    };
    Client::connect_with(&url, std::time::Duration::from_secs(5), &right_ca)
        .await
        .expect("connects");
    // Plain grpc:// to a TLS port is not mistaken for a certificate problem
    // on the server's side, nor does a CA file make a grpc:// URL use TLS.
}

#[tokio::test]
async fn a_missing_token_is_named_as_the_problem() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://localhost:{}", addr.port());
    let ca = pki.path("ca.pem");
    let out = common::wq_at(&url, "jobs")
        .env_remove("WQ_TOKEN_FILE")
        .args(["--ca-file", ca.to_str().unwrap(), "stats"])
        .output()
        .await
        .unwrap();
    let out: Output = out.into();
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(
        out.stderr.contains("UNAUTHENTICATED")
            && out.stderr.contains("token")
            && out.stderr.contains("--token-file"),
        "the error names the token: {out:?}"
    );

    // The SDK's error is typed, with what the server expects.
    let options = ConnectOptions {
        ca_file: Some(ca),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&url, std::time::Duration::from_secs(5), &options)
        .await
        .expect("TLS connects");
    let err = client
        .queue("jobs")
        .unwrap()
        .stats()
        .await
        .expect_err("refused");
    match err {
        Error::Unauthenticated { expected, .. } => {
            assert!(expected.unwrap().contains("bearer token"));
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_grant_names_verb_and_queue() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://localhost:{}", addr.port());
    let token = write_token(pki.dir.path(), "token", UNGRANTED_TOKEN);
    let options = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        token_file: Some(token.clone()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&url, std::time::Duration::from_secs(5), &options)
        .await
        .expect("connects");
    let err = client
        .queue("jobs")
        .unwrap()
        .create(&Default::default())
        .await
        .expect_err("refused");
    match &err {
        Error::PermissionDenied {
            verb,
            queue,
            identity,
            ..
        } => {
            assert_eq!(verb, "produce");
            assert_eq!(queue, "jobs");
            assert_eq!(identity.as_deref(), Some("token:ci"));
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("permission denied") && text.contains("produce") && text.contains("jobs"),
        "{text}"
    );
}

#[tokio::test]
async fn a_token_file_that_changes_is_read_again() {
    let Some(pki) = Pki::make() else { return };
    let (addr, _server) = tls_server(&pki).await;
    let url = format!("grpcs://localhost:{}", addr.port());
    let token = write_token(pki.dir.path(), "token", UNGRANTED_TOKEN);
    let options = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        token_file: Some(token.clone()),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&url, std::time::Duration::from_secs(5), &options)
        .await
        .expect("connects");
    let q = client.queue("jobs").unwrap();
    assert!(matches!(
        q.stats().await,
        Err(Error::PermissionDenied { .. })
    ));
    // Rotated, as the kubelet rotates a projected token: a new file moved
    // into place (a new modification time).
    let fresh = write_token(pki.dir.path(), "token.new", GOOD_TOKEN);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::rename(&fresh, &token).unwrap();
    // The file is looked at once a second at most: keep asking until the
    // new token is in use (no timing is asserted, only that it happens).
    let mut tries = 0;
    loop {
        match q.create(&Default::default()).await {
            Ok(_) => break,
            Err(Error::PermissionDenied { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the new token was not used: {e}"),
        }
    }
}

#[tokio::test]
async fn an_unreadable_token_file_or_a_key_without_a_certificate_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ConnectOptions {
        token_file: Some(dir.path().join("nope")),
        ..ConnectOptions::default()
    };
    let err = Client::connect_with(
        "grpc://127.0.0.1:1",
        std::time::Duration::from_millis(100),
        &missing,
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&err, Error::Credentials { what: "token", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("token file"), "{err}");

    let cert_only = ConnectOptions {
        client_cert: Some(dir.path().join("c.pem")),
        ..ConnectOptions::default()
    };
    let err = Client::connect_with(
        "grpc://127.0.0.1:1",
        std::time::Duration::from_millis(100),
        &cert_only,
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("grpcs://"), "{err}");
}

/// End to end against the real queue service with TLS and a grants file on
/// (sec-server's `--tls-cert`/`--tls-key`/`--auth-tokens-file`): the right CA
/// and a granted token work; the wrong CA is a certificate error; no token
/// is UNAUTHENTICATED; a token without the grant is PERMISSION_DENIED naming
/// verb and queue.
#[tokio::test]
async fn end_to_end_against_the_real_server_with_tls_and_grants() {
    let Some(pki) = Pki::make() else { return };
    let grants = pki.path("grants.yaml");
    std::fs::write(
        &grants,
        format!(
            "- name: ci\n  token: {GOOD_TOKEN}\n  grants:\n    - verbs: [\"*\"]\n      queues: [\"*\"]\n- name: reader\n  token: {UNGRANTED_TOKEN}\n  grants:\n    - verbs: [read]\n      queues: [\"*\"]\n"
        ),
    )
    .unwrap();
    let mut config = queue_server::ServerConfig::memory();
    config.tls = Some(queue_server::tls::TlsConfig {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: None,
    });
    config.auth.tokens_file = Some(grants);
    let server = queue_server::start(config).await.expect("server starts");
    let url = format!("grpcs://localhost:{}", server.grpc_addr().port());
    let good = write_token(pki.dir.path(), "good", GOOD_TOKEN);
    let ca = pki.path("ca.pem");
    let args = |token: &Path, ca: &Path, rest: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--ca-file".to_owned(),
            ca.display().to_string(),
            "--token-file".to_owned(),
            token.display().to_string(),
        ];
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| {
        let url = url.clone();
        async move {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            wq(&url, &refs).await
        }
    };
    let out = run(args(&good, &ca, &["push", "a"])).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let out = run(args(&good, &pki.path("other-ca.pem"), &["stats"])).await;
    assert!(out.stderr.contains("certificate"), "{out:?}");
    let out = common::wq_at(&url, "jobs")
        .args(["--ca-file", ca.to_str().unwrap(), "stats"])
        .output()
        .await
        .unwrap();
    let out: Output = out.into();
    assert!(
        out.stderr.contains("UNAUTHENTICATED") && out.stderr.contains("token"),
        "{out:?}"
    );
    let reader = write_token(pki.dir.path(), "reader", UNGRANTED_TOKEN);
    let out = run(args(&reader, &ca, &["push", "b"])).await;
    assert!(
        out.stderr.contains("permission denied")
            && out.stderr.contains("produce")
            && out.stderr.contains("jobs"),
        "{out:?}"
    );
}

/// Makes `<name>.key` and `<name>.pem` in the PKI's directory: a P-256 key
/// and a certificate for subject CN `cn` with the extensions `ext`, signed
/// by the test CA.
fn signed_by_ca(pki: &Pki, name: &str, cn: &str, ext: &str) {
    let d = pki.dir.path();
    let run = |args: &[&str]| {
        let out = StdCommand::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(d.join(&extfile), ext).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &extfile,
        "-out",
        &pem,
    ]);
}

/// A certificate signed by the trusted CA but for another host is a TLS
/// error that says the certificate does not name the URL's host.
#[tokio::test]
async fn a_certificate_for_another_host_is_a_tls_error_naming_the_mismatch() {
    let Some(pki) = Pki::make() else { return };
    signed_by_ca(
        &pki,
        "elsewhere",
        "elsewhere.example",
        "subjectAltName=DNS:elsewhere.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    let mut config = queue_server::ServerConfig::memory();
    config.tls = Some(queue_server::tls::TlsConfig {
        cert: pki.path("elsewhere.pem"),
        key: pki.path("elsewhere.key"),
        client_ca: None,
    });
    let server = queue_server::start(config).await.expect("server starts");
    let url = format!("grpcs://localhost:{}", server.grpc_addr().port());
    let options = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        ..ConnectOptions::default()
    };
    let err = Client::connect_with(&url, std::time::Duration::from_secs(30), &options)
        .await
        .expect_err("refused");
    match &err {
        Error::Tls { reason, .. } => assert!(
            reason.contains("does not name the host"),
            "the reason says the certificate does not match the host: {reason}"
        ),
        other => panic!("a TLS error, not {other:?}"),
    }
}

/// A queue service requiring client certificates signed by the test CA
/// (`--tls-client-ca`), with a client certificate `worker.pem` for CN
/// `worker-1` made beside it; its `grpcs://` URL.
async fn mtls_server(pki: &Pki) -> (String, queue_server::RunningServer) {
    signed_by_ca(
        pki,
        "worker",
        "worker-1",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let mut config = queue_server::ServerConfig::memory();
    config.tls = Some(queue_server::tls::TlsConfig {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: Some(pki.path("ca.pem")),
    });
    let server = queue_server::start(config).await.expect("server starts");
    let url = format!("grpcs://localhost:{}", server.grpc_addr().port());
    (url, server)
}

/// Mutual TLS against the real queue service: with a client certificate
/// signed by the client CA the SDK's calls pass.
#[tokio::test]
async fn mutual_tls_works_with_a_client_certificate() {
    let Some(pki) = Pki::make() else { return };
    let (url, _server) = mtls_server(&pki).await;
    let with_cert = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        client_cert: Some(pki.path("worker.pem")),
        client_key: Some(pki.path("worker.key")),
        ..ConnectOptions::default()
    };
    let client = Client::connect_with(&url, std::time::Duration::from_secs(30), &with_cert)
        .await
        .expect("connects with a client certificate");
    client
        .server_info()
        .await
        .expect("a call passes with a client certificate");
    client.list_queues().await.expect("and another");
}

/// Mutual TLS without a client certificate: the SDK's error must say that a
/// client certificate is needed. With TLS 1.3 the client's side of the
/// handshake completes, `connect` succeeds, and the server's alert
/// (`received fatal alert: CertificateRequired`, under tonic's "transport
/// error") arrives at the first call: `Error::map_status` finds it under the
/// status and answers `Error::Tls`.
#[tokio::test]
async fn mutual_tls_without_a_client_certificate_says_one_is_needed() {
    let Some(pki) = Pki::make() else { return };
    let (url, _server) = mtls_server(&pki).await;
    let without = ConnectOptions {
        ca_file: Some(pki.path("ca.pem")),
        ..ConnectOptions::default()
    };
    // With TLS 1.3 the server refuses after the client's side of the
    // handshake: at connect or at the first call, whichever sees it.
    let err = match Client::connect_with(&url, std::time::Duration::from_secs(30), &without).await {
        Err(e) => e,
        Ok(c) => c.server_info().await.expect_err("refused without one"),
    };
    let text = err.to_string();
    assert!(
        matches!(err, Error::Tls { .. }),
        "a TLS error without a client certificate: {err:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("client certificate"),
        "the error says a client certificate is needed: {text}"
    );
}
