//! A URL with several endpoints (`grpc://a:50051,b:50051`): the client
//! connects to the first that answers and moves to the next when it goes.
//! (With replicas on a shared store the leases move too; here each server
//! has its own memory store, so the test looks only at where calls go.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use worker_sdk::{Error, NewItem};

/// An address nothing listens on.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn a_dead_endpoint_in_the_list_is_passed_over() {
    let live = TestServer::start().await;
    let live_addr = live.url.trim_start_matches("grpc://");
    let url = format!("grpc://{},{live_addr}", dead_addr());
    let client = worker_sdk::connect(&url)
        .await
        .expect("connects to the live one");
    let queue = client.queue("failover-dead-first").expect("name");
    queue
        .push([NewItem::new(b"x".to_vec())])
        .await
        .expect("push");
    assert_eq!(live.stats("failover-dead-first").await.pending, 1);
}

#[tokio::test]
async fn no_endpoint_answering_is_unreachable() {
    let url = format!("grpc://{},{}", dead_addr(), dead_addr());
    match worker_sdk::connect(&url).await {
        Err(Error::Unreachable { .. }) => {}
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn calls_move_to_the_next_endpoint_when_one_stops() {
    let a = TestServer::start().await;
    let b = TestServer::start().await;
    let url = format!(
        "grpc://{},{}",
        a.url.trim_start_matches("grpc://"),
        b.url.trim_start_matches("grpc://")
    );
    let client = worker_sdk::connect(&url).await.expect("connects");
    let queue = client.queue("failover-move").expect("name");
    queue
        .push([NewItem::new(b"1".to_vec())])
        .await
        .expect("push to a");
    assert_eq!(a.stats("failover-move").await.pending, 1);

    a.server.shutdown().await.expect("a stops");
    // The call that finds `a` gone may fail (UNAVAILABLE); calls after it go
    // to `b`. Bounded by attempts, not by time.
    let mut pushed = false;
    for _ in 0..5 {
        match queue.push([NewItem::new(b"2".to_vec())]).await {
            Ok(_) => {
                pushed = true;
                break;
            }
            Err(e) => eprintln!("push while moving: {e}"),
        }
    }
    assert!(pushed, "no push reached b");
    assert_eq!(b.stats("failover-move").await.pending, 1);
    // And they stay there.
    queue
        .push([NewItem::new(b"3".to_vec())])
        .await
        .expect("push to b");
    assert_eq!(b.stats("failover-move").await.pending, 2);
}
