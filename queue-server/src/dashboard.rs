//! The web dashboard on the HTTP port: `/` is a page (assets embedded in the
//! binary, no external fetch) showing every queue the viewer may read with
//! its exact counters, enqueue and complete rates on a small live chart,
//! sealed/drained state and dead items; and actions — requeue dead items,
//! seal, purge — checked against the grants exactly as the gRPC calls are
//! (requeue and purge need `admin`, seal `produce`, reading `read`).
//!
//! - [`api`]: the JSON API under `/api/` the page polls and posts to;
//! - the page itself: `dashboard/index.html`, `dashboard.js`,
//!   `dashboard.css`, served as they are.
//!
//! With authentication on, the page keeps a token the viewer types in the
//! tab's `sessionStorage` and sends it as `authorization: Bearer`; the API
//! answers 401 without one and 403 for a verb not granted, with the gRPC
//! layer's message.

pub mod api;

use crate::auth::Auth;
use crate::backend::Backend;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// One embedded asset, never cached stale across upgrades.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// The page and its API, to merge into the HTTP router.
pub fn router(engine: Backend, auth: Option<Arc<Auth>>) -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            get(|| async {
                let mut r = asset("text/html; charset=utf-8", INDEX).into_response();
                // Only our own script and style; no framing by other sites.
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    header::HeaderValue::from_static(
                        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                    ),
                );
                r
            }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .nest("/api", api::router(engine, auth))
}
