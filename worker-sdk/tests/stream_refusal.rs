//! The worker loop's completions on the `Work` stream when one token of a
//! batch is stale: the loop sends completions all or nothing, so the server
//! refuses the whole batch; the loop must then learn token by token which
//! one was refused, complete the live ones once, and go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Seen, TestServer, unique};
use worker_sdk::{Job, StopReason, WorkerOptions};

/// Options for tests: no signal handling (the test process is shared).
fn opts() -> WorkerOptions {
    WorkerOptions::default()
        .handle_signals(false)
        .poll_wait(Duration::from_millis(500))
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
