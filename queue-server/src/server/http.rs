//! The HTTP port: `/healthz` (kubelet probes) and `/metrics` (Prometheus),
//! in plaintext or, when the server has a certificate, over TLS with the
//! gRPC port's certificate (re-read as it rotates; no client certificates:
//! probes and scrapers present none).

use super::connection::ACCEPT_BACKOFF;
use super::prometheus;
use crate::backend::Backend;
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Serves `/healthz` and `/metrics` on `listener` (over TLS with `tls`)
/// until the engine stops.
pub(super) fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_timeout: Duration,
    engine: Backend,
    auth: Option<Arc<crate::auth::Auth>>,
) -> JoinHandle<()> {
    let router = http_router(engine.clone(), auth);
    tokio::spawn(async move {
        let stopping = async move { engine.stopping().await };
        let served = match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopping)
                    .await
            }
            Some(acceptor) => {
                let listener = TlsListener::new(listener, acceptor, handshake_timeout);
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopping)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!("HTTP server failed: {e}");
        }
    })
}

/// Connections whose TLS handshake completed: each handshake runs on a task
/// of its own within the handshake timeout, so a slow or silent client holds
/// up no other (and no probe).
struct TlsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
}

impl TlsListener {
    fn new(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        handshake_timeout: Duration,
    ) -> Self {
        let local = listener.local_addr();
        let (tx, accepted) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut backoff = ACCEPT_BACKOFF.0;
            loop {
                let (tcp, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors: wait instead of spinning.
                            tracing::warn!("HTTP: accepting failed: {e}; retrying in {backoff:?}");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                backoff = ACCEPT_BACKOFF.0;
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("HTTP: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("HTTP: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { accepted, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn http_router(engine: Backend, auth: Option<Arc<crate::auth::Auth>>) -> axum::Router {
    use axum::routing::get;
    let health_engine = engine.clone();
    let dashboard = crate::dashboard::router(engine.clone(), auth.clone());
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let engine = health_engine.clone();
                async move {
                    match engine.health() {
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let engine = engine.clone();
                let auth = auth.clone();
                async move {
                    // With --metrics-auth, any authenticated caller may scrape.
                    if let Some(auth) = auth.filter(|a| a.metrics_auth())
                        && let Err(refused) = auth.authenticate(
                            headers
                                .get(axum::http::header::AUTHORIZATION)
                                .map(|v| v.as_bytes()),
                            None,
                        )
                    {
                        return (StatusCode::UNAUTHORIZED, format!("{}\n", refused.message()));
                    }
                    (StatusCode::OK, render_metrics(&engine).await)
                }
            }),
        )
        .merge(dashboard)
}

/// Prometheus text: the process's counters, every queue's depth by state,
/// its lease calls parked waiting for an item, and what is remembered for
/// retries. The per-queue series are
/// written from the queues that exist at each scrape, not kept in the
/// recorder: a deleted queue's series leave with it.
async fn render_metrics(engine: &Backend) -> String {
    use std::fmt::Write;
    let mut out = prometheus().map(|h| h.render()).unwrap_or_default();
    let queues = match engine.list_queues().await {
        Ok(q) => q,
        Err(e) => {
            let _ = writeln!(out, "# the queues could not be read: {e}");
            Vec::new()
        }
    };
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
    let _ = writeln!(
        out,
        "# HELP workq_remembered_finishes Finished leases and enqueue request ids remembered \
         for retries, all queues (bounded by --max-finished-tokens).\n\
         # TYPE workq_remembered_finishes gauge\nworkq_remembered_finishes {}",
        engine.remembered().await
    );
    out
}
