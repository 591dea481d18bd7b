//! The SDK on the settled `workq.v1` contract: lost answers that must not
//! turn into losses or duplicates, decisions by the ErrorInfo reason,
//! per-token completions, pagination, the server's limits, the lifecycle.
//!
//! Each test starts its own queue service in-process: the real
//! `queue_server::grpc::GrpcService` behind a wrapper (`Lossy`) that delegates
//! every method to it and, when told, runs a Complete or an Enqueue for real
//! and then answers UNAVAILABLE, as a connection dropped after the commit
//! would. The wrapper also counts those calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use queue_server::grpc::GrpcService;
use queue_server::settings::{Limits, QueueSettings as ServerDefaults};
use queue_server::store::MemoryStore;
use tonic::{Request, Response, Status};
use worker_sdk::ack::Acker;
use worker_sdk::{
    Client, Error, Failure, LeaseLostReason, LeaseOptions, LeaseToken, Queue, QueueSettings,
    QueueState, RequeueDead, WorkError, WorkerOptions,
};
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_server::{QueueService, QueueServiceServer};

/// What the wrapper is told to do, and what it counted.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Complete calls to run and then answer UNAVAILABLE.
    lose_complete: Arc<AtomicUsize>,
    /// Enqueue calls to run and then answer UNAVAILABLE.
    lose_enqueue: Arc<AtomicUsize>,
    /// Complete calls to answer as a restarted server that forgot the
    /// tokens it finished would: refused, `ITEM_COMPLETED` (per token when
    /// asked per token), without calling the real service.
    forget_complete: Arc<AtomicUsize>,
    /// After losing a Complete answer, forget the next Complete as a server
    /// restarted since would.
    restart_after_loss: Arc<std::sync::atomic::AtomicBool>,
    /// Complete calls seen.
    complete_calls: Arc<AtomicUsize>,
    /// Enqueue calls seen, and their request ids.
    enqueue_calls: Arc<AtomicUsize>,
    request_ids: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Takes one from `n` if it is above zero.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

fn answer_lost() -> Status {
    Status::unavailable("test: the answer was lost after the call committed")
}

/// What a server that restarted since the tokens were completed answers.
fn forgotten(req: &pb::CompleteRequest) -> Res<pb::CompleteResponse> {
    let refusal = |token: &str| {
        Rejection::new(
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::ItemCompleted,
            format!("lease {token}: the item is no longer in the queue (completed)"),
        )
        .meta("queue", &req.queue)
        .meta("lease_token", token)
    };
    if !req.per_token_results {
        let token = req.lease_tokens.first().cloned().unwrap_or_default();
        return Err(refusal(&token).to_status());
    }
    Ok(Response::new(pb::CompleteResponse {
        completed: 0,
        already_completed: 0,
        results: req
            .lease_tokens
            .iter()
            .map(|t| pb::TokenResult {
                lease_token: t.clone(),
                outcome: pb::TokenOutcome::Refused as i32,
                problem: Some(refusal(t).to_problem()),
                lease_expire_time: None,
                dead: false,
            })
            .collect(),
    }))
}

/// The real service, with answers lost on demand.
struct Lossy {
    inner: GrpcService,
    faults: Faults,
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl QueueService for Lossy {
    type EnqueueStreamStream = <GrpcService as QueueService>::EnqueueStreamStream;
    type WorkStream = <GrpcService as QueueService>::WorkStream;
    type WatchStream = <GrpcService as QueueService>::WatchStream;

    async fn get_server_info(
        &self,
        r: Request<pb::GetServerInfoRequest>,
    ) -> Res<pb::GetServerInfoResponse> {
        self.inner.get_server_info(r).await
    }
    async fn create_queue(
        &self,
        r: Request<pb::CreateQueueRequest>,
    ) -> Res<pb::CreateQueueResponse> {
        self.inner.create_queue(r).await
    }
    async fn get_queue(&self, r: Request<pb::GetQueueRequest>) -> Res<pb::GetQueueResponse> {
        self.inner.get_queue(r).await
    }
    async fn list_queues(&self, r: Request<pb::ListQueuesRequest>) -> Res<pb::ListQueuesResponse> {
        self.inner.list_queues(r).await
    }
    async fn update_queue(
        &self,
        r: Request<pb::UpdateQueueRequest>,
    ) -> Res<pb::UpdateQueueResponse> {
        self.inner.update_queue(r).await
    }
    async fn delete_queue(
        &self,
        r: Request<pb::DeleteQueueRequest>,
    ) -> Res<pb::DeleteQueueResponse> {
        self.inner.delete_queue(r).await
    }
    async fn purge_queue(&self, r: Request<pb::PurgeQueueRequest>) -> Res<pb::PurgeQueueResponse> {
        self.inner.purge_queue(r).await
    }
    async fn seal_queue(&self, r: Request<pb::SealQueueRequest>) -> Res<pb::SealQueueResponse> {
        self.inner.seal_queue(r).await
    }
    async fn enqueue(&self, r: Request<pb::EnqueueRequest>) -> Res<pb::EnqueueResponse> {
        self.faults.enqueue_calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut ids) = self.faults.request_ids.lock() {
            ids.push(r.get_ref().request_id.clone());
        }
        let answer = self.inner.enqueue(r).await;
        if answer.is_ok() && take_one(&self.faults.lose_enqueue) {
            return Err(answer_lost());
        }
        answer
    }
    async fn enqueue_stream(
        &self,
        r: Request<tonic::Streaming<pb::EnqueueStreamRequest>>,
    ) -> Res<Self::EnqueueStreamStream> {
        self.inner.enqueue_stream(r).await
    }
    async fn lease(&self, r: Request<pb::LeaseRequest>) -> Res<pb::LeaseResponse> {
        self.inner.lease(r).await
    }
    async fn work(&self, r: Request<tonic::Streaming<pb::WorkRequest>>) -> Res<Self::WorkStream> {
        self.inner.work(r).await
    }
    async fn renew(&self, r: Request<pb::RenewRequest>) -> Res<pb::RenewResponse> {
        self.inner.renew(r).await
    }
    async fn complete(&self, r: Request<pb::CompleteRequest>) -> Res<pb::CompleteResponse> {
        self.faults.complete_calls.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.faults.forget_complete) {
            return forgotten(r.get_ref());
        }
        let answer = self.inner.complete(r).await;
        if answer.is_ok() && take_one(&self.faults.lose_complete) {
            if self.faults.restart_after_loss.load(Ordering::SeqCst) {
                self.faults.forget_complete.store(1, Ordering::SeqCst);
            }
            return Err(answer_lost());
        }
        answer
    }
    async fn fail(&self, r: Request<pb::FailRequest>) -> Res<pb::FailResponse> {
        self.inner.fail(r).await
    }
    async fn release(&self, r: Request<pb::ReleaseRequest>) -> Res<pb::ReleaseResponse> {
        self.inner.release(r).await
    }
    async fn watch(&self, r: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        self.inner.watch(r).await
    }
    async fn list_dead(&self, r: Request<pb::ListDeadRequest>) -> Res<pb::ListDeadResponse> {
        self.inner.list_dead(r).await
    }
    async fn requeue_dead(
        &self,
        r: Request<pb::RequeueDeadRequest>,
    ) -> Res<pb::RequeueDeadResponse> {
        self.inner.requeue_dead(r).await
    }
}

/// A queue service on 127.0.0.1:0 behind [`Lossy`]; stops when dropped.
struct Harness {
    url: String,
    faults: Faults,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

impl Harness {
    async fn start(limits: Limits) -> Harness {
        let engine =
            queue_server::Engine::open(Arc::new(MemoryStore), limits, ServerDefaults::default())
                .expect("engine");
        let faults = Faults::default();
        let service = Lossy {
            inner: GrpcService::new(engine),
            faults: faults.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let serving = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(QueueServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Harness {
            url: format!("grpc://{addr}"),
            faults,
            serving,
        }
    }

    async fn client(&self) -> Client {
        worker_sdk::connect(&self.url).await.expect("connect")
    }

    async fn queue(&self, name: &str) -> Queue {
        self.client().await.queue(name).expect("queue name")
    }
}

fn lease(n: u32) -> LeaseOptions {
    LeaseOptions {
        max_items: n,
        ..LeaseOptions::default()
    }
}

fn tokens(items: &[worker_sdk::LeasedItem]) -> Vec<LeaseToken> {
    items.iter().map(|i| i.token.clone()).collect()
}

/// The first Complete commits and its answer is lost: the worker's retry is
/// answered "already done", and the item is reported completed, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_answer_was_lost_is_reported_completed() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("lost-complete").await;
    q.push(["x"]).await.expect("push");
    h.faults.lose_complete.store(1, Ordering::SeqCst);
    let summary = q
        .work(
            WorkerOptions::default()
                .handle_signals(false)
                .until_empty(true),
            |_job| async { Ok::<(), WorkError>(()) },
        )
        .await
        .expect("work");
    assert_eq!((summary.completed, summary.lost), (1, 0), "{summary:?}");
    assert_eq!(
        h.faults.complete_calls.load(Ordering::SeqCst),
        2,
        "one retry"
    );
    let s = q.stats().await.expect("stats");
    assert_eq!(
        (s.completed, s.leased, s.pending, s.delayed),
        (1, 0, 0, 0),
        "{s:?}"
    );
}

/// The same through the batched completer (the worker loop with
/// concurrency above 1): every item of the batch is reported completed.
#[tokio::test(flavor = "current_thread")]
async fn a_batched_completion_whose_answer_was_lost_is_reported_completed() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("lost-batch").await;
    q.push(["a", "b", "c"]).await.expect("push");
    let leased = q.lease(&lease(3)).await.expect("lease");
    h.faults.lose_complete.store(1, Ordering::SeqCst);
    let acker = Acker::start(q.clone());
    let results = futures::future::join_all(
        tokens(&leased.items)
            .into_iter()
            .map(|t| acker.complete(&q, t)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        h.faults.complete_calls.load(Ordering::SeqCst),
        2,
        "one retry of the batch"
    );
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.leased, s.pending), (3, 0, 0), "{s:?}");
}

/// The first Enqueue commits and its answer is lost: the SDK's retry carries
/// the same request_id, and the server adds nothing the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_answer_was_lost_adds_nothing_twice() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("lost-enqueue").await;
    h.faults.lose_enqueue.store(1, Ordering::SeqCst);
    let ids = q.push(["a", "b", "c"]).await.expect("push");
    assert_eq!(ids.len(), 3);
    assert_eq!(
        h.faults.enqueue_calls.load(Ordering::SeqCst),
        2,
        "one retry"
    );
    let sent = h.faults.request_ids.lock().expect("ids").clone();
    assert!(!sent[0].is_empty() && sent[0] == sent[1], "{sent:?}");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.enqueued, s.pending), (3, 3), "{s:?}");
    // A second push is a new call: a new request_id, new items.
    q.push(["d"]).await.expect("push");
    let sent = h.faults.request_ids.lock().expect("ids").clone();
    assert_ne!(sent[2], sent[0]);
    assert_eq!(q.stats().await.expect("stats").enqueued, 4);
}

/// Stale tokens carry what became of the lease, whatever the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tokens_say_what_became_of_the_lease() {
    let h = Harness::start(Limits {
        min_lease: Duration::from_millis(10),
        ..Limits::default()
    })
    .await;
    let q = h.queue("reasons").await;
    q.push(["x"]).await.expect("push");
    let first = q
        .lease(&LeaseOptions {
            lease: Some(Duration::from_millis(50)),
            ..lease(1)
        })
        .await
        .expect("lease");
    let old = tokens(&first.items);
    // Let the lease run out (no timing is asserted: only what follows).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = q.complete(&old).await.expect_err("expired");
    assert_eq!(e.lease_lost_reason(), Some(LeaseLostReason::Expired), "{e}");
    let e = q.renew(&old, None).await.expect_err("expired");
    assert_eq!(e.lease_lost_reason(), Some(LeaseLostReason::Expired), "{e}");

    // Another worker takes the item: the old token's lease is taken.
    let second = q.lease(&lease(1)).await.expect("lease again");
    assert_eq!(second.items.len(), 1);
    let e = q.complete(&old).await.expect_err("taken");
    assert_eq!(e.lease_lost_reason(), Some(LeaseLostReason::Taken), "{e}");
    assert!(
        matches!(&e, Error::LeaseLost { item: Some(item), .. } if item == second.items[0].id.as_str()),
        "{e:?}"
    );

    // Completed by the second worker: the first's token says so.
    let new = tokens(&second.items);
    q.complete(&new).await.expect("complete");
    // Completing again with the same token is idempotent.
    q.complete(&new).await.expect("complete again");
    let e = q
        .fail(&new, &Failure::fatal("late"))
        .await
        .expect_err("finished");
    assert_eq!(
        e.lease_lost_reason(),
        Some(LeaseLostReason::Finished),
        "{e}"
    );
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.enqueued), (1, 1), "counted once: {s:?}");

    // A sealed queue takes no more items: its own error, not a lost lease.
    q.seal().await.expect("seal");
    let e = q.push(["late"]).await.expect_err("sealed");
    assert!(
        matches!(e, Error::QueueSealed { ref queue } if queue == "reasons"),
        "{e:?}"
    );
    // A missing queue is not found.
    let e = h.queue("nope").await.info().await.expect_err("missing");
    assert!(matches!(e, Error::QueueNotFound { .. }), "{e:?}");
}

/// One stale token in a batch of ten: nine completed, one reported lost
/// with its reason, in one Complete call.
#[tokio::test(flavor = "current_thread")]
async fn the_completer_reports_one_stale_token_of_ten_in_one_call() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("ten").await;
    q.push((0..10).map(|i| i.to_string())).await.expect("push");
    let leased = q.lease(&lease(10)).await.expect("lease");
    let all = tokens(&leased.items);
    assert_eq!(all.len(), 10);
    q.release(&all[3..4]).await.expect("release one");
    h.faults.complete_calls.store(0, Ordering::SeqCst);

    let acker = Acker::start(q.clone());
    // On this single-threaded runtime every token is handed over before the
    // completer runs, so they go as one batch.
    let results =
        futures::future::join_all(all.iter().map(|t| acker.complete(&q, t.clone()))).await;
    assert_eq!(
        h.faults.complete_calls.load(Ordering::SeqCst),
        1,
        "one call"
    );
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(
                    r,
                    Err(Error::LeaseLost {
                        reason: LeaseLostReason::Finished,
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.pending, s.leased), (9, 1, 0), "{s:?}");
}

/// Listing queues and dead items follows the server's pages (here 3 long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_follow_pages() {
    let h = Harness::start(Limits {
        max_page_size: 3,
        ..Limits::default()
    })
    .await;
    let client = h.client().await;
    let names: BTreeSet<String> = (0..8).map(|i| format!("page-{i}")).collect();
    for n in &names {
        client
            .queue(n)
            .expect("name")
            .create(&QueueSettings::default())
            .await
            .expect("create");
    }
    let all = client.list_queues().await.expect("list");
    let listed: Vec<String> = all.iter().map(|q| q.name.clone()).collect();
    assert_eq!(listed.len(), 8, "each queue once: {listed:?}");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), names);
    // By hand: 3 + 3 + 2.
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_queues_page(0, &token).await.expect("page");
        pages.push(page.items.len());
        match page.next_page_token {
            Some(next) => token = next,
            None => break,
        }
    }
    assert_eq!(pages, [3, 3, 2]);

    let q = client.queue("page-0").expect("name");
    q.push((0..7).map(|i| format!("d{i}"))).await.expect("push");
    let leased = q.lease(&lease(7)).await.expect("lease");
    q.fail(&tokens(&leased.items), &Failure::fatal("test"))
        .await
        .expect("fail");
    let dead = q.dead(0).await.expect("dead");
    let ids: BTreeSet<_> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!((dead.len(), ids.len()), (7, 7), "each dead item once");
    assert_eq!(q.dead(5).await.expect("dead").len(), 5);
    let first = q.dead_page(2, "").await.expect("page");
    assert_eq!(first.items.len(), 2);
    assert!(first.next_page_token.is_some());
    assert_eq!(
        q.requeue_dead(RequeueDead::Ids(vec![dead[0].id.clone()]))
            .await
            .expect("requeue one"),
        1
    );
    assert_eq!(
        q.requeue_dead(RequeueDead::All).await.expect("requeue all"),
        6
    );
    assert_eq!(q.stats().await.expect("stats").pending, 7);
}

/// The server's limits, its answer to a byte budget, UpdateQueue, an
/// honest DeleteQueue and the state enum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_budgets_and_the_lifecycle() {
    let h = Harness::start(Limits {
        max_message_bytes: 32 * 1024 * 1024,
        max_page_size: 3,
        ..Limits::default()
    })
    .await;
    let client = h.client().await;
    let info = client.server_info().await.expect("server info");
    assert_eq!(info.max_message_bytes, 32 * 1024 * 1024);
    assert_eq!((info.max_page_size, info.max_batch_items), (3, 1000));
    assert!(!info.version.is_empty());

    let q = client.queue("budget").expect("name");
    q.push((0..5).map(|i| vec![b'0' + i; 1000]))
        .await
        .expect("push");
    let got = q
        .lease(&LeaseOptions {
            max_bytes: Some(2500),
            ..lease(5)
        })
        .await
        .expect("lease");
    let n = got.items.len() as u64;
    assert!((1..=2).contains(&n), "{n} items of 1000 bytes within 2500");
    assert_eq!(
        q.stats().await.expect("stats").leased,
        n,
        "only those leased"
    );

    let before = q.info().await.expect("info");
    let after = q
        .update(&QueueSettings {
            max_attempts: Some(2),
            ..QueueSettings::default()
        })
        .await
        .expect("update");
    assert_eq!(after.settings.max_attempts, Some(2));
    assert_eq!(after.settings.default_lease, before.settings.default_lease);
    assert_eq!(q.info().await.expect("info").settings.max_attempts, Some(2));

    assert_eq!(q.stats().await.expect("stats").state, QueueState::Active);
    let e = client.queue("fresh").expect("name");
    e.create(&QueueSettings::default()).await.expect("create");
    assert_eq!(e.stats().await.expect("stats").state, QueueState::Empty);
    let s = e.seal().await.expect("seal");
    assert_eq!(s.state, QueueState::Drained);
    assert!(e.delete().await.expect("delete"));
    assert!(!e.delete().await.expect("delete a missing queue"));
}

/// The SDK's receive limit follows the server's `max_message_bytes`: a lease
/// answer of 24 MB, above the contract's default of 16 MiB, arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_up_to_the_servers_message_limit_are_received() {
    let h = Harness::start(Limits {
        max_message_bytes: 32 * 1024 * 1024,
        ..Limits::default()
    })
    .await;
    let q = h.queue("big").await;
    let item = vec![b'x'; 1_000_000];
    q.push((0..24).map(|_| item.clone())).await.expect("push");
    let got = q.lease(&lease(24)).await.expect("a 24 MB answer");
    assert_eq!(got.items.len(), 24);
    assert!(got.items.iter().all(|i| i.payload.len() == 1_000_000));
}

/// The first Complete commits and its answer is lost; the server restarts
/// and no longer remembers the token, so the retry is refused with
/// ITEM_COMPLETED: on a retry that reason means the first try did it, and
/// the item is reported completed (the worker loop, one item at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_completion_refused_as_item_completed_is_a_completion() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("forgot").await;
    q.push(["x"]).await.expect("push");
    h.faults.lose_complete.store(1, Ordering::SeqCst);
    h.faults.restart_after_loss.store(true, Ordering::SeqCst);
    let summary = q
        .work(
            WorkerOptions::default()
                .handle_signals(false)
                .until_empty(true),
            |_job| async { Ok::<(), WorkError>(()) },
        )
        .await
        .expect("work");
    assert_eq!((summary.completed, summary.lost), (1, 0), "{summary:?}");
    assert_eq!(h.faults.complete_calls.load(Ordering::SeqCst), 2);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.leased, s.pending), (1, 0, 0), "{s:?}");

    // The first try's refusal is what it says, though.
    q.push(["y"]).await.expect("push");
    let leased = q.lease(&lease(1)).await.expect("lease");
    h.faults.forget_complete.store(1, Ordering::SeqCst);
    let e = q
        .complete(&tokens(&leased.items))
        .await
        .expect_err("refused");
    assert_eq!(e.lease_lost_reason(), Some(LeaseLostReason::ItemCompleted));
}

/// The same through the completer: per-token refusals of a retried batch
/// with ITEM_COMPLETED are completions.
#[tokio::test(flavor = "current_thread")]
async fn a_retried_batch_refused_per_token_as_item_completed_is_completed() {
    let h = Harness::start(Limits::default()).await;
    let q = h.queue("forgot-batch").await;
    q.push(["a", "b", "c"]).await.expect("push");
    let leased = q.lease(&lease(3)).await.expect("lease");
    h.faults.lose_complete.store(1, Ordering::SeqCst);
    h.faults.restart_after_loss.store(true, Ordering::SeqCst);
    let acker = Acker::start(q.clone());
    let results = futures::future::join_all(
        tokens(&leased.items)
            .into_iter()
            .map(|t| acker.complete(&q, t)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(h.faults.complete_calls.load(Ordering::SeqCst), 2);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.completed, s.leased), (3, 0), "{s:?}");
}
