//! `workq-bench postgres`: workq's PostgreSQL store beside the PostgreSQL job
//! queues users would otherwise pick, on the same database server, in one
//! run, as ratios.
//!
//! Every system gets a fresh database per round and the same work: enqueue
//! `--items` in batches of `--batch` from `--producers` connections, then
//! take and complete them all from `--consumers` (each system in its own
//! users' way). Enqueue and processing are timed apart; "end to end" is the
//! items over both times together. Systems are interleaved within each
//! round and medians reported, with the WAL the database server wrote per
//! item during each system's run (`pg_current_wal_lsn()` before and after:
//! the whole server's, so anything else running on it counts too).
//!
//! | system | how it is driven |
//! |---|---|
//! | `raw-sql` | the ceiling: `INSERT … unnest`, a `FOR UPDATE SKIP LOCKED` lease of a batch, `DELETE` by (id, epoch) — two statements a batch, no queue semantics beyond that |
//! | `graphile-worker` | graphile-worker 0.18 (`node/graphile.mjs`): `addJobs`, a runner in batched mode (local queue of 500, batched completions) |
//! | `pg-boss` | pg-boss 12 (`node/pgboss.mjs`): `insert`, `fetch` of a batch, `complete` by ids |
//! | `workq-postgres` | queue-server `--store postgres` through the worker SDK: push batches, `complete_then_lease` loops |
//! | `workq-postgres-2` | the same with two queue-server replicas on the database, producers and consumers split over them |
//! | `workq-embedded` | the embedded store, for reference (no database involved) |
//!
//! Each run also reports where the CPU went, per item: every PostgreSQL
//! process's time (backends of closed connections included, through the
//! postmaster's count of its exited children), the queue-server replicas'
//! and the client's (the bench's own code, or the Node driver's). On two
//! shared cores the sum bounds the rate: it is what a system costs,
//! whoever takes the cores.
//!
//! `synchronous_commit` is the server's (on, by default): every system's
//! acknowledged writes are durable.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use worker_sdk::{LeaseOptions, NewItem};

use crate::server::{Server, cpu_of_all, cpu_us, own_cpu};

/// `workq-bench postgres` settings.
#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    /// A PostgreSQL URL with the right to create databases; each system and
    /// round gets a database of its own, dropped after.
    #[arg(
        long,
        env = "WQ_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    admin_url: String,
    /// Systems, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw-sql,graphile-worker,pg-boss,workq-postgres,workq-postgres-2,workq-embedded"
    )]
    systems: Vec<PgSystem>,
    /// Items per measurement.
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Items per batch (enqueue and lease).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Payload bytes per item.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Rounds; medians reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The directory of the Node drivers of graphile-worker and pg-boss
    /// (`npm ci` runs there when its node_modules is missing).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/node"))]
    node_dir: PathBuf,
}

/// A system `workq-bench postgres` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PgSystem {
    /// Hand-written SQL: the ceiling.
    RawSql,
    /// graphile-worker 0.18, batched mode.
    GraphileWorker,
    /// pg-boss 12.
    PgBoss,
    /// workq, one replica on PostgreSQL.
    WorkqPostgres,
    /// workq, two replicas on one PostgreSQL database.
    #[value(name = "workq-postgres-2")]
    WorkqPostgres2,
    /// workq on its embedded store (no database).
    WorkqEmbedded,
}

impl PgSystem {
    fn name(self) -> &'static str {
        match self {
            PgSystem::RawSql => "raw-sql",
            PgSystem::GraphileWorker => "graphile-worker",
            PgSystem::PgBoss => "pg-boss",
            PgSystem::WorkqPostgres => "workq-postgres",
            PgSystem::WorkqPostgres2 => "workq-postgres-2",
            PgSystem::WorkqEmbedded => "workq-embedded",
        }
    }
}

/// One system's times for one round.
#[derive(Debug, Clone, Copy)]
struct Timing {
    enqueue: Duration,
    process: Duration,
    /// WAL the whole database server wrote during the run (anything else
    /// running on it included).
    wal: u64,
    /// CPU time used during the run, in microseconds.
    cpu: Cpu,
}

/// Where a run's CPU time went, in microseconds: what a system costs per
/// item on two shared cores, whoever takes them.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// Every PostgreSQL process (closed connections' backends included).
    database: f64,
    /// Of which during the enqueue phase (raw SQL and workq only; the
    /// Node drivers time their phases themselves).
    database_enqueue: Option<f64>,
    /// The queue-server replicas (workq systems only).
    server: f64,
    /// The bench's own client code (or the Node driver of a peer).
    client: f64,
}

/// Runs the comparison and prints medians and ratios (markdown on stdout).
pub async fn postgres(args: &PostgresArgs, server_bin: &Path) -> Result<()> {
    let mut results: Vec<(PgSystem, Vec<Timing>)> =
        args.systems.iter().map(|s| (*s, Vec::new())).collect();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for (system, timings) in &mut results {
            let db = format!(
                "wqbench_{}_{}_{}",
                system.name().replace('-', "_"),
                round,
                std::process::id()
            );
            let url = create_database(&args.admin_url, &db).await?;
            let wal_before = wal_position(&args.admin_url).await?;
            let (db_before, own_before) = (cpu_of_all("postgres"), own_cpu());
            let timing = run(args, *system, &url, server_bin)
                .await
                .with_context(|| format!("{} round {round}", system.name()));
            let (db_after, own_after) = (cpu_of_all("postgres"), own_cpu());
            let timing = match timing {
                Ok(t) => Ok(Timing {
                    wal: wal_position(&args.admin_url)
                        .await?
                        .saturating_sub(wal_before),
                    cpu: Cpu {
                        database: db_after - db_before,
                        database_enqueue: t.cpu.database_enqueue,
                        // The servers and Node drivers are this process's
                        // children, waited for: their time is in
                        // `children`, the servers' counted apart.
                        client: (own_after.own - own_before.own)
                            + (own_after.children - own_before.children)
                            - t.cpu.server,
                        server: t.cpu.server,
                    },
                    ..t
                }),
                Err(e) => Err(e),
            };
            drop_database(&args.admin_url, &db).await?;
            let timing = timing?;
            let per_item = |us: f64| us / args.items.max(1) as f64;
            eprintln!(
                "  {:<18} enqueue {:>9.0}/s  process {:>9.0}/s  WAL {:>5} B/item  \
                 CPU µs/item: database {:.1} (enqueue {}) server {:.1} client {:.1}",
                system.name(),
                rate(args.items, timing.enqueue),
                rate(args.items, timing.process),
                timing.wal / args.items.max(1),
                per_item(timing.cpu.database),
                timing
                    .cpu
                    .database_enqueue
                    .map_or("—".into(), |us| format!("{:.1}", per_item(us))),
                per_item(timing.cpu.server),
                per_item(timing.cpu.client),
            );
            timings.push(timing);
        }
    }
    println!("{}", report(args, &results));
    Ok(())
}

fn rate(items: u64, d: Duration) -> f64 {
    items as f64 / d.as_secs_f64().max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The table of medians and the goals' ratios.
fn report(args: &PostgresArgs, results: &[(PgSystem, Vec<Timing>)]) -> String {
    let n = args.items;
    let mut out = format!(
        "{} items of {} B, batch {}, {} producers, {} consumers, median of {} rounds\n\n\
         | system | enqueue items/s | lease+complete items/s | end to end items/s | WAL bytes/item \
         | database CPU µs/item (of which enqueue) | server CPU µs/item | client CPU µs/item |\n\
         |---|---|---|---|---|---|---|---|\n",
        n, args.payload, args.batch, args.producers, args.consumers, args.rounds
    );
    let mut e2e = Vec::new();
    for (system, timings) in results {
        let enq = median(timings.iter().map(|t| rate(n, t.enqueue)).collect());
        let proc_ = median(timings.iter().map(|t| rate(n, t.process)).collect());
        let total = median(
            timings
                .iter()
                .map(|t| rate(n, t.enqueue + t.process))
                .collect(),
        );
        let wal = median(
            timings
                .iter()
                .map(|t| t.wal as f64 / n.max(1) as f64)
                .collect(),
        );
        let cpu = |part: fn(&Cpu) -> f64| {
            median(
                timings
                    .iter()
                    .map(|t| part(&t.cpu) / n.max(1) as f64)
                    .collect(),
            )
        };
        let (db, server, client) = (cpu(|c| c.database), cpu(|c| c.server), cpu(|c| c.client));
        let db_enqueue: Vec<f64> = timings
            .iter()
            .filter_map(|t| t.cpu.database_enqueue)
            .map(|us| us / n.max(1) as f64)
            .collect();
        let db_enqueue = if db_enqueue.is_empty() {
            "—".to_string()
        } else {
            format!("{:.1}", median(db_enqueue))
        };
        out += &format!(
            "| {} | {enq:.0} | {proc_:.0} | {total:.0} | {wal:.0} | {db:.1} ({}) | {server:.1} | {client:.1} |\n",
            system.name(),
            db_enqueue
        );
        e2e.push((*system, total));
    }
    let of = |s: PgSystem| e2e.iter().find(|(x, _)| *x == s).map(|(_, v)| *v);
    let mut ratios = String::new();
    if let Some(wq) = of(PgSystem::WorkqPostgres) {
        let peers = [PgSystem::GraphileWorker, PgSystem::PgBoss]
            .into_iter()
            .filter_map(of)
            .fold(0.0_f64, f64::max);
        if peers > 0.0 {
            ratios += &format!(
                "- workq-postgres ÷ the faster of graphile-worker and pg-boss: {:.2}× (goal ≥ 2)\n",
                wq / peers
            );
        }
        if let Some(raw) = of(PgSystem::RawSql) {
            ratios += &format!(
                "- workq-postgres ÷ raw SQL ceiling: {:.2}× (goal ≥ 0.7)\n",
                wq / raw
            );
        }
        if let Some(two) = of(PgSystem::WorkqPostgres2) {
            ratios += &format!(
                "- two replicas ÷ one: {:.2}× (goal ≥ 1: the database, not queue-server, limits)\n",
                two / wq
            );
        }
    }
    if !ratios.is_empty() {
        out += "\nEnd to end, as ratios in this run:\n\n";
        out += &ratios;
    }
    out
}

/// The database server's WAL position, in bytes.
async fn wal_position(admin_url: &str) -> Result<u64> {
    let client = admin(admin_url).await?;
    let row = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .context("read the WAL position")?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

async fn admin(admin_url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .with_context(|| format!("connect to PostgreSQL at {admin_url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Creates database `db` and answers its URL (the admin URL with its
/// database replaced).
async fn create_database(admin_url: &str, db: &str) -> Result<String> {
    let client = admin(admin_url).await?;
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .with_context(|| format!("create database {db}"))?;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{db}"))
}

async fn drop_database(admin_url: &str, db: &str) -> Result<()> {
    let client = admin(admin_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .with_context(|| format!("drop database {db}"))?;
    Ok(())
}

async fn run(
    args: &PostgresArgs,
    system: PgSystem,
    url: &str,
    server_bin: &Path,
) -> Result<Timing> {
    match system {
        PgSystem::RawSql => raw_sql(args, url).await,
        PgSystem::GraphileWorker => node(args, "graphile.mjs", url, &["batched"]).await,
        PgSystem::PgBoss => node(args, "pgboss.mjs", url, &[]).await,
        PgSystem::WorkqPostgres | PgSystem::WorkqPostgres2 => {
            let replicas = if system == PgSystem::WorkqPostgres2 {
                2
            } else {
                1
            };
            let servers = (0..replicas)
                .map(|_| Server::spawn(server_bin, &["--store", "postgres", "--database-url", url]))
                .collect::<Result<Vec<_>>>()?;
            let urls: Vec<String> = servers.iter().map(|s| grpc_url(&s.url)).collect();
            with_server_cpu(workq(args, &urls).await, &servers)
        }
        PgSystem::WorkqEmbedded => {
            let dir = tempfile::tempdir()?;
            let data = dir.path().to_str().context("utf-8 temp dir")?;
            let server = Server::spawn(server_bin, &["--store", "embedded", "--data-dir", data])?;
            with_server_cpu(workq(args, &[grpc_url(&server.url)]).await, &[server])
        }
    }
}

/// `timing` with the CPU time `servers` used since they started (start-up
/// and the queue's creation included: a few milliseconds).
fn with_server_cpu(timing: Result<Timing>, servers: &[Server]) -> Result<Timing> {
    let mut timing = timing?;
    timing.cpu.server = servers.iter().filter_map(|s| cpu_us(s.child.id())).sum();
    Ok(timing)
}

/// `http://host:port` (what the raw gRPC systems dial) as the SDK's URL.
fn grpc_url(http: &str) -> String {
    format!("grpc://{}", http.trim_start_matches("http://"))
}

/// The ceiling: what two hand-written statements a batch can do.
async fn raw_sql(args: &PostgresArgs, url: &str) -> Result<Timing> {
    let setup = admin(url).await?;
    setup
        .batch_execute(
            "CREATE TABLE jobs (
                 id bigserial PRIMARY KEY,
                 state \"char\" NOT NULL DEFAULT 'p',
                 epoch integer NOT NULL DEFAULT 0,
                 due timestamptz,
                 payload bytea NOT NULL);
             CREATE INDEX jobs_pending ON jobs (id) WHERE state = 'p';",
        )
        .await?;
    let payload = vec![b'x'; args.payload];
    let per_producer = split(args.items, args.producers);
    let db_start = cpu_of_all("postgres");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for share in per_producer {
        let client = admin(url).await?;
        let (batch, payload) = (args.batch, payload.clone());
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO jobs (payload) SELECT unnest($1::bytea[])")
                .await?;
            let mut left = share;
            while left > 0 {
                let n = left.min(batch as u64) as usize;
                let items: Vec<&[u8]> = vec![payload.as_slice(); n];
                client.execute(&insert, &[&items]).await?;
                left -= n as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue = start.elapsed();
    let database_enqueue = cpu_of_all("postgres") - db_start;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let client = admin(url).await?;
        let (batch, total, done) = (args.batch as i64, args.items, done.clone());
        tasks.push(tokio::spawn(async move {
            let lease = client
                .prepare(
                    "WITH c AS (SELECT id FROM jobs WHERE state = 'p' ORDER BY id LIMIT $1
                                FOR UPDATE SKIP LOCKED)
                     UPDATE jobs j SET state = 'l', epoch = j.epoch + 1,
                                       due = now() + interval '30 seconds'
                     FROM c WHERE j.id = c.id RETURNING j.id, j.epoch, j.payload",
                )
                .await?;
            let complete = client
                .prepare(
                    "DELETE FROM jobs j USING unnest($1::bigint[], $2::integer[]) AS d(id, epoch)
                     WHERE j.id = d.id AND j.epoch = d.epoch",
                )
                .await?;
            while done.load(Ordering::Relaxed) < total {
                let rows = client.query(&lease, &[&batch]).await?;
                if rows.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let epochs: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
                let n = client.execute(&complete, &[&ids, &epochs]).await?;
                done.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Timing {
        enqueue,
        process: start.elapsed(),
        wal: 0,
        cpu: Cpu {
            database_enqueue: Some(database_enqueue),
            ..Cpu::default()
        },
    })
}

/// `total` split over `parts` as evenly as can be.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// A Node driver of a peer, which prints `{"enqueue_s":…,"process_s":…}`.
async fn node(args: &PostgresArgs, script: &str, url: &str, extra: &[&str]) -> Result<Timing> {
    let dir = &args.node_dir;
    if !dir.join("node_modules").exists() {
        eprintln!("  npm ci in {}", dir.display());
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--silent"])
            .current_dir(dir)
            .status()
            .await
            .context("run npm (Node.js and npm drive graphile-worker and pg-boss)")?;
        if !status.success() {
            bail!("npm ci in {} failed", dir.display());
        }
    }
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args([
            url,
            &args.items.to_string(),
            &args.batch.to_string(),
            &args.consumers.to_string(),
            &args.payload.to_string(),
        ])
        .args(extra)
        .current_dir(dir)
        .output()
        .await
        .with_context(|| format!("run node {script}"))?;
    if !out.status.success() {
        bail!(
            "node {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.lines().last().context("node printed nothing")?)
            .with_context(|| format!("node {script} printed {line:?}"))?;
    let secs = |k: &str| {
        v[k].as_f64()
            .map(Duration::from_secs_f64)
            .with_context(|| format!("no {k} in {v}"))
    };
    Ok(Timing {
        enqueue: secs("enqueue_s")?,
        process: secs("process_s")?,
        wal: 0,
        cpu: Cpu::default(),
    })
}

/// workq through the worker SDK, producers and consumers spread over
/// `urls` (replicas of one queue service).
async fn workq(args: &PostgresArgs, urls: &[String]) -> Result<Timing> {
    let name = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let first = worker_sdk::connect(&urls[0]).await?;
    first
        .queue(&name)?
        .create(&worker_sdk::QueueSettings::default())
        .await?;
    let payload = vec![b'x'; args.payload];
    let db_start = cpu_of_all("postgres");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, share) in split(args.items, args.producers).into_iter().enumerate() {
        let queue = worker_sdk::connect(&urls[i % urls.len()])
            .await?
            .queue(&name)?;
        let (batch, payload) = (args.batch, payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(batch as u64) as usize;
                queue
                    .push((0..n).map(|_| NewItem::new(payload.clone())))
                    .await?;
                left -= n as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue = start.elapsed();
    let database_enqueue = cpu_of_all("postgres") - db_start;
    first.queue(&name)?.seal().await?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.consumers {
        let queue = worker_sdk::connect(&urls[i % urls.len()])
            .await?
            .queue(&name)?;
        let (batch, done) = (args.batch as u32, done.clone());
        tasks.push(tokio::spawn(async move {
            let opts = LeaseOptions {
                max_items: batch,
                wait: Duration::from_millis(200),
                ..LeaseOptions::default()
            };
            let mut held = Vec::new();
            loop {
                let leased = queue.complete_then_lease(&held, &opts).await?;
                done.fetch_add(held.len() as u64, Ordering::Relaxed);
                held = leased.items.into_iter().map(|i| i.token).collect();
                if held.is_empty() && leased.drained {
                    break;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let process = start.elapsed();
    let completed = done.load(Ordering::Relaxed);
    if completed != args.items {
        bail!("completed {completed} of {} items", args.items);
    }
    Ok(Timing {
        enqueue,
        process,
        wal: 0,
        cpu: Cpu {
            database_enqueue: Some(database_enqueue),
            ..Cpu::default()
        },
    })
}
