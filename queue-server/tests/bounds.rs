//! Answers never too big, Work streams own their items, refusals stay small:
//! a real server started in-process with small limits, over the network.

use queue_server::settings::Limits;
use queue_server::{RunningServer, ServerConfig};
use std::time::Duration;
use tonic::Code;
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

const KIB: usize = 1024;

/// A memory-store server with `limits`, and a client accepting large answers
/// (so that what is checked is the server's budget, not the client's limit).
async fn server(limits: Limits) -> (RunningServer, Client) {
    let server = queue_server::start(ServerConfig {
        limits,
        ..ServerConfig::memory()
    })
    .await
    .expect("start");
    let client = Client::connect(format!("http://{}", server.grpc_addr()))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    (server, client)
}

/// Messages of 1 MiB, items of up to 300 KiB: three fit in an answer.
fn small_messages() -> Limits {
    Limits {
        max_message_bytes: 1024 * KIB,
        max_payload_bytes: 300 * KIB,
        ..Limits::default()
    }
}

async fn enqueue(c: &mut Client, q: &str, payload: Vec<u8>) {
    c.enqueue(pb::EnqueueRequest {
        queue: q.into(),
        items: vec![pb::NewItem {
            payload: payload.into(),
            ..Default::default()
        }],
        create_queue: true,
        request_id: String::new(),
    })
    .await
    .expect("enqueue");
}

async fn lease(c: &mut Client, q: &str, max: i32) -> pb::LeaseResponse {
    c.lease(pb::LeaseRequest {
        queue: q.into(),
        max_items: max,
        ..Default::default()
    })
    .await
    .expect("lease")
    .into_inner()
}

async fn stats(c: &mut Client, q: &str) -> pb::QueueStats {
    let info = c.get_queue(pb::GetQueueRequest { name: q.into() }).await;
    let queue = info.expect("get").into_inner().queue;
    queue.and_then(|q| q.stats).expect("stats")
}

#[tokio::test]
async fn a_lease_returns_what_fits_and_leaves_the_rest_pending() {
    let (server, mut c) = server(small_messages()).await;
    for i in 0..5u8 {
        enqueue(&mut c, "big", vec![i; 300 * KIB]).await;
    }
    let first = lease(&mut c, "big", 5).await;
    assert_eq!(first.items.len(), 3, "three 300 KiB items fit in 1 MiB");
    let s = stats(&mut c, "big").await;
    assert_eq!((s.pending, s.leased), (2, 3));
    let rest = lease(&mut c, "big", 5).await;
    assert_eq!(rest.items.len(), 2);
    assert!(
        rest.items.iter().all(|i| i.attempt == 1),
        "no attempt was counted for the items left pending"
    );
    assert_eq!(rest.items[0].payload[0], 3, "they kept their place in line");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_work_stream_cut_short_by_the_message_budget_pushes_the_rest_next() {
    let (server, mut c) = server(small_messages()).await;
    for i in 0..5u8 {
        enqueue(&mut c, "big-work", vec![i; 300 * KIB]).await;
    }
    let (tx, mut answers) = work(&mut c, "big-work", 5).await;
    let mut pushes = Vec::new();
    // A guard against a hang, not a timed assertion: the rest is pushed at once.
    tokio::time::timeout(Duration::from_secs(20), async {
        while pushes.iter().sum::<usize>() < 5 {
            let msg = answers.message().await.expect("answer").expect("items");
            pushes.push(msg.items.len());
        }
    })
    .await
    .expect("the rest never came");
    assert_eq!(
        pushes,
        vec![3, 2],
        "three fit in 1 MiB, the rest follow at once"
    );
    drop(tx);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn list_dead_pages_down_to_what_fits() {
    let (server, mut c) = server(small_messages()).await;
    for i in 0..5u8 {
        enqueue(&mut c, "dead", vec![i; 300 * KIB]).await;
    }
    let mut tokens = Vec::new();
    while tokens.len() < 5 {
        let got = lease(&mut c, "dead", 5).await;
        tokens.extend(got.items.into_iter().map(|i| i.lease_token));
    }
    c.fail(pb::FailRequest {
        queue: "dead".into(),
        lease_tokens: tokens,
        mode: pb::FailMode::Fatal as i32,
        reason: "é".repeat(10_000),
        ..Default::default()
    })
    .await
    .expect("fail");
    assert_eq!(stats(&mut c, "dead").await.dead, 5);
    let listed = c
        .list_dead(pb::ListDeadRequest {
            queue: "dead".into(),
            ..Default::default()
        })
        .await
        .expect("list dead")
        .into_inner();
    assert_eq!(listed.items.len(), 3, "three dead items fit in 1 MiB");
    let reason = &listed.items[0].reason;
    assert!(
        reason.len() <= Limits::default().max_attribute_bytes + 64,
        "the reason is cut in bytes: {} bytes",
        reason.len()
    );
    // The page is short of page_size (0: the largest), and its token goes on
    // from there.
    assert!(!listed.next_page_token.is_empty());
    let rest = c
        .list_dead(pb::ListDeadRequest {
            queue: "dead".into(),
            page_token: listed.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("next page")
        .into_inner();
    assert_eq!(rest.items.len(), 2);
    assert!(rest.next_page_token.is_empty(), "the last page");
    let ids: Vec<u64> = listed
        .items
        .iter()
        .chain(&rest.items)
        .map(|i| i.id.parse().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, each once: {ids:?}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn limits_that_cannot_deliver_the_largest_item_refuse_to_start() {
    let err = queue_server::start(ServerConfig {
        limits: Limits {
            max_message_bytes: 1024 * KIB,
            max_payload_bytes: 1024 * KIB,
            ..Limits::default()
        },
        ..ServerConfig::memory()
    })
    .await
    .expect_err("the largest item cannot fit in a message");
    let msg = err.to_string();
    assert!(
        msg.contains("--max-message-bytes") && msg.contains("--max-payload-bytes"),
        "{msg}"
    );
}

#[tokio::test]
async fn attributes_count_toward_the_item_limit() {
    let (server, mut c) = server(small_messages()).await;
    let item = pb::NewItem {
        payload: vec![0; 300 * KIB - 10].into(),
        attributes: [("k".to_string(), "v".repeat(100))].into(),
        ..Default::default()
    };
    let err = c
        .enqueue(pb::EnqueueRequest {
            queue: "attrs".into(),
            items: vec![item],
            create_queue: true,
            request_id: String::new(),
        })
        .await
        .expect_err("payload and attributes exceed the item limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("--max-payload-bytes"), "{err}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_huge_bad_name_is_answered_with_a_short_message() {
    let (server, mut c) = server(Limits::default()).await;
    let err = c
        .create_queue(pb::CreateQueueRequest {
            name: "X".repeat(1 << 20),
            settings: None,
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 400, "{} bytes", err.message().len());
    server.shutdown().await.expect("shutdown");
}

/// Opens a Work stream on `q` with `credit` and a one-hour lease; returns the
/// sender of further requests and the answers.
async fn work(
    c: &mut Client,
    q: &str,
    credit: i32,
) -> (
    tokio::sync::mpsc::Sender<pb::WorkRequest>,
    tonic::Streaming<pb::WorkResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WorkRequest {
        queue: q.into(),
        lease: Some(workq_proto::time::duration(Duration::from_secs(3600))),
        credit,
        ..Default::default()
    })
    .await
    .expect("first message");
    let answers = c
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("work")
        .into_inner();
    (tx, answers)
}

#[tokio::test]
async fn a_grant_beyond_the_credit_limit_is_clamped_and_the_answer_says_so() {
    let (server, mut c) = server(Limits {
        max_work_credit: 3,
        ..Limits::default()
    })
    .await;
    for i in 0..10u8 {
        enqueue(&mut c, "credit", vec![i]).await;
    }
    let (tx, mut answers) = work(&mut c, "credit", i32::MAX).await;
    let mut note = None;
    let mut items = Vec::new();
    while note.is_none() || items.is_empty() {
        let msg = answers.message().await.expect("answer").expect("answer");
        if let Some(done) = msg.answer {
            let p = done.problem.expect("a note");
            assert_eq!(p.code, 0);
            note = Some(p.message);
        }
        if !msg.items.is_empty() {
            assert!(items.is_empty(), "one push for the open credit");
            items = msg.items;
        }
    }
    let note = note.unwrap_or_default();
    assert!(note.contains("--max-work-credit"), "{note}");
    assert_eq!(items.len(), 3, "leased only up to the clamped credit");
    assert_eq!(stats(&mut c, "credit").await.leased, 3);
    drop(tx);
    server.shutdown().await.expect("shutdown");
}

/// `GET /metrics` on the server's HTTP port.
async fn metrics(server: &RunningServer) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.http_addr().expect("http");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut page = String::new();
    s.read_to_string(&mut page).await.expect("read");
    page
}

#[tokio::test]
async fn the_queue_limit_refuses_with_resource_exhausted_and_the_server_stays_healthy() {
    let (server, mut c) = server(Limits {
        max_queues: 2,
        ..Limits::default()
    })
    .await;
    enqueue(&mut c, "one", vec![1]).await;
    enqueue(&mut c, "two", vec![2]).await;
    let err = c
        .create_queue(pb::CreateQueueRequest {
            name: "three".into(),
            settings: None,
        })
        .await
        .expect_err("over the queue limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("--max-queues"), "{err}");
    let err = c
        .enqueue(pb::EnqueueRequest {
            queue: "three".into(),
            items: vec![pb::NewItem::default()],
            create_queue: true,
            request_id: String::new(),
        })
        .await
        .expect_err("an enqueue creating a queue is refused too");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        lease(&mut c, "one", 1).await.items.len(),
        1,
        "still serving"
    );
    c.delete_queue(pb::DeleteQueueRequest {
        name: "two".into(),
        allow_missing: false,
    })
    .await
    .expect("delete");
    enqueue(&mut c, "three", vec![3]).await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_deleted_queue_leaves_metrics() {
    let (server, mut c) = server(Limits::default()).await;
    enqueue(&mut c, "gone-soon", vec![1]).await;
    enqueue(&mut c, "stays", vec![1]).await;
    let page = metrics(&server).await;
    assert!(page.contains("queue=\"gone-soon\""), "{page}");
    c.delete_queue(pb::DeleteQueueRequest {
        name: "gone-soon".into(),
        allow_missing: false,
    })
    .await
    .expect("delete");
    let page = metrics(&server).await;
    assert!(!page.contains("queue=\"gone-soon\""), "{page}");
    assert!(
        page.contains("workq_queue_items{queue=\"stays\",state=\"pending\"} 1"),
        "{page}"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_queued_bytes_limit_refuses_with_resource_exhausted_until_items_leave() {
    // Three items of 1,000 bytes (plus 200 each for the item itself).
    let (server, mut c) = server(Limits {
        max_queued_bytes: 3 * 1200,
        ..Limits::default()
    })
    .await;
    for i in 0..3u8 {
        enqueue(&mut c, "full", vec![i; 1000]).await;
    }
    let refused = c
        .enqueue(pb::EnqueueRequest {
            queue: "full".into(),
            items: vec![pb::NewItem {
                payload: vec![9; 1000].into(),
                ..Default::default()
            }],
            create_queue: true,
            request_id: String::new(),
        })
        .await
        .expect_err("over the byte budget");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-queued-bytes"),
        "{refused}"
    );
    assert_eq!(stats(&mut c, "full").await.enqueued, 3);
    // Still serving: a completion frees room for one more.
    let got = lease(&mut c, "full", 1).await;
    c.complete(pb::CompleteRequest {
        queue: "full".into(),
        lease_tokens: vec![got.items[0].lease_token.clone()],
        per_token_results: false,
    })
    .await
    .expect("complete");
    enqueue(&mut c, "full", vec![3; 1000]).await;
    // Deleting the queue frees all of it.
    c.delete_queue(pb::DeleteQueueRequest {
        name: "full".into(),
        allow_missing: false,
    })
    .await
    .expect("delete");
    for i in 0..3u8 {
        enqueue(&mut c, "again", vec![i; 1000]).await;
    }
    assert_eq!(server.engine().queued_bytes(), 3 * 1200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_stream_forgets_leases_ended_over_unary_calls() {
    let (server, mut c) = server(Limits::default()).await;
    for i in 0..3u8 {
        enqueue(&mut c, "forget", vec![i]).await;
    }
    let got = lease(&mut c, "forget", 3).await;
    let mut held: std::collections::HashSet<queue_server::names::LeaseToken> = got
        .items
        .iter()
        .map(|i| i.lease_token.parse().expect("token"))
        .collect();
    c.complete(pb::CompleteRequest {
        queue: "forget".into(),
        lease_tokens: vec![got.items[0].lease_token.clone()],
        per_token_results: false,
    })
    .await
    .expect("complete");
    let name = "forget".parse().expect("name");
    server.engine().retain_live(&name, &mut held).await;
    assert_eq!(held.len(), 2, "the completed lease is forgotten");
    server.shutdown().await.expect("shutdown");
}

/// Issue 12 item 5: 200 HTTP/2 connections that open no call are closed
/// after the idle timeout; a connection with a call open (a Watch) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_kept() {
    use queue_server::server::Connections;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = queue_server::start(ServerConfig {
        connections: Connections {
            idle_timeout: std::time::Duration::from_millis(300),
            ..Connections::default()
        },
        ..ServerConfig::memory()
    })
    .await
    .expect("start");
    let addr = server.grpc_addr();
    // A busy connection: a Watch stays open throughout.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut busy = workq_proto::v1::queue_service_client::QueueServiceClient::new(channel);
    busy.create_queue(workq_proto::v1::CreateQueueRequest {
        name: "watched".into(),
        ..Default::default()
    })
    .await
    .expect("create");
    let mut watch = busy
        .watch(workq_proto::v1::WatchRequest {
            queue: "watched".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    watch.message().await.expect("first").expect("stats");
    // 200 idle connections: the preface and SETTINGS, then nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .expect("preface");
        idle.push(tokio::spawn(async move {
            // Reads until the server closes it (a GOAWAY may come first).
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).await.is_ok() || sink.is_empty()
        }));
    }
    for (i, conn) in idle.into_iter().enumerate() {
        // Only a guard against a hang: they close a timeout after they open.
        tokio::time::timeout(std::time::Duration::from_secs(60), conn)
            .await
            .unwrap_or_else(|_| panic!("connection {i} was never closed"))
            .expect("task");
    }
    // The busy connection outlived them all and still answers.
    busy.enqueue(workq_proto::v1::EnqueueRequest {
        queue: "watched".into(),
        items: vec![workq_proto::v1::NewItem {
            payload: b"x".to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("the busy connection is open");
    watch
        .message()
        .await
        .expect("the watch goes on")
        .expect("stats");
}
