//! kill -9 under concurrent load, several rounds on one data directory:
//! every acknowledged enqueue is back exactly once, and no acknowledged
//! completion is redelivered.

mod common;

use common::ServerProcess;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use workq_proto::v1 as pb;

const QUEUE: &str = "crash";
const ROUNDS: usize = 5;

fn random_below(n: u64) -> u64 {
    fastrand::u64(..n)
}

/// A lease of up to `max` items of the queue for 60 s, waiting up to `wait_ms`.
fn lease_req(max: i32, wait_ms: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        queue: QUEUE.into(),
        max_items: max,
        lease: Some(workq_proto::time::duration(std::time::Duration::from_secs(
            60,
        ))),
        wait: Some(workq_proto::time::duration(
            std::time::Duration::from_millis(wait_ms),
        )),
        ..Default::default()
    }
}

#[derive(Default)]
struct Acked {
    enqueued: HashSet<String>,
    /// Sent in a complete call, acknowledged or not: may be gone.
    completing: HashSet<String>,
    completed: HashSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_item_and_redelivers_no_completed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut total_checked = 0;
    for round in 0..ROUNDS {
        let server = ServerProcess::embedded(dir.path());
        let acked = Arc::new(Mutex::new(Acked::default()));
        let mut tasks = Vec::new();
        for producer in 0..6 {
            let mut c = server.client().await;
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for batch in 0.. {
                    let n = 1 + random_below(40);
                    let payloads: Vec<String> = (0..n)
                        .map(|i| format!("r{round}-p{producer}-b{batch}-{i}"))
                        .collect();
                    let req = pb::EnqueueRequest {
                        queue: QUEUE.into(),
                        items: payloads
                            .iter()
                            .map(|p| pb::NewItem {
                                payload: p.clone().into_bytes().into(),
                                ..Default::default()
                            })
                            .collect(),
                        create_queue: true,
                        request_id: String::new(),
                    };
                    if c.enqueue(req).await.is_err() {
                        return;
                    }
                    acked.lock().expect("lock").enqueued.extend(payloads);
                }
            }));
        }
        for _ in 0..2 {
            let mut c = server.client().await;
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok(l) = c.lease(lease_req(25, 100)).await else {
                        return;
                    };
                    let l = l.into_inner();
                    if l.items.is_empty() {
                        continue;
                    }
                    let req = pb::CompleteRequest {
                        queue: QUEUE.into(),
                        lease_tokens: l.items.iter().map(|i| i.lease_token.clone()).collect(),
                        per_token_results: false,
                    };
                    let payloads: Vec<String> = l
                        .items
                        .iter()
                        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
                        .collect();
                    acked
                        .lock()
                        .expect("lock")
                        .completing
                        .extend(payloads.iter().cloned());
                    if c.complete(req).await.is_err() {
                        return;
                    }
                    acked.lock().expect("lock").completed.extend(payloads);
                }
            }));
        }
        // The kill lands at a random moment once the load is going (a
        // loaded machine may take a while to acknowledge the first batch).
        let started = std::time::Instant::now();
        while acked.lock().expect("lock").enqueued.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "round {round}: no enqueue acknowledged within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(150 + random_below(350))).await;
        let mut server = server;
        server.child.kill().expect("kill -9");
        server.child.wait().expect("wait");
        for t in tasks {
            let _ = t.await;
        }
        let acked = std::mem::take(&mut *acked.lock().expect("lock"));
        assert!(
            !acked.enqueued.is_empty(),
            "round {round}: the load never got going"
        );

        // Restart on the same directory and take everything that is there.
        let server = ServerProcess::embedded(dir.path());
        let mut c = server.client().await;
        let mut found: Vec<String> = Vec::new();
        loop {
            let l = c
                .lease(lease_req(1000, 0))
                .await
                .expect("lease after restart")
                .into_inner();
            if l.items.is_empty() {
                break;
            }
            found.extend(
                l.items
                    .iter()
                    .map(|i| String::from_utf8_lossy(&i.payload).into_owned()),
            );
            let req = pb::CompleteRequest {
                queue: QUEUE.into(),
                lease_tokens: l.items.iter().map(|i| i.lease_token.clone()).collect(),
                per_token_results: false,
            };
            c.complete(req).await.expect("complete after restart");
        }
        let unique: HashSet<&String> = found.iter().collect();
        assert_eq!(
            unique.len(),
            found.len(),
            "round {round}: an item came back twice"
        );
        for p in acked.enqueued.difference(&acked.completing) {
            assert!(
                unique.contains(p),
                "round {round}: acknowledged item {p} was lost"
            );
        }
        for p in &acked.completed {
            assert!(
                !unique.contains(p),
                "round {round}: completed item {p} was redelivered"
            );
        }
        let stats = c
            .get_queue(pb::GetQueueRequest { name: QUEUE.into() })
            .await
            .expect("stats")
            .into_inner()
            .queue
            .and_then(|q| q.stats)
            .expect("stats");
        assert_eq!(
            stats.enqueued,
            stats.pending + stats.delayed + stats.leased + stats.completed + stats.dead
        );
        assert_eq!(stats.pending + stats.leased + stats.delayed, 0);
        total_checked += acked.enqueued.len();
        drop(server);
    }
    println!("checked {total_checked} acknowledged items over {ROUNDS} kill -9 rounds");
}
