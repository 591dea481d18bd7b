//! The shared harness: starts the real `queue-server` binary on ephemeral
//! ports and hands back its addresses and a connected client.

#![allow(dead_code, missing_docs)]

pub mod own_postgres;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use tonic::transport::Channel;
use workq_proto::v1::queue_service_client::QueueServiceClient;

/// A running `queue-server` process, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    /// The test's own database, when on the postgres store (dropped after
    /// the server).
    pub db: Option<std::sync::Arc<PgDatabase>>,
}

impl ServerProcess {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0
    /// --http-listen 127.0.0.1:0`) and waits for its `listening` line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`ServerProcess::start`] with environment variables `env`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue-server"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn queue-server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
        };
        let grpc = field("grpc=").unwrap_or_else(|| panic!("no grpc address in {line:?}"));
        ServerProcess {
            child,
            grpc,
            http: field("http="),
            db: None,
        }
    }

    /// On the postgres store, in a database of its own (dropped with it);
    /// `None` when PostgreSQL is not there (said, or failed under
    /// `WQ_REQUIRE_SERVICES`).
    pub fn postgres() -> Option<Self> {
        Self::on(Store::Postgres, &[])
    }

    /// On `db`, shared with other servers (replicas), with `args`.
    pub fn on_database(db: &std::sync::Arc<PgDatabase>, args: &[&str]) -> Self {
        let url = db.url();
        let mut all = vec!["--store", "postgres", "--database-url", &url];
        all.extend_from_slice(args);
        let mut s = Self::start(&all);
        s.db = Some(db.clone());
        s
    }

    /// On `store`, with `args` besides; `None` when its service is not
    /// there.
    pub fn on(store: Store, args: &[&str]) -> Option<Self> {
        match store {
            Store::Memory => {
                let mut all = vec!["--store", "memory"];
                all.extend_from_slice(args);
                Some(Self::start(&all))
            }
            Store::Postgres => {
                let db = std::sync::Arc::new(PgDatabase::create()?);
                Some(Self::on_database(&db, args))
            }
        }
    }

    /// On the memory store.
    pub fn memory() -> Self {
        Self::start(&["--store", "memory"])
    }

    /// On the embedded store in `dir`.
    pub fn embedded(dir: &Path) -> Self {
        Self::start(&[
            "--store",
            "embedded",
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
        ])
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn client(&self) -> QueueServiceClient<Channel> {
        QueueServiceClient::connect(self.url())
            .await
            .expect("connect")
    }

    /// The server's `/metrics` page (Prometheus text).
    pub fn metrics(&self) -> String {
        self.http_get("/metrics")
    }

    /// `GET path` on the server's HTTP listener: the whole response, status
    /// line and headers included.
    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let http = self.http.expect("the server serves HTTP");
        let mut s = std::net::TcpStream::connect(http).expect("connect http");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        body
    }

    /// Waits (up to 10 s) until `metric{queue="QUEUE"}` reads `value`: a
    /// readiness signal, e.g. `workq_lease_calls_waiting` for a parked call.
    pub async fn wait_for_gauge(&self, metric: &str, queue: &str, value: u64) {
        let line = format!("{metric}{{queue=\"{queue}\"}} {value}");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let page = self.metrics();
            if page.lines().any(|l| l == line) {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "no `{line}` within 10 s:\n{page}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Sends `sig` and waits up to `limit` for the exit; `None` if the
    /// server is still running then (it is killed when dropped).
    #[allow(dead_code)] // not every test binary uses it
    pub fn signal_and_wait_for(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A queue name no other test uses.
#[allow(unused_imports)] // not every test binary names a queue
pub use workq_testkit::unique_name as unique_queue;

/// The stores the store-agnostic tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Memory,
    Postgres,
}

/// A PostgreSQL database of one test's own on the machine's PostgreSQL,
/// dropped (with its connections) when dropped.
pub struct PgDatabase {
    pub name: String,
}

fn psql(sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v"])
        .arg("ON_ERROR_STOP=1")
        .args(["-c", sql])
        .output()
        .expect("run psql")
}

impl PgDatabase {
    /// A new database; `None` when PostgreSQL or psql is not there.
    pub fn create() -> Option<Self> {
        if !workq_testkit::postgres() || !workq_testkit::command("psql", "postgresql-client") {
            return None;
        }
        let name = workq_testkit::unique_name("wq_test").replace('-', "_");
        let out = psql(&format!("CREATE DATABASE {name}"));
        assert!(out.status.success(), "create database {name}: {out:?}");
        Some(PgDatabase { name })
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Runs `sql` in this database.
    pub fn execute(&self, sql: &str) -> std::process::Output {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &self.name, "-v"])
            .arg("ON_ERROR_STOP=1")
            .args(["-tAc", sql])
            .output()
            .expect("run psql")
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The counters of queue `q`.
pub async fn stats(c: &mut QueueServiceClient<Channel>, q: &str) -> workq_proto::v1::QueueStats {
    c.get_queue(workq_proto::v1::GetQueueRequest { name: q.into() })
        .await
        .expect("get_queue")
        .into_inner()
        .queue
        .and_then(|q| q.stats)
        .expect("stats")
}
