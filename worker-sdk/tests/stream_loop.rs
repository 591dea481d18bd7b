//! The worker loop on the queue service's `Work` stream: what it adds to the
//! guarantees `worker_loop.rs` shows (which run on the stream too) — prefetch
//! with renewal, many items at once, a stream cut under it, a server restart
//! under load, and a completion batch the server refuses because one of its
//! tokens is stale (completions go all or nothing; the loop then learns token
//! by token which one was refused, completes the live ones once, and goes
//! on).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Proxy, Seen, TestServer, assert_each_once, counting, unique};
use worker_sdk::{Job, StopReason, WorkerOptions};

/// Options for tests: no signal handling (the test process is shared).
fn opts() -> WorkerOptions {
    WorkerOptions::default()
        .handle_signals(false)
        .poll_wait(Duration::from_millis(500))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_items_at_once_are_each_completed_once_with_prefetch() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("stream-many")).await;
    q.push((0..5000).map(|n| n.to_string()))
        .await
        .expect("push");
    q.seal().await.expect("seal");

    let seen = Seen::default();
    let summary = q
        .work(opts().concurrency(16).prefetch(64), counting(&seen))
        .await
        .expect("worker");
    assert_eq!(summary.stop, StopReason::Drained);
    assert_eq!((summary.completed, summary.lost), (5000, 0));
    assert_each_once(&seen, 5000);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried, s.leased), (5000, 0, 0));
    assert!(s.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_is_lost_and_the_loop_goes_on() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("stream-refused")).await;
    q.push(["a", "b", "lost", "c", "d"]).await.expect("push");
    q.seal().await.expect("seal");

    // The handler of "lost" gives its own lease back the first time, then
    // answers Ok: its completion is refused (sent all or nothing, then again
    // token by token), and the item comes again.
    let gave_back = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let count = counting(&seen);
    let summary = {
        let (q2, gave_back) = (q.clone(), gave_back.clone());
        q.work(opts().concurrency(5), move |job: Job| {
            let release = (job.payload() == b"lost"
                && gave_back.fetch_add(1, Ordering::SeqCst) == 0)
                .then(|| (q2.clone(), job.item().token.clone()));
            let done = count(job);
            async move {
                if let Some((q, token)) = release {
                    q.release(&[token]).await.expect("release");
                }
                done.await
            }
        })
        .await
        .expect("the worker rides out the refusal")
    };
    assert_eq!(summary.stop, StopReason::Drained);
    // "lost" was handled twice: once refused (lost), once completed.
    assert_eq!((summary.completed, summary.lost), (5, 1), "{summary:?}");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried, s.dead), (5, 0, 0), "{s:?}");
}

// Timers on tokio's paused clock, the server's leases too (it runs in this
// runtime): leases expire and renew without real waits.
#[tokio::test(start_paused = true)]
async fn prefetched_items_keep_their_leases_while_they_wait_for_a_slot() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("stream-prefetch")).await;
    q.push(["a", "b", "c", "d"]).await.expect("push");
    q.seal().await.expect("seal");

    // One slot, three waiting: the last waits 3 handlers × 5 s = 15 s, far
    // beyond its 2 s lease, renewed all the while on the stream.
    let summary = q
        .work(
            opts()
                .concurrency(1)
                .prefetch(3)
                .lease(Duration::from_secs(2)),
            |job: Job| async move {
                assert!(!job.lease_lost().is_cancelled());
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            },
        )
        .await
        .expect("worker");
    assert_eq!((summary.completed, summary.lost), (4, 0), "{summary:?}");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.retried), (4, 0), "{s:?}");
}

// Timers on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_shutdown_gives_back_prefetched_items_at_once() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("stream-stop")).await;
    q.push(["run", "w1", "w2"]).await.expect("push");

    let stop = tokio_util::sync::CancellationToken::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let worker = {
        let (q, stop, started) = (q.clone(), stop.clone(), started.clone());
        tokio::spawn(async move {
            q.work(
                opts()
                    .concurrency(1)
                    .prefetch(2)
                    .lease(Duration::from_secs(60))
                    .shutdown_token(stop),
                move |job: Job| {
                    let started = started.clone();
                    async move {
                        started.notify_one();
                        job.shutdown().cancelled().await;
                        Ok(())
                    }
                },
            )
            .await
        })
    };
    started.notified().await;
    // Both others reach the worker (prefetched) before the stop.
    while q.stats().await.expect("stats").leased < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let summary = worker.await.expect("joins").expect("worker");
    assert_eq!(summary.stop, StopReason::Shutdown { signal: None });
    assert_eq!((summary.leased, summary.completed), (1, 1), "{summary:?}");
    let s = q.stats().await.expect("stats");
    assert_eq!(
        (s.completed, s.pending, s.leased, s.retried),
        (1, 2, 0, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_under_the_worker_loses_nothing_and_completes_nothing_twice() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.server.grpc_addr()).await;
    let name = unique("stream-cut");
    t.queue(&name)
        .await
        .push((0..2000).map(|n| n.to_string()))
        .await
        .expect("push");
    t.queue(&name).await.seal().await.expect("seal");

    let q = worker_sdk::connect(&format!("grpc://{}", proxy.addr))
        .await
        .expect("connect through the proxy")
        .queue(&name)
        .expect("name");
    let seen = Seen::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let proxy = Arc::new(proxy);
    let worker = {
        let (seen, handled, proxy) = (seen.clone(), handled.clone(), proxy.clone());
        let count = counting(&seen);
        tokio::spawn(async move {
            q.work(opts().concurrency(8).prefetch(8), move |job: Job| {
                let n = handled.fetch_add(1, Ordering::SeqCst);
                if n == 500 || n == 1500 {
                    // Mid-stream, with items running, waiting and completing.
                    proxy.cut();
                }
                let done = count(job);
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    done.await
                }
            })
            .await
        })
    };
    let summary = worker
        .await
        .expect("joins")
        .expect("worker rides out the cuts");
    assert_eq!(summary.stop, StopReason::Drained);
    assert!(handled.load(Ordering::SeqCst) > 1500, "both cuts happened");

    let s = t.queue(&name).await.stats().await.expect("stats");
    // Nothing lost, nothing completed twice (completions are fenced).
    assert_eq!((s.enqueued, s.completed, s.dead), (2000, 2000, 0), "{s:?}");
    assert_eq!(seen.lock().expect("lock").len(), 2000);
    // What was handled but whose completion the cut refused came again.
    let handled_twice: u32 = seen.lock().expect("lock").values().map(|c| c - 1).sum();
    assert_eq!(
        summary.completed + summary.lost,
        2000 + u64::from(handled_twice),
        "{summary:?}"
    );
    // Each completion counted once, a resent one answered "already done".
    assert_eq!(summary.completed, 2000, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = queue_server::start(queue_server::ServerConfig::embedded(dir.path()))
        .await
        .expect("server");
    let addr = server.grpc_addr();
    let q = worker_sdk::connect(&format!("grpc://{addr}"))
        .await
        .expect("connect")
        .queue("restart-load")
        .expect("name");
    q.push((0..1000).map(|n| n.to_string()))
        .await
        .expect("push");
    q.seal().await.expect("seal");

    let seen = Seen::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let restart_now = Arc::new(tokio::sync::Notify::new());
    let worker = {
        let (q, handled, restart_now) = (q.clone(), handled.clone(), restart_now.clone());
        let count = counting(&seen);
        tokio::spawn(async move {
            q.work(opts().concurrency(8).prefetch(8), move |job: Job| {
                if handled.fetch_add(1, Ordering::SeqCst) == 300 {
                    restart_now.notify_one();
                }
                let done = count(job);
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    done.await
                }
            })
            .await
        })
    };
    restart_now.notified().await;
    server.shutdown().await.expect("server stops");
    let mut config = queue_server::ServerConfig::embedded(dir.path());
    config.listen = addr;
    let server = queue_server::start(config).await.expect("server restarts");

    let summary = worker.await.expect("joins").expect("worker survives");
    assert_eq!(summary.stop, StopReason::Drained);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.enqueued, s.completed, s.dead), (1000, 1000, 0), "{s:?}");
    assert_eq!(seen.lock().expect("lock").len(), 1000);
    server.shutdown().await.expect("server stops");
}

// Every handler answers at once, so the five items of the first push are
// started in one turn of the loop and their completions go in one message.
// The handler of "stale" first gives its own lease back (synchronously, on
// the loop's thread), so that message holds one stale token among four live
// ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_among_live_ones_is_lost_alone_and_the_loop_goes_on() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("stream-stale-in-batch")).await;
    q.push(["a", "b", "stale", "c", "d"]).await.expect("push");
    q.seal().await.expect("seal");

    let gave_back = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let summary = {
        let (q2, gave_back, seen) = (q.clone(), gave_back.clone(), seen.clone());
        q.work(opts().concurrency(5), move |job: Job| {
            let item = String::from_utf8_lossy(job.payload()).into_owned();
            *seen.lock().expect("lock").entry(item.clone()).or_default() += 1;
            if item == "stale" && gave_back.fetch_add(1, Ordering::SeqCst) == 0 {
                let token = job.item().token.clone();
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(q2.release(&[token]))
                })
                .expect("release");
            }
            std::future::ready(Ok(()))
        })
        .await
        .expect("the loop rides out the refused batch")
    };
    assert_eq!(summary.stop, StopReason::Drained);
    // "stale" was handled twice: its first completion was refused (lost),
    // its second (a new lease) done; each live one completed once.
    assert_eq!((summary.completed, summary.lost), (5, 1), "{summary:?}");
    let seen = seen.lock().expect("lock").clone();
    let want: Vec<(String, u32)> = [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("stale", 2)]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
    let s = q.stats().await.expect("stats");
    assert_eq!(
        (s.completed, s.retried, s.dead, s.leased),
        (5, 0, 0, 0),
        "{s:?}"
    );
}
