//! The `redis://` backend against the machine's real Redis (127.0.0.1:6379):
//! the Kubernetes tutorial's `rediswq.py` layout, filled as the tutorial fills it, worked by
//! `wq consume`, by the SDK's worker loop, and by the original `rediswq.py`.
//!
//! Every test uses queue names of its own and deletes its keys at the end, so
//! the tests run in parallel with each other and with anything else on that
//! Redis. Without a Redis there, each test says it is skipped (`workq_testkit`;
//! it fails when `WQ_REQUIRE_SERVICES` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    Cleanup, REDIS_URL, Running, Seen, Wq, assert_each_once, counting, run_at, run_program,
};
use redis::AsyncCommands;
use worker_sdk::backend::redis::item_digest;
use worker_sdk::{LeaseOptions, Leased, Queue, Stats, StopReason, WorkerOptions};

/// The tutorial's items (`rpush job2 "apple"` … `"orange"`).
const TUTORIAL_ITEMS: [&str; 9] = [
    "apple", "banana", "cherry", "date", "fig", "grape", "lemon", "melon", "orange",
];

/// Deletes a Redis ACL user when dropped.
struct AclUser(String);

impl Drop for AclUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "ACL", "DELUSER", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// Redis and `redis-cli`, or the test is skipped (fails under
/// `WQ_REQUIRE_SERVICES`).
fn redis_up() -> bool {
    workq_testkit::redis() && workq_testkit::command("redis-cli", "apt-get install redis-tools")
}

/// A queue name of the test's own (`prefix` and a number), deleted when the
/// guard drops; `None` when the test is skipped (no Redis).
fn redis_queue(prefix: &str) -> Option<(String, Cleanup)> {
    redis_up().then(|| Cleanup::unique(REDIS_URL, prefix))
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection to Redis")
}

async fn queue(name: &str) -> Queue {
    Wq::new(REDIS_URL, name).queue().await
}

/// Leases one item for 60 s, not waiting.
async fn lease_one(wq: &Queue) -> Leased {
    let opts = LeaseOptions {
        max_items: 1,
        lease: Some(Duration::from_secs(60)),
        wait: Duration::ZERO,
        max_bytes: None,
    };
    wq.lease(&opts).await.expect("lease")
}

async fn stats(name: &str) -> Stats {
    Wq::new(REDIS_URL, name).stats().await
}

/// Every key of queue `q` (its own and workq's).
async fn keys_of(q: &str) -> Vec<String> {
    let mut keys: Vec<String> = raw().await.keys(format!("{q}*")).await.expect("KEYS");
    keys.retain(|k| k == q || k.starts_with(&format!("{q}:")));
    keys.sort();
    keys
}

async fn cleanup(q: &str) {
    queue(q).await.delete().await.expect("delete");
    assert!(
        keys_of(q).await.is_empty(),
        "keys left: {:?}",
        keys_of(q).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_filled_with_redis_cli_rpush_is_worked_off_by_wq_consume() {
    let Some((q, _cleanup)) = redis_queue("rpush") else {
        return;
    };
    // Exactly as the tutorial fills it.
    for item in TUTORIAL_ITEMS {
        let out = run_program("redis-cli", &["-h", "127.0.0.1", "rpush", &q, item]).await;
        assert!(out.status.success(), "{out:?}");
    }

    let w = Wq::new(REDIS_URL, &q);
    let out = w.sh(&["consume", "--until-empty"], "echo \"$(cat)\"").await;
    assert_eq!(out.code(), 0, "{out:?}");
    let seen: Vec<&str> = out.stdout.lines().collect();
    // Taken from the tail, as rediswq.py's BRPOPLPUSH takes them: last in, first out.
    let mut lifo = TUTORIAL_ITEMS.to_vec();
    lifo.reverse();
    assert_eq!(seen, lifo);

    let s = stats(&q).await;
    assert_eq!((s.pending, s.leased, s.completed, s.dead), (0, 0, 9, 0));
    // Nothing of rediswq's is left: both lists are empty, no lease keys remain.
    assert_eq!(keys_of(&q).await, [format!("{q}:stats")]);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wq_push_leaves_the_lists_and_lease_keys_rediswq_expects() {
    let Some((q, _cleanup)) = redis_queue("layout") else {
        return;
    };
    let out = run_at(REDIS_URL, &q, &["push", "apple", "banana", "cherry"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let mut r = raw().await;
    let list: Vec<String> = r.lrange(&q, 0, -1).await.expect("LRANGE");
    assert_eq!(list, ["apple", "banana", "cherry"], "RPUSH order");
    assert_eq!(keys_of(&q).await, [q.as_str()], "wq push adds nothing else");

    // A lease: the tail item moves to Q:processing, and its lease key holds the
    // lease's session id with the lease as TTL.
    let wq = queue(&q).await;
    let leased = lease_one(&wq).await;
    let item = &leased.items[0];
    assert_eq!(item.payload, b"cherry");
    assert_eq!(item.id.as_str(), item_digest(b"cherry"));
    let processing: Vec<String> = r
        .lrange(format!("{q}:processing"), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(processing, ["cherry"]);
    let lease_key = format!("{q}:leased_by_session:{}", item_digest(b"cherry"));
    let session: String = r.get(&lease_key).await.expect("GET");
    assert_eq!(session, item.token.as_str());
    let ttl: i64 = r.ttl(&lease_key).await.expect("TTL");
    assert!(ttl > 0 && ttl <= 60, "TTL {ttl}");

    // Renewal extends the key's TTL; completion removes item and key.
    let _: () = r.expire(&lease_key, 5).await.expect("EXPIRE");
    wq.renew(
        std::slice::from_ref(&item.token),
        Some(Duration::from_secs(120)),
    )
    .await
    .expect("renew");
    let ttl: i64 = r.ttl(&lease_key).await.expect("TTL");
    assert!(ttl > 60, "renewed TTL {ttl}");
    wq.complete(std::slice::from_ref(&item.token))
        .await
        .expect("complete");
    let processing: i64 = r.llen(format!("{q}:processing")).await.expect("LLEN");
    assert_eq!(processing, 0);
    let exists: bool = r.exists(&lease_key).await.expect("EXISTS");
    assert!(!exists);
    // A second completion with the same token is refused: the lease is gone.
    let err = wq
        .complete(std::slice::from_ref(&item.token))
        .await
        .expect_err("stale token");
    assert!(matches!(err, worker_sdk::Error::LeaseLost { .. }), "{err}");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_item_gets_its_item_back_after_the_lease_ttl() {
    let Some((q, _cleanup)) = redis_queue("killed") else {
        return;
    };
    let w = Wq::new(REDIS_URL, &q);
    assert_eq!(w.run(&["push", "precious"]).await.code(), 0);

    let mut a = w.spawn_sh(
        &["consume", "-c", "1", "--lease", "1s"],
        "echo \"pgid $$\"; sleep 60",
    );
    let pgid = a.wait_for_group().await;
    a.kill_with_program(pgid).await;

    // Left as rediswq.py would leave it: in Q:processing, its lease key running out.
    let mut r = raw().await;
    let processing: Vec<String> = r
        .lrange(format!("{q}:processing"), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(processing, ["precious"]);

    // The next worker's reaper returns it once the lease has expired.
    let attempt = "echo \"attempt $WQ_ATTEMPT: $(cat)\"";
    let out = w.sh(&["consume", "--until-empty"], attempt).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "attempt 2: precious\n");
    let s = stats(&q).await;
    assert_eq!((s.completed, s.retried, s.pending, s.leased), (1, 1, 0, 0));
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_over_2000_items_complete_each_exactly_once() {
    let Some((q, _cleanup)) = redis_queue("two-workers") else {
        return;
    };
    let out = run_at(REDIS_URL, &q, &["push", "--range", "1..2000", "--seal"]).await;
    assert_eq!(out.code(), 0, "{out:?}");

    let seen = Seen::default();
    let mut workers = Vec::new();
    for _ in 0..2 {
        // Each worker has a connection of its own.
        let wq = queue(&q).await;
        let opts = WorkerOptions::default()
            .concurrency(16)
            .handle_signals(false);
        let handler = counting(&seen);
        workers.push(tokio::spawn(async move { wq.work(opts, handler).await }));
    }
    let mut completed = 0;
    for w in workers {
        let summary = w.await.expect("joins").expect("works");
        assert_eq!(summary.stop, StopReason::Drained, "{summary:?}");
        completed += summary.completed;
    }
    assert_eq!(completed, 2000);
    assert_each_once(&seen, 2000);
    let s = stats(&q).await;
    assert_eq!((s.completed, s.retried, s.dead), (2000, 0, 0));
    assert!(s.drained);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorials_rediswq_py_and_wq_consume_share_one_queue() {
    if !redis_up() {
        return;
    }
    if !workq_testkit::python_module(
        "redis",
        "pip install redis (or apt-get install python3-redis)",
    ) {
        return;
    }
    let (q, _cleanup) = Cleanup::unique(REDIS_URL, "shared");
    let items: Vec<String> = (1..=300).map(|n| format!("item-{n}")).collect();
    let mut args = vec!["push"];
    args.extend(items.iter().map(String::as_str));
    assert_eq!(run_at(REDIS_URL, &q, &args).await.code(), 0);

    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut py = tokio::process::Command::new("python3");
    py.arg(format!("{fixtures}/worker.py"))
        .arg(&q)
        .env("PYTHONPATH", fixtures)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let py = Running::spawn(py);
    let wq = Wq::new(REDIS_URL, &q).spawn_sh(&["consume", "--until-empty"], "echo \"wq $(cat)\"");

    let (py_status, py_out) = py.finish().await;
    let (wq_status, wq_out) = wq.finish().await;
    assert!(py_status.success(), "{py_out:?}");
    assert_eq!(wq_status.code(), Some(0));
    assert_eq!(
        py_out.last().map(String::as_str),
        Some("Queue empty, exiting")
    );

    let mut done: BTreeMap<String, u32> = BTreeMap::new();
    for line in py_out.iter().chain(&wq_out) {
        if let Some(item) = line
            .strip_prefix("py ")
            .or_else(|| line.strip_prefix("wq "))
        {
            *done.entry(item.to_owned()).or_default() += 1;
        }
    }
    let by_wq = wq_out.len();
    assert_eq!(done.len(), items.len(), "every item was worked");
    assert!(
        done.values().all(|n| *n == 1),
        "an item was worked twice: {:?}",
        done.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    eprintln!(
        "wq worked {by_wq} items, rediswq.py {}",
        items.len() - by_wq
    );
    // rediswq.py completes with `DEL <lease key> <session id>`: harmless here.
    let s = stats(&q).await;
    assert_eq!((s.pending, s.leased, s.dead), (0, 0, 0));
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_a_rediswq_worker_dropped_mid_lease_is_reaped_back() {
    let Some((q, _cleanup)) = redis_queue("reap-rediswq") else {
        return;
    };
    let mut r = raw().await;
    let _: () = r.rpush(&q, "orphan").await.expect("RPUSH");
    // What rediswq.py's lease() does, for a worker that then dies.
    let item: String = redis::cmd("RPOPLPUSH")
        .arg(&q)
        .arg(format!("{q}:processing"))
        .query_async(&mut r)
        .await
        .expect("RPOPLPUSH");
    let lease_key = format!("{q}:leased_by_session:{}", item_digest(item.as_bytes()));
    let _: () = r
        .set_ex(&lease_key, "a-python-session", 1)
        .await
        .expect("SETEX");

    let w = Wq::new(REDIS_URL, &q);
    let out = w
        .sh(&["consume", "--until-empty"], "echo \"got $(cat)\"")
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "got orphan\n");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_go_dead_with_their_reason_and_can_be_requeued() {
    let Some((q, _cleanup)) = redis_queue("dead") else {
        return;
    };
    let w = Wq::new(REDIS_URL, &q);
    let out = w.run(&["create", "--max-attempts", "2"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(w.run(&["push", "bad", "worse"]).await.code(), 0);

    // "worse" fails with a fatal code: dead at once. "bad" fails twice: dead.
    let fatal = ["consume", "--until-empty", "--fatal-exit-codes", "42"];
    let script = "if [ \"$(cat)\" = worse ]; then exit 42; fi; exit 1";
    let out = w.sh(&fatal, script).await;
    assert_eq!(out.code(), 4, "{out:?}");
    let s = stats(&q).await;
    assert_eq!((s.dead, s.retried, s.pending, s.leased), (2, 1, 0, 0));

    let mut r = raw().await;
    let mut dead: Vec<String> = r.lrange(format!("{q}:dead"), 0, -1).await.expect("LRANGE");
    dead.sort();
    assert_eq!(dead, ["bad", "worse"]);
    let out = run_at(REDIS_URL, &q, &["dead", "--json"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let listed: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    let reasons: BTreeMap<String, (String, u64)> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["payload"].as_str().unwrap().to_owned(),
                (
                    d["reason"].as_str().unwrap().to_owned(),
                    d["attempts"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        reasons["worse"],
        (
            "program exited with code 42 (a fatal exit code)".to_owned(),
            1
        )
    );
    assert_eq!(reasons["bad"], ("program exited with code 1".to_owned(), 2));

    let out = run_at(REDIS_URL, &q, &["dead", "--requeue"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let s = stats(&q).await;
    assert_eq!((s.dead, s.pending), (0, 2));
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_queue_is_drained_refuses_pushes_and_ends_workers() {
    let Some((q, _cleanup)) = redis_queue("sealed") else {
        return;
    };
    let out = run_at(REDIS_URL, &q, &["push", "--seal", "one", "two"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let out = run_at(REDIS_URL, &q, &["push", "three"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(out.stderr.contains("sealed"), "{out:?}");
    // Without --until-empty, wq waits for the seal and the drain: here both.
    let out = Wq::new(REDIS_URL, &q)
        .sh(&["consume"], "echo \"$(cat)\"")
        .await;
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "two\none\n");
    let s = stats(&q).await;
    assert!(s.sealed && s.drained, "{s:?}");
    // wq watch ends at once on a drained queue.
    let out = run_at(REDIS_URL, &q, &["watch", "--json"]).await;
    assert_eq!(out.code(), 0, "{out:?}");
    let last: serde_json::Value =
        serde_json::from_str(out.stdout.lines().last().expect("a line")).expect("JSON");
    assert_eq!(last["drained"], true);
    assert_eq!(last["completed"], 2);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_carries_on_after_its_redis_connection_is_killed() {
    let Some((q, _cleanup)) = redis_queue("conn-kill") else {
        return;
    };
    // A user of its own, so that CLIENT KILL USER drops this worker's
    // connections and nobody else's.
    let user = q.clone();
    let mut r = raw().await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &user, "on", ">secret", "~*", "&*", "+@all"])
        .query_async(&mut r)
        .await
        .expect("ACL SETUSER");
    let _user_cleanup = AclUser(user.clone());
    let url = format!("redis://{user}:secret@127.0.0.1:6379");
    let items: Vec<String> = (1..=20).map(|n| format!("n{n}")).collect();
    let mut args = vec!["push", "--seal"];
    args.extend(items.iter().map(String::as_str));
    assert_eq!(run_at(&url, &q, &args).await.code(), 0);

    // The first program waits for a gate file, so the kill lands mid-item.
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("gate");
    let mut w = Wq::new(&url, &q).spawn_sh(
        &["consume"],
        format!(
            "echo \"got $(cat)\"; while [ ! -e {} ]; do sleep 0.05; done",
            gate.display()
        ),
    );
    let first = w.wait_for("got").await;

    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", &user])
        .query_async(&mut r)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the worker's connection was dropped");
    std::fs::write(&gate, b"").expect("gate opens");

    let (status, rest) = w.finish().await;
    assert_eq!(status.code(), Some(0), "{rest:?}");
    let mut got: Vec<String> = rest
        .iter()
        .filter_map(|l| l.strip_prefix("got ").map(str::to_owned))
        .collect();
    got.push(first);
    got.sort();
    let mut want = items.clone();
    want.sort();
    assert_eq!(got, want, "every item once, the interrupted one included");
    let s = stats(&q).await;
    assert_eq!((s.completed, s.dead, s.pending, s.leased), (20, 0, 0, 0));

    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_rediswq_list_cannot_hold_is_refused_plainly() {
    let Some((q, _cleanup)) = redis_queue("refused") else {
        return;
    };
    let out = run_at(REDIS_URL, &q, &["push", "--dedupe", "a"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(
        out.stderr.trim(),
        "wq: error: the redis:// backend cannot deduplicate items (--dedupe): a rediswq list has no idempotency keys"
    );
    assert!(keys_of(&q).await.is_empty(), "nothing was pushed");
    let out = run_at("redis://127.0.0.1:1", &q, &["stats"]).await;
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with("wq: error: queue server unreachable at redis://127.0.0.1:1"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_by_another_session_is_fenced_off() {
    let Some((q, _cleanup)) = redis_queue("fenced") else {
        return;
    };
    assert_eq!(
        run_at(REDIS_URL, &q, &["push", "contested"]).await.code(),
        0
    );
    let wq = queue(&q).await;
    let leased = lease_one(&wq).await;
    let token = leased.items[0].token.clone();
    // As if the lease had expired and a rediswq.py worker had leased the item.
    let lease_key = format!("{q}:leased_by_session:{}", item_digest(b"contested"));
    let mut r = raw().await;
    let _: () = r
        .set_ex(&lease_key, "another-session", 60)
        .await
        .expect("SETEX");

    for err in [
        wq.renew(std::slice::from_ref(&token), None)
            .await
            .map(|_| ())
            .expect_err("renew refused"),
        wq.complete(std::slice::from_ref(&token))
            .await
            .expect_err("complete refused"),
    ] {
        assert!(matches!(err, worker_sdk::Error::LeaseLost { .. }), "{err}");
    }
    // Nothing changed: the item is still the other session's.
    let processing: Vec<String> = r
        .lrange(format!("{q}:processing"), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(processing, ["contested"]);
    let session: String = r.get(&lease_key).await.expect("GET");
    assert_eq!(session, "another-session");
    cleanup(&q).await;
}
