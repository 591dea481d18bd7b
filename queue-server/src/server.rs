//! Starting and stopping a server: gRPC (with health checking, reflection
//! v1 and v1alpha, and KEDA's external scaler) on one port; HTTP `/healthz`,
//! `/metrics` and the dashboard (`/`, `/api/`) on another.
//!
//! # Health
//! gRPC health (overall and `workq.v1.QueueService`) and `/healthz` follow
//! the real state: SERVING / 200 while it serves, NOT_SERVING / 503 once it
//! is stopping or its store failed. After a failed store every call answers
//! UNAVAILABLE with the reason, and [`RunningServer::stopped`] resolves
//! after [`ServerConfig::fail_exit_grace`] (the binary then exits non-zero).
//!
//! # Connections
//! See [`Connections`]: a connection must send the HTTP/2 preface within the
//! handshake timeout, dead peers are found by HTTP/2 keepalive pings, streams
//! per connection are capped, and a failed `accept` (out of descriptors) is
//! retried after a back-off instead of at once.

mod connection;
mod http;

pub use connection::{Conn, ConnInfo};
use connection::{Incoming, incoming, incoming_tls};

use crate::backend::Backend;
use crate::engine::Engine;
use crate::grpc::GrpcService;
use crate::settings::{Limits, QueueSettings};
use crate::store::{EmbeddedStore, MemoryStore, Store, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use workq_proto::v1::queue_service_server::QueueServiceServer;

/// Which store keeps the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Durable, in the data directory (the default).
    Embedded,
    /// In memory only; everything is lost on exit.
    Memory,
    /// In a PostgreSQL database, shared by any number of replicas
    /// ([`ServerConfig::postgres`]).
    Postgres,
}

impl StoreKind {
    /// Every store, by the name `--store` takes.
    pub const NAMES: [&'static str; 3] = ["embedded", "memory", "postgres"];

    /// The name `--store` takes.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Memory => "memory",
            StoreKind::Postgres => "postgres",
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
            "postgres" => Ok(StoreKind::Postgres),
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
    /// HTTP address for `/healthz`, `/metrics` and the dashboard; `None`: no
    /// HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Which store.
    pub store: StoreKind,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// The embedded database's page cache, in bytes.
    pub embedded_cache_bytes: usize,
    /// Where the postgres store's database is.
    pub postgres: crate::postgres::PgConfig,
    /// Bounds on calls.
    pub limits: Limits,
    /// Settings of queues created without their own.
    pub defaults: QueueSettings,
    /// How long a server whose store failed keeps answering (NOT_SERVING,
    /// UNAVAILABLE) before [`RunningServer::stopped`] resolves and the
    /// binary exits non-zero.
    pub fail_exit_grace: Duration,
    /// Limits on gRPC connections.
    pub connections: Connections,
    /// Authentication and per-queue authorization (off by default).
    pub auth: crate::auth::AuthConfig,
    /// TLS on the gRPC port, and on the HTTP port with the same certificate
    /// (without client certificates); `None`: plaintext.
    pub tls: Option<crate::tls::TlsConfig>,
}

/// Limits on gRPC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// A new connection that has not sent the HTTP/2 preface by then is
    /// closed.
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 PING is sent on a quiet connection.
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered by then is closed.
    pub keepalive_timeout: Duration,
    /// Most concurrent calls (streams) on one connection; a client sees it
    /// in the server's SETTINGS and queues calls beyond it.
    pub max_concurrent_streams: u32,
    /// A connection with no open call for this long is closed (zero: never).
    pub idle_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The default of [`ServerConfig::fail_exit_grace`].
pub const DEFAULT_FAIL_EXIT_GRACE: Duration = Duration::from_secs(3);

impl ServerConfig {
    /// A memory-store server on `127.0.0.1:0` (gRPC and HTTP).
    pub fn memory() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            store: StoreKind::Memory,
            data_dir: PathBuf::from("workq-data"),
            embedded_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            postgres: crate::postgres::PgConfig::default(),
            limits: Limits::default(),
            defaults: QueueSettings::default(),
            fail_exit_grace: DEFAULT_FAIL_EXIT_GRACE,
            connections: Connections::default(),
            auth: crate::auth::AuthConfig::default(),
            tls: None,
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

    /// A postgres-store server on the database at `url` on `127.0.0.1:0`.
    pub fn postgres(url: impl Into<String>) -> Self {
        ServerConfig {
            store: StoreKind::Postgres,
            postgres: crate::postgres::PgConfig {
                url: url.into(),
                ..crate::postgres::PgConfig::default()
            },
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
    /// The postgres store could not start.
    #[error(transparent)]
    Postgres(#[from] crate::postgres::PgError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::error::Error),
    /// The authentication files could not be loaded.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A server task panicked.
    #[error("a server task failed: {0}")]
    Task(String),
    /// The store failed: the server stopped taking calls and must be
    /// restarted on what is durable.
    #[error("{0}: exiting, to be restarted on what is durable")]
    StoreFailed(#[source] StoreError),
    /// The gRPC or HTTP server ended on its own.
    #[error("the {0} server ended unexpectedly: {1}")]
    Ended(&'static str, String),
}

/// A running server. Stop it with [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    engine: Backend,
    stop: Option<oneshot::Sender<()>>,
    grpc: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http: Option<JoinHandle<()>>,
    fail_exit_grace: Duration,
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
            open_embedded(config.data_dir.clone(), config.embedded_cache_bytes).await?
        }
        StoreKind::Postgres => {
            let auth = open_auth(&config).await?;
            let engine =
                crate::postgres::PgEngine::open(&config.postgres, config.limits, config.defaults)
                    .await?;
            return serve(config, Backend::from(engine), auth).await;
        }
    };
    start_with_store(config, store).await
}

/// [`start`] on a store the caller opened (`config.store` and
/// `config.data_dir` are not used): e.g. one on faulty storage, in tests.
pub async fn start_with_store(
    config: ServerConfig,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    prometheus();
    let auth = open_auth(&config).await?;
    let engine = Backend::from(Engine::open(store, config.limits, config.defaults)?);
    serve(config, engine, auth).await
}

/// Loads the authentication files and follows their changes.
async fn open_auth(config: &ServerConfig) -> Result<Option<Arc<crate::auth::Auth>>, ServerError> {
    let mut auth_config = config.auth.clone();
    auth_config.client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let auth = crate::auth::Auth::open(auth_config)?;
    if let Some(auth) = &auth {
        auth.watch();
        auth.fetch_jwks().await;
    }
    Ok(auth)
}

/// Serves `engine` on the ports of `config`.
async fn serve(
    config: ServerConfig,
    engine: Backend,
    auth: Option<Arc<crate::auth::Auth>>,
) -> Result<RunningServer, ServerError> {
    let listener = bind(config.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let tls = match &config.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            t,
            &[b"h2"],
        )?)),
        None => None,
    };
    let incoming: Incoming = match tls {
        None => Box::pin(incoming(listener, config.connections)),
        Some(acceptor) => Box::pin(incoming_tls(listener, acceptor, config.connections)),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<QueueServiceServer<GrpcService>>()
        .await;
    {
        // NOT_SERVING, overall and for the service, while stopping, failed
        // or (PostgreSQL) the database is unreachable; SERVING again when
        // it is back.
        let (health, engine) = (health.clone(), engine.clone());
        tokio::spawn(async move {
            loop {
                let status = match engine.health() {
                    Ok(()) => ServingStatus::Serving,
                    Err(why) => {
                        tracing::warn!("health: NOT_SERVING ({why})");
                        ServingStatus::NotServing
                    }
                };
                health
                    .set_service_status(
                        <QueueServiceServer<GrpcService> as tonic::server::NamedService>::NAME,
                        status,
                    )
                    .await;
                health.set_service_status("", status).await;
                engine.health_changed().await;
            }
        });
    }
    let (reflection, reflection_v1alpha) = crate::reflection::services()?;
    // One limit for messages in and out; answers are filled under it.
    let max_message = config.limits.max_message_bytes;
    let service = QueueServiceServer::new(GrpcService::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let refuser = engine.clone();
    let authenticator = auth.clone();
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        move |mut req: tonic::Request<()>| {
            // A failed store answers every new call at once.
            if let Some(err) = refuser.failure() {
                return Err(crate::grpc::status(crate::Error::Store(err)));
            }
            // Who calls; each method checks the verb it needs on its queue.
            if let Some(auth) = &authenticator {
                let caller = auth.authenticate_request(&req)?;
                req.extensions_mut().insert(caller);
                // Long-lived calls follow their grants ([`crate::auth::Recheck`]).
                req.extensions_mut().insert(auth.clone());
            }
            Ok(req)
        },
    );
    let conns = config.connections;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(conns.keepalive_interval))
            .http2_keepalive_timeout(Some(conns.keepalive_timeout))
            .max_concurrent_streams(conns.max_concurrent_streams)
            .layer(crate::idle::CountCalls)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .add_service(crate::keda::service(engine.clone(), auth.clone()))
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
            // The gRPC port's certificate, without client certificates:
            // kubelet probes and Prometheus present none.
            let tls = match &config.tls {
                Some(t) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                    &crate::tls::TlsConfig {
                        client_ca: None,
                        ..t.clone()
                    },
                    &[b"http/1.1"],
                )?)),
                None => None,
            };
            let task = http::serve(
                listener,
                tls,
                conns.handshake_timeout,
                engine.clone(),
                auth.clone(),
            );
            (Some(task), Some(http_addr))
        }
    };
    tracing::info!(%grpc_addr, ?http_addr, store = ?config.store, "queue-server listening");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        engine,
        stop: Some(stop_tx),
        grpc: Some(grpc),
        http,
        fail_exit_grace: config.fail_exit_grace,
    })
}

/// Opens the embedded store in `dir`; with the `fault-injection` feature,
/// on storage that fails as [`crate::store::fault::ENV`] orders.
async fn open_embedded(dir: PathBuf, cache: usize) -> Result<Arc<dyn Store>, ServerError> {
    #[cfg(feature = "fault-injection")]
    {
        use crate::store::fault::{FaultKind, Faults, FaultyStore, Op, Order};
        if let Some(order) = Order::from_env().map_err(ServerError::Task)? {
            tracing::warn!(?order, "fault injection armed");
            let faults = Faults::new();
            let backend_faults = faults.clone();
            let store = tokio::task::spawn_blocking(move || {
                EmbeddedStore::open_with_faults(&dir, backend_faults)
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??;
            faults.fail(order.op, order.nth, FaultKind::NoSpace);
            return Ok(if order.op == Op::Commit {
                Arc::new(FaultyStore::new(store, faults))
            } else {
                Arc::new(store)
            });
        }
    }
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with_cache(&dir, cache))
        .await
        .map_err(|e| ServerError::Task(e.to_string()))??;
    Ok(Arc::new(store))
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

    /// The engine behind it (for in-process use); [`Backend::local`] is
    /// the local engine, when it is that.
    pub fn engine(&self) -> &Backend {
        &self.engine
    }

    /// Resolves when the server can no longer serve and should exit: its
    /// store failed ([`ServerConfig::fail_exit_grace`] after the failure,
    /// while health says NOT_SERVING and calls answer UNAVAILABLE), or its
    /// gRPC or HTTP server ended. Call [`RunningServer::shutdown`] next.
    pub async fn stopped(&mut self) -> ServerError {
        let grace = self.fail_exit_grace;
        let engine = self.engine.clone();
        let failed = async move {
            let err = engine.failed().await;
            tokio::time::sleep(grace).await;
            err
        };
        let grpc = async {
            match self.grpc.as_mut() {
                Some(task) => {
                    let ended = task.await;
                    self.grpc = None;
                    match ended {
                        Ok(Ok(())) => "it stopped".to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    }
                }
                None => std::future::pending().await,
            }
        };
        let http = async {
            match self.http.as_mut() {
                Some(task) => {
                    let ended = task.await;
                    self.http = None;
                    match ended {
                        Ok(()) => "it stopped".to_string(),
                        Err(e) => e.to_string(),
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            err = failed => ServerError::StoreFailed(err),
            why = grpc => ServerError::Ended("gRPC", why),
            why = http => ServerError::Ended("HTTP", why),
        }
    }

    /// Stops taking calls, finishes those in flight (waiting lease calls
    /// answer at once, watch streams end), then flushes and closes the store.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.engine.begin_shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let grpc = match self.grpc.take() {
            Some(task) => task.await.map_err(|e| ServerError::Task(e.to_string()))?,
            None => Ok(()),
        };
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
            if let Some(grpc) = &self.grpc {
                grpc.abort();
            }
            if let Some(http) = &self.http {
                http.abort();
            }
        }
    }
}
