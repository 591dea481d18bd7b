//! `queue-server`: the workq queue service.

/// mimalloc: the server allocates per item and per call from many threads,
/// where glibc's malloc showed up in profiles (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use queue_server::server::{Connections, DEFAULT_FAIL_EXIT_GRACE};
use queue_server::settings::{Limits, QueueSettings};
use queue_server::{ServerConfig, StoreKind};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use workq_proto::defaults;

/// The workq queue service: queues with leases and completion tracking, over gRPC.
///
/// The gRPC port also serves health, reflection (v1 and v1alpha) and KEDA's
/// external scaler (docs/keda.md); the HTTP port a web dashboard at `/`.
///
/// Prints one line `listening grpc=ADDR http=ADDR` on standard output once it
/// serves. SIGTERM or SIGINT: stop taking calls, finish those in flight, flush
/// the store, exit 0. If the store fails (a full or broken disk), it reports
/// NOT_SERVING at once, answers every call UNAVAILABLE, and exits 1 after
/// --fail-exit-grace, to be restarted on what is durable; it exits 1 too if
/// its gRPC or HTTP server ends. With --store postgres it does not exit when
/// the database is away: calls answer UNAVAILABLE and health says NOT_SERVING
/// until it is back. Logs go to standard error; set RUST_LOG
/// (e.g. `debug`).
#[derive(Debug, Parser)]
#[command(name = "queue-server", version)]
struct Args {
    /// gRPC address to listen on (port 0: any free port).
    #[arg(long, env = "WQ_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// HTTP address for /healthz, /metrics (Prometheus) and the dashboard (/,
    /// /api/); "off" for none.
    #[arg(long, env = "WQ_HTTP_LISTEN", default_value = "127.0.0.1:9464")]
    http_listen: String,
    /// Where queues are kept: embedded (durable, in --data-dir), memory, or
    /// postgres (a PostgreSQL database that any number of replicas share;
    /// --database-url).
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
    /// The postgres store's database: postgres://USER@HOST:PORT/DATABASE
    /// (keep the password out of it: --database-password-file or PGPASSWORD).
    /// TLS as libpq has it: ?sslmode=verify-full&sslrootcert=CA.pem (also
    /// sslcert, sslkey; or PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY);
    /// unset: no TLS. The schema is created and migrated at start.
    #[arg(long, env = "WQ_DATABASE_URL", required_if_eq("store", "postgres"))]
    database_url: Option<String>,
    /// A file holding the database password (e.g. a mounted Secret).
    #[arg(long, env = "WQ_DATABASE_PASSWORD_FILE")]
    database_password_file: Option<PathBuf>,
    /// Most connections the postgres store opens (plus one for LISTEN).
    #[arg(long, env = "WQ_DATABASE_POOL", default_value_t = queue_server::postgres::PgConfig::default().pool)]
    database_pool: usize,
    /// Most statements of one kind the postgres store runs on one queue at
    /// once (per replica); concurrent calls beyond them are grouped into
    /// one statement each. About the database server's cores: fewer groups
    /// more (fewer commits for many small calls), more keeps more cores busy.
    #[arg(long, env = "WQ_DATABASE_STATEMENTS_PER_QUEUE", default_value_t = queue_server::postgres::PgConfig::default().statements_per_queue)]
    database_statements_per_queue: usize,
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
    /// Most finished leases and enqueue request ids remembered for
    /// idempotent retries, all queues together (about 80 bytes each; a
    /// remembered enqueue counts 1 plus 1 per item); the oldest of a queue
    /// is forgotten first.
    #[arg(long, env = "WQ_MAX_FINISHED_TOKENS", default_value_t = Limits::default().max_finished_tokens)]
    max_finished_tokens: u64,
    /// Largest page of ListQueues and ListDead.
    #[arg(long, env = "WQ_MAX_PAGE_SIZE", default_value_t = Limits::default().max_page_size)]
    max_page_size: usize,
    /// The embedded database's page cache in bytes (items are in memory
    /// anyway; the cache only speeds up start-up and compaction). 0: 1/64 of
    /// the container's memory limit (cgroup), within 8 MiB and 256 MiB, or
    /// 16 MiB without a limit.
    #[arg(long, env = "WQ_EMBEDDED_CACHE_BYTES", default_value_t = 0)]
    embedded_cache_bytes: usize,
    /// Most bytes of items held, all queues together (payload, attributes,
    /// key, plus 200 bytes an item); an enqueue beyond it is refused
    /// (RESOURCE_EXHAUSTED). 0: half the container's memory limit (cgroup)
    /// when there is one, else unbounded; with --store postgres, 0 is
    /// unbounded (its items are in the database) and a limit counts every
    /// replica's items (docs/STORE.md).
    #[arg(long, env = "WQ_MAX_QUEUED_BYTES", default_value_t = 0)]
    max_queued_bytes: u64,
    /// After the store fails: how long to keep answering NOT_SERVING and
    /// UNAVAILABLE before exiting 1 (so probes and clients see why).
    #[arg(long, env = "WQ_FAIL_EXIT_GRACE", default_value_t = DEFAULT_FAIL_EXIT_GRACE.into())]
    fail_exit_grace: humantime::Duration,
    /// A connection that has not sent the HTTP/2 preface by then is closed.
    #[arg(long, env = "WQ_HANDSHAKE_TIMEOUT", default_value_t = Connections::default().handshake_timeout.into())]
    handshake_timeout: humantime::Duration,
    /// How often an HTTP/2 PING is sent on each connection.
    #[arg(long, env = "WQ_KEEPALIVE_INTERVAL", default_value_t = Connections::default().keepalive_interval.into())]
    keepalive_interval: humantime::Duration,
    /// A connection whose PING is not answered by then is closed.
    #[arg(long, env = "WQ_KEEPALIVE_TIMEOUT", default_value_t = Connections::default().keepalive_timeout.into())]
    keepalive_timeout: humantime::Duration,
    /// Most concurrent calls on one connection (more wait in the client).
    #[arg(long, env = "WQ_MAX_STREAMS_PER_CONNECTION", default_value_t = Connections::default().max_concurrent_streams)]
    max_streams_per_connection: u32,
    /// A connection with no open call for this long is closed (0: never).
    #[arg(long, env = "WQ_IDLE_TIMEOUT", default_value_t = Connections::default().idle_timeout.into())]
    idle_timeout: humantime::Duration,
    /// Turns authentication on: the grants file (YAML; docs/SECURITY.md):
    /// bearer tokens (kept as SHA-256 hashes) and the grants of
    /// ServiceAccounts and client certificates. Re-read when it changes.
    #[arg(long, env = "WQ_AUTH_TOKENS_FILE")]
    auth_tokens_file: Option<PathBuf>,
    /// Turns Kubernetes ServiceAccount tokens on: the cluster's signing keys
    /// as a JWKS document (the API server's /openid/v1/jwks). Re-read when it
    /// changes.
    #[arg(long, env = "WQ_AUTH_JWKS_FILE", conflicts_with = "auth_jwks_url")]
    auth_jwks_file: Option<PathBuf>,
    /// Turns Kubernetes ServiceAccount tokens on, their signing keys fetched
    /// from this JWKS URL (https://; http:// only to a loopback address) at
    /// start, every --auth-jwks-refresh and when a token names a key not yet
    /// fetched (the cluster rotated its keys). "in-cluster": the API
    /// server's https://kubernetes.default.svc/openid/v1/jwks with the pod's
    /// ServiceAccount token and CA (in
    /// /var/run/secrets/kubernetes.io/serviceaccount/); the pod needs its
    /// token mounted.
    #[arg(long, env = "WQ_AUTH_JWKS_URL")]
    auth_jwks_url: Option<String>,
    /// CA certificates (PEM) for --auth-jwks-url (default: the system's, or
    /// the pod's CA for "in-cluster").
    #[arg(long, env = "WQ_AUTH_JWKS_CA", requires = "auth_jwks_url")]
    auth_jwks_ca: Option<PathBuf>,
    /// A bearer token sent to --auth-jwks-url, read at each fetch (default:
    /// none, or the pod's ServiceAccount token for "in-cluster").
    #[arg(long, env = "WQ_AUTH_JWKS_TOKEN_FILE", requires = "auth_jwks_url")]
    auth_jwks_token_file: Option<PathBuf>,
    /// How often the keys of --auth-jwks-url are fetched again.
    #[arg(long, env = "WQ_AUTH_JWKS_REFRESH", default_value_t = queue_server::auth::jwks_fetch::DEFAULT_REFRESH.into())]
    auth_jwks_refresh: humantime::Duration,
    /// The issuer ServiceAccount tokens must name (the cluster's
    /// --service-account-issuer); unset: any issuer.
    #[arg(long, env = "WQ_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// The audience ServiceAccount tokens must carry.
    #[arg(long, env = "WQ_AUTH_AUDIENCE", default_value = queue_server::auth::DEFAULT_AUDIENCE)]
    auth_audience: String,
    /// /metrics requires a credential too (any authenticated caller).
    #[arg(long, env = "WQ_METRICS_AUTH")]
    metrics_auth: bool,
    /// Turns TLS on for the gRPC port: the certificate chain (PEM), re-read
    /// when it changes. Needs --tls-key.
    #[arg(long, env = "WQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM), re-read when it changes.
    #[arg(long, env = "WQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: every client must present a certificate signed by one of
    /// these CAs (PEM); its subject CN is the identity `cert:<CN>` in grants.
    #[arg(long, env = "WQ_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
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
        embedded_cache_bytes: match args.embedded_cache_bytes {
            0 => {
                queue_server::settings::derived_cache_bytes(queue_server::settings::memory_limit())
            }
            n => n,
        },
        postgres: queue_server::postgres::PgConfig {
            url: args.database_url.unwrap_or_default(),
            password_file: args.database_password_file,
            pool: args.database_pool.max(1),
            statements_per_queue: args.database_statements_per_queue.max(1),
        },
        limits: Limits {
            max_payload_bytes: args.max_payload_bytes,
            max_batch: args.max_batch.max(1),
            idempotency_window: args.idempotency_window,
            max_message_bytes: args.max_message_bytes,
            max_work_credit: args.max_work_credit,
            max_queues: args.max_queues,
            max_finished_tokens: args.max_finished_tokens,
            max_page_size: args.max_page_size.max(1),
            max_queued_bytes: match args.max_queued_bytes {
                // The postgres store's items are in the database, not here.
                0 if args.store == StoreKind::Postgres => u64::MAX,
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
        fail_exit_grace: args.fail_exit_grace.into(),
        connections: Connections {
            handshake_timeout: args.handshake_timeout.into(),
            keepalive_interval: args.keepalive_interval.into(),
            keepalive_timeout: args.keepalive_timeout.into(),
            max_concurrent_streams: args.max_streams_per_connection.max(1),
            idle_timeout: args.idle_timeout.into(),
        },
        auth: queue_server::auth::AuthConfig {
            tokens_file: args.auth_tokens_file,
            jwks_file: args.auth_jwks_file,
            jwks_url: args.auth_jwks_url.map(|url| {
                let mut source = queue_server::auth::jwks_fetch::JwksSource::from_flag(&url);
                source.ca_file = args.auth_jwks_ca.or(source.ca_file);
                source.token_file = args.auth_jwks_token_file.or(source.token_file);
                source.refresh = args.auth_jwks_refresh.into();
                source
            }),
            issuer: args.auth_issuer,
            audience: args.auth_audience,
            metrics_auth: args.metrics_auth,
            ..queue_server::auth::AuthConfig::default()
        },
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(queue_server::tls::TlsConfig {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
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
    let mut server = queue_server::start(config).await?;
    let http = server
        .http_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let mut out = std::io::stdout();
    writeln!(out, "listening grpc={} http={http}", server.grpc_addr())?;
    out.flush()?;
    let failed = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); None }
        err = server.stopped() => Some(err),
    };
    if let Some(err) = failed {
        tracing::error!("{err}");
        // Bounded: connected clients must not hold a failed server up (there
        // is nothing left to flush).
        match tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await {
            Ok(Err(e)) => tracing::warn!("while stopping: {e}"),
            Ok(Ok(())) => {}
            Err(_) => tracing::warn!("connections still open after 1s; exiting anyway"),
        }
        return Err(err.into());
    }
    server.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}
