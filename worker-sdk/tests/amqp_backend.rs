//! The `amqp://` backend against the machine's real RabbitMQ (127.0.0.1:5672,
//! guest/guest): queues filled with the tutorial's `amqp-publish` (Debian's
//! `amqp-tools`) and worked by `wq consume`, and the other way round.
//!
//! Every test uses queue names of its own and deletes its queues at the end.
//! Without a RabbitMQ there (or without `amqp-tools`), each test says it is
//! skipped (`workq_testkit`; it fails when `WQ_REQUIRE_SERVICES` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    AMQP_URL, Cleanup, Output, Seen, Wq, assert_each_once, counting, run_at, run_program, unique,
};
use worker_sdk::{LeaseOptions, Queue, Stats, StopReason, WorkerOptions};

/// The broker as the tutorial's `amqp-*` tools are given it.
const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672";

const FRUITS: [&str; 8] = [
    "apple", "banana", "cherry", "date", "fig", "grape", "lemon", "melon",
];

/// RabbitMQ and the tutorial's `amqp-*` tools, or the test is skipped (fails
/// under `WQ_REQUIRE_SERVICES`).
fn rabbitmq_up() -> bool {
    workq_testkit::rabbitmq()
        && workq_testkit::command("amqp-publish", "apt-get install amqp-tools")
}

/// A queue name of the test's own (`prefix` and a number), deleted when the
/// guard drops; `None` when the test is skipped (no RabbitMQ).
fn rabbitmq_queue(prefix: &str) -> Option<(String, Cleanup)> {
    rabbitmq_up().then(|| Cleanup::unique(AMQP_URL, prefix))
}

async fn queue(name: &str) -> Queue {
    Wq::new(AMQP_URL, name).queue().await
}

async fn stats(name: &str) -> Stats {
    Wq::new(AMQP_URL, name).stats().await
}

/// `amqp-declare-queue -d` and one `amqp-publish -p` per item, as the tutorial does.
async fn tutorial_fill(q: &str, items: &[&str]) {
    let out = run_program("amqp-declare-queue", &["--url", BROKER_URL, "-q", q, "-d"]).await;
    assert!(out.status.success(), "{out:?}");
    for item in items {
        let out = run_program(
            "amqp-publish",
            &["--url", BROKER_URL, "-r", q, "-p", "-b", item],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
    }
}

/// The tutorial's `amqp-consume -c 1 cat`: one message of `q`, which must work.
async fn amqp_consume_one(q: &str) -> Output {
    let args = ["--url", BROKER_URL, "-q", q, "-c", "1", "--", "cat"];
    let out = run_program("amqp-consume", &args).await;
    assert!(out.status.success(), "{out:?}");
    out
}

async fn cleanup(q: &str) {
    queue(q).await.delete().await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_publish_fill_is_worked_one_message_per_consume_c_1() {
    let Some((q, _cleanup)) = rabbitmq_queue("coarse") else {
        return;
    };
    tutorial_fill(&q, &FRUITS).await;
    assert_eq!(stats(&q).await.pending, 8);

    // The coarse Job: one `-c 1` consumer per item; RabbitMQ hands them out in order.
    for (i, fruit) in FRUITS.iter().enumerate() {
        let out = run_at(AMQP_URL, &q, &["consume", "-c", "1", "--", "cat"]).await;
        assert_eq!(out.code(), 0, "{out:?}");
        assert_eq!(out.stdout, *fruit);
        let s = stats(&q).await;
        assert_eq!(s.pending, 7 - i as u64, "acknowledged once cat exited 0");
    }
    // Nothing left: with --until-empty a consumer exits 0 at once.
    let out = run_at(
        AMQP_URL,
        &q,
        &["consume", "-c", "1", "--until-empty", "--", "cat"],
    )
    .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_acknowledged_only_after_success_so_a_killed_worker_loses_nothing() {
    let Some((q, _cleanup)) = rabbitmq_queue("killed") else {
        return;
    };
    tutorial_fill(&q, &["precious"]).await;

    let w = Wq::new(AMQP_URL, &q);
    let mut a = w.spawn_sh(&["consume", "-c", "1"], "echo \"pgid $$ $(cat)\"; sleep 60");
    let line = a.wait_for("pgid").await;
    let (pgid, item) = line.split_once(' ').expect("pgid and item");
    assert_eq!(item, "precious");
    let pgid = a.own_group(pgid);
    // Held, not acknowledged: no longer ready, not gone either.
    assert_eq!(stats(&q).await.pending, 0);

    a.kill_with_program(pgid).await;

    // The broker requeued it when the connection died; the tutorial's own
    // consumer gets it.
    let out = amqp_consume_one(&q).await;
    assert_eq!(out.stdout, "precious");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_is_redelivered_then_dead_lettered_after_the_limit() {
    let Some((q, _cleanup)) = rabbitmq_queue("failing") else {
        return;
    };
    tutorial_fill(&q, &["bad"]).await;
    let w = Wq::new(AMQP_URL, &q);
    let program = "echo \"attempt $WQ_ATTEMPT: $(cat)\"; exit 1";
    for attempt in 1..=5 {
        let out = w.sh(&["consume", "-c", "1"], program).await;
        assert_eq!(out.stdout, format!("attempt {attempt}: bad\n"), "{out:?}");
        // 3: failed, back in the queue; 4: dead (the fifth attempt was the last).
        assert_eq!(out.code(), if attempt < 5 { 3 } else { 4 }, "{out:?}");
    }
    let s = stats(&q).await;
    assert_eq!((s.pending, s.dead), (0, 1));
    let dead = format!("{q}.dead");
    let out = run_program("amqp-get", &["--url", BROKER_URL, "-q", &dead]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "bad");

    // A fatal exit code: dead at once. AMQP cannot list dead items, and says so;
    // it can send them all back.
    tutorial_fill(&q, &["worse"]).await;
    let fatal = ["consume", "-c", "1", "--fatal-exit-codes", "42"];
    let out = w.sh(&fatal, "exit 42").await;
    assert_eq!(out.code(), 4, "{out:?}");
    let out = run_at(AMQP_URL, &q, &["dead"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.starts_with(&format!(
            "wq: error: the amqp:// backend cannot list dead items: they are the messages of queue {q}.dead"
        )),
        "{out:?}"
    );
    let out = run_at(AMQP_URL, &q, &["dead", "--requeue"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, format!("requeued 1 dead items of queue {q}\n"));
    let out = w
        .sh(&["consume", "-c", "1"], "echo \"$WQ_ATTEMPT $(cat)\"")
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "1 worse\n", "requeued with its attempts reset");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wq_push_publishes_persistent_messages_that_amqp_consume_reads() {
    let Some((q, _cleanup)) = rabbitmq_queue("pushed") else {
        return;
    };
    let out = run_at(AMQP_URL, &q, &["push", "first", "second"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, format!("pushed 2 items to queue {q}\n"));

    let listed = run_program(
        "rabbitmqctl",
        &[
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "durable",
            "messages_persistent",
        ],
    )
    .await;
    if listed.status.success() {
        let row = listed
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&q.as_str()))
            .expect("the queue is listed");
        assert_eq!(
            row[1..],
            ["true", "2"],
            "a durable queue, persistent messages"
        );
    } else {
        eprintln!(
            "not checking persistence: rabbitmqctl failed: {}",
            listed.stderr.trim()
        );
    }

    let out = amqp_consume_one(&q).await;
    assert_eq!(out.stdout, "first");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_not_empty_while_another_worker_holds_a_message() {
    let Some((q, _cleanup)) = rabbitmq_queue("held") else {
        return;
    };
    tutorial_fill(&q, &["held"]).await;

    // A holds the message until the gate opens, then fails it.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    let w = Wq::new(AMQP_URL, &q);
    let mut a = w.spawn_sh(
        &["consume", "-c", "1"],
        format!(
            "echo \"a $(cat)\"; while [ ! -e {} ]; do sleep 0.05; done; exit 1",
            gate.display()
        ),
    );
    assert_eq!(a.wait_for("a").await, "held");

    // Nothing is ready, yet the queue is not empty: A holds a message.
    let leased = queue(&q)
        .await
        .lease(&LeaseOptions::default())
        .await
        .expect("lease");
    assert!(leased.items.is_empty());
    assert!(!leased.empty, "a held message makes the queue not empty");

    // B works until empty: it must wait for A's message to come back.
    let b = w.spawn_sh(
        &["consume", "--until-empty"],
        "echo \"b $WQ_ATTEMPT $(cat)\"",
    );
    std::fs::write(&gate, b"").expect("gate opens");
    let (a_status, _) = a.finish().await;
    assert_eq!(a_status.code(), Some(3), "A's item failed");
    let (b_status, b_out) = b.finish().await;
    assert_eq!(b_status.code(), Some(0));
    assert_eq!(b_out, ["b 2 held"]);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_loop_completes_each_of_300_messages_once() {
    let Some((q, _cleanup)) = rabbitmq_queue("loop") else {
        return;
    };
    let wq = queue(&q).await;
    wq.push((1..=300).map(|n| n.to_string()))
        .await
        .expect("push");
    let seen = Seen::default();
    let opts = WorkerOptions::default()
        .concurrency(8)
        .until_empty(true)
        .handle_signals(false);
    let summary = wq.work(opts, counting(&seen)).await.expect("works");
    assert_eq!(summary.stop, StopReason::Empty);
    assert_eq!(summary.completed, 300);
    assert_each_once(&seen, 300);
    assert_eq!(wq.stats().await.expect("stats").pending, 0);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_amqp_cannot_do_is_said_plainly() {
    let Some((q, _cleanup)) = rabbitmq_queue("cannot") else {
        return;
    };
    tutorial_fill(&q, &["x"]).await;
    let cases: [(&[&str], &str); 4] = [
        (
            &["seal"],
            "wq: error: the amqp:// backend cannot seal a queue: AMQP has no such notion; stop workers when the queue is empty (wq consume --until-empty) or after N items (-c N)",
        ),
        (
            &["consume", "--", "cat"],
            "wq: error: the amqp:// backend cannot work until the queue is drained: an AMQP queue cannot be sealed, so it is never drained; stop when it is empty (until_empty; wq consume --until-empty) or after N items (max_items; wq consume -c N)",
        ),
        (
            &["push", "--dedupe", "y"],
            "wq: error: the amqp:// backend cannot deduplicate items (--dedupe): a RabbitMQ queue has no idempotency keys",
        ),
        (
            &["watch"],
            "wq: error: the amqp:// backend cannot watch a queue until it is drained: an AMQP queue cannot be sealed, so it is never drained",
        ),
    ];
    for (args, want) in cases {
        let out = run_at(AMQP_URL, &q, args).await;
        assert_eq!(out.code(), 1, "{args:?}: {out:?}");
        assert_eq!(out.stderr.trim(), want, "{args:?}");
    }
    // Nothing was taken or added by any of them.
    assert_eq!(stats(&q).await.pending, 1);

    let out = run_at("amqp://guest:guest@127.0.0.1:1/%2f", &q, &["stats"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr.starts_with(
            "wq: error: queue server unreachable at amqp://guest:***@127.0.0.1:1/%2f: Connection refused"
        ),
        "{out:?}"
    );
    let out = run_at(AMQP_URL, &unique("missing"), &["stats"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_nothing_twice_while_the_lease_is_renewed() {
    // AMQP leases last as long as the connection: a program far longer than
    // its lease keeps its message, and a second consumer gets nothing.
    let Some((q, _cleanup)) = rabbitmq_queue("long") else {
        return;
    };
    tutorial_fill(&q, &["long"]).await;
    let w = Wq::new(AMQP_URL, &q);
    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--lease", "300ms"],
        "echo start; sleep 2; echo \"done $(cat)\"",
    );
    assert_eq!(a.line().await, "start");
    let out = w
        .sh(&["consume", "--until-empty"], "echo \"b $(cat)\"")
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "", "nobody else got the message");
    let (status, rest) = a.finish().await;
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert_eq!(rest, ["done long"]);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_does_not_cost_the_leases_held_on_another() {
    let Some((q, _cleanup)) = rabbitmq_queue("present") else {
        return;
    };
    tutorial_fill(&q, &["kept"]).await;
    let client = worker_sdk::connect(AMQP_URL).await.expect("connects");
    let present = client.queue(&q).expect("name");
    let leased = present
        .lease(&LeaseOptions::default())
        .await
        .expect("lease");
    assert_eq!(leased.items.len(), 1);

    let missing = client.queue(&unique("absent")).expect("name");
    let err = missing
        .lease(&LeaseOptions::default())
        .await
        .expect_err("no such queue");
    assert!(
        matches!(err, worker_sdk::Error::QueueNotFound { .. }),
        "{err}"
    );
    // The message held on `present` is still held, and completes.
    present
        .complete(&[leased.items[0].token.clone()])
        .await
        .expect("still held");
    assert_eq!(present.stats().await.expect("stats").pending, 0);
}
