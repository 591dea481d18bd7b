//! TLS to the database (libpq's `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`), against a PostgreSQL of the test's own that serves TLS with a
//! certificate from a CA the test makes and admits only clients that
//! present a certificate signed by it (`hostssl … cert`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/pki.rs"]
mod pki;

use common::own_postgres::OwnPostgres;
use common::{ServerProcess, unique_queue};
use std::path::{Path, PathBuf};
use workq_proto::v1 as pb;

/// A PostgreSQL serving TLS signed by `ca` that admits only the user
/// `postgres` with a client certificate from `ca`.
fn tls_postgres(ca: &pki::Ca) -> Option<OwnPostgres> {
    let (cert, key) = pki::leaf(ca, "localhost", false);
    let ca_pem = ca.pem.clone();
    OwnPostgres::start_with(
        &[
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "ssl_ca_file = 'ca.crt'",
        ],
        move |data: &Path| {
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            std::fs::write(data.join("ca.crt"), ca_pem).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all postgres 127.0.0.1/32 cert\n",
            )
            .unwrap();
        },
    )
}

/// The client's files: the CA, and a certificate for the user `postgres`.
struct ClientFiles {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn client_files(ca: &pki::Ca) -> ClientFiles {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki::leaf(ca, "postgres", true);
    let files = ClientFiles {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("client.crt"),
        key: dir.path().join("client.key"),
        _dir: dir,
    };
    std::fs::write(&files.ca, &ca.pem).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

/// The URL of `pg` with `mode`, the roots `root` and `files`' client
/// certificate.
fn tls_url(pg: &OwnPostgres, mode: &str, root: &Path, files: &ClientFiles) -> String {
    format!(
        "postgres://postgres@localhost:{}/postgres?sslmode={mode}&sslrootcert={}&sslcert={}&\
         sslkey={}",
        pg.port(),
        root.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// Runs queue-server on `url` expecting it to refuse to start; its stderr.
fn refused(url: &str, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--store", "postgres", "--database-url", url])
        .envs(env.iter().copied())
        .output()
        .expect("run queue-server");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "it started: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_a_client_certificate_serves_and_every_connection_is_encrypted() {
    let ca = pki::ca("workq test database CA");
    let Some(pg) = tls_postgres(&ca) else {
        return;
    };
    let files = client_files(&ca);
    let url = tls_url(&pg, "verify-full", &files.ca, &files);
    let server = ServerProcess::start(&["--store", "postgres", "--database-url", &url]);
    let mut c = server.client().await;
    let q = unique_queue("tls");
    c.enqueue(pb::EnqueueRequest {
        queue: q.clone(),
        items: vec![pb::NewItem {
            payload: b"over tls".to_vec().into(),
            ..Default::default()
        }],
        create_queue: true,
        ..Default::default()
    })
    .await
    .expect("enqueue over an encrypted database connection");
    let leased = c
        .lease(pb::LeaseRequest {
            queue: q,
            max_items: 1,
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner()
        .items;
    assert_eq!(leased.len(), 1);
    assert_eq!(&leased[0].payload[..], b"over tls");
    // Every connection of queue-server's (the pool's and the LISTEN one) is
    // TLS: the server admits no other, and says so.
    let plain = pg.query(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'queue-server' AND NOT s.ssl",
    );
    let encrypted = pg.query(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'queue-server' AND s.ssl",
    );
    assert_eq!(plain, "0");
    assert!(encrypted.parse::<u32>().unwrap() >= 2, "{encrypted}");

    // The same settings from libpq's environment variables.
    let env_url = format!("postgres://postgres@localhost:{}/postgres", pg.port());
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", files.ca.to_str().unwrap()),
        ("PGSSLCERT", files.cert.to_str().unwrap()),
        ("PGSSLKEY", files.key.to_str().unwrap()),
    ];
    let from_env =
        ServerProcess::start_with_env(&["--store", "postgres", "--database-url", &env_url], &env);
    from_env
        .client()
        .await
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_the_roots_do_not_vouch_for_is_refused_with_the_fix_named() {
    let ca = pki::ca("workq test database CA");
    let Some(pg) = tls_postgres(&ca) else {
        return;
    };
    let files = client_files(&ca);
    let other = client_files(&pki::ca("someone else's CA"));
    for mode in ["verify-full", "verify-ca", "require"] {
        let stderr = refused(&tls_url(&pg, mode, &other.ca, &files), &[]);
        assert!(
            stderr.contains("--database-url") && stderr.to_lowercase().contains("certificate"),
            "{mode}: names the problem and the fix: {stderr}"
        );
    }
    // Plain TCP is not admitted by this server: one clear error too.
    let plain = format!("postgres://postgres@localhost:{}/postgres", pg.port());
    let stderr = refused(&plain, &[]);
    assert!(stderr.contains("--database-url"), "{stderr}");
    // A bad setting is refused before any connection.
    let stderr = refused(&format!("{plain}?sslmode=allow"), &[]);
    assert!(
        stderr.contains("sslmode=allow") && stderr.contains("verify-full"),
        "{stderr}"
    );
}
