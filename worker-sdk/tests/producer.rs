//! [`worker_sdk::Producer`] on the queue service's `EnqueueStream`: many
//! batches in flight, answered in order once durable; a stream cut under it
//! adds nothing twice; refusals reach the sender.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Proxy, TestServer, unique};
use futures::{StreamExt, TryStreamExt};
use worker_sdk::Error;

/// `n` batches of 100 items, numbered from 0.
fn batches(n: u32) -> impl Iterator<Item = Vec<String>> {
    (0..n).map(|b| (b * 100..(b + 1) * 100).map(|i| i.to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_are_each_added_once_and_answered_in_order() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("producer")).await;
    let producer = q.producer().with_in_flight(4);
    let answers: Vec<_> = futures::stream::iter(batches(100))
        .map(|b| producer.send(b))
        .buffered(16)
        .try_collect()
        .await
        .expect("every batch added");
    assert_eq!(answers.len(), 100);
    assert!(answers.iter().all(|a| a.len() == 100));
    let ids: BTreeSet<_> = answers.iter().flatten().map(|p| p.id.clone()).collect();
    assert_eq!(ids.len(), 10_000);
    assert_eq!(q.stats().await.expect("stats").enqueued, 10_000);

    // Leased in the order sent.
    let leased = q
        .lease(&worker_sdk::LeaseOptions {
            max_items: 3,
            ..Default::default()
        })
        .await
        .expect("lease");
    let firsts: Vec<_> = leased
        .items
        .iter()
        .map(|i| i.payload_str().into_owned())
        .collect();
    assert_eq!(firsts, ["0", "1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_push_adds_nothing_twice() {
    let t = TestServer::start().await;
    let proxy = Proxy::start(t.server.grpc_addr()).await;
    let name = unique("producer-cut");
    let q = worker_sdk::connect(&format!("grpc://{}", proxy.addr))
        .await
        .expect("connect through the proxy")
        .queue(&name)
        .expect("name");
    let producer = q.producer().with_in_flight(8);
    let mut sent = 0;
    let mut pending = futures::stream::iter(batches(200))
        .map(|b| producer.send(b))
        .buffered(8);
    while let Some(answer) = pending.next().await {
        answer.expect("batch added despite the cuts");
        sent += 1;
        if sent == 50 || sent == 120 {
            proxy.cut();
        }
    }
    let s = t.queue(&name).await.stats().await.expect("stats");
    assert_eq!(s.enqueued, 20_000, "resent batches are added once: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_its_send() {
    let t = TestServer::start().await;
    let q = t.queue(&unique("producer-sealed")).await;
    q.push(["x"]).await.expect("push");
    q.seal().await.expect("seal");
    let err = q.producer().send(["y"]).await.expect_err("sealed");
    assert!(!err.is_transient(), "{err:?}");
    assert!(matches!(err, Error::QueueSealed { .. }), "{err:?}");
}
