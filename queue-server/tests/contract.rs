//! The settled `workq.v1` contract against the real `queue-server` binary:
//! idempotent finishes and enqueues, machine-readable errors decoded from
//! the status details as a client in any language would, per-token results,
//! pagination, byte budgets and the queue's lifecycle.

mod common;

use common::{ServerProcess, Store, stats, unique_queue};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use workq_proto::v1 as pb;
use workq_proto::v1::ErrorReason;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

fn dur(d: Duration) -> Option<prost_types::Duration> {
    Some(workq_proto::time::duration(d))
}

fn item(payload: impl Into<Vec<u8>>) -> pb::NewItem {
    pb::NewItem {
        payload: payload.into().into(),
        ..Default::default()
    }
}

/// Enqueues `n` items into `q` (created if missing); their ids.
async fn enqueue_n(c: &mut Client, q: &str, n: usize) -> Vec<String> {
    let resp = c
        .enqueue(pb::EnqueueRequest {
            queue: q.into(),
            items: (0..n).map(|i| item(format!("item-{i}"))).collect(),
            create_queue: true,
            ..Default::default()
        })
        .await
        .expect("enqueue")
        .into_inner();
    resp.items.into_iter().map(|i| i.id).collect()
}

async fn lease(c: &mut Client, q: &str, max: i32, lease: Option<Duration>) -> Vec<pb::LeasedItem> {
    c.lease(pb::LeaseRequest {
        queue: q.into(),
        max_items: max,
        lease: lease.and_then(dur),
        ..Default::default()
    })
    .await
    .expect("lease")
    .into_inner()
    .items
}

fn tokens(items: &[pb::LeasedItem]) -> Vec<String> {
    items.iter().map(|i| i.lease_token.clone()).collect()
}

async fn complete(
    c: &mut Client,
    q: &str,
    tokens: Vec<String>,
    per_token_results: bool,
) -> Result<pb::CompleteResponse, Status> {
    c.complete(pb::CompleteRequest {
        queue: q.into(),
        lease_tokens: tokens,
        per_token_results,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The reason and metadata of a refusal, from its `google.rpc.ErrorInfo`
/// (decoded from `grpc-status-details-bin`).
fn reason_of(s: &Status) -> (ErrorReason, HashMap<String, String>) {
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "workq.dev");
    let reason = ErrorReason::from_label(&info.reason)
        .unwrap_or_else(|| panic!("unknown reason {}", info.reason));
    assert_eq!(workq_proto::errors::reason(s).map(|(r, _)| r), Some(reason));
    (reason, info.metadata)
}

/// The one BadRequest field violation of a refusal.
fn bad_field(s: &Status) -> String {
    let bad = s
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {s:?}"));
    assert_eq!(bad.field_violations.len(), 1, "{bad:?}");
    bad.field_violations[0].field.clone()
}

async fn completing_twice_with_the_same_token_is_ok_and_counted_once(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("twice");
    enqueue_n(&mut c, &q, 1).await;
    let l = lease(&mut c, &q, 1, None).await;
    let first = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect("first");
    assert_eq!((first.completed, first.already_completed), (1, 0));
    // The retry of a completion whose answer was lost.
    let again = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect("retry");
    assert_eq!((again.completed, again.already_completed), (0, 1));
    let s = stats(&mut c, &q).await;
    assert_eq!((s.enqueued, s.completed, s.leased), (1, 1, 0));
    assert_eq!(s.state(), pb::QueueState::Empty);
    assert!(
        server.metrics().contains("workq_remembered_finishes 1\n"),
        "the finish is remembered once"
    );

    // All or nothing, a batch of live and already-done tokens succeeds.
    enqueue_n(&mut c, &q, 1).await;
    let more = lease(&mut c, &q, 1, None).await;
    let both = [tokens(&l), tokens(&more)].concat();
    let out = complete(&mut c, &q, both, false).await.expect("mixed");
    assert_eq!((out.completed, out.already_completed), (1, 1));
    assert_eq!(stats(&mut c, &q).await.completed, 2);
}

async fn failing_and_releasing_twice_count_once_and_another_finish_is_lease_finished(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("finish");
    enqueue_n(&mut c, &q, 2).await;
    let l = lease(&mut c, &q, 2, None).await;
    let fail = |tokens: Vec<String>| pb::FailRequest {
        queue: q.clone(),
        lease_tokens: tokens,
        mode: pb::FailMode::Retry as i32,
        reason: "flaky".into(),
        retry_after: dur(Duration::from_secs(3600)),
        ..Default::default()
    };
    let first = c
        .fail(fail(vec![l[0].lease_token.clone()]))
        .await
        .expect("fail");
    assert_eq!(first.into_inner().already_failed, 0);
    let again = c
        .fail(fail(vec![l[0].lease_token.clone()]))
        .await
        .expect("again");
    assert_eq!(again.into_inner().already_failed, 1);

    let release = || pb::ReleaseRequest {
        queue: q.clone(),
        lease_tokens: vec![l[1].lease_token.clone()],
        per_token_results: false,
    };
    let first = c.release(release()).await.expect("release").into_inner();
    assert_eq!((first.released, first.already_released), (1, 0));
    let again = c.release(release()).await.expect("again").into_inner();
    assert_eq!((again.released, again.already_released), (0, 1));

    let s = stats(&mut c, &q).await;
    assert_eq!(
        (s.retried, s.delayed, s.pending, s.leased),
        (1, 1, 1, 0),
        "each counted once"
    );

    // Completing after releasing, with the same token.
    let e = complete(&mut c, &q, vec![l[1].lease_token.clone()], false)
        .await
        .expect_err("finished otherwise");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (reason, meta) = reason_of(&e);
    assert_eq!(reason, ErrorReason::LeaseFinished);
    assert_eq!(meta["finished"], "released");
    assert_eq!(meta["item"], l[1].id);
    assert_eq!(meta["lease_token"], l[1].lease_token);
    assert_eq!(meta["queue"], q);
}

async fn a_retried_enqueue_with_its_request_id_answers_the_same_items_and_adds_nothing(
    store: Store,
) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("request-id");
    let req = |n: usize| pb::EnqueueRequest {
        queue: q.clone(),
        items: (0..n).map(|i| item(format!("x{i}"))).collect(),
        create_queue: true,
        request_id: "6f1c2a4e-0000-4000-8000-000000000001".into(),
    };
    let first = c.enqueue(req(3)).await.expect("first").into_inner();
    assert!(!first.replayed);
    let again = c.enqueue(req(3)).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!(again.items, first.items, "the same ids");
    assert_eq!(stats(&mut c, &q).await.enqueued, 3, "nothing added");

    let e = c.enqueue(req(2)).await.expect_err("another request");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&e).0, ErrorReason::RequestIdReused);

    // On a stream too: a batch resent (say on a new stream) is replayed.
    let batch = |sequence| pb::EnqueueStreamRequest {
        queue: q.clone(),
        items: vec![item("s")],
        sequence,
        request_id: "batch-7".into(),
        ..Default::default()
    };
    let mut answers = Vec::new();
    for sequence in [1, 2] {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(batch(sequence)).await.expect("send");
        drop(tx);
        let mut out = c
            .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        answers.push(out.message().await.expect("answer").expect("answer"));
    }
    assert!(!answers[0].replayed && answers[1].replayed);
    assert_eq!(answers[0].items, answers[1].items);
    assert_eq!(stats(&mut c, &q).await.enqueued, 4);
}

async fn stale_leases_are_refused_with_the_reason_and_the_item(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("stale");
    enqueue_n(&mut c, &q, 1).await;
    let l = lease(&mut c, &q, 1, Some(Duration::from_secs(1))).await;
    // Past the deadline (the shortest lease is 1 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (reason, meta) = reason_of(&e);
    assert_eq!(reason, ErrorReason::LeaseExpired, "{e:?}");
    assert_eq!(meta["item"], l[0].id);
    assert_eq!(meta["queue"], q);
    assert_eq!(meta["lease_token"], l[0].lease_token);

    // Another worker takes it; the first token is now LEASE_TAKEN.
    let again = c
        .lease(pb::LeaseRequest {
            queue: q.clone(),
            max_items: 1,
            wait: dur(Duration::from_secs(10)),
            ..Default::default()
        })
        .await
        .expect("lease again")
        .into_inner()
        .items;
    assert_eq!(again[0].id, l[0].id);
    assert_eq!(again[0].attempt, 2);
    let e = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect_err("taken");
    assert_eq!(reason_of(&e).0, ErrorReason::LeaseTaken);
    complete(&mut c, &q, tokens(&again), false)
        .await
        .expect("the owner completes");
    // Completed under another lease.
    let e = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect_err("completed");
    assert_eq!(reason_of(&e).0, ErrorReason::ItemCompleted);
}

async fn sealed_unknown_and_out_of_bounds_carry_their_reason_and_details(store: Store) {
    let Some(server) = ServerProcess::on(store, &["--max-payload-bytes", "10"]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("details");
    enqueue_n(&mut c, &q, 1).await;
    c.seal_queue(pb::SealQueueRequest { name: q.clone() })
        .await
        .expect("seal");
    let e = c
        .enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: vec![item("late")],
            ..Default::default()
        })
        .await
        .expect_err("sealed");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (reason, meta) = reason_of(&e);
    assert_eq!(reason, ErrorReason::QueueSealed);
    assert_eq!(meta["queue"], q);
    assert!(e.message().contains("sealed"), "{}", e.message());

    let missing = unique_queue("missing");
    let e = c
        .get_queue(pb::GetQueueRequest {
            name: missing.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason_of(&e).0, ErrorReason::QueueNotFound);
    let res = e.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(
        (res.resource_type.as_str(), res.resource_name.as_str()),
        ("workq.dev/Queue", missing.as_str())
    );

    let e = c
        .enqueue(pb::EnqueueRequest {
            queue: unique_queue("big"),
            items: vec![item("ok"), item("this payload is too long")],
            create_queue: true,
            ..Default::default()
        })
        .await
        .expect_err("too big");
    assert_eq!(e.code(), Code::InvalidArgument);
    let (reason, meta) = reason_of(&e);
    assert_eq!(reason, ErrorReason::LimitExceeded);
    assert_eq!(
        (meta["limit"].as_str(), meta["max"].as_str()),
        ("max_item_bytes", "10")
    );
    assert_eq!(bad_field(&e), "items[1].payload");
    assert!(e.message().contains("limit of 10 bytes"), "{}", e.message());

    let e = c
        .lease(pb::LeaseRequest {
            queue: q.clone(),
            max_items: 1001,
            ..Default::default()
        })
        .await
        .expect_err("batch");
    assert_eq!(reason_of(&e).0, ErrorReason::LimitExceeded);
    assert_eq!(bad_field(&e), "max_items");
    let e = c
        .lease(pb::LeaseRequest {
            queue: q.clone(),
            max_items: 1,
            lease: dur(Duration::from_millis(10)),
            ..Default::default()
        })
        .await
        .expect_err("tiny lease");
    let (reason, meta) = reason_of(&e);
    assert_eq!(
        (reason, meta["limit"].as_str()),
        (ErrorReason::LimitExceeded, "min_lease")
    );
    assert_eq!(bad_field(&e), "lease");

    let e = complete(&mut c, &q, vec!["nonsense".into()], false)
        .await
        .expect_err("garbage");
    assert_eq!(reason_of(&e).0, ErrorReason::InvalidField);
    assert_eq!(bad_field(&e), "lease_tokens[0]");
}

async fn a_batch_with_one_stale_token_completes_the_rest_only_when_judged_per_token(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("per-token");
    enqueue_n(&mut c, &q, 10).await;
    let mut l = lease(&mut c, &q, 9, None).await;
    l.extend(lease(&mut c, &q, 1, Some(Duration::from_secs(1))).await);
    assert_eq!(l.len(), 10);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // All or nothing: all 10 refused, nothing completed.
    let e = complete(&mut c, &q, tokens(&l), false)
        .await
        .expect_err("one stale token");
    assert_eq!(reason_of(&e).0, ErrorReason::LeaseExpired);
    assert_eq!(stats(&mut c, &q).await.completed, 0);

    let out = complete(&mut c, &q, tokens(&l), true)
        .await
        .expect("per token");
    assert_eq!((out.completed, out.already_completed), (9, 0));
    assert_eq!(out.results.len(), 10);
    for r in &out.results[..9] {
        assert_eq!(r.outcome(), pb::TokenOutcome::Done, "{r:?}");
    }
    let tenth = &out.results[9];
    assert_eq!(tenth.lease_token, l[9].lease_token);
    assert_eq!(tenth.outcome(), pb::TokenOutcome::Refused);
    let p = tenth.problem.as_ref().expect("problem");
    assert_eq!(
        (workq_proto::errors::problem_reason(p), p.code),
        (ErrorReason::LeaseExpired, Code::FailedPrecondition as i32)
    );
    assert_eq!(p.metadata["item"], l[9].id);
    assert_eq!(stats(&mut c, &q).await.completed, 9);
}

async fn list_queues_pages_through_2500_queues_each_once(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let c = server.client().await;
    let mut tasks = Vec::new();
    for t in 0..25 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                c.create_queue(pb::CreateQueueRequest {
                    name: format!("page-{:04}", t * 100 + i),
                    settings: None,
                })
                .await
                .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let mut c = c;
    let (mut seen, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = c
            .list_queues(pb::ListQueuesRequest {
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        pages.push(page.queues.len());
        seen.extend(page.queues.into_iter().map(|q| q.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        if pages.len() == 1 {
            // Deleted meanwhile (before the cursor): every other queue still
            // shows exactly once.
            c.delete_queue(pb::DeleteQueueRequest {
                name: "page-0000".into(),
                allow_missing: false,
            })
            .await
            .expect("delete");
        }
    }
    assert_eq!(pages, vec![1000, 1000, 500]);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 2500, "each queue once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in name order");

    let e = c
        .list_queues(pb::ListQueuesRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .expect_err("too large");
    assert_eq!(reason_of(&e).0, ErrorReason::LimitExceeded);
    assert_eq!(bad_field(&e), "page_size");
    let e = c
        .list_queues(pb::ListQueuesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(reason_of(&e).0, ErrorReason::InvalidPageToken);
}

async fn list_dead_reads_all_of_3000_dead_items_over_pages(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("dead-pages");
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        ids.extend(enqueue_n(&mut c, &q, 1000).await);
        let l = lease(&mut c, &q, 1000, None).await;
        c.fail(pb::FailRequest {
            queue: q.clone(),
            lease_tokens: tokens(&l),
            mode: pb::FailMode::Fatal as i32,
            reason: "poison".into(),
            ..Default::default()
        })
        .await
        .expect("fail");
    }
    assert_eq!(stats(&mut c, &q).await.dead, 3000);
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c
            .list_dead(pb::ListDeadRequest {
                queue: q.clone(),
                page_size: 0,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        seen.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 3000);
    let seen_set: BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(seen_set, ids, "every dead item once");
}

async fn a_lease_with_max_bytes_answers_and_leases_only_what_fits(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await.max_decoding_message_size(64 << 20);
    let q = unique_queue("max-bytes");
    for i in 0..10u8 {
        c.enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: vec![item(vec![i; 1 << 20])],
            create_queue: true,
            ..Default::default()
        })
        .await
        .expect("enqueue 1 MiB");
    }
    let got = c
        .lease(pb::LeaseRequest {
            queue: q.clone(),
            max_items: 10,
            max_bytes: 8 << 20,
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner();
    let n = got.items.len();
    assert!((1..=8).contains(&n), "{n} items of 1 MiB in 8 MiB");
    let s = stats(&mut c, &q).await;
    assert_eq!(
        (s.leased, s.pending),
        (n as i64, 10 - n as i64),
        "only those leased"
    );

    // The first item is always given, however small the budget.
    let one = c
        .lease(pb::LeaseRequest {
            queue: q.clone(),
            max_items: 10,
            max_bytes: 1,
            ..Default::default()
        })
        .await
        .expect("lease")
        .into_inner();
    assert_eq!(one.items.len(), 1);
}

/// One side of a `Work` stream.
struct Work {
    tx: tokio::sync::mpsc::Sender<pb::WorkRequest>,
    rx: tonic::Streaming<pb::WorkResponse>,
}

impl Work {
    async fn open(c: &mut Client, first: pb::WorkRequest) -> Work {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(first).await.expect("first message");
        let rx = c
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("work")
            .into_inner();
        Work { tx, rx }
    }

    async fn send(&self, req: pb::WorkRequest) {
        self.tx.send(req).await.expect("send");
    }

    async fn next(&mut self) -> pb::WorkResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a message within 10 s")
            .expect("no error")
            .expect("the stream goes on")
    }

    /// Messages until the answer to `sequence`; the items pushed meanwhile.
    async fn answer(&mut self, sequence: i64) -> (pb::WorkAnswer, Vec<pb::LeasedItem>) {
        let mut items = Vec::new();
        loop {
            let m = self.next().await;
            items.extend(m.items);
            if let Some(a) = m.answer
                && a.sequence == sequence
            {
                return (a, items);
            }
        }
    }
}

async fn a_work_stream_keeps_within_max_outstanding_bytes(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await.max_decoding_message_size(64 << 20);
    let q = unique_queue("outstanding");
    for i in 0..6u8 {
        c.enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: vec![item(vec![i; 1 << 20])],
            create_queue: true,
            ..Default::default()
        })
        .await
        .expect("enqueue 1 MiB");
    }
    let mut w = Work::open(
        &mut c,
        pb::WorkRequest {
            queue: q.clone(),
            credit: 10,
            max_outstanding_bytes: 3 << 20,
            ..Default::default()
        },
    )
    .await;
    let first = w.next().await.items;
    assert_eq!(
        first.len(),
        2,
        "two 1 MiB items (and their framing) in 3 MiB"
    );
    // Nothing more is leased while they are held: a Lease call gets the rest.
    let s = stats(&mut c, &q).await;
    assert_eq!(s.leased, 2);
    w.send(pb::WorkRequest {
        complete_tokens: vec![first[0].lease_token.clone()],
        sequence: 1,
        ..Default::default()
    })
    .await;
    let (answer, mut items) = w.answer(1).await;
    assert_eq!(answer.problem, None);
    while items.is_empty() {
        items = w.next().await.items;
    }
    assert_eq!(items.len(), 1, "room for one more");
    assert_eq!(stats(&mut c, &q).await.leased, 2);
}

async fn renewals_and_per_token_results_inside_a_work_stream(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("work-renew");
    enqueue_n(&mut c, &q, 2).await;
    let mut w = Work::open(
        &mut c,
        pb::WorkRequest {
            queue: q.clone(),
            credit: 2,
            lease: dur(Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .await;
    let mut items = Vec::new();
    while items.len() < 2 {
        items.extend(w.next().await.items);
    }
    w.send(pb::WorkRequest {
        renew_tokens: vec![items[0].lease_token.clone()],
        sequence: 5,
        ..Default::default()
    })
    .await;
    let (renewed, _) = w.answer(5).await;
    assert_eq!(renewed.problem, None);
    assert_eq!(renewed.results.len(), 1);
    let r = &renewed.results[0];
    assert_eq!(r.outcome(), pb::TokenOutcome::Done);
    let ms = |t: &Option<prost_types::Timestamp>| {
        workq_proto::time::ms_of_timestamp(t.as_ref().expect("time"))
    };
    assert!(ms(&r.lease_expire_time) >= ms(&items[0].lease_expire_time));

    // One live token and one of an item that is no longer in the queue.
    let mut parts = items[1].lease_token.split('.');
    let (id, seq, secret) = (
        parts.next().expect("id"),
        parts.next().expect("seq"),
        parts.next().expect("secret"),
    );
    let stale = format!(
        "{id}.{:x}.{secret}",
        u64::from_str_radix(seq, 16).expect("hex") + 1
    );
    w.send(pb::WorkRequest {
        complete_tokens: vec![items[0].lease_token.clone(), stale.clone()],
        renew_tokens: vec![items[1].lease_token.clone()],
        per_token_results: true,
        sequence: 6,
        ..Default::default()
    })
    .await;
    let (answer, _) = w.answer(6).await;
    assert_eq!(answer.problem, None);
    let outcomes: Vec<_> = answer.results.iter().map(|r| r.outcome()).collect();
    assert_eq!(
        outcomes,
        vec![
            pb::TokenOutcome::Done,
            pb::TokenOutcome::Refused,
            pb::TokenOutcome::Done
        ]
    );
    assert_eq!(answer.results[1].lease_token, stale);
    let p = answer.results[1].problem.as_ref().expect("problem");
    assert_eq!(
        workq_proto::errors::problem_reason(p),
        ErrorReason::LeaseTaken
    );
    assert!(answer.results[2].lease_expire_time.is_some());
    assert_eq!(stats(&mut c, &q).await.completed, 1);
}

#[tokio::test]
async fn update_queue_changes_max_attempts_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = unique_queue("update");
    {
        let server = ServerProcess::embedded(dir.path());
        let mut c = server.client().await;
        c.create_queue(pb::CreateQueueRequest {
            name: q.clone(),
            settings: Some(pb::QueueSettings {
                max_attempts: Some(5),
                ..Default::default()
            }),
        })
        .await
        .expect("create");
        let update = |paths: &[&str]| pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                name: q.clone(),
                settings: Some(pb::QueueSettings {
                    max_attempts: Some(1),
                    ..Default::default()
                }),
                stats: None,
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        let e = c
            .update_queue(update(&["settings.color"]))
            .await
            .expect_err("unknown path");
        assert_eq!(reason_of(&e).0, ErrorReason::InvalidField);
        assert_eq!(bad_field(&e), "update_mask");
        assert!(e.message().contains("settings.color"), "{}", e.message());
        let updated = c
            .update_queue(update(&["settings.max_attempts"]))
            .await
            .expect("update")
            .into_inner()
            .queue
            .and_then(|q| q.settings)
            .expect("settings");
        assert_eq!(updated.max_attempts, Some(1));
        assert_eq!(
            updated.default_lease,
            dur(workq_proto::defaults::LEASE),
            "the others unchanged"
        );
    }
    // Restarted on the same data directory.
    let server = ServerProcess::embedded(dir.path());
    let mut c = server.client().await;
    let settings = c
        .get_queue(pb::GetQueueRequest { name: q.clone() })
        .await
        .expect("get")
        .into_inner()
        .queue
        .and_then(|q| q.settings)
        .expect("settings");
    assert_eq!(settings.max_attempts, Some(1), "the update is durable");
    enqueue_n(&mut c, &q, 1).await;
    let l = lease(&mut c, &q, 1, None).await;
    let f = c
        .fail(pb::FailRequest {
            queue: q.clone(),
            lease_tokens: tokens(&l),
            mode: pb::FailMode::Retry as i32,
            reason: "once is enough".into(),
            ..Default::default()
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(f.dead, 1, "dead after the new max_attempts of 1");
}

async fn delete_queue_allow_missing_and_requeue_dead_all_or_named(store: Store) {
    let Some(server) = ServerProcess::on(store, &[]) else {
        return;
    };
    let mut c = server.client().await;
    let q = unique_queue("lifecycle");
    let ids = enqueue_n(&mut c, &q, 2).await;
    let l = lease(&mut c, &q, 1, None).await;
    c.fail(pb::FailRequest {
        queue: q.clone(),
        lease_tokens: tokens(&l),
        mode: pb::FailMode::Fatal as i32,
        ..Default::default()
    })
    .await
    .expect("fail");
    let requeue = |item_ids: Vec<String>, all: bool| pb::RequeueDeadRequest {
        queue: q.clone(),
        item_ids,
        all,
    };
    let e = c
        .requeue_dead(requeue(vec![ids[1].clone()], false))
        .await
        .expect_err("not dead");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (reason, meta) = reason_of(&e);
    assert_eq!(
        (reason, meta["item"].as_str()),
        (ErrorReason::ItemNotDead, ids[1].as_str())
    );
    let e = c
        .requeue_dead(requeue(vec!["999999999".into()], false))
        .await
        .expect_err("missing");
    assert_eq!(
        (e.code(), reason_of(&e).0),
        (Code::NotFound, ErrorReason::ItemNotFound)
    );
    for (ids, all) in [(vec![], false), (vec![ids[0].clone()], true)] {
        let e = c.requeue_dead(requeue(ids, all)).await.expect_err("one of");
        assert_eq!(reason_of(&e).0, ErrorReason::InvalidField);
    }
    let r = c
        .requeue_dead(requeue(vec![], true))
        .await
        .expect("all")
        .into_inner();
    assert_eq!(r.requeued, 1);
    assert_eq!(stats(&mut c, &q).await.pending, 2);

    let delete = |name: &str, allow_missing| pb::DeleteQueueRequest {
        name: name.into(),
        allow_missing,
    };
    let d = c.delete_queue(delete(&q, false)).await.expect("delete");
    assert!(d.into_inner().deleted);
    let d = c.delete_queue(delete(&q, true)).await.expect("missing ok");
    assert!(!d.into_inner().deleted);
    let e = c
        .delete_queue(delete(&q, false))
        .await
        .expect_err("missing");
    assert_eq!(reason_of(&e).0, ErrorReason::QueueNotFound);
}

#[tokio::test]
async fn get_server_info_advertises_the_version_and_every_limit() {
    let server = ServerProcess::start(&[
        "--store",
        "memory",
        "--max-batch",
        "500",
        "--max-queues",
        "77",
        "--max-queued-bytes",
        "123456789",
    ]);
    let mut c = server.client().await;
    let info = c
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.max_batch_items, 500);
    assert_eq!(info.max_page_size, 1000);
    assert_eq!(info.max_queues, 77);
    assert_eq!(info.max_queued_bytes, 123_456_789);
    assert_eq!(info.max_attribute_bytes, 4096);
    assert_eq!(
        info.max_message_bytes,
        workq_proto::defaults::MAX_MESSAGE_BYTES as i64
    );
    assert_eq!(info.min_lease, dur(Duration::from_secs(1)));
    assert!(info.idempotency_window.is_some() && info.max_wait.is_some());
}

/// The tests above on the memory store.
mod memory {
    use super::*;

    #[tokio::test]
    async fn completing_twice_with_the_same_token_is_ok_and_counted_once() {
        super::completing_twice_with_the_same_token_is_ok_and_counted_once(Store::Memory).await;
    }

    #[tokio::test]
    async fn failing_and_releasing_twice_count_once_and_another_finish_is_lease_finished() {
        super::failing_and_releasing_twice_count_once_and_another_finish_is_lease_finished(
            Store::Memory,
        )
        .await;
    }

    #[tokio::test]
    async fn a_retried_enqueue_with_its_request_id_answers_the_same_items_and_adds_nothing() {
        super::a_retried_enqueue_with_its_request_id_answers_the_same_items_and_adds_nothing(
            Store::Memory,
        )
        .await;
    }

    #[tokio::test]
    async fn stale_leases_are_refused_with_the_reason_and_the_item() {
        super::stale_leases_are_refused_with_the_reason_and_the_item(Store::Memory).await;
    }

    #[tokio::test]
    async fn sealed_unknown_and_out_of_bounds_carry_their_reason_and_details() {
        super::sealed_unknown_and_out_of_bounds_carry_their_reason_and_details(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_batch_with_one_stale_token_completes_the_rest_only_when_judged_per_token() {
        super::a_batch_with_one_stale_token_completes_the_rest_only_when_judged_per_token(
            Store::Memory,
        )
        .await;
    }

    #[tokio::test]
    async fn list_queues_pages_through_2500_queues_each_once() {
        super::list_queues_pages_through_2500_queues_each_once(Store::Memory).await;
    }

    #[tokio::test]
    async fn list_dead_reads_all_of_3000_dead_items_over_pages() {
        super::list_dead_reads_all_of_3000_dead_items_over_pages(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_lease_with_max_bytes_answers_and_leases_only_what_fits() {
        super::a_lease_with_max_bytes_answers_and_leases_only_what_fits(Store::Memory).await;
    }

    #[tokio::test]
    async fn a_work_stream_keeps_within_max_outstanding_bytes() {
        super::a_work_stream_keeps_within_max_outstanding_bytes(Store::Memory).await;
    }

    #[tokio::test]
    async fn renewals_and_per_token_results_inside_a_work_stream() {
        super::renewals_and_per_token_results_inside_a_work_stream(Store::Memory).await;
    }

    #[tokio::test]
    async fn delete_queue_allow_missing_and_requeue_dead_all_or_named() {
        super::delete_queue_allow_missing_and_requeue_dead_all_or_named(Store::Memory).await;
    }
}

/// The tests above on the postgres store.
mod postgres {
    use super::*;

    #[tokio::test]
    async fn completing_twice_with_the_same_token_is_ok_and_counted_once() {
        super::completing_twice_with_the_same_token_is_ok_and_counted_once(Store::Postgres).await;
    }

    #[tokio::test]
    async fn failing_and_releasing_twice_count_once_and_another_finish_is_lease_finished() {
        super::failing_and_releasing_twice_count_once_and_another_finish_is_lease_finished(
            Store::Postgres,
        )
        .await;
    }

    #[tokio::test]
    async fn a_retried_enqueue_with_its_request_id_answers_the_same_items_and_adds_nothing() {
        super::a_retried_enqueue_with_its_request_id_answers_the_same_items_and_adds_nothing(
            Store::Postgres,
        )
        .await;
    }

    #[tokio::test]
    async fn stale_leases_are_refused_with_the_reason_and_the_item() {
        super::stale_leases_are_refused_with_the_reason_and_the_item(Store::Postgres).await;
    }

    #[tokio::test]
    async fn sealed_unknown_and_out_of_bounds_carry_their_reason_and_details() {
        super::sealed_unknown_and_out_of_bounds_carry_their_reason_and_details(Store::Postgres)
            .await;
    }

    #[tokio::test]
    async fn a_batch_with_one_stale_token_completes_the_rest_only_when_judged_per_token() {
        super::a_batch_with_one_stale_token_completes_the_rest_only_when_judged_per_token(
            Store::Postgres,
        )
        .await;
    }

    #[tokio::test]
    async fn list_queues_pages_through_2500_queues_each_once() {
        super::list_queues_pages_through_2500_queues_each_once(Store::Postgres).await;
    }

    #[tokio::test]
    async fn list_dead_reads_all_of_3000_dead_items_over_pages() {
        super::list_dead_reads_all_of_3000_dead_items_over_pages(Store::Postgres).await;
    }

    #[tokio::test]
    async fn a_lease_with_max_bytes_answers_and_leases_only_what_fits() {
        super::a_lease_with_max_bytes_answers_and_leases_only_what_fits(Store::Postgres).await;
    }

    #[tokio::test]
    async fn a_work_stream_keeps_within_max_outstanding_bytes() {
        super::a_work_stream_keeps_within_max_outstanding_bytes(Store::Postgres).await;
    }

    #[tokio::test]
    async fn renewals_and_per_token_results_inside_a_work_stream() {
        super::renewals_and_per_token_results_inside_a_work_stream(Store::Postgres).await;
    }

    #[tokio::test]
    async fn delete_queue_allow_missing_and_requeue_dead_all_or_named() {
        super::delete_queue_allow_missing_and_requeue_dead_all_or_named(Store::Postgres).await;
    }
}
