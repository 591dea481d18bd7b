//! The postgres store's own behaviours, against the real binary and the
//! machine's PostgreSQL (each test in a database of its own, dropped
//! after): replicas sharing one database, a lease parked on one replica
//! woken by an enqueue on another, expiry reaped once whichever replica
//! gets there, migrations one replica at a time and a newer schema refused,
//! and the database going away and coming back. (The store-agnostic
//! behaviours run on postgres in `grpc.rs` and `contract.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::own_postgres::OwnPostgres;
use common::{PgDatabase, ServerProcess, stats, unique_queue};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

fn item(payload: &str) -> pb::NewItem {
    pb::NewItem {
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn dur(d: Duration) -> Option<prost_types::Duration> {
    Some(workq_proto::time::duration(d))
}

async fn enqueue(c: &mut Client, q: &str, payloads: &[&str]) {
    c.enqueue(pb::EnqueueRequest {
        queue: q.into(),
        items: payloads.iter().map(|p| item(p)).collect(),
        create_queue: true,
        ..Default::default()
    })
    .await
    .expect("enqueue");
}

async fn lease(
    c: &mut Client,
    q: &str,
    max: i32,
    lease: Duration,
    wait: Duration,
) -> Vec<pb::LeasedItem> {
    c.lease(pb::LeaseRequest {
        queue: q.into(),
        max_items: max,
        lease: dur(lease),
        wait: dur(wait),
        ..Default::default()
    })
    .await
    .expect("lease")
    .into_inner()
    .items
}

/// Two replicas of one database.
fn replicas() -> Option<(Arc<PgDatabase>, ServerProcess, ServerProcess)> {
    replicas_with(&[])
}

/// Two replicas of one database, started with `args`.
fn replicas_with(args: &[&str]) -> Option<(Arc<PgDatabase>, ServerProcess, ServerProcess)> {
    let db = Arc::new(PgDatabase::create()?);
    let a = ServerProcess::on_database(&db, args);
    let b = ServerProcess::on_database(&db, args);
    Some((db, a, b))
}

/// One statement of a kind per queue at a time on each replica: the
/// chaos tests' concurrent calls go in grouped statements (`combine.rs`),
/// and those are what a kill or a restart cuts.
const GROUPED: &[&str] = &["--database-statements-per-queue", "1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_any_call() {
    let Some((_db, a, b)) = replicas() else {
        return;
    };
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let q = unique_queue("replicas");
    enqueue(&mut ca, &q, &["1", "2"]).await;
    let got = lease(&mut cb, &q, 10, Duration::from_secs(30), Duration::ZERO).await;
    assert_eq!(got.len(), 2, "B leases what A enqueued");
    let done = ca
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: got.iter().map(|i| i.lease_token.clone()).collect(),
            ..Default::default()
        })
        .await
        .expect("A completes B's leases")
        .into_inner();
    assert_eq!(done.completed, 2);
    let s = stats(&mut cb, &q).await;
    assert_eq!(
        (s.enqueued, s.pending, s.leased, s.completed),
        (2, 0, 0, 2),
        "B counts what A did"
    );
    // A retried completion on the other replica: already done.
    let again = cb
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: got.iter().map(|i| i.lease_token.clone()).collect(),
            ..Default::default()
        })
        .await
        .expect("retried on B")
        .into_inner();
    assert_eq!((again.completed, again.already_completed), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_parked_on_one_replica_is_woken_by_an_enqueue_on_another() {
    let Some((_db, a, b)) = replicas() else {
        return;
    };
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let q = unique_queue("wake");
    ca.create_queue(pb::CreateQueueRequest {
        name: q.clone(),
        ..Default::default()
    })
    .await
    .expect("create");
    let mut latencies = Vec::new();
    for round in 0..5 {
        let parked = {
            let (mut cb, q) = (cb.clone(), q.clone());
            tokio::spawn(async move {
                let got = lease(
                    &mut cb,
                    &q,
                    1,
                    Duration::from_secs(30),
                    Duration::from_secs(20),
                )
                .await;
                (got, Instant::now())
            })
        };
        b.wait_for_gauge("workq_lease_calls_waiting", &q, 1).await;
        let sent = Instant::now();
        enqueue(&mut ca, &q, &[&format!("r{round}")]).await;
        let (got, woke) = parked.await.expect("lease task");
        assert_eq!(got.len(), 1, "the parked lease got the item");
        assert_eq!(got[0].payload, format!("r{round}").into_bytes());
        latencies.push(woke.duration_since(sent));
        let _ = cb
            .complete(pb::CompleteRequest {
                queue: q.clone(),
                lease_tokens: vec![got[0].lease_token.clone()],
                ..Default::default()
            })
            .await
            .expect("complete");
    }
    latencies.sort();
    // A figure for docs/STORE.md, not an assertion: from the enqueue's call
    // to the parked lease's answer, both over gRPC, debug build.
    println!("cross-replica wake, enqueue call to lease answer: {latencies:?}");
    let s = stats(&mut ca, &q).await;
    assert_eq!((s.enqueued, s.completed), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_reaped_once_whichever_replica_gets_there() {
    let Some((_db, a, b)) = replicas() else {
        return;
    };
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let q = unique_queue("reap");
    let payloads: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    enqueue(&mut ca, &q, &refs).await;
    let first = lease(&mut ca, &q, 20, Duration::from_secs(1), Duration::ZERO).await;
    assert_eq!(first.len(), 20);
    // Both replicas' reapers race for the expired leases; each must be
    // counted once, and each item leased again on its second attempt.
    let mut again = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while again.len() < 20 && Instant::now() < until {
        again.extend(
            lease(
                &mut cb,
                &q,
                20,
                Duration::from_secs(30),
                Duration::from_secs(5),
            )
            .await,
        );
    }
    assert_eq!(again.len(), 20, "every expired item came back once");
    assert!(again.iter().all(|i| i.attempt == 2), "{again:?}");
    let s = stats(&mut cb, &q).await;
    assert_eq!(
        (s.enqueued, s.pending, s.leased, s.retried),
        (20, 0, 20, 20),
        "each expiry counted once"
    );
    // A token of the expired lease is refused, saying why.
    let stale = ca
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: vec![first[0].lease_token.clone()],
            ..Default::default()
        })
        .await
        .expect_err("a stale token");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(db) = PgDatabase::create().map(Arc::new) else {
        return;
    };
    // Four at once on an empty database: the lock lets one migrate; the
    // others find the schema done.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || ServerProcess::on_database(&db, &[]))
        })
        .collect();
    let servers: Vec<ServerProcess> = starts
        .into_iter()
        .map(|t| t.join().expect("a replica started"))
        .collect();
    let version = db.execute("SELECT version FROM workq_schema");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        queue_server::postgres::migrate::SCHEMA_VERSION.to_string()
    );
    drop(servers);

    let out = db.execute("UPDATE workq_schema SET version = 99");
    assert!(out.status.success(), "{out:?}");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--store", "postgres", "--database-url", &db.url()])
        .output()
        .expect("run queue-server");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("version 99")
            && stderr.contains(&format!(
                "(version {})",
                queue_server::postgres::migrate::SCHEMA_VERSION
            )),
        "names both versions: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_one_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--store", "postgres"])
        .args(["--database-url", "postgres://postgres@127.0.0.1:1/none"])
        .output()
        .expect("run queue-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--database-url"), "names the fix: {stderr}");
    // And --store postgres without a URL is refused by the flags.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_queue-server"))
        .args(["--store", "postgres"])
        .env_remove("WQ_DATABASE_URL")
        .output()
        .expect("run queue-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--database-url"), "{stderr}");
}

/// Polls `/healthz` until its status line holds `want` (a readiness wait,
/// up to 30 s, not a timed assertion).
async fn healthz_until(server: &ServerProcess, want: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let page = server.http_get("/healthz");
        if page.lines().next().is_some_and(|l| l.contains(want)) {
            return;
        }
        assert!(Instant::now() < until, "no {want} within 30 s: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_calls_are_unavailable_and_everything_resumes() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let server = ServerProcess::start(&["--store", "postgres", "--database-url", &pg.url()]);
    let mut c = server.client().await;
    let q = unique_queue("outage");
    enqueue(&mut c, &q, &["1", "2", "3"]).await;
    let held = lease(&mut c, &q, 1, Duration::from_secs(60), Duration::ZERO).await;
    assert_eq!(held.len(), 1);

    pg.ctl("stop");
    healthz_until(&server, "503").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let refused = c
        .enqueue(pb::EnqueueRequest {
            queue: q.clone(),
            items: vec![item("lost?")],
            ..Default::default()
        })
        .await
        .expect_err("no database, no enqueue");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    pg.ctl("start");
    healthz_until(&server, "200").await;
    // Nothing acknowledged was lost, the refused enqueue added nothing, and
    // the lease taken before the outage still completes.
    let done = c
        .complete(pb::CompleteRequest {
            queue: q.clone(),
            lease_tokens: vec![held[0].lease_token.clone()],
            ..Default::default()
        })
        .await
        .expect("complete after the outage")
        .into_inner();
    assert_eq!(done.completed, 1);
    let rest = lease(&mut c, &q, 10, Duration::from_secs(60), Duration::ZERO).await;
    let mut payloads: Vec<Vec<u8>> = rest.iter().map(|i| i.payload.to_vec()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"2".to_vec(), b"3".to_vec()]);
    let s = stats(&mut c, &q).await;
    assert_eq!((s.enqueued, s.completed, s.leased), (3, 1, 2));
}

/// Where each replica listens now (a restarted replica has a new port).
type Urls = Arc<std::sync::Mutex<Vec<String>>>;

async fn connect_any(urls: &Urls, turn: usize) -> Option<Client> {
    let list = urls.lock().expect("urls").clone();
    let url = list[turn % list.len()].clone();
    Client::connect(url).await.ok()
}

/// Load on `urls` while something goes wrong: a producer (batches of 50
/// with a request id, retried on any replica until acknowledged) and 4
/// workers (lease 25, complete; a lost answer retried with the same tokens).
struct Load {
    producer: tokio::task::JoinHandle<std::collections::HashSet<Vec<u8>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    completed: Arc<std::sync::Mutex<std::collections::HashSet<Vec<u8>>>>,
    violations: Arc<std::sync::Mutex<Vec<String>>>,
}

const CHAOS_ITEMS: usize = 2000;

impl Load {
    fn start(urls: &Urls, q: &str) -> Load {
        use std::collections::HashSet;
        let completed: Arc<std::sync::Mutex<HashSet<Vec<u8>>>> = Arc::default();
        let violations: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let producer = {
            let (urls, q) = (urls.clone(), q.to_string());
            tokio::spawn(async move {
                let mut acked = HashSet::new();
                for batch in 0..CHAOS_ITEMS / 50 {
                    let items: Vec<String> = (0..50).map(|i| format!("{batch}-{i}")).collect();
                    let request_id = format!("{q}-{batch}");
                    for turn in batch.. {
                        let Some(mut c) = connect_any(&urls, turn).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let r = c
                            .enqueue(pb::EnqueueRequest {
                                queue: q.clone(),
                                items: items.iter().map(|p| item(p)).collect(),
                                request_id: request_id.clone(),
                                ..Default::default()
                            })
                            .await;
                        if r.is_ok() {
                            acked.extend(items.iter().map(|p| p.clone().into_bytes()));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                acked
            })
        };
        let workers = (0..4)
            .map(|w| {
                let (urls, q) = (urls.clone(), q.to_string());
                let (completed, violations) = (completed.clone(), violations.clone());
                tokio::spawn(async move {
                    let mut turn = w;
                    while completed.lock().expect("set").len() < CHAOS_ITEMS {
                        turn += 1;
                        let Some(mut c) = connect_any(&urls, turn).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let Ok(l) = c
                            .lease(pb::LeaseRequest {
                                queue: q.clone(),
                                max_items: 25,
                                lease: dur(Duration::from_secs(3)),
                                wait: dur(Duration::from_millis(500)),
                                ..Default::default()
                            })
                            .await
                        else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        let items = l.into_inner().items;
                        if items.is_empty() {
                            continue;
                        }
                        for i in &items {
                            if completed.lock().expect("set").contains(&i.payload.to_vec()) {
                                violations.lock().expect("v").push(format!(
                                    "{:?} leased again after its completion was acknowledged",
                                    String::from_utf8_lossy(&i.payload)
                                ));
                            }
                        }
                        let tokens: Vec<String> =
                            items.iter().map(|i| i.lease_token.clone()).collect();
                        for retry in 0..200 {
                            let Some(mut c) = connect_any(&urls, turn + retry).await else {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            };
                            match c
                                .complete(pb::CompleteRequest {
                                    queue: q.clone(),
                                    lease_tokens: tokens.clone(),
                                    ..Default::default()
                                })
                                .await
                            {
                                Ok(_) => {
                                    let mut set = completed.lock().expect("set");
                                    for i in &items {
                                        set.insert(i.payload.to_vec());
                                    }
                                    break;
                                }
                                // The lease expired meanwhile: the items come
                                // back; not acknowledged.
                                Err(s) if s.code() == tonic::Code::FailedPrecondition => break,
                                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            producer,
            workers,
            completed,
            violations,
        }
    }

    fn completed(&self) -> usize {
        self.completed.lock().expect("set").len()
    }

    async fn wait_for(&self, n: usize) {
        while self.completed() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every acknowledged item completed, none leased again after its
    /// completion was acknowledged, counters exact.
    async fn check(self, c: &mut Client, q: &str) {
        let acked = self.producer.await.expect("producer");
        for w in self.workers {
            w.await.expect("worker");
        }
        let violations = self.violations.lock().expect("v").clone();
        assert!(violations.is_empty(), "{violations:?}");
        let completed = self.completed.lock().expect("set").clone();
        assert_eq!(acked.len(), CHAOS_ITEMS);
        assert_eq!(completed, acked, "every acknowledged item completed");
        let s = stats(c, q).await;
        assert_eq!(
            (s.enqueued, s.completed, s.pending, s.leased),
            (CHAOS_ITEMS as i64, CHAOS_ITEMS as i64, 0, 0),
            "each enqueued once, completed once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_under_load_loses_and_repeats_no_acknowledged_work() {
    let Some((db, a, b)) = replicas_with(GROUPED) else {
        return;
    };
    let urls: Urls = Arc::new(std::sync::Mutex::new(vec![a.url(), b.url()]));
    let mut a = Some(a);
    let q = unique_queue("chaos");
    let mut c = b.client().await;
    c.create_queue(pb::CreateQueueRequest {
        name: q.clone(),
        ..Default::default()
    })
    .await
    .expect("create");
    let load = Load::start(&urls, &q);
    // kill -9 replica A twice under load, each time starting it again.
    for round in 1..=2 {
        load.wait_for(CHAOS_ITEMS / 4 * round).await;
        if let Some(mut old) = a.take() {
            old.child.kill().expect("kill -9");
            let _ = old.child.wait();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = ServerProcess::on_database(&db, GROUPED);
        urls.lock().expect("urls")[0] = again.url();
        a = Some(again);
    }
    load.check(&mut c, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_and_repeats_no_acknowledged_work() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let url = pg.url();
    let mut args = vec!["--store", "postgres", "--database-url", &url];
    args.extend_from_slice(GROUPED);
    let (a, b) = (ServerProcess::start(&args), ServerProcess::start(&args));
    let urls: Urls = Arc::new(std::sync::Mutex::new(vec![a.url(), b.url()]));
    let q = unique_queue("pg-restart");
    let mut c = b.client().await;
    c.create_queue(pb::CreateQueueRequest {
        name: q.clone(),
        ..Default::default()
    })
    .await
    .expect("create");
    let load = Load::start(&urls, &q);
    // PostgreSQL stopped (fast: sessions cut mid-statement) and started
    // again, twice, under load.
    for round in 1..=2 {
        load.wait_for(CHAOS_ITEMS / 4 * round).await;
        pg.ctl("restart");
    }
    healthz_until(&a, "200").await;
    load.check(&mut c, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queued_bytes_limit_holds_across_replicas_until_items_leave() {
    // An item counts its payload plus 256 bytes (what it adds to an
    // answer): three of 1,000 bytes fit, a fourth does not.
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let db = Arc::new(db);
    let limit = (3 * (1000 + 256)).to_string();
    let args = ["--max-queued-bytes", limit.as_str()];
    let (a, b) = (
        ServerProcess::on_database(&db, &args),
        ServerProcess::on_database(&db, &args),
    );
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let q = unique_queue("full");
    let big = "x".repeat(1000);
    for _ in 0..3 {
        enqueue(&mut ca, &q, &[big.as_str()]).await;
    }
    let refuse = |c: &mut Client| {
        let mut c = c.clone();
        let (q, big) = (q.clone(), big.clone());
        async move {
            c.enqueue(pb::EnqueueRequest {
                queue: q,
                items: vec![item(&big)],
                ..Default::default()
            })
            .await
        }
    };
    let refused = refuse(&mut cb).await.expect_err("over the limit on B");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-queued-bytes"),
        "{refused}"
    );
    assert_eq!(stats(&mut ca, &q).await.enqueued, 3);
    // A completion (on B) frees room for one more (on A).
    let got = lease(&mut cb, &q, 1, Duration::from_secs(30), Duration::ZERO).await;
    cb.complete(pb::CompleteRequest {
        queue: q.clone(),
        lease_tokens: vec![got[0].lease_token.clone()],
        ..Default::default()
    })
    .await
    .expect("complete");
    enqueue(&mut ca, &q, &[big.as_str()]).await;
    refuse(&mut ca).await.expect_err("full again");
    // A purge frees the pending ones: three fit again.
    cb.purge_queue(pb::PurgeQueueRequest { name: q.clone() })
        .await
        .expect("purge");
    enqueue(&mut cb, &q, &[big.as_str(), big.as_str(), big.as_str()]).await;
    assert_eq!(stats(&mut cb, &q).await.pending, 3);
}
