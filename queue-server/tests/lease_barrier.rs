//! A lease on a durable store answers only after a store barrier (its items'
//! enqueue must be durable). What happens to the items it took while it
//! waits there: two regressions, on the embedded store behind a barrier the
//! test holds shut ([`Gated`]).
//!
//! - A Work stream kept its lease in progress only from commit de0507d on:
//!   before, a grant or completion arriving while the lease waited on the
//!   barrier dropped it, and its items stayed leased to nobody until they
//!   expired (`workq-bench --workq-acks stream` hung on the embedded store).
//! - A unary Lease whose caller went away while it waited on the barrier
//!   stranded its items the same way; the engine now gives them back when
//!   the lease's future is dropped before it answers.

use queue_server::engine::EnqueueItem;
use queue_server::names::QueueName;
use queue_server::settings::{Limits, QueueSettings};
use queue_server::store::{Commit, EmbeddedStore, Snapshot, Store, StoreError, StoreOp};
use queue_server::{Engine, ServerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use workq_proto::v1 as pb;

/// A barrier held at the gate: its answer, and the inner store's barrier.
type Held = (oneshot::Sender<Result<(), StoreError>>, Commit);

/// A store whose barriers wait, while the gate is shut, until the test opens
/// it (then for the inner store's barrier too). Everything else is the
/// inner store's.
struct Gated<S> {
    inner: S,
    shut: AtomicBool,
    held: Mutex<Vec<Held>>,
    /// Signalled each time a barrier is held at the gate.
    asked: Notify,
}

impl<S: Store> Gated<S> {
    fn new(inner: S) -> Self {
        Gated {
            inner,
            shut: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
            asked: Notify::new(),
        }
    }

    fn shut(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }

    /// Lets every held barrier (and every later one) through.
    fn open(&self) {
        self.shut.store(false, Ordering::SeqCst);
        let held = std::mem::take(&mut *self.held.lock().expect("lock"));
        for (done, commit) in held {
            tokio::spawn(async move {
                let _ = done.send(commit.wait().await);
            });
        }
    }

    /// Resolves once a barrier waits at the gate.
    async fn asked(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.asked.notified())
            .await
            .expect("a lease waits on the barrier (guard against a hang)");
    }
}

impl<S: Store> Store for Gated<S> {
    fn durable(&self) -> bool {
        self.inner.durable()
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        self.inner.submit(ops)
    }

    fn barrier(&self) -> Commit {
        let inner = self.inner.barrier();
        if !self.shut.load(Ordering::SeqCst) {
            return inner;
        }
        let (done, rx) = oneshot::channel();
        self.held.lock().expect("lock").push((done, inner));
        self.asked.notify_one();
        Commit::pending(rx)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

/// Lets a test keep the store it gave the engine or server.
struct Shared<S>(Arc<S>);

impl<S: Store> Store for Shared<S> {
    fn durable(&self) -> bool {
        self.0.durable()
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.0.load()
    }
    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        self.0.submit(ops)
    }
    fn barrier(&self) -> Commit {
        self.0.barrier()
    }
    fn close(&self) -> Result<(), StoreError> {
        self.0.close()
    }
}

fn gated(dir: &std::path::Path) -> Arc<Gated<EmbeddedStore>> {
    Arc::new(Gated::new(
        EmbeddedStore::open(dir).expect("open the embedded store"),
    ))
}

fn q(s: &str) -> QueueName {
    s.parse().expect("name")
}

fn items(n: u8) -> Vec<EnqueueItem> {
    (0..n)
        .map(|i| EnqueueItem {
            payload: vec![i].into(),
            ..EnqueueItem::default()
        })
        .collect()
}

#[tokio::test]
async fn a_lease_dropped_while_it_waits_on_the_store_gives_its_items_back_without_an_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gated(dir.path());
    let engine = Engine::open(
        Arc::new(Shared(store.clone())),
        Limits::default(),
        QueueSettings::default(),
    )
    .expect("engine");
    let name = q("gone");
    engine
        .enqueue(&name, items(3), true)
        .await
        .expect("enqueue");

    store.shut();
    let mut lease = Box::pin(engine.lease(&name, 3, None, Duration::ZERO));
    // The first poll takes the items, then waits at the shut barrier.
    assert!(futures::poll!(lease.as_mut()).is_pending());
    let c = engine.get_queue(&name).expect("queue").counters;
    assert_eq!((c.leased, c.pending), (3, 0), "taken, awaiting the barrier");

    // The caller goes away (a cancelled unary Lease drops its future).
    drop(lease);
    let c = engine.get_queue(&name).expect("queue").counters;
    assert_eq!(
        (c.leased, c.pending, c.retried),
        (0, 3, 0),
        "given back at once, no attempt counted"
    );

    store.open();
    let again = engine
        .lease(&name, 3, None, Duration::ZERO)
        .await
        .expect("lease");
    assert_eq!(again.items.len(), 3);
    assert!(
        again.items.iter().all(|i| i.attempt == 1),
        "still the first attempt"
    );
    engine.close().await.expect("close");
}

#[tokio::test]
async fn a_lease_that_answers_keeps_its_items() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gated(dir.path());
    let engine = Engine::open(
        Arc::new(Shared(store.clone())),
        Limits::default(),
        QueueSettings::default(),
    )
    .expect("engine");
    let name = q("kept");
    engine
        .enqueue(&name, items(2), true)
        .await
        .expect("enqueue");
    store.shut();
    let lease = tokio::spawn({
        let (engine, name) = (engine.clone(), name.clone());
        async move { engine.lease(&name, 2, None, Duration::ZERO).await }
    });
    store.asked().await;
    store.open();
    let out = lease.await.expect("task").expect("lease");
    assert_eq!(out.items.len(), 2);
    let c = engine.get_queue(&name).expect("queue").counters;
    assert_eq!((c.leased, c.pending), (2, 0));
    engine.close().await.expect("close");
}

#[tokio::test]
async fn a_work_stream_gets_its_items_when_a_grant_arrives_while_its_lease_waits_on_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gated(dir.path());
    let server = queue_server::start_with_store(
        ServerConfig {
            // A grant beyond one item of credit is answered (clamped): the
            // answer shows the stream read it while its lease waited.
            limits: Limits {
                max_work_credit: 1,
                ..Limits::default()
            },
            ..ServerConfig::memory()
        },
        Arc::new(Shared(store.clone())),
    )
    .await
    .expect("start");
    let mut c = pb::queue_service_client::QueueServiceClient::connect(format!(
        "http://{}",
        server.grpc_addr()
    ))
    .await
    .expect("connect");
    c.enqueue(pb::EnqueueRequest {
        queue: "stream".into(),
        items: vec![pb::NewItem {
            payload: b"x".to_vec().into(),
            ..Default::default()
        }],
        create_queue: true,
        request_id: String::new(),
    })
    .await
    .expect("enqueue");

    store.shut();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::WorkRequest {
        queue: "stream".into(),
        credit: 1,
        ..Default::default()
    })
    .await
    .expect("first message");
    let mut answers = c
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("work")
        .into_inner();
    store.asked().await;
    // A grant arrives while the lease waits on the barrier.
    tx.send(pb::WorkRequest {
        credit: 1,
        sequence: 2,
        ..Default::default()
    })
    .await
    .expect("grant");
    let msg = within(answers.message())
        .await
        .expect("answer")
        .expect("message");
    let noted = msg.answer.expect("the grant's answer");
    assert_eq!(noted.sequence, 2);
    assert!(msg.items.is_empty(), "nothing before the barrier");

    store.open();
    let msg = within(answers.message())
        .await
        .expect("answer")
        .expect("message");
    assert_eq!(msg.items.len(), 1, "the item taken before the grant");
    assert_eq!(msg.items[0].payload.as_ref(), b"x");
    drop(tx);
    server.shutdown().await.expect("shutdown");
}

/// Waits for `what`, with a guard against a hang (not a timed assertion).
async fn within<T>(what: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), what)
        .await
        .expect("the stream answers")
}
