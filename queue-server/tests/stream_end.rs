//! How a `Work` stream's end decides what becomes of the items it held: a
//! clean end (the worker half-closed) releases them counting no attempt; an
//! abnormal one (the worker's side reset or gone) counts an attempt, so an
//! item that keeps killing its worker goes dead. On both local stores and on
//! PostgreSQL (when it is there), a real server started in-process, over the
//! network; a worker that dies is one
//! whose TCP connection is cut under it (as when its process is killed).

mod common;

use queue_server::{RunningServer, ServerConfig};
use std::time::Duration;
use tokio_stream::StreamExt;
use workq_proto::v1 as pb;
use workq_testkit::Proxy;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// The queue's attempts before an item goes dead.
const MAX_ATTEMPTS: i32 = 3;

/// Where a test's server keeps its items.
enum Store {
    Memory,
    Embedded,
    /// A database of its own, dropped with it.
    Postgres(common::PgDatabase),
}

impl Store {
    /// The store named `name`; `None` for PostgreSQL when it is not there.
    fn named(name: &str) -> Option<Store> {
        Some(match name {
            "memory" => Store::Memory,
            "embedded" => Store::Embedded,
            _ => Store::Postgres(common::PgDatabase::create()?),
        })
    }
}

/// A server on `store` (embedded: in `dir`), a client, and a queue `q` of
/// `MAX_ATTEMPTS` holding one item per payload.
async fn server(
    store: &Store,
    dir: &std::path::Path,
    payloads: &[&[u8]],
) -> (RunningServer, Client) {
    let config = match store {
        Store::Memory => ServerConfig::memory(),
        Store::Embedded => ServerConfig::embedded(dir),
        Store::Postgres(db) => ServerConfig::postgres(db.url()),
    };
    let server = queue_server::start(config).await.expect("start");
    let mut c = Client::connect(format!("http://{}", server.grpc_addr()))
        .await
        .expect("connect");
    c.create_queue(pb::CreateQueueRequest {
        name: "q".into(),
        settings: Some(pb::QueueSettings {
            max_attempts: Some(MAX_ATTEMPTS),
            ..Default::default()
        }),
    })
    .await
    .expect("create");
    c.enqueue(pb::EnqueueRequest {
        queue: "q".into(),
        items: payloads
            .iter()
            .map(|p| pb::NewItem {
                payload: p.to_vec().into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
    .await
    .expect("enqueue");
    (server, c)
}

async fn stats(c: &mut Client) -> pb::QueueStats {
    let info = c.get_queue(pb::GetQueueRequest { name: "q".into() }).await;
    let queue = info.expect("get").into_inner().queue;
    queue.and_then(|q| q.stats).expect("stats")
}

/// Waits, by following `Watch`, until the counters satisfy `done`.
async fn until(c: &mut Client, done: impl Fn(&pb::QueueStats) -> bool) -> pb::QueueStats {
    let req = pb::WatchRequest {
        queue: "q".into(),
        until_drained: false,
    };
    let mut watch = c.watch(req).await.expect("watch").into_inner();
    // A guard against a hang, not a timed assertion: the change is immediate.
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = watch.next().await {
            let s = s.expect("watch").stats.expect("stats");
            if done(&s) {
                return s;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the counters never got there")
}

type Outbox = tokio::sync::mpsc::Sender<pb::WorkRequest>;

/// A client whose connection goes through `proxy`.
async fn client_via(proxy: &Proxy) -> Client {
    Client::connect(format!("http://{}", proxy.addr))
        .await
        .expect("connect through the proxy")
}

/// Opens a Work stream on `q` granting `credit` and reads until `n` items
/// came.
async fn work(
    c: &mut Client,
    credit: i32,
    n: usize,
) -> (
    Outbox,
    tonic::Streaming<pb::WorkResponse>,
    Vec<pb::LeasedItem>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WorkRequest {
        queue: "q".into(),
        lease: Some(workq_proto::time::duration(Duration::from_secs(3600))),
        credit,
        ..Default::default()
    })
    .await
    .expect("first message");
    let mut answers = c
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("work")
        .into_inner();
    let mut got = Vec::new();
    while got.len() < n {
        let msg = answers.message().await.expect("answer").expect("items");
        got.extend(msg.items);
    }
    (tx, answers, got)
}

/// The worker half-closes, then reads to the end: what it held is released,
/// no attempt counted; a completion handed in before is honoured.
async fn clean_end_releases_without_an_attempt(store: &str) {
    let Some(store) = Store::named(store) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut c) = server(&store, dir.path(), &[b"a", b"b", b"c"]).await;
    let (tx, mut answers, got) = work(&mut c, 3, 3).await;
    tx.send(pb::WorkRequest {
        complete_tokens: vec![got[0].lease_token.clone()],
        sequence: 7,
        ..Default::default()
    })
    .await
    .expect("complete");
    drop(tx);
    let mut answered = false;
    while let Some(msg) = answers.message().await.expect("a clean end") {
        if let Some(a) = msg.answer {
            assert_eq!((a.sequence, a.problem), (7, None));
            answered = true;
        }
    }
    assert!(answered, "the completion is answered before the end");
    let s = until(&mut c, |s| s.leased == 0).await;
    assert_eq!(
        (s.pending, s.completed, s.retried, s.dead),
        (2, 1, 0, 0),
        "released, not retried"
    );
    let (_tx, _answers, again) = work(&mut c, 2, 2).await;
    assert!(again.iter().all(|i| i.attempt == 1), "no attempt counted");
    server.shutdown().await.expect("shutdown");
}

/// The worker vanishes (its stream reset) with the item in hand, again and
/// again: each time counts an attempt, and after `MAX_ATTEMPTS` the item is
/// dead with a reason that says the worker was lost; an item completed
/// meanwhile is not touched.
async fn abnormal_end_counts_an_attempt_until_dead(store: &str) {
    let Some(store) = Store::named(store) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut c) = server(&store, dir.path(), &[b"poison"]).await;
    let proxy = Proxy::start(server.grpc_addr()).await;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut worker = client_via(&proxy).await;
        let (_tx, _answers, got) = work(&mut worker, 1, 1).await;
        assert_eq!(got[0].attempt, attempt);
        // The worker dies with the item in hand: its connection is cut,
        // nothing half-closed.
        proxy.cut();
        let s = until(&mut c, |s| s.leased == 0).await;
        let last = attempt == MAX_ATTEMPTS;
        assert_eq!(
            (s.pending, s.retried, s.dead),
            (
                i64::from(!last),
                i64::from(attempt.min(MAX_ATTEMPTS - 1)),
                i64::from(last)
            ),
            "attempt {attempt}"
        );
    }
    let dead = c
        .list_dead(pb::ListDeadRequest {
            queue: "q".into(),
            ..Default::default()
        })
        .await
        .expect("list dead")
        .into_inner()
        .items;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, MAX_ATTEMPTS);
    assert!(dead[0].reason.contains("worker lost"), "{}", dead[0].reason);
    assert_eq!(stats(&mut c).await.completed, 0);
    server.shutdown().await.expect("shutdown");
}

/// A completion answered before the worker vanished stays completed; only
/// what was still held counts an attempt.
async fn abnormal_end_spares_what_was_completed(store: &str) {
    let Some(store) = Store::named(store) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, mut c) = server(&store, dir.path(), &[b"done", b"held"]).await;
    let proxy = Proxy::start(server.grpc_addr()).await;
    let mut worker = client_via(&proxy).await;
    let (tx, mut answers, got) = work(&mut worker, 2, 2).await;
    tx.send(pb::WorkRequest {
        complete_tokens: vec![got[0].lease_token.clone()],
        sequence: 1,
        ..Default::default()
    })
    .await
    .expect("complete");
    loop {
        let msg = answers.message().await.expect("answer").expect("answer");
        if msg.answer.is_some() {
            break;
        }
    }
    proxy.cut();
    let s = until(&mut c, |s| s.leased == 0).await;
    assert_eq!((s.pending, s.completed, s.retried, s.dead), (1, 1, 1, 0));
    drop((tx, answers));
    let (_tx, _answers, again) = work(&mut c, 1, 1).await;
    assert_eq!(again[0].payload.as_ref(), got[1].payload.as_ref());
    assert_eq!(again[0].attempt, 2, "the lost stream's attempt counted");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn memory_a_clean_end_releases_without_an_attempt() {
    clean_end_releases_without_an_attempt("memory").await;
}

#[tokio::test]
async fn embedded_a_clean_end_releases_without_an_attempt() {
    clean_end_releases_without_an_attempt("embedded").await;
}

#[tokio::test]
async fn memory_an_abnormal_end_counts_an_attempt_until_dead() {
    abnormal_end_counts_an_attempt_until_dead("memory").await;
}

#[tokio::test]
async fn embedded_an_abnormal_end_counts_an_attempt_until_dead() {
    abnormal_end_counts_an_attempt_until_dead("embedded").await;
}

#[tokio::test]
async fn memory_an_abnormal_end_spares_what_was_completed() {
    abnormal_end_spares_what_was_completed("memory").await;
}

#[tokio::test]
async fn embedded_an_abnormal_end_spares_what_was_completed() {
    abnormal_end_spares_what_was_completed("embedded").await;
}

#[tokio::test]
async fn postgres_a_clean_end_releases_without_an_attempt() {
    clean_end_releases_without_an_attempt("postgres").await;
}

#[tokio::test]
async fn postgres_an_abnormal_end_counts_an_attempt_until_dead() {
    abnormal_end_counts_an_attempt_until_dead("postgres").await;
}

#[tokio::test]
async fn postgres_an_abnormal_end_spares_what_was_completed() {
    abnormal_end_spares_what_was_completed("postgres").await;
}
