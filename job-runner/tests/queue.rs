//! Work-queue Jobs end to end: the in-process queue service, `wq consume`
//! in the pods, counters and dead items in the summary.

mod common;

use common::{example, job_runner, outcome, write};

#[test]
fn fine_queue_runs_where_no_wq_is_installed() {
    // A fresh clone has no `wq` next to job-runner nor on PATH: the runner
    // then serves `wq consume` itself.
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("job-runner");
    std::fs::copy(env!("CARGO_BIN_EXE_job-runner"), &exe).expect("copy job-runner");
    let path: Vec<_> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.join("wq").is_file())
                .collect()
        })
        .unwrap_or_default();
    let path = std::env::join_paths(path).expect("PATH");
    let out = job_runner()
        .env("PATH", &path)
        .arg("run")
        .args(["-f", &example("fine-queue.yaml"), "--local", "-o", "json"])
        .output()
        .expect("runs");
    // The copy, not the original, so that no `wq` sits next to it.
    let copy = std::process::Command::new(&exe)
        .current_dir(common::repo())
        .env("PATH", &path)
        .args([
            "run",
            "-f",
            &example("fine-queue.yaml"),
            "--local",
            "-o",
            "json",
        ])
        .output()
        .expect("copy runs");
    for o in [out, copy] {
        let r = common::Run::from(o);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let job = &r.jobs()[0];
        assert_eq!(outcome(job).0, "Complete");
        let worked = r
            .pod_lines()
            .iter()
            .filter(|l| l.starts_with("Working on "))
            .count();
        assert_eq!(worked, 9, "{}", r.stderr);
    }
}

#[test]
fn dead_items_are_listed_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    // "bad" is fatal (exit 4, --fatal-exit-codes): the item goes dead and
    // `wq consume` exits 4; the policy ignores that pod, a replacement
    // drains the rest.
    let manifest = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: with-dead\n  annotations:\n    workq.dev/queue: dq\n    workq.dev/items: good1 bad good2\nspec:\n  parallelism: 1\n  backoffLimit: 0\n  podFailurePolicy:\n    rules:\n    - action: Ignore\n      onExitCodes: {operator: In, values: [4]}\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        command: [wq, consume, --fatal-exit-codes, \"4\", --, sh, -c, 'read i; echo \"got $i\"; [ \"$i\" != bad ] || exit 4']\n";
    let f = write(dir.path(), "j.yaml", manifest);
    let r = common::run(&["run", "-f", &f, "--local"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("3 enqueued / 2 completed / 1 dead"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Dead Items:"), "{}", r.stdout);
    let dead = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("\"bad\" after "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(dead.contains('4'), "the reason names the exit code: {dead}");
}

#[test]
fn external_queue_url_is_used_as_given() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt
        .block_on(queue_server::start(queue_server::ServerConfig::memory()))
        .expect("server starts");
    let url = format!("grpc://{}", server.grpc_addr());
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: ext\n  annotations:\n    workq.dev/queue: extq\n    workq.dev/items: x y\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        command: [sh, -c, 'echo \"$WQ_URL $WQ_QUEUE\"; wq consume -- cat']\n";
    let f = write(dir.path(), "j.yaml", manifest);
    let r = common::run(&[
        "run",
        "-f",
        &f,
        "--local",
        "--queue-url",
        &url,
        "-o",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.pod_lines().contains(&format!("{url} extq")),
        "{}",
        r.stderr
    );
    let stats = rt.block_on(async {
        let client = worker_sdk::connect(&url).await.expect("connect");
        client
            .queue("extq")
            .expect("queue")
            .stats()
            .await
            .expect("stats")
    });
    assert_eq!(
        (stats.enqueued, stats.completed, stats.drained),
        (2, 2, true)
    );
    rt.block_on(server.shutdown()).expect("shutdown");
}
