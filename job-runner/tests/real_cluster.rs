//! On a real cluster (kind or k3d), only when `KUBECONFIG` is set: applies
//! `deploy/`, runs the coarse and fine work-queue examples through
//! `job-runner run` (no `--local`) in a fresh namespace, and checks with the
//! queue service that every item was processed. Elsewhere it says it was
//! skipped (`workq_testkit::cluster`).
//!
//! Before it (see `deploy/README.md`): build the images `workq/queue-server:0.1.0`
//! and `workq/wq:0.1.0` and load them into the cluster (`kind load
//! docker-image …`). The examples' images are replaced by `busybox:1.36`
//! (`WORKQ_E2E_IMAGE` to change it), which has the `sh` they run.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{job_runner, repo};

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl {args:?}: {e} (is kubectl installed?)"));
    assert!(
        out.status.success(),
        "kubectl {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl port-forward` to the queue service; the local port is read from
/// its first line of output (no waiting on a timer).
struct PortForward {
    child: Child,
    port: u16,
}

impl PortForward {
    fn start() -> Self {
        let mut child = Command::new("kubectl")
            .args(["-n", "workq", "port-forward", "svc/workq", ":50051"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl port-forward starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("port-forward prints its port");
        // "Forwarding from 127.0.0.1:41234 -> 50051"
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected port-forward output: {line:?}"));
        PortForward { child, port }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

/// Copies an example with its image, queue and Job names made unique for
/// this run; returns the manifest's path and the queue's name.
fn example_copy(dir: &std::path::Path, file: &str, queue: &str, suffix: &str) -> (String, String) {
    let image = std::env::var("WORKQ_E2E_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
    let text = std::fs::read_to_string(repo().join("deploy/examples").join(file)).expect("example");
    let new_queue = format!("{queue}-{suffix}");
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("image:") {
                format!("{}image: {image}", &l[..l.len() - l.trim_start().len()])
            } else {
                l.replace(
                    &format!("workq.dev/queue: {queue}"),
                    &format!("workq.dev/queue: {new_queue}"),
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write");
    let items = repo().join("deploy/examples/fine-queue-items.txt");
    std::fs::copy(&items, dir.join("fine-queue-items.txt")).expect("items file");
    (path.display().to_string(), new_queue)
}

#[test]
fn coarse_and_fine_examples_run_on_a_real_cluster() {
    // On a kind or k3d cluster (deploy/README.md): set KUBECONFIG and run
    // `cargo test -p job-runner --test real_cluster`.
    if workq_testkit::cluster().is_none() {
        return;
    }
    kubectl(&["apply", "-k", &repo().join("deploy").display().to_string()]);
    kubectl(&[
        "-n",
        "workq",
        "rollout",
        "status",
        "statefulset/workq",
        "--timeout=300s",
    ]);
    let suffix = job_runner::pod::random_suffix(5);
    let ns = Namespace(format!("workq-e2e-{suffix}"));
    kubectl(&["create", "namespace", &ns.0]);
    let pf = PortForward::start();
    let url = format!("grpc://127.0.0.1:{}", pf.port);
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (file, queue, want) in [
        ("coarse-queue.yaml", "job1", 8),
        ("fine-queue.yaml", "job2", 9),
    ] {
        let (path, queue) = example_copy(dir.path(), file, queue, &suffix);
        let out = job_runner()
            .args([
                "run",
                "-f",
                &path,
                "-n",
                &ns.0,
                "--queue-url",
                &url,
                "--timeout",
                "10m",
                "-o",
                "json",
            ])
            .output()
            .expect("job-runner starts");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{file}:\n{stderr}");
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let conditions = job["status"]["conditions"].to_string();
        assert!(conditions.contains("\"Complete\""), "{file}: {conditions}");
        let stats = runtime.block_on(async {
            let client = worker_sdk::connect(&url).await.expect("connect");
            client
                .queue(&queue)
                .expect("queue")
                .stats()
                .await
                .expect("stats")
        });
        assert_eq!(
            (stats.enqueued, stats.completed, stats.dead),
            (want, want, 0),
            "{file}: {stats:?}"
        );
        assert!(stats.drained, "{file}: {stats:?}");
    }
}
