//! The real `queue-server` binary over the network, with the generated client.

mod common;

use common::{ServerProcess, Store, stats, unique_queue};
use nix::sys::signal::Signal;
use tonic::Code;
use workq_proto::v1 as pb;

fn item(payload: &str) -> pb::NewItem {
    pb::NewItem {
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn enqueue_req(queue: &str, payloads: &[&str]) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        queue: queue.into(),
        items: payloads.iter().map(|p| item(p)).collect(),
        create_queue: true,
        request_id: String::new(),
    }
}

fn ms(ms: u64) -> Option<prost_types::Duration> {
    Some(workq_proto::time::duration(
        std::time::Duration::from_millis(ms),
    ))
}

fn lease_req(queue: &str, max: i32, wait_ms: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queue: queue.into(),
        max_items: max,
        wait: ms(wait_ms),
        ..Default::default()
    }
}

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// Creates queue `q` with the default settings.
async fn create(c: &mut Client, q: &str) {
    let req = pb::CreateQueueRequest {
        name: q.into(),
        settings: None,
    };
    c.create_queue(req).await.expect("create");
}

/// Enqueues `payloads` into `q` (created if missing).
async fn enqueue(c: &mut Client, q: &str, payloads: &[&str]) -> pb::EnqueueResponse {
    let resp = c.enqueue(enqueue_req(q, payloads)).await;
    resp.expect("enqueue").into_inner()
}

/// Leases up to `max` items of `q`, not waiting.
async fn lease(c: &mut Client, q: &str, max: i32) -> pb::LeaseResponse {
    let resp = c.lease(lease_req(q, max, 0)).await;
    resp.expect("lease").into_inner()
}

/// A lease call for one item of `q` that waits up to `wait_ms`, on a task of
/// its own, so that the test can act while it is parked.
fn spawn_lease(
    c: &Client,
    q: &str,
    wait_ms: u64,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::LeaseResponse>, tonic::Status>> {
    let (mut waiter, req) = (c.clone(), lease_req(q, 1, wait_ms));
    tokio::spawn(async move { waiter.lease(req).await })
}

/// Completes the leases `tokens` of `q`.
async fn complete(c: &mut Client, q: &str, tokens: Vec<String>) {
    let req = pb::CompleteRequest {
        queue: q.into(),
        lease_tokens: tokens,
        per_token_results: false,
    };
    c.complete(req).await.expect("complete");
}

/// Seals `q`.
async fn seal(c: &mut Client, q: &str) {
    let req = pb::SealQueueRequest { name: q.into() };
    c.seal_queue(req).await.expect("seal");
}

/// The lease tokens of `leased`, in order.
fn tokens(leased: &pb::LeaseResponse) -> Vec<String> {
    leased.items.iter().map(|i| i.lease_token.clone()).collect()
}

async fn enqueue_lease_complete_over_the_network(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("basic");
    let ids = enqueue(&mut c, &q, &["a", "b", "c"]).await;
    assert_eq!(ids.items.len(), 3);
    let leased = lease(&mut c, &q, 2).await;
    assert_eq!(leased.items.len(), 2);
    assert_eq!(&leased.items[0].payload[..], b"a");
    assert_eq!(leased.items[0].attempt, 1);
    complete(&mut c, &q, tokens(&leased)).await;
    let s = stats(&mut c, &q).await;
    assert_eq!((s.enqueued, s.pending, s.leased, s.completed), (3, 1, 0, 2));
    assert_eq!(s.state(), pb::QueueState::Active);
}

async fn refusals_carry_the_right_code_and_a_message_naming_the_problem(store: Store) {
    let Some(server) = ServerProcess::on(store, &["--max-payload-bytes", "10"]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("refuse");

    let e = c
        .get_queue(pb::GetQueueRequest { name: q.clone() })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&q), "{}", e.message());

    let e = c
        .enqueue(enqueue_req("Bad_Name", &["x"]))
        .await
        .expect_err("bad name");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("DNS-1123"), "{}", e.message());

    let e = c
        .enqueue(enqueue_req(&q, &["this payload is too long"]))
        .await
        .expect_err("big");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit of 10 bytes"), "{}", e.message());

    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = c.enqueue(enqueue_req(&q, &many)).await.expect_err("batch");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit is 1000"), "{}", e.message());

    enqueue(&mut c, &q, &["ok"]).await;
    let mut lease = lease_req(&q, 1, 0);
    lease.lease = ms(10);
    let e = c.lease(lease.clone()).await.expect_err("tiny lease");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("out of bounds"), "{}", e.message());
    lease.lease = ms(365 * 24 * 3600 * 1000);
    assert_eq!(
        c.lease(lease).await.expect_err("huge lease").code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.lease(lease_req(&q, 0, 0))
            .await
            .expect_err("zero items")
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.lease(lease_req(&q, 1, 3_600_000))
            .await
            .expect_err("hour-long wait")
            .code(),
        Code::InvalidArgument
    );

    let e = c
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: vec!["nonsense".into()],
            per_token_results: false,
        })
        .await
        .expect_err("garbage token");
    assert_eq!(e.code(), Code::InvalidArgument);

    let l = c
        .lease(lease_req(&q, 1, 0))
        .await
        .expect("lease")
        .into_inner();
    let token = l.items[0].lease_token.clone();
    c.release(pb::ReleaseRequest {
        queue: q.clone(),
        lease_tokens: vec![token.clone()],
        per_token_results: false,
    })
    .await
    .expect("release");
    let e = c
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: vec![token],
            per_token_results: false,
        })
        .await
        .expect_err("stale");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("no longer held"), "{}", e.message());

    seal(&mut c, &q).await;
    let e = c
        .enqueue(enqueue_req(&q, &["late"]))
        .await
        .expect_err("sealed");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("sealed"), "{}", e.message());

    let s = stats(&mut c, &q).await;
    assert_eq!(
        (s.enqueued, s.pending),
        (1, 1),
        "no refusal changed anything"
    );
}

async fn create_queue_is_idempotent_with_equal_settings_only(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("create");
    let req = |lease: u64| pb::CreateQueueRequest {
        name: q.clone(),
        settings: Some(pb::QueueSettings {
            default_lease: ms(lease),
            max_attempts: Some(2),
            ..Default::default()
        }),
    };
    let first = c
        .create_queue(req(5000))
        .await
        .expect("create")
        .into_inner();
    assert!(first.created);
    let settings = first.queue.and_then(|q| q.settings).expect("settings");
    assert_eq!(
        (settings.default_lease, settings.max_attempts),
        (ms(5000), Some(2))
    );
    assert!(
        !c.create_queue(req(5000))
            .await
            .expect("again")
            .into_inner()
            .created
    );
    assert_eq!(
        c.create_queue(req(6000)).await.expect_err("other").code(),
        Code::AlreadyExists
    );
    let list = c
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.queues.iter().any(|i| i.name == q));
    c.delete_queue(pb::DeleteQueueRequest {
        name: q.clone(),
        allow_missing: false,
    })
    .await
    .expect("delete");
    assert_eq!(
        c.get_queue(pb::GetQueueRequest { name: q })
            .await
            .expect_err("gone")
            .code(),
        Code::NotFound
    );
}

async fn a_waiting_lease_gets_an_item_enqueued_later_and_drained_ends_it(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("wait");
    create(&mut c, &q).await;
    let waiting = spawn_lease(&c, &q, 60_000);
    // The lease call is parked on the server; an enqueue wakes it.
    enqueue(&mut c, &q, &["late"]).await;
    let got = waiting.await.expect("join").expect("lease").into_inner();
    assert_eq!(&got.items[0].payload[..], b"late");

    // A second waiter on a sealed queue is answered "drained" when the last
    // lease completes.
    seal(&mut c, &q).await;
    let waiting = spawn_lease(&c, &q, 60_000);
    complete(&mut c, &q, vec![got.items[0].lease_token.clone()]).await;
    let end = waiting.await.expect("join").expect("lease").into_inner();
    assert!(end.items.is_empty() && end.queue_state() == pb::QueueState::Drained);
}

async fn a_lease_call_hands_in_completions_and_a_refused_one_leases_nothing(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("piggyback");
    enqueue(&mut c, &q, &["a", "b", "c"]).await;
    let first = lease(&mut c, &q, 1).await;
    let token = first.items[0].lease_token.clone();
    let mut req = lease_req(&q, 1, 0);
    req.complete_tokens = vec![token.clone()];
    let next = c.lease(req.clone()).await.expect("complete then lease");
    assert_eq!(next.into_inner().items.len(), 1);
    let s = stats(&mut c, &q).await;
    assert_eq!((s.completed, s.leased, s.pending), (1, 1, 1));
    // A token of an item completed under another lease: the call fails with
    // Complete's error and leases nothing.
    let mut parts = token.split('.');
    let (item, seq, secret) = (
        parts.next().expect("item"),
        parts.next().expect("seq"),
        parts.next().expect("secret"),
    );
    let other = format!(
        "{item}.{:x}.{secret}",
        u64::from_str_radix(seq, 16).expect("hex") + 1
    );
    req.complete_tokens = vec![other];
    let e = c.lease(req).await.expect_err("stale completion");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let s = stats(&mut c, &q).await;
    assert_eq!((s.completed, s.leased, s.pending), (1, 1, 1));
}

async fn fail_dead_list_and_requeue(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("dead");
    enqueue(&mut c, &q, &["poison"]).await;
    let l = lease(&mut c, &q, 1).await;
    let f = c
        .fail(pb::FailRequest {
            queue: q.clone(),
            lease_tokens: vec![l.items[0].lease_token.clone()],
            mode: pb::FailMode::Fatal as i32,
            reason: "exit code 42".into(),
            ..Default::default()
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(f.dead, 1);
    let dead = c
        .list_dead(pb::ListDeadRequest {
            queue: q.clone(),
            ..Default::default()
        })
        .await
        .expect("dead")
        .into_inner();
    assert_eq!(dead.items.len(), 1);
    assert!(dead.items[0].reason.contains("exit code 42"));
    assert_eq!(&dead.items[0].payload[..], b"poison");
    let r = c
        .requeue_dead(pb::RequeueDeadRequest {
            queue: q.clone(),
            item_ids: vec![],
            all: true,
        })
        .await
        .expect("requeue")
        .into_inner();
    assert_eq!(r.requeued, 1);
    let s = stats(&mut c, &q).await;
    assert_eq!((s.pending, s.dead), (1, 0));
}

async fn watch_streams_counters_until_drained(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("watch");
    enqueue(&mut c, &q, &["a", "b"]).await;
    seal(&mut c, &q).await;
    let mut stream = c
        .watch(pb::WatchRequest {
            queue: q.clone(),
            until_drained: true,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first")
        .and_then(|w| w.stats)
        .expect("some");
    assert_eq!(first.pending, 2);
    let l = lease(&mut c, &q, 2).await;
    complete(&mut c, &q, tokens(&l)).await;
    let mut last = first;
    while let Some(s) = stream.message().await.expect("message") {
        let s = s.stats.expect("stats");
        assert!(s.enqueued == s.pending + s.delayed + s.leased + s.completed + s.dead);
        last = s;
    }
    assert!(
        last.state() == pb::QueueState::Drained && last.completed == 2,
        "{last:?}"
    );
}

async fn health_reflection_healthz_and_metrics_are_served(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "workq.v1.QueueService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        resp.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream
        .message()
        .await
        .expect("msg")
        .and_then(|m| m.message_response)
    else {
        panic!("no list of services");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "workq.v1.QueueService"),
        "{list:?}"
    );

    let mut c = server.client().await;
    let q = unique_queue("metrics");
    enqueue(&mut c, &q, &["a"]).await;
    assert!(server.http_get("/healthz").starts_with("HTTP/1.1 200"));
    let metrics = server.metrics();
    assert!(metrics.contains("workq_items_enqueued_total"), "{metrics}");
    assert!(metrics.contains(&format!("queue=\"{q}\"")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = unique_queue("term");
    let mut server = ServerProcess::embedded(dir.path());
    let mut c = server.client().await;
    enqueue(&mut c, &q, &["a", "b", "c"]).await;
    let l = lease(&mut c, &q, 2).await;
    complete(&mut c, &q, vec![l.items[0].lease_token.clone()]).await;
    // A long-poll in flight must not hold the shutdown up.
    let idle = unique_queue("idle");
    create(&mut c, &idle).await;
    let parked = spawn_lease(&c, &idle, 290_000);
    server
        .wait_for_gauge("workq_lease_calls_waiting", &idle, 1)
        .await;
    let status = server.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "exit status {status:?}");
    // The parked call is answered, empty, before the server goes.
    let parked = parked.await.expect("join").expect("answered, not cut off");
    assert!(parked.into_inner().items.is_empty());

    let server2 = ServerProcess::embedded(dir.path());
    let mut c = server2.client().await;
    let s = stats(&mut c, &q).await;
    // b was leased at shutdown: it is pending again, with no attempt counted.
    assert_eq!((s.enqueued, s.pending, s.leased, s.completed), (3, 2, 0, 1));
    let l = lease(&mut c, &q, 2).await;
    assert!(l.items.iter().all(|i| i.attempt == 1));
}

#[tokio::test]
async fn a_locked_data_dir_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = ServerProcess::embedded(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another queue-server"), "{err}");
}

/// One side of a `Work` stream: what the test sends, what it receives.
struct WorkStream {
    tx: tokio::sync::mpsc::Sender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
}

impl WorkStream {
    async fn open(c: &mut Client, queue: &str, credit: i32) -> Result<WorkStream, tonic::Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(pb::WorkRequest {
            queue: queue.into(),
            credit,
            ..Default::default()
        })
        .await
        .expect("first message");
        let rx = c
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(WorkStream { tx, rx })
    }

    async fn send(&self, credit: i32, tokens: Vec<String>, sequence: i64) {
        self.tx
            .send(pb::WorkRequest {
                credit,
                complete_tokens: tokens,
                sequence,
                ..Default::default()
            })
            .await
            .expect("send");
    }

    async fn next(&mut self) -> pb::WorkResponse {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.rx.message())
            .await
            .expect("a message within 10 s")
            .expect("no error")
            .expect("the stream goes on")
    }
}

async fn a_work_stream_pushes_items_up_to_its_credit_and_answers_completions(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("work");
    enqueue(&mut c, &q, &["a", "b", "c"]).await;
    let mut w = WorkStream::open(&mut c, &q, 2).await.expect("open");
    let first = w.next().await;
    assert_eq!(first.items.len(), 2, "no more than the credit");
    let tokens: Vec<String> = first.items.iter().map(|i| i.lease_token.clone()).collect();
    w.send(1, tokens.clone(), 7).await;
    // The completion's answer and the third item, in either order.
    let (mut completed, mut items) = (None, Vec::new());
    while completed.is_none() || items.is_empty() {
        let m = w.next().await;
        completed = completed.or(m.answer);
        items.extend(m.items);
    }
    let done = completed.expect("answer");
    assert_eq!((done.sequence, &done.problem), (7, &None), "{done:?}");
    assert_eq!(items.len(), 1);
    assert_eq!(stats(&mut c, &q).await.completed, 2);

    // Handing in the same tokens again: already done, nothing counted twice.
    w.send(0, tokens, 8).await;
    let again = w.next().await.answer.expect("answer");
    assert_eq!((again.sequence, again.problem), (8, None));
    assert_eq!(stats(&mut c, &q).await.completed, 2);

    // Sealed: the last completion drains the queue and the stream ends.
    seal(&mut c, &q).await;
    w.send(1, vec![items[0].lease_token.clone()], 9).await;
    let (mut completed, mut drained) = (false, false);
    while let Some(m) = w.rx.message().await.expect("no error") {
        completed |= m
            .answer
            .is_some_and(|d| d.sequence == 9 && d.problem.is_none());
        drained |= m.drained;
    }
    assert!(
        completed && drained,
        "completed {completed}, drained {drained}"
    );
    let s = stats(&mut c, &q).await;
    assert_eq!((s.completed, s.state()), (3, pb::QueueState::Drained));
}

async fn a_waiting_work_stream_gets_an_item_the_moment_it_is_enqueued(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("work-wait");
    create(&mut c, &q).await;
    let mut w = WorkStream::open(&mut c, &q, 10).await.expect("open");
    enqueue(&mut c, &q, &["late"]).await;
    let m = w.next().await;
    assert_eq!(m.items.len(), 1);
    assert_eq!(&m.items[0].payload[..], b"late");
}

async fn a_work_stream_on_a_missing_queue_is_refused(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let e = match WorkStream::open(&mut c, &unique_queue("nowhere"), 1).await {
        Ok(_) => panic!("opened a stream on a missing queue"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

#[tokio::test]
async fn an_enqueue_stream_adds_batches_in_order_and_answers_each_when_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    enqueue_stream_order(ServerProcess::embedded(dir.path())).await;
}

#[tokio::test]
async fn an_enqueue_stream_on_postgres_adds_batches_in_order() {
    if let Some(server) = ServerProcess::postgres() {
        enqueue_stream_order(server).await;
    }
}

async fn enqueue_stream_order(server: ServerProcess) {
    let mut c = server.client().await;
    let q = unique_queue("push-stream");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let batch = |queue: &str, payloads: &[&str], sequence: i64| pb::EnqueueStreamRequest {
        queue: queue.into(),
        create_queue: true,
        items: payloads.iter().map(|p| item(p)).collect(),
        sequence,
        ..Default::default()
    };
    tx.send(batch(&q, &["1"], 1)).await.expect("send");
    let mut answers = c
        .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    tx.send(batch("", &["2", "3"], 2)).await.expect("send");
    let too_big = "x".repeat(2 << 20);
    tx.send(batch("", &["4", &too_big], 3)).await.expect("send");
    tx.send(batch("", &["5"], 4)).await.expect("send");
    drop(tx);
    let mut by_ref = std::collections::BTreeMap::new();
    while let Some(a) = answers.message().await.expect("no error") {
        by_ref.insert(a.sequence, a);
    }
    assert_eq!(
        by_ref.len(),
        4,
        "every batch answered before the stream ended"
    );
    for r in [1, 2, 4] {
        assert_eq!(by_ref[&r].problem, None, "{:?}", by_ref[&r]);
    }
    assert_eq!(by_ref[&2].items.len(), 2);
    let refused = by_ref[&3].problem.as_ref().expect("refused");
    assert_eq!(refused.code, Code::InvalidArgument as i32, "{refused:?}");
    assert!(refused.message.contains("payload"), "{}", refused.message);
    // In the order sent, and nothing of the refused batch.
    let l = lease(&mut c, &q, 10).await;
    let got: Vec<&[u8]> = l.items.iter().map(|i| &i.payload[..]).collect();
    assert_eq!(got, vec![&b"1"[..], b"2", b"3", b"5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_do_not_hold_up_a_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::embedded(dir.path());
    let mut c = server.client().await;
    let q = unique_queue("term-streams");
    enqueue(&mut c, &q, &["a"]).await;
    // A worker holding its only item (no credit left) and an idle producer.
    let mut w = WorkStream::open(&mut c, &q, 1).await.expect("open work");
    assert_eq!(w.next().await.items.len(), 1);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::EnqueueStreamRequest {
        queue: q.clone(),
        items: vec![item("b")],
        sequence: 1,
        ..Default::default()
    })
    .await
    .expect("send");
    let mut answers = c
        .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open enqueue stream")
        .into_inner();
    let first = answers.message().await.expect("answer").expect("answer");
    assert_eq!((first.sequence, first.problem), (1, None));

    let status = tokio::task::block_in_place(|| {
        server.signal_and_wait_for(Signal::SIGTERM, std::time::Duration::from_secs(20))
    });
    let status = status.expect("the server exits within 20 s of SIGTERM with streams open");
    assert!(status.success(), "exit status {status:?}");
    // Both streams end with the reason.
    let e = answers
        .message()
        .await
        .expect_err("enqueue stream ends with a status");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e =
        w.rx.message()
            .await
            .expect_err("work stream ends with a status");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    drop(tx);
}

/// The tests above on the memory store.
mod memory {
    use super::*;

    #[tokio::test]
    async fn enqueue_lease_complete_over_the_network() {
        super::enqueue_lease_complete_over_the_network(Store::Memory).await;
    }

    #[tokio::test]
    async fn refusals_carry_the_right_code_and_a_message_naming_the_problem() {
        super::refusals_carry_the_right_code_and_a_message_naming_the_problem(Store::Memory).await;
    }

    #[tokio::test]
    async fn create_queue_is_idempotent_with_equal_settings_only() {
        super::create_queue_is_idempotent_with_equal_settings_only(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_waiting_lease_gets_an_item_enqueued_later_and_drained_ends_it() {
        super::a_waiting_lease_gets_an_item_enqueued_later_and_drained_ends_it(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_lease_call_hands_in_completions_and_a_refused_one_leases_nothing() {
        super::a_lease_call_hands_in_completions_and_a_refused_one_leases_nothing(Store::Memory)
            .await;
    }

    #[tokio::test]
    async fn fail_dead_list_and_requeue() {
        super::fail_dead_list_and_requeue(Store::Memory).await;
    }

    #[tokio::test]
    async fn watch_streams_counters_until_drained() {
        super::watch_streams_counters_until_drained(Store::Memory).await;
    }

    #[tokio::test]
    async fn health_reflection_healthz_and_metrics_are_served() {
        super::health_reflection_healthz_and_metrics_are_served(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_work_stream_pushes_items_up_to_its_credit_and_answers_completions() {
        super::a_work_stream_pushes_items_up_to_its_credit_and_answers_completions(Store::Memory)
            .await;
    }

    #[tokio::test]
    async fn a_waiting_work_stream_gets_an_item_the_moment_it_is_enqueued() {
        super::a_waiting_work_stream_gets_an_item_the_moment_it_is_enqueued(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_work_stream_on_a_missing_queue_is_refused() {
        super::a_work_stream_on_a_missing_queue_is_refused(Store::Memory).await;
    }
}

/// The tests above on the postgres store.
mod postgres {
    use super::*;

    #[tokio::test]
    async fn enqueue_lease_complete_over_the_network() {
        super::enqueue_lease_complete_over_the_network(Store::Postgres).await;
    }

    #[tokio::test]
    async fn refusals_carry_the_right_code_and_a_message_naming_the_problem() {
        super::refusals_carry_the_right_code_and_a_message_naming_the_problem(Store::Postgres)
            .await;
    }

    #[tokio::test]
    async fn create_queue_is_idempotent_with_equal_settings_only() {
        super::create_queue_is_idempotent_with_equal_settings_only(Store::Postgres).await;
    }

    #[tokio::test]
    async fn a_waiting_lease_gets_an_item_enqueued_later_and_drained_ends_it() {
        super::a_waiting_lease_gets_an_item_enqueued_later_and_drained_ends_it(Store::Postgres)
            .await;
    }

    #[tokio::test]
    async fn a_lease_call_hands_in_completions_and_a_refused_one_leases_nothing() {
        super::a_lease_call_hands_in_completions_and_a_refused_one_leases_nothing(Store::Postgres)
            .await;
    }

    #[tokio::test]
    async fn fail_dead_list_and_requeue() {
        super::fail_dead_list_and_requeue(Store::Postgres).await;
    }

    #[tokio::test]
    async fn watch_streams_counters_until_drained() {
        super::watch_streams_counters_until_drained(Store::Postgres).await;
    }

    #[tokio::test]
    async fn health_reflection_healthz_and_metrics_are_served() {
        super::health_reflection_healthz_and_metrics_are_served(Store::Postgres).await;
    }

    #[tokio::test]
    async fn a_work_stream_pushes_items_up_to_its_credit_and_answers_completions() {
        super::a_work_stream_pushes_items_up_to_its_credit_and_answers_completions(Store::Postgres)
            .await;
    }

    #[tokio::test]
    async fn a_waiting_work_stream_gets_an_item_the_moment_it_is_enqueued() {
        super::a_waiting_work_stream_gets_an_item_the_moment_it_is_enqueued(Store::Postgres).await;
    }

    #[tokio::test]
    async fn a_work_stream_on_a_missing_queue_is_refused() {
        super::a_work_stream_on_a_missing_queue_is_refused(Store::Postgres).await;
    }
}
