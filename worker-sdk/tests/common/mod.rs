//! Shared test harness: a real queue server in-process on an ephemeral port, the
//! real `wq` binary, and child processes that are killed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use worker_sdk::{Client, Job, Queue, Stats, WorkError};

/// A queue server for one test.
pub struct TestServer {
    pub server: queue_server::RunningServer,
    pub url: String,
}

impl TestServer {
    /// A memory-store server on 127.0.0.1:0, listening when this returns.
    pub async fn start() -> TestServer {
        let server = queue_server::start(queue_server::ServerConfig::memory())
            .await
            .expect("server starts");
        let url = format!("grpc://{}", server.grpc_addr());
        TestServer { server, url }
    }

    pub async fn client(&self) -> Client {
        worker_sdk::connect(&self.url).await.expect("connects")
    }

    pub async fn queue(&self, name: &str) -> Queue {
        self.at(name).queue().await
    }

    /// `wq` with `--url` and `-q` set through the environment, as a Job would.
    pub fn wq(&self, queue: &str) -> Command {
        wq_at(&self.url, queue)
    }

    /// Runs `wq ARGS...` to its end, capturing its output.
    pub async fn run(&self, queue: &str, args: &[&str]) -> Output {
        run_at(&self.url, queue, args).await
    }

    /// `wq` on `queue` of this server.
    pub fn at(&self, queue: &str) -> Wq {
        Wq::new(&self.url, queue)
    }

    /// `wq stats --json`, parsed.
    pub async fn stats_json(&self, queue: &str) -> serde_json::Value {
        let out = self.run(queue, &["stats", "--json"]).await;
        assert_eq!(out.code(), 0, "{out:?}");
        serde_json::from_str(out.stdout.trim()).expect("stats --json is JSON")
    }

    pub async fn stats(&self, queue: &str) -> Stats {
        self.at(queue).stats().await
    }
}

/// A finished `wq`.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// A running `wq consume` whose standard output is read line by line.
pub struct Running {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
    /// Process groups the test learned of (programs print `$$`), killed on drop.
    pub groups: Vec<i32>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("wq consume starts");
        let stdout = child.stdout.take().expect("piped");
        Running {
            child,
            lines: BufReader::new(stdout).lines(),
            groups: Vec::new(),
        }
    }

    /// The next line of output (panics at end of output).
    pub async fn line(&mut self) -> String {
        self.lines
            .next_line()
            .await
            .expect("reads")
            .expect("a line before the end of output")
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    pub async fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line().await;
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    }

    /// Notes a program's process group (`pgid` as the program printed `$$`),
    /// killed on drop; answers it.
    pub fn own_group(&mut self, pgid: &str) -> i32 {
        let pgid: i32 = pgid.parse().expect("a pid");
        self.groups.push(pgid);
        pgid
    }

    /// Waits for the program's `pgid $$` line and owns that group.
    pub async fn wait_for_group(&mut self) -> i32 {
        let pgid = self.wait_for("pgid").await;
        self.own_group(&pgid)
    }

    /// Kills `wq` and its program's group at once, as when a node dies or a
    /// container is killed; checks that `wq` died of the signal.
    pub async fn kill_with_program(self, pgid: i32) {
        self.signal(Signal::SIGKILL);
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL)
            .expect("program group killed");
        let (status, _) = self.finish().await;
        assert_eq!(status.code(), None, "killed by a signal");
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal sent");
    }

    /// Waits for the end; answers the exit status and the rest of the output.
    pub async fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let mut rest = Vec::new();
        while let Some(l) = self.lines.next_line().await.expect("reads") {
            rest.push(l);
        }
        let status = self.child.wait().await.expect("waits");
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for g in &self.groups {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*g), Signal::SIGKILL);
        }
    }
}

/// A queue name unique within this test process.
#[allow(unused_imports)] // not every test binary names a queue
pub use workq_testkit::unique_name as unique;

/// How many times the worker loop handed each payload over.
pub type Seen = Arc<Mutex<BTreeMap<String, u32>>>;

/// A worker-loop handler that counts each payload in `seen` and completes it.
pub fn counting(
    seen: &Seen,
) -> impl Fn(Job) -> std::future::Ready<Result<(), WorkError>> + Send + Sync + 'static {
    let seen = seen.clone();
    move |job: Job| {
        let item = String::from_utf8_lossy(job.payload()).into_owned();
        *seen.lock().expect("lock").entry(item).or_default() += 1;
        std::future::ready(Ok(()))
    }
}

/// Checks that `seen` holds `n` payloads, each handed over exactly once.
pub fn assert_each_once(seen: &Seen, n: usize) {
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), n);
    assert!(
        seen.values().all(|c| *c == 1),
        "an item was worked twice: {:?}",
        seen.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
}

/// The machine's Redis, as the tests of the `redis://` backend use it.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The machine's RabbitMQ (guest/guest, default vhost).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `wq` with `--url` and `-q` set through the environment.
pub fn wq_at(url: &str, queue: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wq"));
    cmd.env("WQ_URL", url)
        .env("WQ_QUEUE", queue)
        .env_remove("WQ_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `wq ARGS...` against `url` to its end, capturing its output.
pub async fn run_at(url: &str, queue: &str, args: &[&str]) -> Output {
    let out = wq_at(url, queue).args(args).output().await;
    out.expect("wq runs").into()
}

/// Runs a program to its end, capturing its output.
pub async fn run_program(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    out.unwrap_or_else(|e| panic!("{program} runs: {e}")).into()
}

/// `wq` against one queue at one URL (any backend's).
#[derive(Debug, Clone)]
pub struct Wq {
    pub url: String,
    pub queue: String,
}

impl Wq {
    /// `wq` on `queue` at `url`.
    pub fn new(url: &str, queue: &str) -> Wq {
        Wq {
            url: url.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// The `wq` command, not started yet.
    pub fn command(&self) -> Command {
        wq_at(&self.url, &self.queue)
    }

    /// Runs `wq ARGS...` to its end, capturing its output.
    pub async fn run(&self, args: &[&str]) -> Output {
        run_at(&self.url, &self.queue, args).await
    }

    /// Runs `wq ARGS... -- sh -c SCRIPT` to its end, capturing its output.
    pub async fn sh(&self, args: &[&str], script: &str) -> Output {
        let mut cmd = self.command();
        cmd.args(args).args(["--", "sh", "-c", script]);
        cmd.output().await.expect("wq runs").into()
    }

    /// Starts `wq ARGS... -- sh -c SCRIPT`, its output read line by line.
    pub fn spawn_sh(&self, args: &[&str], script: impl AsRef<std::ffi::OsStr>) -> Running {
        let mut cmd = self.command();
        cmd.args(args).args(["--", "sh", "-c"]).arg(script);
        Running::spawn(cmd)
    }

    /// The queue, through the SDK.
    pub async fn queue(&self) -> Queue {
        let client = worker_sdk::connect(&self.url).await.expect("connects");
        client.queue(&self.queue).expect("valid name")
    }

    /// The queue's counters, through the SDK.
    pub async fn stats(&self) -> Stats {
        self.queue().await.stats().await.expect("stats")
    }
}

/// Deletes a queue (and all its keys or companion queues) when dropped, even
/// when the test panicked, so that a failing test leaves nothing behind.
pub struct Cleanup {
    url: String,
    queue: String,
}

impl Cleanup {
    pub fn new(url: &str, queue: &str) -> Cleanup {
        Cleanup {
            url: url.to_owned(),
            queue: queue.to_owned(),
        }
    }

    /// A [`unique`] queue name at `url`, and its cleanup.
    pub fn unique(url: &str, prefix: &str) -> (String, Cleanup) {
        let queue = unique(prefix);
        let cleanup = Cleanup::new(url, &queue);
        (queue, cleanup)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, queue) = (self.url.clone(), self.queue.clone());
        // A runtime of its own: drop may run inside (or after) the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(client) = worker_sdk::connect(&url).await
                    && let Ok(q) = client.queue(&queue)
                    && let Err(e) = q.delete().await
                {
                    eprintln!("cleanup of queue {queue} failed: {e}");
                }
            });
        })
        .join();
    }
}

/// A TCP proxy whose connections a test can cut (not every test uses it).
#[allow(unused_imports)]
pub use workq_testkit::Proxy;
