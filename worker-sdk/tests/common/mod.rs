//! Shared test harness: a real queue server in-process on an ephemeral port, the
//! real `wq` binary, and child processes that are killed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use worker_sdk::{Client, Queue, Stats};

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
        self.client().await.queue(name).expect("valid name")
    }

    /// `wq` with `--url` and `-q` set through the environment, as a Job would.
    pub fn wq(&self, queue: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wq"));
        cmd.env("WQ_URL", &self.url)
            .env("WQ_QUEUE", queue)
            .env_remove("WQ_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `wq ARGS...` to its end, capturing its output.
    pub async fn run(&self, queue: &str, args: &[&str]) -> Output {
        let out = self.wq(queue).args(args).output().await.expect("wq runs");
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `wq stats --json`, parsed.
    pub async fn stats_json(&self, queue: &str) -> serde_json::Value {
        let out = self.run(queue, &["stats", "--json"]).await;
        assert_eq!(out.code(), 0, "{out:?}");
        serde_json::from_str(out.stdout.trim()).expect("stats --json is JSON")
    }

    pub async fn stats(&self, queue: &str) -> Stats {
        self.queue(queue).await.stats().await.expect("stats")
    }
}

/// A finished `wq`.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
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

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
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
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(*g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A queue name unique within this test process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
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
    let out = wq_at(url, queue)
        .args(args)
        .output()
        .await
        .expect("wq runs");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a program to its end, capturing its output.
pub async fn run_program(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
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
