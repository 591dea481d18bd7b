//! The SDK against a real server started in-process: low-level calls, the lease
//! handle, and the worker loop's guarantees (the same ones `wq consume` shows).
//!
//! Tests where timing matters (lease renewal and expiry, grace periods) run on
//! tokio's paused clock: the server runs in the test's runtime, so its leases
//! expire on the same clock, and time jumps ahead whenever every task waits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Proxy, Seen, TestServer, assert_each_once, counting, unique};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker_sdk::{
    Error, Failure, Job, LeaseOptions, Queue, QueueSettings, StopReason, WorkError, WorkSummary,
    WorkerOptions,
};

/// Options for tests: no signal handling (the test process is shared), short polls.
fn opts() -> WorkerOptions {
    WorkerOptions::default()
        .handle_signals(false)
        .poll_wait(Duration::from_millis(500))
}

/// A queue named after `prefix` holding `items`, sealed.
async fn sealed(t: &TestServer, prefix: &str, items: &[&str]) -> Queue {
    let q = t.queue(&unique(prefix)).await;
    q.push(items.iter().copied()).await.expect("push");
    q.seal().await.expect("seal");
    q
}

/// Starts `q.work(opts, handler)` in a task of its own; each item's attempt is
/// sent on the channel answered as its handler starts.
fn spawn_work<H, Fut>(
    q: &Queue,
    opts: WorkerOptions,
    handler: H,
) -> (
    JoinHandle<worker_sdk::Result<WorkSummary>>,
    mpsc::UnboundedReceiver<u32>,
)
where
    H: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), WorkError>> + Send + 'static,
{
    let (started_tx, started) = mpsc::unbounded_channel();
    let q = q.clone();
    let worker = tokio::spawn(async move {
        q.work(opts, move |job: Job| {
            let started_tx = started_tx.clone();
            let attempt = job.item().attempt;
            let work = handler(job);
            async move {
                started_tx.send(attempt).ok();
                work.await
            }
        })
        .await
    });
    (worker, started)
}

/// Works `q` with a handler that notes `note(job)` for each item and completes
/// it; answers the summary and the notes, in the order the items came.
async fn work_noting<T: Send + 'static>(
    q: &Queue,
    opts: WorkerOptions,
    note: fn(&Job) -> T,
) -> (WorkSummary, Vec<T>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let summary = {
        let notes = notes.clone();
        q.work(opts, move |job: Job| {
            notes.lock().expect("lock").push(note(&job));
            std::future::ready(Ok(()))
        })
        .await
        .expect("worker")
    };
    let notes = std::mem::take(&mut *notes.lock().expect("lock"));
    (summary, notes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_complete_every_item_exactly_once_and_return_at_drain() {
    let t = TestServer::start().await;
    let name = unique("sdk-fine");
    let q = t.queue(&name).await;
    q.push((0..500).map(|n| n.to_string())).await.expect("push");
    q.seal().await.expect("seal");

    let seen = Seen::default();
    // Each worker has a connection of its own.
    let worker = || async {
        t.queue(&name)
            .await
            .work(opts().concurrency(4), counting(&seen))
            .await
    };
    let (a, b) = tokio::join!(worker(), worker());
    let (a, b) = (a.expect("worker a"), b.expect("worker b"));
    assert_eq!(a.stop, StopReason::Drained);
    assert_eq!(b.stop, StopReason::Drained);
    assert_eq!(a.completed + b.completed, 500);
    assert_each_once(&seen, 500);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried, s.dead), (500, 0, 0));
    assert!(s.drained);
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn a_handler_three_times_longer_than_its_lease_completes_once() {
    let t = TestServer::start().await;
    let q = sealed(&t, "sdk-renew", &["long"]).await;

    let lease = opts().lease(Duration::from_secs(2));
    let (slow, mut started) = spawn_work(&q, lease.clone().max_items(1), |_job: Job| async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        Ok(())
    });
    assert_eq!(started.recv().await, Some(1));

    // Meanwhile another worker must get nothing, and returns at drain.
    let (other, others) = work_noting(&q, lease, |job| job.item().id.clone()).await;
    assert_eq!(other.stop, StopReason::Drained);
    assert!(others.is_empty());

    let slow = slow.await.expect("joins").expect("slow worker");
    assert_eq!(
        (slow.completed, slow.lost, slow.stop),
        (1, 0, StopReason::Limit)
    );
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried), (1, 0));
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn a_worker_that_vanishes_mid_item_loses_it_to_the_next_after_the_lease() {
    let t = TestServer::start().await;
    let q = sealed(&t, "sdk-crash", &["precious"]).await;

    // On unary calls (until_empty): nothing tells the server, the lease runs out.
    let (doomed, mut started) = spawn_work(
        &q,
        opts().lease(Duration::from_secs(1)).until_empty(true),
        |_job: Job| async {
            std::future::pending::<()>().await;
            Ok(())
        },
    );
    started.recv().await.expect("started");
    // Dropping the worker is a crash: nothing is released, renewal stops.
    doomed.abort();
    assert!(doomed.await.is_err_and(|e| e.is_cancelled()));

    let (summary, attempts) = work_noting(&q, opts(), |job| job.item().attempt).await;
    assert_eq!(summary.stop, StopReason::Drained);
    assert_eq!(attempts, [2]);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried), (1, 1));
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn a_stream_worker_that_vanishes_mid_item_gives_it_back_at_once_as_its_next_attempt() {
    let t = TestServer::start().await;
    let q = sealed(&t, "sdk-crash-stream", &["precious", "next"]).await;
    let proxy = Proxy::start(t.server.grpc_addr()).await;
    let doomed_q = worker_sdk::connect(&format!("grpc://{}", proxy.addr))
        .await
        .expect("connect through the proxy")
        .queue(q.name().as_str())
        .expect("name");

    // On the Work stream: a worker whose connection dies (its process
    // killed) gives back at once what it held, running or prefetched, each
    // counting an attempt — the server cannot tell which were started.
    let (doomed, mut started) = spawn_work(
        &doomed_q,
        opts().lease(Duration::from_secs(60)).prefetch(1),
        |_job: Job| async {
            std::future::pending::<()>().await;
            Ok(())
        },
    );
    started.recv().await.expect("started");
    // Killed: the connection goes, then the loop, with nothing run between.
    proxy.cut();
    doomed.abort();
    assert!(doomed.await.is_err_and(|e| e.is_cancelled()));

    // Well before the lease would run out, both items are worked again.
    let (summary, attempts) = tokio::time::timeout(
        Duration::from_secs(10),
        work_noting(&q, opts(), |job| job.item().attempt),
    )
    .await
    .expect("given back before the lease ran out");
    assert_eq!(summary.stop, StopReason::Drained);
    assert_eq!(attempts, [2, 2]);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried, s.dead), (2, 2, 0));
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn shutdown_releases_unfinished_items_at_once_without_counting_an_attempt() {
    let t = TestServer::start().await;
    let q = sealed(&t, "sdk-stop", &["stuck", "cooperative"]).await;

    let stop = CancellationToken::new();
    let (worker, mut started) = spawn_work(
        &q,
        opts()
            .concurrency(2)
            .grace(Duration::from_millis(200))
            .shutdown_token(stop.clone()),
        |job: Job| async move {
            if job.payload() == b"cooperative" {
                job.shutdown().cancelled().await;
                return Err(WorkError::release("asked to stop"));
            }
            // Ignores the shutdown: dropped when the grace period ends.
            std::future::pending::<()>().await;
            Ok(())
        },
    );
    started.recv().await.expect("first started");
    started.recv().await.expect("second started");
    stop.cancel();
    let summary = worker.await.expect("joins").expect("worker");
    assert_eq!(summary.stop, StopReason::Shutdown { signal: None });
    assert_eq!((summary.released, summary.completed), (2, 0));

    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased, s.retried), (2, 0, 0), "{s:?}");

    // Another worker takes them at once, as first attempts.
    let (summary, attempts) =
        work_noting(&q, opts().concurrency(2), |job| job.item().attempt).await;
    assert_eq!(summary.completed, 2);
    assert_eq!(attempts, [1, 1]);
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_handler_finish_within_the_grace_period() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("sdk-grace")).await;
    q.push(["x"]).await.expect("push");

    let stop = CancellationToken::new();
    let (worker, mut started) = spawn_work(
        &q,
        opts().shutdown_token(stop.clone()),
        |job: Job| async move {
            job.shutdown().cancelled().await;
            Ok(()) // finishes its work when asked to stop
        },
    );
    started.recv().await.expect("started");
    stop.cancel();
    let summary = worker.await.expect("joins").expect("worker");
    assert_eq!((summary.completed, summary.released), (1, 0));
    assert_eq!(q.stats().await.expect("stats").completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_kill_items_retriable_ones_retry_and_dead_items_can_be_requeued() {
    let t = TestServer::start().await;
    let name = unique("sdk-fatal");
    let q = t.queue(&name).await;
    let created = q
        .create(&QueueSettings {
            max_attempts: Some(2),
            retry_backoff: Some(Duration::from_millis(10)),
            ..QueueSettings::default()
        })
        .await
        .expect("create");
    assert!(created);
    q.push(["poison", "flaky", "fine"]).await.expect("push");
    q.seal().await.expect("seal");

    let summary = q
        .work(opts(), |job: Job| async move {
            match job.payload() {
                b"poison" => Err(WorkError::fatal("cannot parse poison")),
                b"flaky" => Err(std::io::Error::other("flaky failed").into()),
                _ => Ok(()),
            }
        })
        .await
        .expect("worker");
    assert_eq!(summary.stop, StopReason::Drained);
    assert_eq!(
        (
            summary.completed,
            summary.fatal,
            summary.failed,
            summary.dead
        ),
        (1, 1, 2, 2),
        "flaky fails twice, then its attempts are exhausted: {summary:?}"
    );

    let dead = q.dead(0).await.expect("dead");
    let reasons: BTreeMap<_, _> = dead
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.payload).into_owned(),
                d.reason.clone(),
            )
        })
        .collect();
    assert!(
        reasons["poison"].contains("cannot parse poison"),
        "{reasons:?}"
    );
    assert!(reasons["flaky"].contains("flaky failed"), "{reasons:?}");

    assert_eq!(
        q.requeue_dead(worker_sdk::RequeueDead::Ids(vec![dead[0].id.clone()]))
            .await
            .expect("requeue"),
        1
    );
    let s = q.stats().await.expect("stats");
    assert_eq!((s.dead, s.pending, s.completed), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_empty_and_max_items_end_the_loop_early() {
    let t = TestServer::start().await;
    let name = unique("sdk-limits");
    let q = t.queue(&name).await;
    q.push((0..5).map(|n| n.to_string())).await.expect("push");

    let summary = q
        .work(opts().concurrency(4).max_items(3), |_job: Job| async {
            Ok(())
        })
        .await
        .expect("worker");
    assert_eq!((summary.stop, summary.completed), (StopReason::Limit, 3));

    // Not sealed: until_empty returns once nothing is left, where the default
    // would wait for a seal.
    let summary = q
        .work(opts().until_empty(true), |_job: Job| async { Ok(()) })
        .await
        .expect("worker");
    assert_eq!((summary.stop, summary.completed), (StopReason::Empty, 2));
    let s = q.stats().await.expect("stats");
    assert!(!s.sealed && s.is_empty() && s.completed == 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_item_without_killing_the_worker() {
    let t = TestServer::start().await;
    let name = unique("sdk-panic");
    let q = t.queue(&name).await;
    q.push(["boom"]).await.expect("push");
    let summary = q
        .work(opts().max_items(1), |_job: Job| async {
            panic!("handler bug");
        })
        .await
        .expect("worker survives");
    assert_eq!(summary.failed, 1);
    assert_eq!(q.stats().await.expect("stats").retried, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_tokens_are_refused_as_lease_lost() {
    let t = TestServer::start().await;
    let name = unique("sdk-fence");
    let q = t.queue(&name).await;
    q.push(["x"]).await.expect("push");
    let leased = q
        .lease(&LeaseOptions {
            max_items: 10,
            lease: Some(workq_proto::defaults::LEASE),
            wait: Duration::ZERO,
            max_bytes: None,
        })
        .await
        .expect("lease");
    assert_eq!(leased.items.len(), 1);
    let item = &leased.items[0];
    assert_eq!((item.attempt, item.payload_str().as_ref()), (1, "x"));
    assert!(leased.empty.eq(&false) && !leased.drained);

    let tokens = [item.token.clone()];
    q.release(&tokens).await.expect("release");
    let err = q.complete(&tokens).await.expect_err("stale");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    let err = q
        .fail(&tokens, &Failure::fatal("x"))
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");

    // The lease handle: renewal in the background, complete consumes it.
    let leased = q.lease(&LeaseOptions::default()).await.expect("lease");
    let handle = q.hold(leased.items[0].clone(), Duration::from_secs(1));
    assert!(!handle.lost().is_cancelled());
    handle.complete().await.expect("complete");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried), (1, 0));
}

fn tokens_of(l: &worker_sdk::Leased) -> Vec<worker_sdk::LeaseToken> {
    l.items.iter().map(|i| i.token.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_then_lease_takes_the_next_items_in_the_same_call() {
    let t = TestServer::start().await;
    let name = unique("sdk-ctl");
    let q = t.queue(&name).await;
    q.push(["a", "b", "c"]).await.expect("push");
    let batch = LeaseOptions {
        max_items: 2,
        ..LeaseOptions::default()
    };
    let first = q.lease(&batch).await.expect("lease");
    let tokens: Vec<_> = first.items.iter().map(|i| i.token.clone()).collect();
    let next = q
        .complete_then_lease(&tokens, &batch)
        .await
        .expect("complete then lease");
    assert_eq!(next.items.len(), 1);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.leased), (2, 1));
    // Handing the same tokens in again (a retry): already done, counted
    // once; nothing is left to lease.
    let again = q
        .complete_then_lease(&tokens, &batch)
        .await
        .expect("completing again is idempotent");
    assert!(again.items.is_empty(), "{again:?}");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.leased), (2, 1));
    // Tokens of another lease's finished item are lost, and nothing more is leased.
    q.release(&tokens_of(&next)).await.expect("release");
    let err = q
        .complete_then_lease(&tokens_of(&next), &batch)
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert_eq!(q.stats().await.expect("stats").leased, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_can_be_listed_purged_and_deleted() {
    let t = TestServer::start().await;
    let client = t.client().await;
    let name = unique("sdk-admin");
    let q = client.queue(&name).expect("name");
    q.push(["a", "b", "c"]).await.expect("push");
    let leased = q.lease(&LeaseOptions::default()).await.expect("lease");
    assert_eq!(leased.items.len(), 1);

    let names: Vec<String> = client
        .list_queues()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(names.contains(&name), "{names:?}");

    assert_eq!(q.purge().await.expect("purge"), 2, "pending ones go");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased), (0, 1), "the leased one stays");

    assert!(q.delete().await.expect("delete"));
    let err = q.stats().await.expect_err("gone");
    assert!(matches!(err, Error::QueueNotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_queue_errors_name_the_problem() {
    let t = TestServer::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("grpc://127.0.0.1:{port}");
    let err = worker_sdk::Client::connect_with_timeout(&url, Duration::from_millis(300))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    // The other backends report an unreachable server the same way.
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
    ] {
        let err = worker_sdk::Client::connect_with_timeout(&url, Duration::from_millis(300))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, Error::Unreachable { .. }), "{url}: {err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(
            !err.to_string().contains("guest:guest"),
            "no password: {err}"
        );
    }
    let err = worker_sdk::connect("127.0.0.1:50051")
        .await
        .expect_err("no scheme");
    assert!(err.to_string().contains("invalid queue URL"), "{err}");

    let client = t.client().await;
    let err = client.queue("Not_A_Name").expect_err("invalid");
    assert!(matches!(err, Error::InvalidQueueName { .. }));
    let err = client
        .queue("missing")
        .expect("valid")
        .stats()
        .await
        .expect_err("missing");
    assert!(
        matches!(err, Error::QueueNotFound { ref queue } if queue == "missing"),
        "{err}"
    );
    let err = client
        .queue("missing")
        .expect("valid")
        .work(opts(), |_job: Job| async { Ok(()) })
        .await
        .expect_err("missing");
    assert!(matches!(err, Error::QueueNotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_a_server_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = queue_server::start(queue_server::ServerConfig::embedded(dir.path()))
        .await
        .expect("server");
    let addr = server.grpc_addr();
    let url = format!("grpc://{addr}");
    let q = worker_sdk::connect(&url)
        .await
        .expect("connect")
        .queue("restart")
        .expect("name");
    q.push((0..20).map(|n| n.to_string())).await.expect("push");
    q.seal().await.expect("seal");

    // The handler holds the first item until the server has been restarted.
    let restarted = Arc::new(tokio::sync::Notify::new());
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (worker, mut started) = {
        let restarted = restarted.clone();
        spawn_work(
            &q,
            opts().lease(Duration::from_secs(2)),
            move |_job: Job| {
                let restarted = restarted.clone();
                let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if first {
                        restarted.notified().await;
                    }
                    Ok(())
                }
            },
        )
    };
    started.recv().await.expect("started");
    server.shutdown().await.expect("server stops");
    let mut config = queue_server::ServerConfig::embedded(dir.path());
    config.listen = addr;
    let server = queue_server::start(config).await.expect("server restarts");
    restarted.notify_one();

    let summary = worker.await.expect("joins").expect("worker survives");
    assert_eq!(summary.stop, StopReason::Drained);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.dead), (20, 0), "{s:?} {summary:?}");
    // The item held across the restart may have lost its lease (as the server's
    // restart rules say); then it was worked again. Either way nothing was lost.
    assert_eq!(summary.completed, 20, "{summary:?}");
    assert!(summary.lost <= 1, "{summary:?}");
    server.shutdown().await.expect("server stops");
}
