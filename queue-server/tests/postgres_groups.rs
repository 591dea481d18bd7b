//! Concurrent calls on one queue grouped into one statement on the postgres
//! store (`src/postgres/combine.rs`): each caller still gets exactly its
//! own answer — its completion all or nothing, its own share of items, its
//! replay — and a share whose caller went away is given back.
//!
//! To make calls meet in one group for certain, the server runs one
//! statement of a kind per queue at a time (`--database-statements-per-queue
//! 1`), and the test holds a row lock the first statement needs (from its
//! own connection), lines the other calls up behind it, and lets go.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PgDatabase, ServerProcess, stats, unique_queue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

fn items(n: usize) -> Vec<pb::NewItem> {
    (0..n)
        .map(|i| pb::NewItem {
            payload: format!("item {i}").into_bytes().into(),
            ..Default::default()
        })
        .collect()
}

async fn lease(c: &mut Client, q: &str, max: i32) -> Vec<pb::LeasedItem> {
    c.lease(pb::LeaseRequest {
        queue: q.into(),
        max_items: max,
        lease: Some(workq_proto::time::duration(Duration::from_secs(120))),
        ..Default::default()
    })
    .await
    .expect("lease")
    .into_inner()
    .items
}

/// Counter `name{kind="KIND"}` on the server's metrics page (0 when absent).
fn counter(server: &ServerProcess, name: &str, kind: &str) -> u64 {
    let prefix = format!("{name}{{kind=\"{kind}\"}} ");
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Statements run and calls they carried, of `kind`.
fn grouping(server: &ServerProcess, kind: &str) -> (u64, u64) {
    (
        counter(server, "workq_postgres_statements_total", kind),
        counter(server, "workq_postgres_statement_calls_total", kind),
    )
}

/// A connection of the test's own to the database, and the task driving it.
async fn connect(db: &PgDatabase) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// Waits until a statement of the server's containing `text` waits on a
/// lock (the one the test holds).
async fn blocked_on_lock(admin: &tokio_postgres::Client, text: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND application_name = 'queue-server' AND query LIKE '%' || $1 || '%'",
                &[&text],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "no statement with {text:?} waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One statement of a kind per queue at a time: what arrives meanwhile
/// waits for the next.
const ONE_AT_A_TIME: &[&str] = &["--database-statements-per-queue", "1"];

/// What calls that reach the server while the blocked one waits are given
/// to line up (they are local; this is generous).
const LINE_UP: Duration = Duration::from_millis(1000);

/// A token for the same item and lease with a wrong secret.
fn forged(token: &str) -> String {
    let last = token.chars().last().expect("a token");
    let other = if last == '0' { '1' } else { '0' };
    format!("{}{other}", &token[..token.len() - 1])
}

/// A server on a database of its own, one statement of a kind per queue
/// at a time, and a queue holding `n` items.
struct Setup {
    db: Arc<PgDatabase>,
    server: ServerProcess,
    c: Client,
    q: String,
}

/// [`Setup`]; `None` when PostgreSQL is not there (said by the helper).
async fn setup(n: usize) -> Option<Setup> {
    let db = Arc::new(PgDatabase::create()?);
    let server = ServerProcess::on_database(&db, ONE_AT_A_TIME);
    let mut c = server.client().await;
    let q = unique_queue("groups");
    c.create_queue(pb::CreateQueueRequest {
        name: q.clone(),
        ..Default::default()
    })
    .await
    .expect("create");
    if n > 0 {
        c.enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: items(n),
            ..Default::default()
        })
        .await
        .expect("enqueue");
    }
    Some(Setup { db, server, c, q })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_leases_grouped_in_one_statement_each_get_their_own_answer() {
    let Some(Setup {
        db,
        server,
        mut c,
        q,
    }) = setup(100).await
    else {
        return;
    };
    // Seven batches of 10 leased, 30 items left pending.
    let mut batches = Vec::new();
    for _ in 0..7 {
        batches.push(lease(&mut c, &q, 10).await);
    }
    let tokens =
        |b: &[pb::LeasedItem]| -> Vec<String> { b.iter().map(|i| i.lease_token.clone()).collect() };

    // Hold the first batch's first item: its completion waits in its
    // statement, and what follows lines up behind it.
    let mut admin = connect(&db).await;
    let hold = admin.transaction().await.expect("begin");
    let first_id: i64 = batches[0][0].id.parse().expect("numeric id");
    hold.execute(
        "SELECT 1 FROM workq_items WHERE id = $1 FOR UPDATE",
        &[&first_id],
    )
    .await
    .expect("lock the item");
    let before = grouping(&server, "work");
    let complete = |tokens: Vec<String>| {
        let (mut c, q) = (c.clone(), q.clone());
        tokio::spawn(async move {
            c.complete(pb::CompleteRequest {
                queue: q,
                lease_tokens: tokens,
                ..Default::default()
            })
            .await
        })
    };
    let blocked = complete(tokens(&batches[0]));
    let watcher = connect(&db).await;
    blocked_on_lock(&watcher, "workq_completed").await;

    // Behind it: four whole completions, one with a forged token among
    // live ones (all or nothing: none of its items may complete), and a
    // worker's complete-then-lease of 20 and a lease of 5.
    let mut whole = Vec::new();
    for b in &batches[1..5] {
        whole.push(complete(tokens(b)));
    }
    let mut spoiled = tokens(&batches[5]);
    spoiled[3] = forged(&spoiled[3]);
    let spoiled_call = complete(spoiled);
    let worker = {
        let (mut c, q, done) = (c.clone(), q.clone(), tokens(&batches[6]));
        tokio::spawn(async move {
            c.lease(pb::LeaseRequest {
                queue: q,
                max_items: 20,
                complete_tokens: done,
                ..Default::default()
            })
            .await
        })
    };
    let leaser = {
        let (mut c, q) = (c.clone(), q.clone());
        tokio::spawn(async move {
            c.lease(pb::LeaseRequest {
                queue: q,
                max_items: 5,
                ..Default::default()
            })
            .await
        })
    };
    tokio::time::sleep(LINE_UP).await;
    hold.rollback().await.expect("let go");

    let answer = blocked.await.unwrap().expect("the first completion");
    assert_eq!(answer.into_inner().completed, 10);
    for call in whole {
        let answer = call.await.unwrap().expect("a whole completion");
        assert_eq!(answer.into_inner().completed, 10);
    }
    let refused = spoiled_call
        .await
        .unwrap()
        .expect_err("a forged token is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let leased = worker
        .await
        .unwrap()
        .expect("complete then lease")
        .into_inner();
    let alone = leaser.await.unwrap().expect("lease").into_inner();
    // 30 were pending: the worker asked for 20 and the lease for 5, in
    // whatever order they lined up; each gets its own, none shared.
    assert_eq!(leased.items.len() + alone.items.len(), 25);
    assert!(leased.items.len() <= 20 && alone.items.len() <= 5);
    let mut ids: Vec<&str> = leased
        .items
        .iter()
        .chain(&alone.items)
        .map(|i| i.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 25, "no item went to two calls");

    let s = stats(&mut c, &q).await;
    assert_eq!(s.completed, 60, "six whole batches: {s:?}");
    assert_eq!(
        s.leased,
        10 + 25,
        "the spoiled batch and the new leases: {s:?}"
    );
    assert_eq!(s.pending, 5, "{s:?}");
    // The spoiled batch's live tokens still complete, by themselves.
    let mut live = tokens(&batches[5]);
    live.remove(3);
    let answer = c
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: live,
            ..Default::default()
        })
        .await
        .expect("the live ones");
    assert_eq!(answer.into_inner().completed, 9);

    let after = grouping(&server, "work");
    let (statements, calls) = (after.0 - before.0, after.1 - before.1);
    assert!(
        calls >= statements + 4,
        "seven calls lined up behind a blocked one should share statements: {calls} calls \
         in {statements} statements"
    );
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_grouped_in_one_statement_keep_their_order_and_their_replays() {
    let Some(Setup {
        db,
        server,
        mut c,
        q,
    }) = setup(0).await
    else {
        return;
    };

    // Hold the queue's row: an enqueue takes it shared, so the first one
    // waits in its statement and the others line up.
    let mut admin = connect(&db).await;
    let hold = admin.transaction().await.expect("begin");
    hold.execute(
        "SELECT 1 FROM workq_queues WHERE name = $1 FOR UPDATE",
        &[&q],
    )
    .await
    .expect("lock the queue");
    let before = grouping(&server, "enqueue");
    let enqueue = |n: usize, request_id: &str| {
        let (mut c, q, request_id) = (c.clone(), q.clone(), request_id.to_owned());
        tokio::spawn(async move {
            c.enqueue(pb::EnqueueRequest {
                queue: q,
                items: items(n),
                request_id,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
        })
    };
    let first = enqueue(3, "first");
    let watcher = connect(&db).await;
    blocked_on_lock(&watcher, "workq_requests").await;
    let calls: Vec<_> = (0..5).map(|i| enqueue(i + 1, &format!("r{i}"))).collect();
    // The same request twice in one line: one adds, the other is its replay.
    let twice = [enqueue(4, "twice"), enqueue(4, "twice")];
    tokio::time::sleep(LINE_UP).await;
    hold.rollback().await.expect("let go");

    let first = first.await.unwrap().expect("first");
    assert_eq!(first.items.len(), 3);
    let mut all_ids = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let answer = call.await.unwrap().expect("enqueue");
        assert_eq!(answer.items.len(), i + 1);
        assert!(!answer.replayed);
        let ids: Vec<u64> = answer.items.iter().map(|e| e.id.parse().unwrap()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "a batch's ids in order: {ids:?}"
        );
        all_ids.extend(ids);
    }
    let [a, b] = twice;
    let (a, b) = (a.await.unwrap().expect("a"), b.await.unwrap().expect("b"));
    assert_eq!(
        u8::from(a.replayed) + u8::from(b.replayed),
        1,
        "one adds, one replays"
    );
    assert_eq!(a.items, b.items, "the replay answers the same items");

    let s = stats(&mut c, &q).await;
    assert_eq!(s.enqueued, 3 + 15 + 4, "{s:?}");
    assert_eq!(s.pending, 22, "{s:?}");
    // The batches come out in the order their items were given ids.
    let mut out = Vec::new();
    while out.len() < 22 {
        out.extend(lease(&mut c, &q, 100).await);
    }
    let ranks: Vec<u64> = out.iter().map(|i| i.id.parse().unwrap()).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]),
        "leased in id order: {ranks:?}"
    );

    let after = grouping(&server, "enqueue");
    let (statements, calls) = (after.0 - before.0, after.1 - before.1);
    assert!(
        calls >= statements + 4,
        "enqueues lined up behind a blocked one should share statements: {calls} calls in \
         {statements} statements"
    );
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_leased_to_a_caller_that_went_away_are_given_back_at_once() {
    let Some(Setup { db, server, c, q }) = setup(10).await else {
        return;
    };

    // Hold every counter stripe of the queue: the lease statement takes
    // its items, then waits to count them.
    let mut admin = connect(&db).await;
    let hold = admin.transaction().await.expect("begin");
    hold.execute(
        "SELECT 1 FROM workq_counters WHERE queue_id = \
         (SELECT id FROM workq_queues WHERE name = $1) FOR UPDATE",
        &[&q],
    )
    .await
    .expect("lock the counters");
    let gone = {
        let (mut c, q) = (c.clone(), q.clone());
        tokio::spawn(async move {
            c.lease(pb::LeaseRequest {
                queue: q,
                max_items: 4,
                lease: Some(workq_proto::time::duration(Duration::from_secs(600))),
                ..Default::default()
            })
            .await
        })
    };
    let watcher = connect(&db).await;
    // (The statement's text as the server shows it is cut at 1 KiB: this
    // is what its start names.)
    blocked_on_lock(&watcher, "workq_completed").await;
    // The caller goes away (its connection with it) while the statement
    // waits; then the statement commits its lease.
    gone.abort();
    let _ = gone.await;
    drop(c);
    tokio::time::sleep(LINE_UP).await;
    hold.rollback().await.expect("let go");

    // Not 10 minutes: given back as soon as the statement answered.
    let mut c = server.client().await;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(&mut c, &q).await;
        if s.leased == 0 && s.pending == 10 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the orphaned share stayed leased: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = lease(&mut c, &q, 10).await;
    assert_eq!(all.len(), 10);
    assert!(
        all.iter().all(|i| i.attempt == 1),
        "giving back counts no attempt: {all:?}"
    );
    drop(admin);
}
