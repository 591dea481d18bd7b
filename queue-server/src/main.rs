//! `queue-server`: the workq queue service.

/// mimalloc: the server allocates per item and per call from many threads,
/// where glibc's malloc showed up in profiles (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use queue_server::settings::{Limits, QueueSettings};
use queue_server::{ServerConfig, StoreKind};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use workq_proto::defaults;

/// The workq queue service: queues with leases and completion tracking, over gRPC.
///
/// Prints one line `listening grpc=ADDR http=ADDR` on standard output once it
/// serves. SIGTERM or SIGINT: stop taking calls, finish those in flight, flush
/// the store, exit 0. Logs go to standard error; set RUST_LOG (e.g. `debug`).
#[derive(Debug, Parser)]
#[command(name = "queue-server", version)]
struct Args {
    /// gRPC address to listen on (port 0: any free port).
    #[arg(long, env = "WQ_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// HTTP address for /healthz and /metrics (Prometheus); "off" for none.
    #[arg(long, env = "WQ_HTTP_LISTEN", default_value = "127.0.0.1:9464")]
    http_listen: String,
    /// Where queues are kept: embedded (durable, in --data-dir) or memory.
    #[arg(
        long,
        env = "WQ_STORE",
        default_value = "embedded",
        value_parser = PossibleValuesParser::new(StoreKind::NAMES).try_map(|s| s.parse::<StoreKind>())
    )]
    store: StoreKind,
    /// Directory of the embedded store (created if missing; one server at a time).
    #[arg(long, env = "WQ_DATA_DIR", default_value = "./workq-data")]
    data_dir: PathBuf,
    /// Largest item in bytes: payload, attribute keys and values and
    /// idempotency key together.
    #[arg(long, env = "WQ_MAX_PAYLOAD_BYTES", default_value_t = Limits::default().max_payload_bytes)]
    max_payload_bytes: usize,
    /// Most items in one call.
    #[arg(long, env = "WQ_MAX_BATCH", default_value_t = Limits::default().max_batch)]
    max_batch: usize,
    /// Lease of queues created without their own (e.g. 30s, 5m).
    #[arg(
        long,
        env = "WQ_DEFAULT_LEASE",
        default_value_t = defaults::LEASE.into()
    )]
    default_lease: humantime::Duration,
    /// Attempts before an item goes dead, for queues created without their own.
    #[arg(long, env = "WQ_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    max_attempts: u32,
    /// Threads serving calls (0: one per CPU core).
    #[arg(long, env = "WQ_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// How long the idempotency key of a completed item is remembered.
    #[arg(long, env = "WQ_IDEMPOTENCY_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    idempotency_window: Duration,
    /// Largest gRPC message in bytes, in or out. Lease, Work and ListDead
    /// answers are filled up to a little under it (items that do not fit stay
    /// pending); the largest item (--max-payload-bytes) must fit, checked at
    /// start. Clients must accept messages this large.
    #[arg(long, env = "WQ_MAX_MESSAGE_BYTES", default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Most credit a Work stream may have open (granted, not yet used); a
    /// larger grant is clamped, and the answer to it says so.
    #[arg(long, env = "WQ_MAX_WORK_CREDIT", default_value_t = Limits::default().max_work_credit)]
    max_work_credit: u64,
    /// Most queues at once; creating one more is refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "WQ_MAX_QUEUES", default_value_t = Limits::default().max_queues)]
    max_queues: usize,
    /// The embedded database's page cache in bytes (items are in memory
    /// anyway; the cache only speeds up start-up and compaction).
    #[arg(long, env = "WQ_EMBEDDED_CACHE_BYTES", default_value_t = queue_server::store::DEFAULT_CACHE_BYTES)]
    embedded_cache_bytes: usize,
    /// Most bytes of items held, all queues together (payload, attributes,
    /// key, plus 200 bytes an item); an enqueue beyond it is refused
    /// (RESOURCE_EXHAUSTED). 0: half the container's memory limit (cgroup)
    /// when there is one, else unbounded.
    #[arg(long, env = "WQ_MAX_QUEUED_BYTES", default_value_t = 0)]
    max_queued_bytes: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let worker_threads = args.worker_threads;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let http_listen = match args.http_listen.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--http-listen {s:?}: expected HOST:PORT or \"off\""))?,
        ),
    };
    let config = ServerConfig {
        listen: args.listen,
        http_listen,
        store: args.store,
        data_dir: args.data_dir,
        embedded_cache_bytes: args.embedded_cache_bytes,
        limits: Limits {
            max_payload_bytes: args.max_payload_bytes,
            max_batch: args.max_batch.max(1),
            idempotency_window: args.idempotency_window,
            max_message_bytes: args.max_message_bytes,
            max_work_credit: args.max_work_credit,
            max_queues: args.max_queues,
            max_queued_bytes: match args.max_queued_bytes {
                0 => queue_server::settings::derived_queued_bytes().unwrap_or(u64::MAX),
                n => n,
            },
            ..Limits::default()
        },
        defaults: QueueSettings {
            default_lease: args.default_lease.into(),
            max_attempts: args.max_attempts.max(1),
            ..QueueSettings::default()
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        runtime.worker_threads(worker_threads);
    }
    runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(config))
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let server = queue_server::start(config).await?;
    let http = server
        .http_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let mut out = std::io::stdout();
    writeln!(out, "listening grpc={} http={http}", server.grpc_addr())?;
    out.flush()?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    server.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
