//! The engine in-process, on every store, with tokio's clock paused: expiry,
//! back-off and wake-ups are checked without real sleeps.
//!
//! A paused clock jumps ahead whenever the runtime idles — also while a call
//! waits for the embedded store's writer thread — so [`each_store`] runs the
//! embedded store behind [`Synchronous`], which waits for each commit inside
//! `submit`, keeping the runtime busy. The embedded store's own asynchronous
//! commits are checked in real time at the end, and in `grpc.rs`/`crash.rs`.

use queue_server::engine::{EnqueueItem, LeaseOutcome};
use queue_server::settings::{Limits, QueueSettings};
use queue_server::store::fault::{FaultKind, Faults, Op};
use queue_server::store::{
    Commit, EmbeddedStore, MemoryStore, Snapshot, Store, StoreError, StoreOp,
};
use queue_server::{Engine, Error};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn settings() -> QueueSettings {
    QueueSettings {
        default_lease: Duration::from_secs(2),
        max_attempts: 3,
        retry_backoff: Duration::from_secs(1),
        retry_backoff_max: Duration::from_secs(4),
    }
}

/// A store whose commits are durable when `submit` returns: it blocks the
/// calling thread until the inner store's commit lands, so a paused tokio
/// clock does not run ahead meanwhile. Order and durability are the inner
/// store's.
struct Synchronous<S>(S);

impl<S: Store> Store for Synchronous<S> {
    fn durable(&self) -> bool {
        self.0.durable()
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.0.load()
    }

    fn submit(&self, ops: Vec<StoreOp>) -> Commit {
        match futures::executor::block_on(self.0.submit(ops).wait()) {
            Ok(()) => Commit::done(),
            Err(e) => Commit::failed(e),
        }
    }

    fn close(&self) -> Result<(), StoreError> {
        self.0.close()
    }
}

/// Runs `body` against an engine on every store: memory, then embedded (in
/// a fresh directory). A failure names the store.
async fn each_store<F, Fut>(body: F)
where
    F: Fn(Engine) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let stores: [(&str, Arc<dyn Store>); 2] = [
        ("memory", Arc::new(MemoryStore)),
        (
            "embedded",
            Arc::new(Synchronous(
                EmbeddedStore::open(dir.path()).expect("open the embedded store"),
            )),
        ),
    ];
    for (name, store) in stores {
        eprintln!("store: {name}");
        let engine = Engine::open(store, Limits::default(), settings()).expect("engine");
        body(engine.clone()).await;
        engine
            .close()
            .await
            .unwrap_or_else(|e| panic!("closing the {name} store: {e}"));
    }
}

fn items(payloads: &[&str]) -> Vec<EnqueueItem> {
    payloads
        .iter()
        .map(|p| EnqueueItem {
            payload: p.as_bytes().to_vec().into(),
            ..EnqueueItem::default()
        })
        .collect()
}

fn q(s: &str) -> queue_server::names::QueueName {
    s.parse().expect("name")
}

/// Returns once `n` lease calls on `name` are parked: a paused clock cannot
/// move meanwhile, as the runtime never idles.
async fn parked(e: &Engine, name: &str, n: usize) {
    while e.waiting_leases(&q(name)).expect("queue") < n {
        tokio::task::yield_now().await;
    }
}

/// Enqueues `payloads` into `name` (`create`: making the queue if missing).
async fn enqueue(e: &Engine, name: &str, payloads: &[&str], create: bool) {
    e.enqueue(&q(name), items(payloads), create)
        .await
        .expect("enqueue");
}

async fn lease(e: &Engine, name: &str, max: usize, wait: Duration) -> LeaseOutcome {
    e.lease(&q(name), max, None, wait).await.expect("lease")
}

#[tokio::test(start_paused = true)]
async fn a_waiting_lease_is_woken_by_an_enqueue_without_time_passing() {
    each_store(|e| async move {
        e.create_queue(&q("w"), settings()).await.expect("create");
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { lease(&e, "w", 1, Duration::from_secs(60)).await }
        });
        parked(&e, "w", 1).await;
        let t0 = Instant::now();
        enqueue(&e, "w", &["x"], false).await;
        let got = waiter.await.expect("join");
        assert_eq!(got.items.len(), 1);
        // The clock is paused and auto-advances only when everything sleeps:
        // a polling sleep in the lease path would have moved it.
        assert_eq!(t0.elapsed(), Duration::ZERO);
        e.delete_queue(&q("w")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn every_waiter_gets_an_item_when_a_batch_arrives() {
    each_store(|e| async move {
        e.create_queue(&q("many"), settings())
            .await
            .expect("create");
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let e = e.clone();
                tokio::spawn(async move { lease(&e, "many", 1, Duration::from_secs(60)).await })
            })
            .collect();
        parked(&e, "many", 5).await;
        let t0 = Instant::now();
        enqueue(&e, "many", &["1", "2", "3", "4", "5"], false).await;
        for w in waiters {
            assert_eq!(w.await.expect("join").items.len(), 1);
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        e.delete_queue(&q("many")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_times_out_answers_empty_after_its_wait() {
    each_store(|e| async move {
        e.create_queue(&q("t"), settings()).await.expect("create");
        let t0 = Instant::now();
        let got = lease(&e, "t", 1, Duration::from_secs(5)).await;
        assert!(got.items.is_empty() && got.empty && !got.drained);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        e.delete_queue(&q("t")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn expired_leases_return_by_the_reaper_and_count_an_attempt() {
    each_store(|e| async move {
        enqueue(&e, "exp", &["x"], true).await;
        let first = lease(&e, "exp", 1, Duration::ZERO).await;
        assert_eq!(first.items[0].attempt, 1);
        // Another worker waits; the expiry (2 s lease) hands it the item.
        let t0 = Instant::now();
        let second = lease(&e, "exp", 1, Duration::from_secs(60)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert_eq!(second.items[0].attempt, 2);
        let info = e.get_queue(&q("exp")).expect("info");
        assert_eq!((info.counters.leased, info.counters.retried), (1, 1));
        let stale = e.complete(&q("exp"), &[first.items[0].token]).await;
        assert!(matches!(stale, Err(Error::StaleLease { .. })), "{stale:?}");
        e.complete(&q("exp"), &[second.items[0].token])
            .await
            .expect("complete");
        e.delete_queue(&q("exp")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn complete_then_lease_hands_in_a_batch_and_takes_the_next_in_one_call() {
    each_store(|e| async move {
        enqueue(&e, "ctl", &["a", "b", "c", "d"], true).await;
        let first = lease(&e, "ctl", 2, Duration::ZERO).await;
        let done: Vec<_> = first.items.iter().map(|l| l.token).collect();
        let next = e
            .complete_then_lease(&q("ctl"), &done, 2, 0, None, Duration::ZERO)
            .await
            .expect("complete then lease");
        assert_eq!(next.items.len(), 2);
        let c = e.get_queue(&q("ctl")).expect("info").counters;
        assert_eq!((c.completed, c.leased, c.pending), (2, 2, 0));

        // The completion is all or nothing, and a refused one leases nothing.
        enqueue(&e, "ctl", &["e"], false).await;
        // A token of an item completed under another lease.
        let stale =
            queue_server::names::LeaseToken::mint(done[0].item, done[0].seq.wrapping_add(1));
        let mixed = [next.items[0].token, stale];
        let refused = e
            .complete_then_lease(&q("ctl"), &mixed, 1, 0, None, Duration::ZERO)
            .await;
        assert!(
            matches!(refused, Err(Error::StaleLease { .. })),
            "{refused:?}"
        );
        let c = e.get_queue(&q("ctl")).expect("info").counters;
        assert_eq!((c.completed, c.leased, c.pending), (2, 2, 1));

        // Bad lease arguments are refused before anything is completed.
        let bad = e
            .complete_then_lease(
                &q("ctl"),
                &[next.items[0].token],
                0,
                0,
                None,
                Duration::ZERO,
            )
            .await;
        assert!(matches!(bad, Err(Error::InvalidField { .. })), "{bad:?}");
        assert_eq!(e.get_queue(&q("ctl")).expect("info").counters.completed, 2);

        // The last completion with a waiting lease: completed at once, then
        // the call waits for new work.
        let rest: Vec<_> = next.items.iter().map(|l| l.token).collect();
        let last = e
            .complete_then_lease(&q("ctl"), &rest, 10, 0, None, Duration::from_secs(1))
            .await
            .expect("complete the rest");
        assert_eq!(last.items.len(), 1, "the pending item");
        assert_eq!(e.get_queue(&q("ctl")).expect("info").counters.completed, 4);
        e.delete_queue(&q("ctl")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_a_long_item_leased() {
    each_store(|e| async move {
        enqueue(&e, "renew", &["x"], true).await;
        let l = lease(&e, "renew", 1, Duration::ZERO).await.items.remove(0);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            e.renew(&q("renew"), &[l.token], None).await.expect("renew");
        }
        assert_eq!(e.get_queue(&q("renew")).expect("info").counters.retried, 0);
        e.complete(&q("renew"), &[l.token])
            .await
            .expect("complete after 7.5 s on a 2 s lease");
        e.delete_queue(&q("renew")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn retriable_failures_back_off_and_the_waiter_gets_the_item_when_due() {
    each_store(|e| async move {
        enqueue(&e, "retry", &["x"], true).await;
        let l = lease(&e, "retry", 1, Duration::ZERO).await.items.remove(0);
        e.fail(&q("retry"), &[l.token], false, "flaky", None)
            .await
            .expect("fail");
        let t0 = Instant::now();
        let again = lease(&e, "retry", 1, Duration::from_secs(60)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "the first back-off");
        assert_eq!(again.items[0].attempt, 2);
        e.delete_queue(&q("retry")).await.expect("delete");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn drain_and_delete_and_shutdown_wake_waiters_at_once() {
    each_store(|e| async move {
        enqueue(&e, "drain", &["x"], true).await;
        e.seal(&q("drain")).await.expect("seal");
        let l = lease(&e, "drain", 1, Duration::ZERO).await.items.remove(0);
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { lease(&e, "drain", 1, Duration::from_secs(60)).await }
        });
        parked(&e, "drain", 1).await;
        let t0 = Instant::now();
        e.complete(&q("drain"), &[l.token]).await.expect("complete");
        let end = waiter.await.expect("join");
        assert!(end.drained);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Drained answers at once, without waiting.
        assert!(lease(&e, "drain", 1, Duration::from_secs(60)).await.drained);
        assert_eq!(t0.elapsed(), Duration::ZERO);

        e.create_queue(&q("gone"), settings())
            .await
            .expect("create");
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { e.lease(&q("gone"), 1, None, Duration::from_secs(60)).await }
        });
        parked(&e, "gone", 1).await;
        e.delete_queue(&q("gone")).await.expect("delete");
        assert!(matches!(
            waiter.await.expect("join"),
            Err(Error::QueueNotFound(_))
        ));
        assert_eq!(t0.elapsed(), Duration::ZERO);

        e.create_queue(&q("stop"), settings())
            .await
            .expect("create");
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { lease(&e, "stop", 1, Duration::from_secs(60)).await }
        });
        parked(&e, "stop", 1).await;
        e.begin_shutdown();
        assert!(waiter.await.expect("join").items.is_empty());
        assert_eq!(t0.elapsed(), Duration::ZERO);
    })
    .await;
}

#[tokio::test]
async fn the_embedded_store_restores_queues_items_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        Engine::open(store, Limits::default(), settings()).expect("engine")
    };
    let (leased_id, dead_id);
    {
        let e = open();
        enqueue(&e, "r", &["a", "b", "c", "d"], true).await;
        e.enqueue(
            &q("r"),
            vec![EnqueueItem {
                delay: Duration::from_secs(3600),
                ..EnqueueItem::default()
            }],
            false,
        )
        .await
        .expect("delayed");
        let l = lease(&e, "r", 3, Duration::ZERO).await.items;
        e.complete(&q("r"), &[l[0].token]).await.expect("complete");
        e.fail(&q("r"), &[l[1].token], true, "bad", None)
            .await
            .expect("fail");
        leased_id = l[2].id;
        dead_id = l[1].id;
        e.seal(&q("r")).await.expect("seal");
        e.close().await.expect("close");
    }
    let e = open();
    let c = e.get_queue(&q("r")).expect("info").counters;
    assert!(e.get_queue(&q("r")).expect("info").sealed);
    assert_eq!(
        (
            c.enqueued,
            c.pending,
            c.delayed,
            c.leased,
            c.completed,
            c.dead
        ),
        (5, 2, 1, 0, 1, 1)
    );
    let dead = e.list_dead(&q("r"), 10).expect("dead");
    assert_eq!(
        (dead[0].id, dead[0].reason.as_str()),
        (dead_id, "failed fatally on attempt 1: bad")
    );
    let again = lease(&e, "r", 10, Duration::ZERO).await.items;
    assert!(again.iter().any(|i| i.id == leased_id && i.attempt == 1));
    // New ids continue after the old ones.
    let fresh = e
        .enqueue(&q("s"), items(&["z"]), true)
        .await
        .expect("enqueue");
    assert!(fresh[0].id > leased_id);
    e.close().await.expect("close");
}

#[tokio::test]
async fn on_the_embedded_store_a_waiter_is_woken_and_an_expired_lease_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let mut quick = settings();
    quick.default_lease = Duration::from_secs(1);
    let e = Engine::open(store, Limits::default(), quick).expect("engine");
    e.create_queue(&q("emb"), QueueSettings::UNSET)
        .await
        .expect("create");
    let waiter = tokio::spawn({
        let e = e.clone();
        async move { lease(&e, "emb", 1, Duration::from_secs(120)).await }
    });
    enqueue(&e, "emb", &["x"], false).await;
    // Answered with the item: a timeout would have answered empty.
    let first = waiter.await.expect("join").items.remove(0);
    // Nobody completes it: after its 1 s lease the reaper hands it on.
    let second = lease(&e, "emb", 1, Duration::from_secs(120))
        .await
        .items
        .remove(0);
    assert_eq!((second.id, second.attempt), (first.id, 2));
    e.complete(&q("emb"), &[second.token])
        .await
        .expect("complete");
    assert_eq!(e.get_queue(&q("emb")).expect("info").counters.completed, 1);
    e.close().await.expect("close");
}

/// After a failed commit the caller gets the store's error, and every later
/// change is refused — even once the disk is fine again — until a restart
/// (the server then exits: `tests/reliability.rs`).
#[tokio::test]
async fn after_a_failed_commit_the_caller_gets_the_error_and_further_changes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    {
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open_with_faults(dir.path(), faults.clone()).expect("open"));
        let e = Engine::open(store, Limits::default(), settings()).expect("engine");
        enqueue(&e, "full", &["kept"], true).await;

        faults.fail(Op::Write, 1, FaultKind::NoSpace);
        let failed = e.enqueue(&q("full"), items(&["lost"]), false).await;
        match &failed {
            Err(Error::Store(StoreError::Write(msg))) => {
                assert!(msg.contains("no space left on device"), "{msg}")
            }
            other => panic!("expected the store's failure, got {other:?}"),
        }

        faults.clear();
        let refused = e.enqueue(&q("full"), items(&["later"]), false).await;
        assert!(
            matches!(&refused, Err(Error::Store(StoreError::Write(_)))),
            "{refused:?}"
        );
        let refused = e.create_queue(&q("other"), settings()).await;
        assert!(
            matches!(&refused, Err(Error::Store(StoreError::Write(_)))),
            "{refused:?}"
        );
        assert!(e.close().await.is_err(), "closing reports the failure");
    }
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
    let e = Engine::open(store, Limits::default(), settings()).expect("engine");
    let got = lease(&e, "full", 10, Duration::ZERO).await.items;
    assert_eq!(got.len(), 1, "only what was durable comes back");
    assert_eq!(&got[0].payload[..], b"kept");
    e.close().await.expect("close");
}

/// The store-level seam, as a test of another store would use it: the second
/// commit fails, the caller gets the error, and the engine refuses every
/// later call — even once the store would accept commits again — and says
/// so through [`Engine::failure`].
#[tokio::test]
async fn after_a_store_s_commit_fails_the_engine_refuses_every_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let inner = EmbeddedStore::open(dir.path()).expect("open");
    let store: Arc<dyn Store> = Arc::new(queue_server::store::fault::FaultyStore::new(
        inner,
        faults.clone(),
    ));
    let e = Engine::open(store, Limits::default(), settings()).expect("engine");
    faults.fail(Op::Commit, 2, FaultKind::Io);
    e.create_queue(&q("nth"), settings()).await.expect("create");
    assert!(e.failure().is_none());
    let failed = e.enqueue(&q("nth"), items(&["x"]), false).await;
    assert!(
        matches!(&failed, Err(Error::Store(StoreError::Write(m))) if m.contains("input/output")),
        "{failed:?}"
    );
    assert!(e.failure().is_some(), "the engine knows its store failed");
    faults.clear();
    let refused = e.enqueue(&q("nth"), items(&["y"]), false).await;
    assert!(matches!(&refused, Err(Error::Store(_))), "{refused:?}");
    let refused = e.lease(&q("nth"), 10, None, Duration::ZERO).await;
    assert!(matches!(&refused, Err(Error::Store(_))), "{refused:?}");
    let refused = e.get_queue(&q("nth"));
    assert!(matches!(&refused, Err(Error::Store(_))), "{refused:?}");
    let _ = e.close().await;
}

/// A lease answers only once the enqueue of what it leased is durable: the
/// items of an enqueue whose commit fails are never handed out, even to a
/// lease made before anyone learned of the failure.
#[tokio::test]
async fn the_items_of_a_failed_enqueue_are_never_leased() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_with_faults(dir.path(), faults.clone()).expect("open"));
    let e = Engine::open(store, Limits::default(), settings()).expect("engine");
    e.create_queue(&q("race"), settings())
        .await
        .expect("create");
    faults.fail(Op::Write, 1, FaultKind::NoSpace);
    let (_, commit) = e
        .enqueue_now(&q("race"), items(&["lost"]))
        .expect("added in memory");
    let leased = e.lease(&q("race"), 10, None, Duration::ZERO).await;
    assert!(
        matches!(&leased, Err(Error::Store(_))),
        "the failed enqueue's item was handed out: {leased:?}"
    );
    assert!(commit.wait().await.is_err());
    let _ = e.close().await;
}
