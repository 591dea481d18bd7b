//! The dashboard's JSON API. Every handler authenticates the request as the
//! gRPC port does ([`Auth::authenticate`] of the `authorization` header) and
//! checks the same verb its gRPC sibling checks.
//!
//! | route | verb | gRPC sibling |
//! |---|---|---|
//! | `GET /api/queues` | `read` (queues not readable are left out) | ListQueues |
//! | `GET /api/queues/{name}/dead?limit=N` | `read` | ListDead |
//! | `POST /api/queues/{name}/requeue-dead` `{"ids":[..]}` or `{"all":true}` | `admin` | RequeueDead |
//! | `POST /api/queues/{name}/seal` `{}` | `produce` | SealQueue |
//! | `POST /api/queues/{name}/purge` `{}` | `admin` | PurgeQueue |
//!
//! Actions take a JSON body (`content-type: application/json`), so a page
//! of another site cannot post one without a CORS preflight, which this
//! server never grants. Refusals are `{"error": "...", "code": "..."}` with
//! the gRPC code's name and the HTTP status that matches it.

use crate::auth::{Auth, Grantee, Verb};
use crate::backend::Backend;
use crate::engine::QueueInfo;
use crate::names::{ItemId, QueueName};
use crate::queue::DeadItem;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tonic::{Code, Status};

/// What every handler shares.
#[derive(Debug, Clone)]
struct Ctx {
    engine: Backend,
    auth: Option<Arc<Auth>>,
}

/// The API's routes.
pub fn router(engine: Backend, auth: Option<Arc<Auth>>) -> axum::Router {
    axum::Router::new()
        .route("/queues", get(queues))
        .route("/queues/{name}/dead", get(dead))
        .route("/queues/{name}/requeue-dead", post(requeue_dead))
        .route("/queues/{name}/seal", post(seal))
        .route("/queues/{name}/purge", post(purge))
        .with_state(Ctx { engine, auth })
}

/// A refusal: the gRPC layer's code and message, as HTTP.
#[derive(Debug)]
pub struct ApiError(Status);

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError(s)
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError(crate::grpc::status(e))
    }
}

/// The HTTP status of a gRPC code (as grpc-gateway maps them).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code as the status proto spells it.
fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    code: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.0.message().to_string(),
            code: code_name(self.0.code()),
        };
        (http_status(self.0.code()), Json(body)).into_response()
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

impl Ctx {
    /// The caller, or UNAUTHENTICATED (authentication on, no or a bad
    /// token); `Grantee(None)` with authentication off.
    fn caller(&self, headers: &HeaderMap) -> Result<Grantee, ApiError> {
        let Some(auth) = &self.auth else {
            return Ok(Grantee(None));
        };
        let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        Ok(Grantee(Some(auth.authenticate(header, None)?)))
    }

    /// The queue named in the path, if the caller may do `verb` to it.
    fn admit(&self, headers: &HeaderMap, name: &str, verb: Verb) -> Result<QueueName, ApiError> {
        let caller = self.caller(headers)?;
        let name = queue_name(name)?;
        caller.check(verb, name.as_str())?;
        Ok(name)
    }
}

fn queue_name(s: &str) -> Result<QueueName, ApiError> {
    s.parse()
        .map_err(|e: crate::names::ParseError| crate::grpc::invalid_field("name", e.0).into())
}

// ---- The engine reads and writes the dashboard makes, one place each. ----

async fn all_queues(engine: &Backend) -> crate::Result<Vec<QueueInfo>> {
    engine.list_queues().await
}

async fn dead_items(
    engine: &Backend,
    name: &QueueName,
    limit: usize,
) -> crate::Result<(Vec<DeadItem>, bool)> {
    engine.list_dead_page(name, None, limit).await
}

// ---- Answers ----

/// A queue's counters, state and settings that matter to a viewer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// No more items will come.
    pub sealed: bool,
    /// Sealed, and nothing pending, delayed or leased.
    pub drained: bool,
    /// Items ever added (less purged ones).
    pub enqueued: u64,
    /// Ready for a worker.
    pub pending: u64,
    /// Waiting for a delay or a retry's back-off.
    pub delayed: u64,
    /// Held by a worker.
    pub leased: u64,
    /// Completed.
    pub completed: u64,
    /// Failed for good.
    pub dead: u64,
    /// Retriable failures and expiries that sent an item back.
    pub retried: u64,
    /// Attempts before an item goes dead.
    pub max_attempts: u32,
}

impl QueueView {
    fn of(q: &QueueInfo) -> Self {
        let c = q.counters;
        QueueView {
            name: q.name.to_string(),
            sealed: q.sealed,
            drained: q.drained,
            enqueued: c.enqueued,
            pending: c.pending,
            delayed: c.delayed,
            leased: c.leased,
            completed: c.completed,
            dead: c.dead,
            retried: c.retried,
            max_attempts: q.settings.max_attempts,
        }
    }
}

/// `GET /api/queues`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueuesView {
    /// The queues the caller may read, by name.
    pub queues: Vec<QueueView>,
    /// The server's time, ms since the Unix epoch (rates are counts over it).
    pub time_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn queues(State(ctx): State<Ctx>, headers: HeaderMap) -> Answer<QueuesView> {
    let caller = ctx.caller(&headers)?;
    let queues = all_queues(&ctx.engine)
        .await?
        .iter()
        .filter(|q| caller.may(Verb::Read, q.name.as_str()))
        .map(QueueView::of)
        .collect();
    Ok(Json(QueuesView {
        queues,
        time_ms: now_ms(),
    }))
}

/// One dead item.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadView {
    /// Its id.
    pub id: String,
    /// Attempts counted.
    pub attempts: u32,
    /// Why it died.
    pub reason: String,
    /// When, ms since the Unix epoch.
    pub died_at_ms: u64,
    /// Its payload's size.
    pub payload_bytes: usize,
    /// The payload's first 120 characters, if it is text.
    pub payload_preview: Option<String>,
}

/// `GET /api/queues/{name}/dead`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadPage {
    /// The oldest dead items.
    pub items: Vec<DeadView>,
    /// More follow.
    pub more: bool,
}

#[derive(Debug, Deserialize)]
struct DeadQuery {
    limit: Option<usize>,
}

/// Dead items shown at most.
const DEAD_PAGE: usize = 100;

async fn dead(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DeadQuery>,
) -> Answer<DeadPage> {
    let name = ctx.admit(&headers, &name, Verb::Read)?;
    let limit = q.limit.unwrap_or(DEAD_PAGE).clamp(1, DEAD_PAGE);
    let (items, more) = dead_items(&ctx.engine, &name, limit).await?;
    let items = items
        .into_iter()
        .map(|d| DeadView {
            id: d.id.to_string(),
            attempts: d.attempts,
            reason: d.reason,
            died_at_ms: d.died_at,
            payload_bytes: d.payload.len(),
            payload_preview: std::str::from_utf8(&d.payload)
                .ok()
                .map(|s| s.chars().take(120).collect()),
        })
        .collect();
    Ok(Json(DeadPage { items, more }))
}

/// The body of `requeue-dead`: some items, or all.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RequeueBody {
    /// The dead items' ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Every dead item.
    #[serde(default)]
    pub all: bool,
}

/// The body of `seal` and `purge`: empty (`{}`).
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// `requeue-dead`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Requeued {
    /// Items moved back to pending.
    pub requeued: u64,
}

async fn requeue_dead(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<RequeueBody>,
) -> Answer<Requeued> {
    let name = ctx.admit(&headers, &name, Verb::Admin)?;
    let invalid = |field: &str, msg: &str| ApiError(crate::grpc::invalid_field(field, msg));
    let ids = match (body.all, body.ids.is_empty()) {
        (true, false) => {
            return Err(invalid(
                "all",
                "both ids and all are given: name the dead items, or set all, not both",
            ));
        }
        (false, true) => {
            return Err(invalid(
                "ids",
                "no dead items named: give ids, or set all to requeue every dead item",
            ));
        }
        (true, true) => Vec::new(),
        (false, false) => body
            .ids
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<ItemId>()
                    .map_err(|e| ApiError(crate::grpc::invalid_field(&format!("ids[{i}]"), e.0)))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let requeued = ctx.engine.requeue_dead(&name, &ids).await?;
    Ok(Json(Requeued { requeued }))
}

async fn seal(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(NoBody {}): Json<NoBody>,
) -> Answer<QueueView> {
    let name = ctx.admit(&headers, &name, Verb::Produce)?;
    let info = ctx.engine.seal(&name).await?;
    Ok(Json(QueueView::of(&info)))
}

/// `purge`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Purged {
    /// Items removed.
    pub purged: u64,
}

async fn purge(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(NoBody {}): Json<NoBody>,
) -> Answer<Purged> {
    let name = ctx.admit(&headers, &name, Verb::Admin)?;
    let purged = ctx.engine.purge(&name).await?;
    Ok(Json(Purged { purged }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_become_http_statuses_with_their_names() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
    }
}
