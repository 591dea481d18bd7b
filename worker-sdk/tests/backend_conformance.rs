//! One conformance suite for the SDK's backends: what every backend must do,
//! and what each refuses, written once and run on `grpc://` (a server started
//! in-process), `redis://` (the machine's Redis) and `amqp://` (the machine's
//! RabbitMQ).
//!
//! Each behaviour is one `async fn` taking a [`Backend`]; the macro at the end
//! runs it on all of them (`grpc_postgres`: the server on the postgres
//! store, in a database of the test's own). Where backends differ, the difference is written down
//! once, in [`Expect`], not in copies of the test. A backend whose service is
//! not there is skipped (`workq_testkit`; fails under `WQ_REQUIRE_SERVICES`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{AMQP_URL, Cleanup, REDIS_URL, TestServer, unique};
use futures::StreamExt;
use worker_sdk::{
    Error, Failure, Job, LeaseLostReason, LeaseOptions, NewItem, Queue, QueueSettings, StopReason,
    WorkerOptions,
};

/// The backends under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Grpc,
    /// The queue service on the postgres store.
    GrpcPostgres,
    Redis,
    Amqp,
}

/// What a backend can do; where it cannot, it refuses with
/// [`Error::NotSupported`] and changes nothing.
#[derive(Debug, Clone, Copy)]
struct Expect {
    /// Queues can be sealed, and so be drained.
    seal: bool,
    /// Dead items can be listed with their reasons (and requeued by id).
    list_dead: bool,
    /// Items may carry idempotency keys.
    dedupe: bool,
    /// Items may carry attributes.
    attributes: bool,
    /// Queues can be listed.
    list_queues: bool,
    /// Queues can be created with a retry back-off.
    retry_backoff_setting: bool,
    /// Completions are counted in the stats.
    counts_completed: bool,
    /// Leasing from a queue that does not exist is an error (Redis has no
    /// notion of a missing list: it is empty).
    missing_queue_is_an_error: bool,
    /// Finishing again with the token that did it answers OK (the queue
    /// service); elsewhere it is a lost lease.
    idempotent_finish: bool,
    /// A lost lease says what became of it ([`LeaseLostReason`]); elsewhere
    /// the reason is `Unknown`.
    lease_lost_reasons: bool,
}

impl Kind {
    fn expect(self) -> Expect {
        match self {
            Kind::Grpc | Kind::GrpcPostgres => Expect {
                seal: true,
                list_dead: true,
                dedupe: true,
                attributes: true,
                list_queues: true,
                retry_backoff_setting: true,
                counts_completed: true,
                missing_queue_is_an_error: true,
                idempotent_finish: true,
                lease_lost_reasons: true,
            },
            Kind::Redis => Expect {
                seal: true,
                list_dead: true,
                dedupe: false,
                attributes: false,
                list_queues: false,
                retry_backoff_setting: false,
                counts_completed: true,
                missing_queue_is_an_error: false,
                idempotent_finish: false,
                lease_lost_reasons: false,
            },
            Kind::Amqp => Expect {
                seal: false,
                list_dead: false,
                dedupe: false,
                attributes: true,
                list_queues: false,
                retry_backoff_setting: false,
                counts_completed: false,
                missing_queue_is_an_error: true,
                idempotent_finish: false,
                lease_lost_reasons: false,
            },
        }
    }
}

/// One backend for one test: its URL, and the server when it is in-process.
struct Backend {
    kind: Kind,
    url: String,
    _server: Option<TestServer>,
    _db: Option<PgDatabase>,
}

/// A PostgreSQL database of one test's own, dropped when dropped.
struct PgDatabase(String);

fn psql(sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql")
}

impl PgDatabase {
    fn create() -> Option<PgDatabase> {
        if !workq_testkit::postgres() || !workq_testkit::command("psql", "postgresql-client") {
            return None;
        }
        let name = unique("wq_sdk").replace('-', "_");
        let out = psql(&format!("CREATE DATABASE {name}"));
        assert!(out.status.success(), "{out:?}");
        Some(PgDatabase(name))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

impl Backend {
    /// The backend, or `None` when its service is not there (said, or failed
    /// under `WQ_REQUIRE_SERVICES`).
    async fn start(kind: Kind) -> Option<Backend> {
        let mut db = None;
        let (url, server) = match kind {
            Kind::Grpc => {
                let t = TestServer::start().await;
                (t.url.clone(), Some(t))
            }
            Kind::GrpcPostgres => {
                let d = PgDatabase::create()?;
                let url = format!("postgres://postgres@127.0.0.1:5432/{}", d.0);
                let server = queue_server::start(queue_server::ServerConfig::postgres(url))
                    .await
                    .expect("server starts");
                db = Some(d);
                let url = format!("grpc://{}", server.grpc_addr());
                (url.clone(), Some(TestServer { server, url }))
            }
            Kind::Redis => {
                if !workq_testkit::redis() {
                    return None;
                }
                (REDIS_URL.to_owned(), None)
            }
            Kind::Amqp => {
                if !workq_testkit::rabbitmq() {
                    return None;
                }
                (AMQP_URL.to_owned(), None)
            }
        };
        Some(Backend {
            kind,
            url,
            _server: server,
            _db: db,
        })
    }

    fn expect(&self) -> Expect {
        self.kind.expect()
    }

    /// A new queue of this test's own, created with default settings, and its
    /// clean-up (deletes it when dropped, even after a panic).
    async fn queue(&self, prefix: &str) -> (Queue, Cleanup) {
        let name = unique(prefix);
        let q = worker_sdk::connect(&self.url)
            .await
            .expect("connects")
            .queue(&name)
            .expect("valid name");
        let cleanup = Cleanup::new(&self.url, &name);
        q.create(&QueueSettings::default()).await.expect("create");
        (q, cleanup)
    }
}

fn lease_all(wait: Duration) -> LeaseOptions {
    LeaseOptions {
        max_items: 10,
        lease: Some(workq_proto::defaults::LEASE),
        wait,
        max_bytes: None,
    }
}

fn payloads(items: &[worker_sdk::LeasedItem]) -> BTreeSet<String> {
    items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
        .collect()
}

fn not_supported<T: std::fmt::Debug>(what: &str, r: worker_sdk::Result<T>) {
    assert!(
        matches!(r, Err(Error::NotSupported { .. })),
        "{what}: expected NotSupported, got {r:?}"
    );
}

/// Pushed items are leased once each, as first attempts, and leave the queue
/// when completed.
async fn push_lease_complete(b: Backend) {
    let (q, _cleanup) = b.queue("conf-basic").await;
    let ids = q.push(["a", "b", "c"]).await.expect("push");
    assert_eq!(ids.len(), 3);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased), (3, 0), "{s:?}");

    let leased = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    assert_eq!(
        payloads(&leased.items),
        BTreeSet::from(["a", "b", "c"].map(String::from))
    );
    assert!(leased.items.iter().all(|i| i.attempt == 1));
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased), (0, 3), "{s:?}");

    let again = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    assert!(again.items.is_empty(), "leased twice: {:?}", again.items);
    assert!(!again.empty, "items are held: the queue is not empty");

    let tokens: Vec<_> = leased.items.iter().map(|i| i.token.clone()).collect();
    let deadlines = q.renew(&tokens, None).await.expect("renew");
    assert_eq!(deadlines.len(), 3);
    q.complete(&tokens).await.expect("complete");
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased), (0, 0), "{s:?}");
    let completed = if b.expect().counts_completed { 3 } else { 0 };
    assert_eq!(s.completed, completed, "{s:?}");
    let after = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    assert!(after.items.is_empty() && after.empty, "{after:?}");
}

/// A token whose lease is gone is refused with `LeaseLost`, whatever the call,
/// and a released item comes back at once without counting an attempt.
async fn stale_tokens_are_fenced_off(b: Backend) {
    let (q, _cleanup) = b.queue("conf-fence").await;
    q.push(["x"]).await.expect("push");
    let leased = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    let tokens = [leased.items[0].token.clone()];
    q.release(&tokens).await.expect("release");

    // The queue service says the lease was finished (released); the others
    // cannot say.
    let why = if b.expect().lease_lost_reasons {
        LeaseLostReason::Finished
    } else {
        LeaseLostReason::Unknown
    };
    let lost = |r: &worker_sdk::Result<()>| matches!(r, Err(Error::LeaseLost { reason, .. }) if *reason == why);
    let r = q.complete(&tokens).await;
    assert!(lost(&r), "complete: {r:?}");
    let r = q.fail(&tokens, &Failure::fatal("x")).await.map(|_| ());
    assert!(lost(&r), "fail: {r:?}");
    let r = q.release(&tokens).await;
    if b.expect().idempotent_finish {
        assert!(r.is_ok(), "releasing again is idempotent: {r:?}");
    } else {
        assert!(lost(&r), "release: {r:?}");
    }
    let r = q.renew(&tokens, None).await.map(|_| ());
    assert!(lost(&r), "renew: {r:?}");

    let again = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    assert_eq!(payloads(&again.items), BTreeSet::from(["x".to_owned()]));
    assert_eq!(again.items[0].attempt, 1, "a release counts no attempt");
    let s = q.stats().await.expect("stats");
    assert_eq!(s.dead, 0, "{s:?}");
}

/// A retriable failure brings the item back as its next attempt; a fatal one
/// makes it dead, and dead items can be sent back.
async fn failures_retry_then_die_and_dead_items_come_back(b: Backend) {
    let (q, _cleanup) = b.queue("conf-fail").await;
    q.push(["f"]).await.expect("push");
    let first = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    let dead = q
        .fail(
            &[first.items[0].token.clone()],
            &Failure::retriable("flaky"),
        )
        .await
        .expect("fail");
    assert_eq!(dead, 0);

    // The queue service delays retries by the queue's back-off (1 s by default).
    let second = q
        .lease(&lease_all(Duration::from_secs(5)))
        .await
        .expect("lease");
    assert_eq!(payloads(&second.items), BTreeSet::from(["f".to_owned()]));
    assert_eq!(second.items[0].attempt, 2);
    let dead = q
        .fail(&[second.items[0].token.clone()], &Failure::fatal("broken"))
        .await
        .expect("fail");
    assert_eq!(dead, 1);
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased, s.dead), (0, 0, 1), "{s:?}");

    if b.expect().list_dead {
        let listed = q.dead(0).await.expect("dead");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].payload, b"f");
        // The reason as given (the queue service adds the attempt).
        assert!(listed[0].reason.contains("broken"), "{:?}", listed[0]);
        assert_eq!(listed[0].attempts, 2);
    } else {
        not_supported("list dead", q.dead(0).await);
        not_supported(
            "requeue dead by id",
            q.requeue_dead(worker_sdk::RequeueDead::Ids(vec![worker_sdk::ItemId::new(
                "x",
            )]))
            .await,
        );
    }
    assert_eq!(
        q.requeue_dead(worker_sdk::RequeueDead::All)
            .await
            .expect("requeue"),
        1
    );
    let back = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
    assert_eq!(payloads(&back.items), BTreeSet::from(["f".to_owned()]));
    assert_eq!(q.stats().await.expect("stats").dead, 0);
}

/// Sealing: a sealed queue refuses pushes and is drained once worked off;
/// where sealing is not supported, it is refused and the worker loop must be
/// told when to stop.
async fn seal_and_drain(b: Backend) {
    let (q, _cleanup) = b.queue("conf-seal").await;
    q.push(["1", "2"]).await.expect("push");
    assert_eq!(q.can_seal(), b.expect().seal);
    let opts = || {
        WorkerOptions::default()
            .handle_signals(false)
            .poll_wait(Duration::from_millis(200))
    };
    if b.expect().seal {
        let s = q.seal().await.expect("seal");
        assert!(s.sealed && !s.drained, "{s:?}");
        let r = q.push(["late"]).await;
        assert!(matches!(r, Err(Error::QueueSealed { .. })), "{r:?}");
        let summary = q
            .work(opts(), |_job: Job| async { Ok(()) })
            .await
            .expect("work");
        assert_eq!((summary.stop, summary.completed), (StopReason::Drained, 2));
        let s = q.stats().await.expect("stats");
        assert!(s.drained, "{s:?}");
        let mut updates = q.watch(true).await.expect("watch");
        let last = updates.next().await.expect("an update").expect("stats");
        assert!(last.drained);
        assert!(updates.next().await.is_none(), "the watch ends at drain");
    } else {
        not_supported("seal", q.seal().await);
        not_supported("watch until drained", q.watch(true).await.map(|_| ()));
        not_supported(
            "work until drained",
            q.work(opts(), |_job: Job| async { Ok(()) }).await,
        );
        let summary = q
            .work(opts().until_empty(true), |_job: Job| async { Ok(()) })
            .await
            .expect("work");
        assert_eq!((summary.stop, summary.completed), (StopReason::Empty, 2));
    }
}

/// What a backend cannot keep is refused plainly, and nothing is added.
async fn what_cannot_be_kept_is_refused(b: Backend) {
    let e = b.expect();
    let (q, _cleanup) = b.queue("conf-refuse").await;

    let keyed = NewItem::from("k").idempotency_key("k");
    if e.dedupe {
        let first = q.push_detailed([keyed.clone()]).await.expect("push");
        let second = q.push_detailed([keyed]).await.expect("push");
        assert!(!first[0].duplicate && second[0].duplicate);
    } else {
        not_supported("dedupe", q.push([keyed]).await);
    }
    let with_attr = NewItem::from("a").attribute("colour", "red");
    if e.attributes {
        q.push([with_attr]).await.expect("push");
        let leased = q.lease(&lease_all(Duration::ZERO)).await.expect("lease");
        let a = leased
            .items
            .iter()
            .find(|i| i.payload == b"a")
            .expect("leased");
        assert_eq!(a.attributes.get("colour").map(String::as_str), Some("red"));
        let tokens: Vec<_> = leased.items.iter().map(|i| i.token.clone()).collect();
        q.complete(&tokens).await.expect("complete");
    } else {
        not_supported("attributes", q.push([with_attr]).await);
    }
    let settings = QueueSettings {
        retry_backoff: Some(Duration::from_secs(2)),
        ..QueueSettings::default()
    };
    let other = worker_sdk::connect(&b.url)
        .await
        .expect("connects")
        .queue(&unique("conf-settings"))
        .expect("name");
    let _cleanup_other = Cleanup::new(&b.url, other.name().as_str());
    if e.retry_backoff_setting {
        assert!(other.create(&settings).await.expect("create"));
    } else {
        not_supported("retry back-off setting", other.create(&settings).await);
    }
    let client = worker_sdk::connect(&b.url).await.expect("connects");
    if e.list_queues {
        let all = client.list_queues().await.expect("list");
        assert!(all.iter().any(|i| i.name == q.name().as_str()));
    } else {
        not_supported("list queues", client.list_queues().await);
    }
    let s = q.stats().await.expect("stats");
    assert_eq!((s.pending, s.leased), (0, 0), "nothing was added: {s:?}");
}

/// A queue that does not exist: an error where the backend knows queues,
/// an empty queue where it does not (Redis).
async fn a_missing_queue(b: Backend) {
    let q = worker_sdk::connect(&b.url)
        .await
        .expect("connects")
        .queue(&unique("conf-missing"))
        .expect("name");
    let r = q.lease(&lease_all(Duration::ZERO)).await;
    if b.expect().missing_queue_is_an_error {
        assert!(matches!(r, Err(Error::QueueNotFound { .. })), "{r:?}");
    } else {
        let leased = r.expect("lease");
        assert!(leased.items.is_empty() && leased.empty);
    }
}

/// Runs each behaviour on each backend: `<backend>::<behaviour>`.
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {
        conformance!(@backend grpc, Kind::Grpc, $($behaviour),*);
        conformance!(@backend grpc_postgres, Kind::GrpcPostgres, $($behaviour),*);
        conformance!(@backend redis, Kind::Redis, $($behaviour),*);
        conformance!(@backend amqp, Kind::Amqp, $($behaviour),*);
    };
    (@backend $module:ident, $kind:expr, $($behaviour:ident),*) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    if let Some(b) = Backend::start($kind).await {
                        super::$behaviour(b).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    push_lease_complete,
    stale_tokens_are_fenced_off,
    failures_retry_then_die_and_dead_items_come_back,
    seal_and_drain,
    what_cannot_be_kept_is_refused,
    a_missing_queue,
);
