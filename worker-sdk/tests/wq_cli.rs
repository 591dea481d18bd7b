//! `wq` end to end: the real binary against a real server started in-process,
//! running real programs and receiving real signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Running, TestServer, Wq, unique};
use nix::sys::signal::Signal;

const FRUITS: [&str; 8] = [
    "apple", "banana", "cherry", "date", "fig", "grape", "lemon", "melon",
];

/// A server and a queue named after `prefix`, filled by `wq ARGS...` (exit 0).
async fn filled(prefix: &str, args: &[&str]) -> (TestServer, Wq) {
    let t = TestServer::start().await;
    let w = t.at(&unique(prefix));
    let out = w.run(args).await;
    assert_eq!(out.code(), 0, "{out:?}");
    (t, w)
}

/// Waits for `a`, told to stop with SIGTERM, to exit 128 + SIGTERM, and checks
/// that its item went back to the queue untried.
async fn assert_released_after_sigterm(w: &Wq, a: Running) {
    let (status, _) = a.finish().await;
    assert_eq!(status.code(), Some(143));
    let s = w.stats().await;
    assert_eq!(
        (s.pending, s.leased, s.retried),
        (1, 0, 0),
        "released: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_consume_one_prints_the_first_item() {
    let t = TestServer::start().await;
    let q = unique("coarse");
    let out = t.run(&q, &["push", "apple", "banana", "cherry"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("pushed 3 items"), "{out:?}");

    let out = t.run(&q, &["consume", "-c", "1", "--", "cat"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "apple");

    let s = t.stats(&q).await;
    assert_eq!((s.completed, s.pending, s.leased), (1, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_single_item_consumers_processes_every_item_exactly_once() {
    let t = TestServer::start().await;
    let q = unique("coarse-loop");
    let mut args = vec!["push", "--seal"];
    args.extend(FRUITS);
    assert_eq!(t.run(&q, &args).await.code(), 0);

    // The Kubernetes tutorial's coarse Job: one `-c 1` consumer per item, until the queue is drained.
    let mut seen: Vec<String> = Vec::new();
    let mut runs = 0;
    while !t.stats(&q).await.drained {
        let out = t
            .at(&q)
            .sh(&["consume", "-c", "1"], "echo \"$(cat)\"")
            .await;
        assert_eq!(out.code(), 0, "{out:?}");
        seen.extend(out.stdout.lines().map(str::to_owned));
        runs += 1;
        assert!(runs <= FRUITS.len(), "more runs than items: {seen:?}");
    }
    seen.sort();
    let mut want: Vec<String> = FRUITS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);

    // Once drained, a coarse consumer exits 0 at once: nothing more will come.
    let out = t.run(&q, &["consume", "-c", "1", "--", "cat"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "");
    let s = t.stats(&q).await;
    assert_eq!((s.completed, s.retried, s.dead), (8, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_three_times_longer_than_its_lease_completes_once() {
    let (_t, w) = filled("renew", &["push", "--seal", "long"]).await;

    // Lease 2s, program runs 6s: only renewal (every 2/3 s) keeps the item.
    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--lease", "2s"],
        "echo \"start $WQ_ATTEMPT\"; sleep 6; echo \"done $(cat)\"",
    );
    assert_eq!(a.wait_for("start").await, "1");

    // Another consumer works the queue meanwhile and must get nothing.
    let b = w.spawn_sh(&["consume", "--lease", "2s"], "echo \"b got $(cat)\"");

    let (status, rest) = a.finish().await;
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert_eq!(rest, ["done long"]);
    let (status, b_out) = b.finish().await;
    assert_eq!(status.code(), Some(0), "consumer b exits 0 at drain");
    assert!(b_out.is_empty(), "nobody else got the item: {b_out:?}");

    let s = w.stats().await;
    assert_eq!((s.completed, s.retried, s.dead), (1, 0, 0));
    assert!(s.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_item_gives_the_item_back_as_its_next_attempt_when_its_work_stream_ends() {
    let (_t, w) = filled("kill9", &["push", "--seal", "precious"]).await;

    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--lease", "60s"],
        "echo \"pgid $$\"; sleep 60",
    );
    let pgid = a.wait_for_group().await;
    // As when a container is killed: wq and its program, at once.
    a.kill_with_program(pgid).await;

    // No release was sent, but the connection closed with the process: the
    // server ends its Work stream abnormally and gives back what it held at
    // once, counting the attempt — an item that keeps killing its worker
    // goes dead (queue-server/tests/stream_end.rs). A vanished node, whose
    // connection says nothing, loses the item until its lease runs out
    // (worker_loop.rs).
    let attempt = "echo \"attempt $WQ_ATTEMPT: $(cat)\"";
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        w.sh(&["consume", "-c", "1"], attempt),
    )
    .await
    .expect("given back well before the 60 s lease ran out");
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "attempt 2: precious\n");
    let s = w.stats().await;
    assert_eq!((s.completed, s.retried, s.dead), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_item_releases_it_at_once_without_counting_an_attempt() {
    let (_t, w) = filled("sigterm", &["push", "--seal", "x"]).await;

    // A 30 s lease: were the item not released, the next consumer would wait for it.
    // The program's own child reports the signal: it reached the whole group.
    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--lease", "30s"],
        concat!(
            "sh -c 'trap \"echo child stopped; exit 0\" TERM; ",
            "echo ready; while :; do sleep 0.1; done' & wait"
        ),
    );
    a.wait_for("ready").await;
    a.signal(Signal::SIGTERM);
    let (status, rest) = a.finish().await;
    assert_eq!(status.code(), Some(143), "128 + SIGTERM");
    assert_eq!(rest, ["child stopped"]);

    let s = w.stats().await;
    assert_eq!((s.pending, s.leased, s.retried), (1, 0, 0), "{s:?}");

    let out = w
        .sh(&["consume", "-c", "1"], "echo \"attempt $WQ_ATTEMPT\"")
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "attempt 1\n");
    assert_eq!(w.stats().await.completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_program_finish_within_the_grace_period() {
    let (_t, w) = filled("grace-ok", &["push", "--seal", "x"]).await;

    // The program finishes its item when told to stop: the item is completed.
    let mut a = w.spawn_sh(
        &["consume", "-c", "1"],
        "trap 'echo finishing; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
    );
    a.wait_for("ready").await;
    a.signal(Signal::SIGTERM);
    let (status, rest) = a.finish().await;
    assert_eq!(rest, ["finishing"]);
    assert_eq!(
        status.code(),
        Some(0),
        "its item was completed: -c 1 is done"
    );
    let s = w.stats().await;
    assert_eq!((s.completed, s.pending, s.retried), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_kills_a_program_still_running_after_the_grace_period() {
    let (_t, w) = filled("grace-over", &["push", "--seal", "x"]).await;

    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--grace", "1s"],
        "trap '' TERM; echo \"pgid $$\"; while :; do sleep 0.1; done",
    );
    a.wait_for_group().await;
    a.signal(Signal::SIGTERM);
    assert_released_after_sigterm(&w, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_grace_period_at_once() {
    let (_t, w) = filled("grace-cut", &["push", "--seal", "x"]).await;

    // A long grace period, and a program that notes SIGTERM but goes on.
    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--grace", "10m"],
        "trap 'echo got term' TERM; echo \"pgid $$\"; while :; do sleep 0.1; done",
    );
    a.wait_for_group().await;
    a.signal(Signal::SIGTERM);
    a.wait_for("got term").await;
    a.signal(Signal::SIGTERM);
    assert_released_after_sigterm(&w, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_exit_code_kills_the_item_and_dead_requeue_brings_it_back() {
    let (t, w) = filled("fatal", &["push", "--seal", "poison"]).await;
    let q = w.queue.clone();

    let fatal = ["consume", "-c", "1", "--fatal-exit-codes", "42,43"];
    let out = w.sh(&fatal, "exit 42").await;
    assert_eq!(out.code(), 4, "a fatal item was seen: {out:?}");
    let s = t.stats(&q).await;
    assert_eq!((s.dead, s.pending, s.retried), (1, 0, 0));
    assert!(s.drained, "sealed, nothing left to do");

    let out = t.run(&q, &["dead"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("exited with code 42"), "{out:?}");
    assert!(out.stdout.contains("poison"), "{out:?}");
    let out = t.run(&q, &["dead", "--json"]).await;
    let dead: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(dead[0]["payload"], "poison");
    assert!(
        dead[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("code 42")),
        "{dead}"
    );

    let out = t.run(&q, &["dead", "--requeue"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("requeued 1"), "{out:?}");
    let s = t.stats(&q).await;
    assert_eq!((s.dead, s.pending), (0, 1));

    let out = t.run(&q, &["consume", "--", "cat"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "poison");
    assert!(t.stats(&q).await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_makes_a_coarse_consumer_exit_non_zero() {
    let (_t, w) = filled("retry", &["push", "x"]).await;
    // Unlike amqp-consume, which exits 0 whatever its program did.
    let out = w.sh(&["consume", "-c", "1"], "exit 7").await;
    assert_eq!(out.code(), 3, "{out:?}");
    let s = w.stats().await;
    assert_eq!((s.retried, s.dead, s.completed), (1, 0, 0));
    assert_eq!(s.pending + s.delayed, 1, "back in the queue: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_consumers_work_2000_items_exactly_once_and_exit_at_drain() {
    let t = TestServer::start().await;
    let q = unique("fine");
    let out = t.run(&q, &["push", "--range", "1..2000", "--seal"]).await;
    assert_eq!(out.code(), 0, "{out:?}");

    let consumer = || {
        t.at(&q)
            .spawn_sh(&["consume", "--concurrency", "4"], "echo \"$(cat)\"")
    };
    let (a, b) = (consumer(), consumer());
    let ((sa, la), (sb, lb)) = tokio::join!(a.finish(), b.finish());
    assert_eq!(sa.code(), Some(0));
    assert_eq!(sb.code(), Some(0));

    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for line in la.iter().chain(&lb) {
        let n: u32 = line.parse().unwrap_or_else(|_| panic!("{line:?}"));
        *counts.entry(n).or_default() += 1;
    }
    assert_eq!(counts.len(), 2000, "every item was worked");
    assert!(counts.keys().copied().eq(1..=2000));
    assert!(counts.values().all(|&c| c == 1), "each exactly once");

    let s = t.stats_json(&q).await;
    for (key, want) in [
        ("enqueued", 2000),
        ("completed", 2000),
        ("pending", 0),
        ("delayed", 0),
        ("leased", 0),
        ("dead", 0),
    ] {
        assert_eq!(s[key], want, "{key} in {s}");
    }
    assert_eq!(s["sealed"], true);
    assert_eq!(s["drained"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reads_files_stdin_and_ranges() {
    let t = TestServer::start().await;
    let q = unique("push");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("items.txt");
    std::fs::write(&file, "one\ntwo\r\n\nthree\n").expect("write");
    let out = t
        .run(&q, &["push", "--file", file.to_str().expect("utf-8")])
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("pushed 3 items"), "{out:?}");

    let mut cmd = t.wq(&q);
    cmd.args(["push", "-", "--seal"])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"four\nfive\n").await.expect("write");
    }
    let out = child.wait_with_output().await.expect("wait");
    assert!(out.status.success(), "{out:?}");

    let out = t.run(&q, &["push", "--range", "1..3"]).await;
    assert_ne!(out.code(), 0, "a sealed queue takes no more items");
    assert!(out.stderr.contains("sealed"), "{out:?}");

    let out = t.run(&q, &["stats"]).await;
    assert_eq!(out.code(), 0);
    assert!(out.stdout.contains("enqueued   5"), "{}", out.stdout);
    assert!(out.stdout.contains("sealed     yes"), "{}", out.stdout);

    let out = t.at(&q).sh(&["consume"], "echo \"$(cat)\"").await;
    assert_eq!(out.stdout, "one\ntwo\nthree\nfour\nfive\n");

    let q2 = unique("range");
    let out = t.run(&q2, &["push", "--range", "1..=3", "--seal"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let out = t.at(&q2).sh(&["consume"], "echo \"$(cat)\"").await;
    assert_eq!(out.stdout, "1\n2\n3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_dedupe_makes_a_fill_step_safe_to_rerun() {
    let t = TestServer::start().await;
    let q = unique("dedupe");
    let out = t.run(&q, &["push", "--dedupe", "a", "b", "c"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("pushed 3 items"), "{out:?}");
    let out = t
        .run(&q, &["push", "--dedupe", "--seal", "a", "b", "c", "d"])
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("pushed 1 items"), "{out:?}");
    assert!(out.stdout.contains("(3 already there)"), "{out:?}");
    let s = t.stats(&q).await;
    assert_eq!((s.enqueued, s.sealed), (4, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_exit_non_zero() {
    let t = TestServer::start().await;

    let out = t.run("no-such-queue", &["stats"]).await;
    assert_eq!(out.code(), 1);
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = t
        .wq("q")
        .args(["--url", &format!("grpc://127.0.0.1:{port}")])
        .args(["--connect-timeout", "300ms", "stats"])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unreachable at grpc://127.0.0.1:"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = t
        .run("q", &["--url", "nats://127.0.0.1:4222", "stats"])
        .await;
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr
            .contains("unknown scheme \"nats\" (known: grpc, grpcs, redis, amqp)"),
        "{out:?}"
    );

    let out = t.run("Bad_Name", &["stats"]).await;
    assert_eq!(out.code(), 1);
    assert!(out.stderr.contains("invalid queue name"), "{out:?}");

    let out = t.run("q", &["consume", "-c", "1"]).await;
    assert_eq!(out.code(), 2, "no program: usage error: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_start_exits_127_and_loses_nothing() {
    let (_t, w) = filled("nostart", &["push", "x"]).await;
    let out = w
        .run(&["consume", "-c", "1", "--", "/nonexistent/program"])
        .await;
    assert_eq!(out.code(), 127, "{out:?}");
    assert!(
        out.stderr.contains("cannot start /nonexistent/program"),
        "{out:?}"
    );
    let s = w.stats().await;
    assert_eq!((s.pending, s.retried), (1, 0), "released untried: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_gets_the_item_in_its_environment() {
    let (_t, w) = filled("env", &["push", "x"]).await;
    let env = "echo \"$WQ_QUEUE $WQ_ATTEMPT ${#WQ_ITEM_ID}\"";
    let out = w.sh(&["consume", "-c", "1"], env).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields[..2], [w.queue.as_str(), "1"]);
    assert_ne!(fields[2], "0", "WQ_ITEM_ID is set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_reach_the_program_whole_and_need_not_be_read() {
    let t = TestServer::start().await;
    let q = unique("large");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    t.queue(&q)
        .await
        .push([payload.clone(), payload])
        .await
        .expect("push");
    // Bigger than a pipe's buffer: the program gets every byte...
    let out = t.run(&q, &["consume", "-c", "1", "--", "wc", "-c"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "300000");
    // ...or may ignore its input altogether.
    let out = t.run(&q, &["consume", "-c", "1", "--", "true"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(t.stats(&q).await.completed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_empty_stops_on_an_unsealed_queue() {
    let (_t, w) = filled("empty", &["push", "a", "b"]).await;
    let out = w.sh(&["consume", "--until-empty"], "echo \"$(cat)\"").await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "a\nb\n");
    let s = w.stats().await;
    assert!(!s.sealed && !s.drained && s.is_empty(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_when_the_queue_is_drained() {
    let t = TestServer::start().await;
    let q = unique("watch");
    assert_eq!(t.run(&q, &["push", "--range", "1..20"]).await.code(), 0);
    let mut w = t.wq(&q);
    w.args(["watch", "--json"]);
    let mut w = Running::spawn(w);
    let first: serde_json::Value = serde_json::from_str(&w.line().await).expect("JSON");
    assert_eq!(first["enqueued"], 20);

    assert_eq!(t.run(&q, &["seal"]).await.code(), 0);
    assert_eq!(t.run(&q, &["consume", "--", "true"]).await.code(), 0);
    let (status, rest) = w.finish().await;
    assert_eq!(status.code(), Some(0));
    let last: serde_json::Value =
        serde_json::from_str(rest.last().expect("updates")).expect("JSON");
    assert_eq!(last["completed"], 20);
    assert_eq!(last["drained"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_the_settings_given_and_stats_show_the_state() {
    let (_t, w) = filled(
        "wq-update",
        &["create", "--max-attempts", "3", "--lease", "45s"],
    )
    .await;
    let out = w.run(&["update", "--max-attempts", "7"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("max attempts 7"), "{out:?}");
    let info = w.queue().await.info().await.expect("info");
    assert_eq!(info.settings.max_attempts, Some(7));
    assert_eq!(
        info.settings.default_lease,
        Some(std::time::Duration::from_secs(45)),
        "the lease stays"
    );
    let out = w.run(&["stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(stats["state"], "empty", "{stats}");
    let out = w.run(&["stats"]).await;
    assert!(out.stdout.contains("state      empty"), "{out:?}");
}
