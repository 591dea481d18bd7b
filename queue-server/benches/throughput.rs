//! Items per second through the gRPC API — enqueue, lease + complete, and
//! both at once — for batch sizes 1 and 100 on both stores, and lease +
//! complete from a deep queue (1,000,000 pending) against a shallow one.
//!
//! Run: `cargo bench -p queue-server --bench throughput` (release build).
//! Options after `--`: `--items N` (default 100000), `--depth N` (default
//! 1000000), `--store memory|embedded|postgres`, `--batch N`, `--no-depth`,
//! `--json` (one JSON object per measurement instead of a table).
//! `postgres` (only when asked for) runs on the machine's PostgreSQL
//! (127.0.0.1:5432, user postgres) in a new database per server, dropped
//! after.
//! The server is the real binary in its own process on loopback.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_client::QueueServiceClient;

type Client = QueueServiceClient<Channel>;

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    /// The postgres store's database, dropped with the server.
    db: Option<String>,
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "{sql}: {out:?}");
}

impl Server {
    fn start(store: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = (store == "postgres").then(|| {
            static N: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                "wq_bench_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            psql(&format!("CREATE DATABASE {name}"));
            name
        });
        let url = db
            .as_ref()
            .map(|d| format!("postgres://postgres@127.0.0.1:5432/{d}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_queue-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "off",
                "--store",
                store,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args(url.iter().flat_map(|u| ["--database-url", u.as_str()]))
            .args(
                std::env::var("BENCH_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn queue-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc="))
            .expect("grpc address")
            .to_string();
        Server {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
            db,
        }
    }

    async fn client(&self) -> Client {
        QueueServiceClient::connect(self.url.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(db) = &self.db {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

fn payload(i: u64) -> pb::NewItem {
    let mut p = format!("item-{i:012}-").into_bytes();
    p.resize(100, b'x');
    pb::NewItem {
        payload: p.into(),
        ..Default::default()
    }
}

/// Runs `task` on `tasks` tokio tasks at once, each with a clone of one client
/// and the queue's name, and waits for them all (`what` names them in a panic).
async fn on_tasks<F, Fut>(server: &Server, queue: &str, tasks: u64, what: &str, task: F)
where
    F: Fn(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shared = server.client().await;
    let handles: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(task(shared.clone(), queue.to_string())))
        .collect();
    for h in handles {
        h.await.expect(what);
    }
}

/// `tasks` producers enqueue `items` in batches of `batch`.
async fn produce(server: &Server, queue: &str, items: u64, batch: u64, tasks: u64) {
    let next = Arc::new(AtomicU64::new(0));
    on_tasks(server, queue, tasks, "producer", |mut c, queue| {
        let next = next.clone();
        async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= items {
                    return;
                }
                let end = (start + batch).min(items);
                let req = pb::EnqueueRequest {
                    queue: queue.clone(),
                    items: (start..end).map(payload).collect(),
                    create_queue: true,
                    ..Default::default()
                };
                c.enqueue(req).await.expect("enqueue");
            }
        }
    })
    .await;
}

/// `tasks` consumers lease and complete in batches of `batch` until `items`
/// are completed, each lease call waiting up to `wait_ms` for an item.
async fn consume(server: &Server, queue: &str, items: u64, batch: u32, tasks: u64, wait_ms: u64) {
    let done = Arc::new(AtomicU64::new(0));
    on_tasks(server, queue, tasks, "consumer", |mut c, queue| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < items {
                let req = pb::LeaseRequest {
                    queue: queue.clone(),
                    max_items: batch as i32,
                    lease: Some(workq_proto::time::duration(Duration::from_secs(60))),
                    wait: Some(workq_proto::time::duration(Duration::from_millis(wait_ms))),
                    ..Default::default()
                };
                let l = match c.lease(req).await {
                    Ok(l) => l.into_inner(),
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => panic!("lease: {s}"),
                };
                if l.items.is_empty() {
                    continue;
                }
                let n = l.items.len() as u64;
                let req = pb::CompleteRequest {
                    queue: queue.clone(),
                    lease_tokens: l.items.into_iter().map(|i| i.lease_token).collect(),
                    ..Default::default()
                };
                c.complete(req).await.expect("complete");
                done.fetch_add(n, Ordering::Relaxed);
            }
        }
    })
    .await;
}

struct Row {
    store: &'static str,
    measure: String,
    batch: u64,
    items: u64,
    secs: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.items as f64 / self.secs
    }
}

async fn timed(f: impl std::future::Future<Output = ()>) -> f64 {
    let t = Instant::now();
    f.await;
    t.elapsed().as_secs_f64()
}

fn tasks_for(batch: u64) -> u64 {
    if let Some(n) = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if batch == 1 { 32 } else { 4 }
}

async fn throughput(store: &'static str, batch: u64, items: u64, rows: &mut Vec<Row>) {
    let server = Server::start(store);
    let tasks = tasks_for(batch);
    let secs = timed(produce(&server, "bench", items, batch, tasks)).await;
    rows.push(Row {
        store,
        measure: "enqueue".into(),
        batch,
        items,
        secs,
    });
    let secs = timed(consume(&server, "bench", items, batch as u32, tasks, 0)).await;
    rows.push(Row {
        store,
        measure: "lease+complete".into(),
        batch,
        items,
        secs,
    });
    let secs = timed(async {
        tokio::join!(
            produce(&server, "e2e", items, batch, tasks),
            consume(&server, "e2e", items, batch as u32, tasks, 50)
        );
    })
    .await;
    rows.push(Row {
        store,
        measure: "end to end".into(),
        batch,
        items,
        secs,
    });
}

/// Lease + complete `measured` items at batch 100 from a queue holding
/// `depth` pending items (refilled untimed between rounds when shallow).
async fn depth(store: &'static str, depth: u64, measured: u64, rows: &mut Vec<Row>) {
    let server = Server::start(store);
    let mut secs = 0.0;
    let mut done = 0;
    let mut filled = 0;
    while done < measured {
        if filled - done < measured.min(depth) {
            produce(&server, "deep", depth, 1000, 4).await;
            filled += depth;
        }
        let round = measured.min(depth);
        secs += timed(consume(&server, "deep", round, 100, 4, 0)).await;
        done += round;
    }
    rows.push(Row {
        store,
        measure: format!("lease+complete at depth {depth}"),
        batch: 100,
        items: done,
        secs,
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let items = opt("--items", 100_000);
    let deep = opt("--depth", 1_000_000);
    let json = args.iter().any(|a| a == "--json");
    let only = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let stores: Vec<&'static str> = match only("--store").as_deref() {
        Some("memory") => vec!["memory"],
        Some("embedded") => vec!["embedded"],
        Some("postgres") => vec!["postgres"],
        _ => vec!["memory", "embedded"],
    };
    let batches: Vec<u64> = match only("--batch").and_then(|b| b.parse().ok()) {
        Some(b) => vec![b],
        None => vec![1, 100],
    };
    let with_depth = !args.iter().any(|a| a == "--no-depth");
    // One client thread: on two cores, a second one mostly adds context
    // switches (measured), and the server needs the other core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    rt.block_on(async {
        for store in stores {
            for &batch in &batches {
                let n = if batch == 1 { items / 4 } else { items };
                throughput(store, batch, n, &mut rows).await;
            }
            if with_depth {
                depth(store, 1_000, 50_000, &mut rows).await;
                depth(store, deep, 50_000, &mut rows).await;
            }
        }
    });
    if !json {
        println!("| store | measure | batch | items | seconds | items/s |");
        println!("|---|---|---|---|---|---|");
    }
    for r in &rows {
        let rate = r.rate();
        let Row {
            store,
            measure,
            batch,
            items,
            secs,
        } = r;
        if json {
            println!(
                "{{\"store\":\"{store}\",\"measure\":\"{measure}\",\"batch\":{batch},\"items\":{items},\"seconds\":{secs:.3},\"items_per_second\":{rate:.0}}}"
            );
        } else {
            println!("| {store} | {measure} | {batch} | {items} | {secs:.2} | {rate:.0} |");
        }
    }
}
