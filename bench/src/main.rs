//! `workq-bench`: the same workload against workq (memory and embedded
//! stores), Redis with the tutorial's rediswq protocol, RabbitMQ with
//! persistent messages and manual acks, and NATS JetStream with a work-queue
//! stream — back to back, interleaved over several rounds, reporting medians.
//!
//! Run `bench/compare.sh` (it builds in release and writes
//! `docs/BENCHMARKS.md`'s comparison section from the JSON this prints).

mod postgres;
mod report;
mod resources;
mod scaling;
mod secure;
mod server;
mod soak;
mod systems;

/// mimalloc for the client too: glibc's malloc was a tenth of the bench
/// client's CPU (every system's client allocates per item), time the client
/// took from the servers on this two-core machine.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use server::{Memory, Server, pid_of};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use systems::{System, SystemName};

/// Side-by-side queue benchmarks: workq, Redis (rediswq), RabbitMQ, NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "workq-bench", version)]
struct Args {
    /// A tool instead of the comparison (none: the comparison).
    #[command(subcommand)]
    command: Option<Tool>,
    /// Systems to run, comma separated.
    #[arg(
        long,
        value_enum,
        default_value = "workq-memory,workq-embedded,redis,amqp,nats",
        value_delimiter = ','
    )]
    systems: Vec<SystemName>,
    /// Items per throughput measurement.
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Payload bytes per item.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Items per call where the system has batches (workq, RabbitMQ publish/prefetch, JetStream).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Rounds; systems are interleaved in each round, and medians reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Enqueue-to-lease latency samples per round (one item in flight, consumers waiting).
    #[arg(long, default_value_t = 2000)]
    latency_samples: usize,
    /// Items queued for the memory-per-item measurement (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    memory_items: u64,
    /// Consumer counts for the end-to-end sweep, comma separated (empty: skip).
    #[arg(long, default_value = "1,4,16,64", value_parser = parse_counts)]
    sweep: Counts,
    /// The queue-server binary (default: next to this one; for `soak`, the
    /// target directory's release build first).
    #[arg(long, global = true)]
    server: Option<PathBuf>,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// NATS address.
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
    /// Instead of the comparison: scaling of each system — lease+complete
    /// rate at these queue depths (comma separated)...
    #[arg(long, value_delimiter = ',')]
    scale_depths: Vec<u64>,
    /// ... end to end with this many waiting consumers...
    #[arg(long, value_delimiter = ',')]
    scale_consumers: Vec<usize>,
    /// ... and end to end spread over this many queues.
    #[arg(long, value_delimiter = ',')]
    scale_queues: Vec<usize>,
    /// How workq is driven: `sdk` (the worker SDK's loop and producer, as
    /// users run it), or by hand: `stream` (EnqueueStream and Work, the
    /// streaming forms), or unary calls with completions sent in the
    /// `background` as the SDK's unary loop does, `with-lease` (Lease's
    /// complete_tokens), or `separate` (Lease, then Complete).
    #[arg(long, value_enum, default_value_t = systems::AckMode::Sdk)]
    workq_acks: systems::AckMode,
    /// Also write the table of medians and ratios (markdown) here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write the chart of end-to-end items/s against consumers (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// A list of counts; empty when the text is.
#[derive(Debug, Clone)]
struct Counts(Vec<usize>);

fn parse_counts(s: &str) -> std::result::Result<Counts, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse().map_err(|e| format!("{c:?}: {e}")))
        .collect::<std::result::Result<_, _>>()
        .map(Counts)
}

/// Tools other than the comparison.
#[derive(Debug, clap::Subcommand)]
enum Tool {
    /// kill -9 the server at random moments under load, restart it on the
    /// same directory, and count lost and duplicated items (see
    /// docs/RELIABILITY.md). Uses `--server` (default: next to this binary).
    Soak(soak::SoakArgs),
    /// Resident memory with payload queued (memory and embedded stores) and
    /// the server's CPU with its descriptor limit reached (see
    /// docs/RELIABILITY.md).
    Resources(resources::ResourcesArgs),
    /// workq's PostgreSQL store beside graphile-worker, pg-boss and a raw
    /// SQL ceiling on the same database server, as ratios (see
    /// docs/BENCHMARKS.md). Needs Node.js for the peers.
    Postgres(postgres::PostgresArgs),
    /// Throughput with TLS and/or a bearer token against plaintext (see
    /// docs/BENCHMARKS.md, "TLS and authentication").
    Secure(secure::SecureArgs),
}

fn payload(size: usize, i: u64) -> Vec<u8> {
    let mut p = format!("{i:016}").into_bytes();
    p.resize(size.max(16), b'x');
    p
}

async fn produce(
    sys: &System,
    queue: &str,
    items: u64,
    batch: usize,
    producers: usize,
    size: usize,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let mut c = sys.connect(queue).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch as u64, Ordering::Relaxed);
                if start >= items {
                    return Ok::<(), anyhow::Error>(());
                }
                let end = (start + batch as u64).min(items);
                c.enqueue((start..end).map(|i| payload(size, i)).collect())
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    // workq: no more items will come; consumers waiting on an empty queue
    // answer at once once the last item is completed.
    sys.connect(queue).await?.seal().await?;
    Ok(())
}

/// Consumes `items` with `consumers` connections; returns once every item
/// was leased and completed. Consumers still parked in a lease call then
/// (nothing left for them) are dropped rather than waited for, so no system
/// pays for its last consumers' wait.
async fn consume(
    sys: &System,
    queue: &str,
    items: u64,
    batch: usize,
    consumers: usize,
    wait: Duration,
) -> Result<()> {
    if let System::Sdk(url) = sys {
        return systems::sdk::consume(url, queue, items, batch, consumers).await;
    }
    let conns = connect_all(sys, queue, consumers).await?;
    consume_with(conns, items, batch, wait).await
}

/// `n` connections to `queue`.
async fn connect_all(sys: &System, queue: &str, n: usize) -> Result<Vec<systems::Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(sys.connect(queue).await?);
    }
    Ok(conns)
}

/// [`consume`] over connections made beforehand.
async fn consume_with(
    conns: Vec<systems::Conn>,
    items: u64,
    batch: usize,
    wait: Duration,
) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    // Consumers holding leases they have not completed yet.
    let holding = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in conns {
        let (done, holding, progress) = (done.clone(), holding.clone(), progress.clone());
        tasks.spawn(async move {
            let mut held = false;
            let mut update = |c: &systems::Conn| {
                if c.holds() != held {
                    held = c.holds();
                    if held {
                        holding.fetch_add(1, Ordering::SeqCst);
                    } else {
                        holding.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            };
            while done.load(Ordering::SeqCst) < items {
                let (got, _) = c.take(batch, wait).await?;
                update(&c);
                done.fetch_add(got.len() as u64, Ordering::SeqCst);
                progress.notify_one();
            }
            c.finish().await?;
            update(&c);
            progress.notify_one();
            Ok::<(), anyhow::Error>(())
        });
    }
    loop {
        let notified = progress.notified();
        if done.load(Ordering::SeqCst) >= items && holding.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::select! {
            () = notified => {}
            joined = tasks.join_next() => match joined {
                Some(r) => r??,
                None => break,
            },
        }
    }
    tasks.abort_all();
    Ok(())
}

async fn seconds(f: impl std::future::Future<Output = Result<()>>) -> Result<f64> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed().as_secs_f64())
}

/// Now, in ns since the Unix epoch.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Enqueue-to-lease latency: consumers wait; one item at a time is enqueued
/// with its send time and the next goes once it was received.
async fn latency(sys: &System, queue: &str, samples: usize, consumers: usize) -> Result<Vec<f64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let mut c = sys.connect(queue).await?;
        let tx = tx.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (items, leased_at) = c.take(1, Duration::from_secs(1)).await?;
                for p in items {
                    let sent: u64 = std::str::from_utf8(&p[..20])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let _ = tx.send((leased_at.saturating_sub(sent)) as f64 / 1000.0);
                }
            }
            c.finish().await?;
            Ok::<(), anyhow::Error>(())
        }));
    }
    // Let the consumers reach their waiting call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut producer = sys.connect(queue).await?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut p = format!("{:020}", now_ns()).into_bytes();
        p.resize(64, b'x');
        producer.enqueue(vec![p]).await?;
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(us)) => out.push(us),
            _ => anyhow::bail!("latency: an item was not received within 5 s"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 0.5)
}

#[derive(Debug, Serialize, Clone)]
struct Measure {
    system: String,
    round: usize,
    measure: String,
    value: f64,
    unit: String,
}

struct Target {
    name: String,
    system: System,
    memory: Memory,
    /// The server process, for its CPU time.
    cpu_pid: Option<u32>,
    _server: Option<Server>,
}

async fn target(args: &Args, which: SystemName, server_bin: &std::path::Path) -> Result<Target> {
    let name = which.as_str().to_string();
    Ok(match which {
        SystemName::WorkqMemory | SystemName::WorkqEmbedded => {
            let store = name.trim_start_matches("workq-");
            let server = Server::start(server_bin, store)?;
            let system = match args.workq_acks {
                systems::AckMode::Sdk => System::Sdk(server.url.replacen("http://", "grpc://", 1)),
                mode => System::Workq(server.url.clone(), mode),
            };
            Target {
                system,
                memory: Memory::Pid(server.child.id()),
                cpu_pid: Some(server.child.id()),
                name,
                _server: Some(server),
            }
        }
        SystemName::Redis | SystemName::RedisSdk => Target {
            system: if which == SystemName::Redis {
                System::Redis(args.redis.clone())
            } else {
                System::Sdk(args.redis.clone())
            },
            name,
            memory: Memory::RedisInfo(args.redis.clone()),
            cpu_pid: pid_of("redis-server"),
            _server: None,
        },
        SystemName::Amqp => Target {
            name,
            system: System::Amqp(args.amqp.clone()),
            memory: pid_of("beam.smp").map_or(Memory::None, Memory::Pid),
            cpu_pid: pid_of("beam.smp"),
            _server: None,
        },
        SystemName::Nats => Target {
            name,
            system: System::Nats(args.nats.clone()),
            memory: pid_of("nats-server").map_or(Memory::None, Memory::Pid),
            cpu_pid: pid_of("nats-server"),
            _server: None,
        },
    })
}

async fn run_round(args: &Args, t: &Target, round: usize, out: &mut Vec<Measure>) -> Result<()> {
    let q = format!("bench-{}-{round}-{}", t.name, std::process::id());
    let sys = &t.system;
    let mut push = |measure: &str, value: f64, unit: &str| {
        // Two decimals below 10 (CPU µs per item, read from /proc in 10 ms
        // ticks over a second or more, is good to about 1 %).
        let digits = if value.abs() < 10.0 { 2 } else { 1 };
        eprintln!("  {:<15} {measure:<22} {value:>12.digits$} {unit}", t.name);
        out.push(Measure {
            system: t.name.clone(),
            round,
            measure: measure.into(),
            value,
            unit: unit.into(),
        });
    };
    sys.reset(&q).await?;
    let s = seconds(produce(
        sys,
        &q,
        args.items,
        args.batch,
        args.producers,
        args.payload,
    ))
    .await?;
    push("enqueue", args.items as f64 / s, "items/s");
    let s = seconds(consume(
        sys,
        &q,
        args.items,
        args.batch,
        args.consumers,
        Duration::ZERO,
    ))
    .await?;
    push("lease+complete", args.items as f64 / s, "items/s");
    sys.reset(&q).await?;
    let cpu_before = t.cpu_pid.and_then(server::cpu_us);
    let client_before = server::own_cpu().own;
    let s = seconds(async {
        // try_join: a failed producer must not leave its consumer waiting forever.
        tokio::try_join!(
            produce(
                sys,
                &q,
                args.items,
                args.batch,
                args.producers,
                args.payload
            ),
            consume(
                sys,
                &q,
                args.items,
                args.batch,
                args.consumers,
                Duration::from_millis(100)
            )
        )
        .map(|_| ())
    })
    .await?;
    push("end to end", args.items as f64 / s, "items/s");
    // The server's CPU per item: the figure that does not depend on how much
    // of the machine the client takes.
    if let (Some(before), Some(after)) = (cpu_before, t.cpu_pid.and_then(server::cpu_us)) {
        push(
            "server CPU e2e",
            (after - before) / args.items as f64,
            "µs/item",
        );
    }
    // And the client's (this process: producers and consumers): on shared
    // cores the two together bound the end-to-end rate.
    push(
        "client CPU e2e",
        (server::own_cpu().own - client_before) / args.items as f64,
        "µs/item",
    );
    sys.reset(&q).await?;
    let mut lat = latency(sys, &q, args.latency_samples, args.consumers).await?;
    lat.sort_by(f64::total_cmp);
    push("latency p50", percentile(&lat, 0.5), "µs");
    push("latency p99", percentile(&lat, 0.99), "µs");
    push("latency p99.9", percentile(&lat, 0.999), "µs");
    sys.drop_queue(&q).await?;
    Ok(())
}

async fn memory(args: &Args, t: &Target, out: &mut Vec<Measure>) -> Result<()> {
    if args.memory_items == 0 {
        return Ok(());
    }
    let q = format!("bench-mem-{}-{}", t.name, std::process::id());
    t.system.reset(&q).await?;
    let Some(before) = t.memory.bytes().await else {
        eprintln!("  {}: server memory not readable; skipped", t.name);
        return Ok(());
    };
    produce(
        &t.system,
        &q,
        args.memory_items,
        1000.min(args.batch.max(100)),
        args.producers,
        16,
    )
    .await?;
    // Let the allocator hand back what growth freed (the item table's old
    // arrays) before reading; what stays is what the items cost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = t.memory.bytes().await.unwrap_or(before);
    let per_item = after.saturating_sub(before) as f64 / args.memory_items as f64;
    eprintln!(
        "  {:<15} memory per item        {per_item:>12.1} bytes (server {:.0} MiB)",
        t.name,
        after as f64 / 1048576.0
    );
    out.push(Measure {
        system: t.name.clone(),
        round: 0,
        measure: "memory per queued item".into(),
        value: per_item,
        unit: "bytes".into(),
    });
    out.push(Measure {
        system: t.name.clone(),
        round: 0,
        measure: "server memory at 1M items".into(),
        value: after as f64 / 1048576.0,
        unit: "MiB".into(),
    });
    t.system.drop_queue(&q).await?;
    Ok(())
}

async fn sweep(args: &Args, t: &Target, out: &mut Vec<Measure>) -> Result<()> {
    for &consumers in &args.sweep.0 {
        let q = format!("bench-sweep-{}-{consumers}-{}", t.name, std::process::id());
        t.system.reset(&q).await?;
        let items = args.items / 2;
        let s = seconds(async {
            // try_join: a failed producer must not leave its consumer waiting forever.
            tokio::try_join!(
                produce(
                    &t.system,
                    &q,
                    items,
                    args.batch,
                    args.producers,
                    args.payload
                ),
                consume(
                    &t.system,
                    &q,
                    items,
                    args.batch,
                    consumers,
                    Duration::from_millis(100)
                )
            )
            .map(|_| ())
        })
        .await?;
        eprintln!(
            "  {:<15} e2e, {consumers:>4} consumers   {:>12.1} items/s",
            t.name,
            items as f64 / s
        );
        out.push(Measure {
            system: t.name.clone(),
            round: consumers,
            measure: "sweep end to end".into(),
            value: items as f64 / s,
            unit: "items/s".into(),
        });
        t.system.drop_queue(&q).await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let server_bin = match &args.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("queue-server"),
    };
    // One client thread: on a 2-core machine a second mostly adds context switches.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some(Tool::Soak(soak)) = &args.command {
            let release = server_bin
                .parent()
                .and_then(|d| d.parent())
                .map(|t| t.join("release").join("queue-server"));
            let bin = match release {
                Some(r) if args.server.is_none() && r.exists() => r,
                _ => server_bin,
            };
            return soak::soak(soak, &bin).await;
        }
        if let Some(Tool::Secure(s)) = &args.command {
            return secure::secure(s, &server_bin).await;
        }
        if let Some(Tool::Resources(r)) = &args.command {
            return resources::resources(r, &server_bin).await;
        }
        if let Some(Tool::Postgres(p)) = &args.command {
            return postgres::postgres(p, &server_bin).await;
        }
        let mut targets = Vec::new();
        for which in &args.systems {
            targets.push(target(&args, *which, &server_bin).await?);
        }
        if !(args.scale_depths.is_empty() && args.scale_consumers.is_empty() && args.scale_queues.is_empty()) {
            return scaling::scaling(&args, &targets).await;
        }
        let mut out = Vec::new();
        for round in 0..args.rounds {
            eprintln!("round {}/{}", round + 1, args.rounds);
            for t in &targets {
                run_round(&args, t, round, &mut out).await.with_context(|| format!("{} round {round}", t.name))?;
            }
        }
        eprintln!("memory per queued item ({} items of 16 bytes)", args.memory_items);
        for t in &targets {
            memory(&args, t, &mut out).await.with_context(|| format!("{} memory", t.name))?;
        }
        if !args.sweep.0.is_empty() {
            eprintln!("end to end against consumer count");
            for t in &targets {
                sweep(&args, t, &mut out).await.with_context(|| format!("{} sweep", t.name))?;
            }
        }
        // Medians per (system, measure).
        let mut groups: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
        for m in out.iter().filter(|m| m.measure != "sweep end to end") {
            groups
                .entry((m.measure.clone(), m.system.clone(), m.unit.clone()))
                .or_default()
                .push(m.value);
        }
        let mut medians = Vec::new();
        let mut json = Vec::new();
        for ((measure, system, unit), mut v) in groups {
            let value = median(&mut v);
            json.push(serde_json::json!({"measure": measure, "system": system, "unit": unit, "median": value, "samples": v}));
            medians.push(report::Median { measure, system, unit, value });
        }
        let points: Vec<report::Point> = out
            .iter()
            .filter(|m| m.measure == "sweep end to end")
            .map(|m| report::Point { system: m.system.clone(), consumers: m.round, items_per_s: m.value })
            .collect();
        if let Some(path) = &args.markdown {
            std::fs::write(path, report::markdown(&args.systems.iter().map(|s| s.as_str().to_string()).collect::<Vec<_>>(), &medians))
                .with_context(|| format!("write {}", path.display()))?;
        }
        if let Some(path) = &args.svg {
            std::fs::write(path, report::svg(&points)).with_context(|| format!("write {}", path.display()))?;
        }
        let sweep: Vec<&Measure> = out.iter().filter(|m| m.measure == "sweep end to end").collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "settings": {"items": args.items, "payload": args.payload, "batch": args.batch, "producers": args.producers,
                             "consumers": args.consumers, "rounds": args.rounds, "latency_samples": args.latency_samples,
                             "memory_items": args.memory_items},
                "medians": json,
                "sweep": sweep,
            }))?
        );
        Ok(())
    })
}
