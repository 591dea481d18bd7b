//! `workq-bench soak`: the real `queue-server` binary on the embedded store,
//! killed with SIGKILL at random moments (some during start-up, some aimed
//! at the embedded store's compaction at start-up: `--compaction-kills`) and
//! restarted on the same directory and port, under concurrent producers and
//! workers:
//!
//! - a unary producer (Enqueue, every item with an idempotency key; a batch
//!   not acknowledged is sent again, same keys, until it is);
//! - a streaming producer (EnqueueStream, the same, per batch `sequence`);
//! - a unary worker (Lease, then Complete);
//! - a raw `Work` stream (credit, `complete_tokens` with a `sequence`);
//! - the worker SDK's worker loop (`Queue::work`).
//!
//! Every payload is its idempotency key. At the end the server is started
//! once more, the workers drain the queue, and the soak prints: rounds,
//! acknowledged enqueues and completions, lost (acknowledged enqueues never
//! delivered), duplicated (a key delivered under two item ids, or completed
//! twice with both completions acknowledged) and acknowledged completions
//! redelivered. Items whose enqueue was never acknowledged may or may not
//! exist; they are counted apart ("unacknowledged delivered").
//!
//! It builds nothing: it runs the binary given by `--server`.

use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use workq_proto::v1 as pb;

type Client = pb::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

const QUEUE: &str = "soak";
const LEASE: Duration = Duration::from_secs(30);

/// `workq-bench soak`'s flags.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How many times the server is killed and restarted.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Longest a round runs before its kill, in milliseconds (each round
    /// draws its moment at random below this).
    #[arg(long, default_value_t = 1500)]
    max_round_ms: u64,
    /// Share of rounds killed during start-up, before the server answers.
    #[arg(long, default_value_t = 0.15)]
    startup_kills: f64,
    /// Share of rounds killed as the embedded store compacts at start-up
    /// (right after the server logs "compacting the store"; a kill that
    /// lands before "store compacted" is counted as landed).
    #[arg(long, default_value_t = 0.1)]
    compaction_kills: f64,
    /// Items per enqueue batch.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Random seed (0: from the clock).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// What every client saw, by idempotency key.
#[derive(Default)]
struct Book {
    acked_enqueues: HashSet<String>,
    /// Item ids each key was delivered under.
    delivered: HashMap<String, HashSet<String>>,
    deliveries: u64,
    /// Acknowledged completions per key.
    completed: HashMap<String, u32>,
    redelivered_after_ack: u64,
}

impl Book {
    fn delivered(&mut self, key: &str, id: &str) {
        self.deliveries += 1;
        if self.completed.contains_key(key) {
            self.redelivered_after_ack += 1;
        }
        self.delivered
            .entry(key.to_owned())
            .or_default()
            .insert(id.to_owned());
    }

    fn completed(&mut self, key: &str) {
        *self.completed.entry(key.to_owned()).or_default() += 1;
    }
}

struct Shared {
    url: String,
    book: Mutex<Book>,
    /// Producers stop making new batches (they still finish the one in hand).
    stop_producing: AtomicBool,
    /// Everything stops.
    stop: AtomicBool,
    next_key: AtomicU64,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn batch(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| format!("{prefix}-{}", self.next_key.fetch_add(1, Ordering::Relaxed)))
            .collect()
    }
}

fn items(keys: &[String]) -> Vec<pb::NewItem> {
    keys.iter()
        .map(|k| pb::NewItem {
            payload: k.clone().into_bytes().into(),
            idempotency_key: k.clone(),
            ..Default::default()
        })
        .collect()
}

fn key_of(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

async fn connect(s: &Shared) -> Option<Client> {
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return None;
        }
        match Client::connect(s.url.clone()).await {
            Ok(c) => return Some(c.max_decoding_message_size(64 << 20)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn unary_producer(s: Arc<Shared>, batch: usize) {
    let mut in_hand: Option<Vec<String>> = None;
    while !s.stop.load(Ordering::Relaxed) {
        let Some(mut c) = connect(&s).await else {
            return;
        };
        loop {
            let keys = match in_hand.take() {
                Some(k) => k,
                None if s.stop_producing.load(Ordering::Relaxed) => return,
                None => s.batch("u", batch),
            };
            let req = pb::EnqueueRequest {
                queue: QUEUE.into(),
                items: items(&keys),
                create_queue: true,
                request_id: String::new(),
            };
            match c.enqueue(req).await {
                Ok(_) => s.book().acked_enqueues.extend(keys),
                Err(_) => {
                    in_hand = Some(keys);
                    pause().await;
                    break;
                }
            }
        }
    }
}

async fn stream_producer(s: Arc<Shared>, batch: usize) {
    // Batches sent and not acknowledged, by sequence: sent again on the
    // next stream.
    let mut unacked: Vec<(i64, Vec<String>)> = Vec::new();
    let mut seq = 0i64;
    while !s.stop.load(Ordering::Relaxed) {
        if s.stop_producing.load(Ordering::Relaxed) && unacked.is_empty() {
            return;
        }
        let Some(mut c) = connect(&s).await else {
            return;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let req = |seq: i64, keys: &[String]| pb::EnqueueStreamRequest {
            queue: QUEUE.into(),
            create_queue: true,
            items: items(keys),
            sequence: seq,
            request_id: String::new(),
        };
        for (n, keys) in &unacked {
            let _ = tx.send(req(*n, keys)).await;
        }
        let mut answers = match c
            .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(a) => a.into_inner(),
            Err(_) => {
                pause().await;
                continue;
            }
        };
        loop {
            // Keep up to four batches in flight.
            while unacked.len() < 4 && !s.stop_producing.load(Ordering::Relaxed) {
                seq += 1;
                let keys = s.batch("s", batch);
                if tx.send(req(seq, &keys)).await.is_err() {
                    break;
                }
                unacked.push((seq, keys));
            }
            if unacked.is_empty() {
                return;
            }
            match answers.next().await {
                Some(Ok(a)) => {
                    let Some(i) = unacked.iter().position(|(n, _)| *n == a.sequence) else {
                        continue;
                    };
                    if a.problem.is_some() {
                        // Refused (the server stopping, a limit): sent
                        // again, same keys, on a new stream.
                        pause().await;
                        break;
                    }
                    let (_, keys) = unacked.remove(i);
                    s.book().acked_enqueues.extend(keys);
                }
                _ => {
                    pause().await;
                    break;
                }
            }
        }
    }
}

async fn unary_worker(s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let Some(mut c) = connect(&s).await else {
            return;
        };
        while !s.stop.load(Ordering::Relaxed) {
            let req = pb::LeaseRequest {
                queue: QUEUE.into(),
                max_items: 25,
                lease: Some(workq_proto::time::duration(LEASE)),
                wait: Some(workq_proto::time::duration(Duration::from_millis(200))),
                ..Default::default()
            };
            let got = match c.lease(req).await {
                Ok(r) => r.into_inner().items,
                Err(e) if e.code() == tonic::Code::NotFound => {
                    pause().await;
                    continue;
                }
                Err(_) => break,
            };
            if got.is_empty() {
                continue;
            }
            let keys: Vec<String> = {
                let mut book = s.book();
                got.iter()
                    .map(|i| {
                        let k = key_of(&i.payload);
                        book.delivered(&k, &i.id);
                        k
                    })
                    .collect()
            };
            let req = pb::CompleteRequest {
                queue: QUEUE.into(),
                lease_tokens: got.into_iter().map(|i| i.lease_token).collect(),
                per_token_results: false,
            };
            match c.complete(req).await {
                Ok(_) => {
                    let mut book = s.book();
                    keys.iter().for_each(|k| book.completed(k));
                }
                Err(_) => break,
            }
        }
        pause().await;
    }
}

async fn stream_worker(s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let Some(mut c) = connect(&s).await else {
            return;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let first = pb::WorkRequest {
            queue: QUEUE.into(),
            lease: Some(workq_proto::time::duration(LEASE)),
            credit: 50,
            ..Default::default()
        };
        let _ = tx.send(first).await;
        let mut answers = match c
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(a) => a.into_inner(),
            Err(_) => {
                pause().await;
                continue;
            }
        };
        let mut sent: HashMap<i64, Vec<String>> = HashMap::new();
        let mut seq = 0i64;
        loop {
            let next = tokio::select! {
                m = answers.next() => m,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if s.stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            let Some(Ok(msg)) = next else { break };
            if let Some(a) = msg.answer
                && let Some(keys) = sent.remove(&a.sequence)
                && a.problem.as_ref().is_none_or(|p| p.code == 0)
            {
                let mut book = s.book();
                keys.iter().for_each(|k| book.completed(k));
            }
            if msg.items.is_empty() {
                continue;
            }
            seq += 1;
            let mut keys = Vec::new();
            {
                let mut book = s.book();
                for i in &msg.items {
                    let k = key_of(&i.payload);
                    book.delivered(&k, &i.id);
                    keys.push(k);
                }
            }
            let n = msg.items.len();
            sent.insert(seq, keys);
            let req = pb::WorkRequest {
                credit: i32::try_from(n).unwrap_or(1),
                complete_tokens: msg.items.into_iter().map(|i| i.lease_token).collect(),
                sequence: seq,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
        pause().await;
    }
}

async fn sdk_worker(s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let queue = match worker_sdk::Client::connect(&s.url).await {
            Ok(c) => match c.queue(QUEUE) {
                Ok(q) => q,
                Err(_) => return,
            },
            Err(_) => {
                pause().await;
                continue;
            }
        };
        let stop = tokio_util_token(&s);
        let opts = worker_sdk::WorkerOptions::default()
            .concurrency(8)
            .lease(LEASE)
            .poll_wait(Duration::from_millis(200))
            .handle_signals(false)
            .grace(Duration::from_millis(100))
            .shutdown_token(stop);
        let s2 = s.clone();
        let _ = queue
            .work(opts, move |job| {
                let s = s2.clone();
                async move {
                    let k = key_of(job.payload());
                    s.book().delivered(&k, &job.item().id.to_string());
                    Ok::<(), worker_sdk::WorkError>(())
                }
            })
            .await;
        pause().await;
    }
}

/// A token cancelled once the soak stops.
fn tokio_util_token(s: &Arc<Shared>) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let (t, s) = (token.clone(), s.clone());
    tokio::spawn(async move {
        while !s.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t.cancel();
    });
    token
}

/// Starts the server; waits for its address line unless `kill_within` is
/// set, in which case it is killed after that long, ready or not.
fn start(bin: &std::path::Path, dir: &std::path::Path, port: u16) -> Result<Child> {
    start_logging(bin, dir, port, false)
}

/// [`start`], with the server's info log on a pipe when `log` is set.
fn start_logging(
    bin: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    log: bool,
) -> Result<Child> {
    Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", "127.0.0.1:0", "--store", "embedded"])
        .args(["--max-attempts", "1000"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", if log { "info" } else { "error" })
        .stdout(Stdio::piped())
        .stderr(if log { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

/// Kills `child` as soon as its log says it is compacting the store;
/// whether the kill landed before it logged the end of the compaction.
fn kill_in_compaction(mut child: Child) -> Result<bool> {
    let err = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(err).lines();
    let seen = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .any(|l| l.contains("compacting the store"));
    child.kill().context("kill -9")?;
    child.wait()?;
    let finished = lines
        .map_while(std::result::Result::ok)
        .any(|l| l.contains("store compacted"));
    Ok(seen && !finished)
}

/// Waits until the server printed its address (it is serving).
fn ready(child: &mut Child) -> Result<()> {
    let out = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if !line.contains("grpc=") {
        bail!("the server did not start: {line:?}");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the soak; prints its counts and fails if any item was lost or
/// duplicated.
pub async fn soak(args: &SoakArgs, bin: &std::path::Path) -> Result<()> {
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p queue-server) or pass --server",
            bin.display()
        );
    }
    let seed = match args.seed {
        0 => fastrand::u64(..),
        n => n,
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let shared = Arc::new(Shared {
        url: format!("http://127.0.0.1:{port}"),
        book: Mutex::default(),
        stop_producing: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        next_key: AtomicU64::new(0),
    });
    eprintln!(
        "soak: {} rounds, seed {seed}, data in {}",
        args.rounds,
        dir.path().display()
    );
    let producers = [
        tokio::spawn(unary_producer(shared.clone(), args.batch)),
        tokio::spawn(stream_producer(shared.clone(), args.batch)),
    ];
    let workers = [
        tokio::spawn(unary_worker(shared.clone())),
        tokio::spawn(stream_worker(shared.clone())),
        tokio::spawn(sdk_worker(shared.clone())),
    ];
    let started = Instant::now();
    let mut startup_kills = 0;
    let (mut compaction_kills, mut compaction_landed) = (0, 0);
    for round in 0..args.rounds {
        let draw = rng.f64();
        if draw >= args.startup_kills && draw < args.startup_kills + args.compaction_kills {
            let child = start_logging(bin, dir.path(), port, true)?;
            compaction_kills += 1;
            if tokio::task::spawn_blocking(move || kill_in_compaction(child))
                .await
                .context("join")??
            {
                compaction_landed += 1;
            }
            continue;
        }
        let mut child = start(bin, dir.path(), port)?;
        if draw < args.startup_kills {
            // Killed while it opens the store and replays it.
            let ms = rng.u64(0..80);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            startup_kills += 1;
        } else {
            child = tokio::task::spawn_blocking(move || ready(&mut child).map(|()| child))
                .await
                .context("join")??;
            let ms = rng.u64(50..args.max_round_ms.max(51));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        child.kill().context("kill -9")?;
        child.wait()?;
        if (round + 1) % 10 == 0 {
            let b = shared.book();
            eprintln!(
                "round {}: {} acknowledged enqueues, {} deliveries, {} acknowledged completions",
                round + 1,
                b.acked_enqueues.len(),
                b.deliveries,
                b.completed.values().map(|&n| u64::from(n)).sum::<u64>()
            );
        }
    }
    // The last start: producers finish what they hold, workers drain.
    shared.stop_producing.store(true, Ordering::Relaxed);
    let mut child = start(bin, dir.path(), port)?;
    let mut child = tokio::task::spawn_blocking(move || ready(&mut child).map(|()| child))
        .await
        .context("join")??;
    let mut c = connect(&shared).await.context("connect")?;
    let drain_started = Instant::now();
    let last = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let producers_done = producers.iter().all(|p| p.is_finished());
        let stats = c
            .get_queue(pb::GetQueueRequest { name: QUEUE.into() })
            .await
            .ok()
            .and_then(|r| r.into_inner().queue)
            .and_then(|q| q.stats);
        if let Some(st) = &stats
            && producers_done
            && st.pending + st.delayed + st.leased == 0
        {
            break st.clone();
        }
        if drain_started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the queue did not drain in 120 s: {stats:?}; producers finished (unary, \
                 streaming): {:?}",
                producers
                    .iter()
                    .map(|p| p.is_finished())
                    .collect::<Vec<_>>()
            );
        }
    };
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers.into_iter().chain(producers) {
        let _ = w.await;
    }
    let _ = nix_term(&child);
    child.wait()?;

    let b = shared.book();
    let lost = b
        .acked_enqueues
        .iter()
        .filter(|k| !b.delivered.contains_key(*k))
        .count();
    let duplicated_enqueues = b.delivered.values().filter(|ids| ids.len() > 1).count();
    let completed_twice = b.completed.values().filter(|&&n| n > 1).count();
    let unacked_delivered = b
        .delivered
        .keys()
        .filter(|k| !b.acked_enqueues.contains(*k))
        .count();
    let acked_completions: u64 = b.completed.values().map(|&n| u64::from(n)).sum();
    println!(
        "rounds: {} ({startup_kills} killed during start-up, {compaction_kills} as the store \
         compacts of which {compaction_landed} before it finished), seed {seed}, {:.0} s",
        args.rounds,
        started.elapsed().as_secs_f64()
    );
    println!("acknowledged enqueues: {}", b.acked_enqueues.len());
    println!(
        "deliveries: {} (distinct keys {})",
        b.deliveries,
        b.delivered.len()
    );
    println!("acknowledged completions (unary and Work stream workers): {acked_completions}");
    println!("unacknowledged enqueues delivered: {unacked_delivered}");
    println!("lost (acknowledged, never delivered): {lost}");
    println!("duplicated (a key under two item ids): {duplicated_enqueues}");
    println!("completed twice (both acknowledged): {completed_twice}");
    println!(
        "acknowledged completions redelivered: {}",
        b.redelivered_after_ack
    );
    println!(
        "final counters: enqueued {} completed {} dead {}",
        last.enqueued, last.completed, last.dead
    );
    if lost + duplicated_enqueues + completed_twice > 0
        || b.redelivered_after_ack > 0
        || last.dead > 0
    {
        bail!("items were lost, duplicated or redelivered");
    }
    Ok(())
}

fn nix_term(child: &Child) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill -TERM failed"))
    }
}
