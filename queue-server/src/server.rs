//! Starting and stopping a server: gRPC (with health checking and
//! reflection) on one port, HTTP `/healthz` and `/metrics` on another.

use crate::engine::Engine;
use crate::grpc::GrpcService;
use crate::settings::{Limits, QueueSettings};
use crate::store::{EmbeddedStore, MemoryStore, Store, StoreError};
use axum::http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use workq_proto::v1::queue_service_server::QueueServiceServer;

/// Which store keeps the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Durable, in the data directory (the default).
    Embedded,
    /// In memory only; everything is lost on exit.
    Memory,
}

impl StoreKind {
    /// Every store, by the name `--store` takes.
    pub const NAMES: [&'static str; 2] = ["embedded", "memory"];

    /// The name `--store` takes.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Memory => "memory",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(StoreKind::Embedded),
            "memory" => Ok(StoreKind::Memory),
            _ => Err(format!(
                "unknown store {s:?}: use one of {}",
                StoreKind::NAMES.join(", ")
            )),
        }
    }
}

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// HTTP address for `/healthz` and `/metrics`; `None`: no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Which store.
    pub store: StoreKind,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// The embedded database's page cache, in bytes.
    pub embedded_cache_bytes: usize,
    /// Bounds on calls.
    pub limits: Limits,
    /// Settings of queues created without their own.
    pub defaults: QueueSettings,
}

impl ServerConfig {
    /// A memory-store server on `127.0.0.1:0` (gRPC and HTTP).
    pub fn memory() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            store: StoreKind::Memory,
            data_dir: PathBuf::from("workq-data"),
            embedded_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            limits: Limits::default(),
            defaults: QueueSettings::default(),
        }
    }

    /// An embedded-store server in `data_dir` on `127.0.0.1:0`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            store: StoreKind::Embedded,
            data_dir: data_dir.into(),
            ..ServerConfig::memory()
        }
    }
}

/// Why a server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A server task panicked.
    #[error("a server task failed: {0}")]
    Task(String),
}

/// A running server. Stop it with [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<JoinHandle<()>>,
}

/// The process-wide Prometheus recorder (the `metrics` facade has one).
fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .as_ref()
}

/// Connections the kernel may hold for us before we accept them. A Job's
/// pods all start at once: with tokio's default of 1,024, a burst of 2,000
/// workers overflowed the queue (the kernel fell back to SYN cookies and
/// connections were lost). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Opens the store, restores the queues and starts serving. Returns once
/// both ports are listening.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    // Installed first, so that no count is lost before the first scrape.
    prometheus();
    let store: Arc<dyn Store> = match config.store {
        StoreKind::Memory => Arc::new(MemoryStore),
        StoreKind::Embedded => {
            let dir = config.data_dir.clone();
            let cache = config.embedded_cache_bytes;
            let store =
                tokio::task::spawn_blocking(move || EmbeddedStore::open_with_cache(&dir, cache))
                    .await
                    .map_err(|e| ServerError::Task(e.to_string()))??;
            Arc::new(store)
        }
    };
    let engine = Engine::open(store, config.limits, config.defaults)?;

    let listener = bind(config.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    // Nagle off: `serve_with_incoming` ignores the builder's TCP_NODELAY, and
    // with Nagle on small replies waited ~40 ms (p99 42–45 ms, 100-item calls
    // fell to ~730/s).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<QueueServiceServer<GrpcService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(workq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Task(format!("reflection: {e}")))?;
    // One limit for messages in and out; answers are filled under it.
    let max_message = config.limits.max_message_bytes;
    let service = QueueServiceServer::new(GrpcService::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );

    let (http, http_addr) = match config.http_listen {
        None => (None, None),
        Some(addr) => {
            let listener = bind(addr).await?;
            let http_addr = listener
                .local_addr()
                .map_err(|source| ServerError::Bind { addr, source })?;
            let router = http_router(engine.clone());
            let engine = engine.clone();
            let task = tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { engine.stopping().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!("HTTP server failed: {e}");
                }
            });
            (Some(task), Some(http_addr))
        }
    };
    tracing::info!(%grpc_addr, ?http_addr, store = ?config.store, "queue-server listening");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        engine,
        stop: Some(stop_tx),
        grpc,
        http,
    })
}

fn http_router(engine: Engine) -> axum::Router {
    use axum::routing::get;
    let health_engine = engine.clone();
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let engine = health_engine.clone();
                async move {
                    if engine.is_stopping() {
                        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
                    } else {
                        (StatusCode::OK, "ok\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let engine = engine.clone();
                async move { render_metrics(&engine) }
            }),
        )
}

/// Prometheus text: the process's counters, every queue's depth by state,
/// and its lease calls parked waiting for an item. The per-queue series are
/// written from the queues that exist at each scrape, not kept in the
/// recorder: a deleted queue's series leave with it.
fn render_metrics(engine: &Engine) -> String {
    use std::fmt::Write;
    let mut out = prometheus().map(|h| h.render()).unwrap_or_default();
    let queues = engine.list_queues();
    let _ = writeln!(
        out,
        "# HELP workq_queue_items Items of a queue by state.\n# TYPE workq_queue_items gauge"
    );
    for q in &queues {
        let c = q.counters;
        for (state, n) in [
            ("pending", c.pending),
            ("delayed", c.delayed),
            ("leased", c.leased),
            ("completed", c.completed),
            ("dead", c.dead),
        ] {
            let _ = writeln!(
                out,
                "workq_queue_items{{queue=\"{}\",state=\"{state}\"}} {n}",
                q.name
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP workq_lease_calls_waiting Lease calls parked waiting for an item.\n\
         # TYPE workq_lease_calls_waiting gauge"
    );
    for q in &queues {
        if let Ok(n) = engine.waiting_leases(&q.name) {
            let _ = writeln!(out, "workq_lease_calls_waiting{{queue=\"{}\"}} {n}", q.name);
        }
    }
    out
}

impl RunningServer {
    /// The gRPC address it listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The HTTP address of `/healthz` and `/metrics`, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The engine behind it (for in-process use).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops taking calls, finishes those in flight (waiting lease calls
    /// answer at once, watch streams end), then flushes and closes the store.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.engine.begin_shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let grpc = (&mut self.grpc)
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?;
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        self.engine.close().await?;
        grpc?;
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.engine.begin_shutdown();
            self.grpc.abort();
            if let Some(http) = &self.http {
                http.abort();
            }
        }
    }
}
