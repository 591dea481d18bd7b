//! The gRPC service: a thin adapter. Proto in, one engine call, proto out;
//! engine errors become `tonic::Status` in exactly one place, [`status`].

mod convert;

pub use convert::{
    dead_pb, enqueue_items, enqueued_pb, leased_pb, opt_duration, queue_pb, settings_pb, state_pb,
    stats_pb,
};

use crate::engine::Engine;
use crate::error::Error;
use crate::names::{ItemId, LeaseToken, QueueName};
use crate::settings::QueueSettings;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;
use workq_proto::v1::ErrorReason;
use workq_proto::v1::queue_service_server::QueueService;

/// The refusal a client sees for an engine error: code, reason, metadata
/// and details. The one place errors are mapped.
pub fn rejection(err: &Error) -> Rejection {
    let msg = err.to_string();
    match err {
        Error::InvalidArgument(_) => {
            Rejection::new(Code::InvalidArgument, ErrorReason::InvalidField, msg)
        }
        Error::QueueNotFound(q) => Rejection::new(Code::NotFound, ErrorReason::QueueNotFound, msg)
            .meta("queue", q)
            .resource("Queue", q.as_str()),
        Error::QueueExists(q) => Rejection::new(Code::AlreadyExists, ErrorReason::QueueExists, msg)
            .meta("queue", q)
            .resource("Queue", q.as_str()),
        Error::Sealed(q) => {
            Rejection::new(Code::FailedPrecondition, ErrorReason::QueueSealed, msg).meta("queue", q)
        }
        Error::StaleLease { token, .. } => {
            Rejection::new(Code::FailedPrecondition, ErrorReason::LeaseExpired, msg)
                .meta("item", token.item)
                .meta("lease_token", token)
        }
        Error::Store(_) => Rejection::new(Code::Unavailable, ErrorReason::StoreFailed, msg)
            .retry_after(std::time::Duration::from_secs(5)),
        Error::ShuttingDown => Rejection::new(Code::Unavailable, ErrorReason::ShuttingDown, msg)
            .retry_after(std::time::Duration::from_secs(1)),
        Error::Exhausted(_) => {
            Rejection::new(Code::ResourceExhausted, ErrorReason::ServerFull, msg)
                .retry_after(std::time::Duration::from_secs(1))
        }
    }
}

/// Maps an engine error to the gRPC status a client sees.
pub fn status(err: Error) -> Status {
    rejection(&err).to_status()
}

/// A malformed request field: INVALID_ARGUMENT, reason INVALID_FIELD, and a
/// BadRequest naming `field`.
pub fn invalid_field_rejection(field: &str, message: impl Into<String>) -> Rejection {
    Rejection::new(Code::InvalidArgument, ErrorReason::InvalidField, message).field(field)
}

/// [`invalid_field_rejection`] as a status.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    invalid_field_rejection(field, message).to_status()
}

fn queue_name(field: &str, s: &str) -> Result<QueueName, Status> {
    s.parse()
        .map_err(|e: crate::names::ParseError| invalid_field(field, e.0))
}

/// Lease tokens as sent in `field`; the first that does not parse is
/// refused naming its index (`lease_tokens[3]`).
pub fn parse_tokens(field: &str, raw: &[String]) -> Result<Vec<LeaseToken>, Box<Rejection>> {
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse().map_err(|e: crate::names::ParseError| {
                Box::new(invalid_field_rejection(&format!("{field}[{i}]"), e.0))
            })
        })
        .collect()
}

fn tokens(field: &str, raw: &[String]) -> Result<Vec<LeaseToken>, Status> {
    parse_tokens(field, raw).map_err(|r| r.to_status())
}

fn duration(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, Status> {
    opt_duration(field, d).map_err(|e| invalid_field(field, e))
}

fn non_negative(field: &str, n: i32) -> Result<usize, Status> {
    usize::try_from(n)
        .map_err(|_| invalid_field(field, format!("{field} is {n}: it must not be negative")))
}

/// The first message of a client stream, which names the queue.
async fn first_message<T>(inbound: &mut tonic::Streaming<T>, what: &str) -> Result<T, Status> {
    inbound.message().await?.ok_or_else(|| {
        invalid_field(
            "queue",
            format!("{what} starts with a message naming the queue; none came"),
        )
    })
}

/// Settings as a CreateQueue call gives them: an unset field is zero, which
/// takes the server's default.
fn settings_of(s: Option<pb::QueueSettings>) -> Result<QueueSettings, Status> {
    let s = s.unwrap_or_default();
    let mut out = QueueSettings::UNSET;
    out.default_lease =
        duration("settings.default_lease", s.default_lease.as_ref())?.unwrap_or_default();
    out.retry_backoff =
        duration("settings.retry_backoff", s.retry_backoff.as_ref())?.unwrap_or_default();
    out.retry_backoff_max =
        duration("settings.retry_backoff_max", s.retry_backoff_max.as_ref())?.unwrap_or_default();
    if let Some(n) = s.max_attempts {
        out.max_attempts = u32::try_from(n).map_err(|_| {
            invalid_field(
                "settings.max_attempts",
                format!("max_attempts is {n}: use 1 to 1000"),
            )
        })?;
    }
    Ok(out)
}

/// The `workq.v1.QueueService` implementation over an [`Engine`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    engine: Engine,
}

impl GrpcService {
    /// A service answering from `engine`.
    pub fn new(engine: Engine) -> Self {
        GrpcService { engine }
    }
}

type Res<T> = Result<Response<T>, Status>;

/// What a server-streaming call answers.
type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers a streaming call with what `serve` sends: it gets the sending half
/// of a channel (64 messages deep) and runs on a task of its own.
fn spawn_stream<T, Fut>(
    serve: impl FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
) -> Res<Outgoing<T>>
where
    T: Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(serve(tx));
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

fn int32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[tonic::async_trait]
impl QueueService for GrpcService {
    async fn get_server_info(
        &self,
        _req: Request<pb::GetServerInfoRequest>,
    ) -> Res<pb::GetServerInfoResponse> {
        let l = self.engine.limits();
        let d = workq_proto::time::duration;
        Ok(Response::new(pb::GetServerInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            max_message_bytes: i64::try_from(l.max_message_bytes).unwrap_or(i64::MAX),
            max_batch_items: int32(l.max_batch),
            max_item_bytes: i64::try_from(l.max_payload_bytes).unwrap_or(i64::MAX),
            max_attributes: int32(l.max_attributes),
            max_work_credit: i64::try_from(l.max_work_credit).unwrap_or(i64::MAX),
            min_lease: Some(d(l.min_lease)),
            max_lease: Some(d(l.max_lease)),
            max_wait: Some(d(l.max_wait)),
            max_delay: Some(d(l.max_delay)),
            idempotency_window: Some(d(l.idempotency_window)),
            max_page_size: 1000,
        }))
    }

    async fn create_queue(
        &self,
        req: Request<pb::CreateQueueRequest>,
    ) -> Res<pb::CreateQueueResponse> {
        let req = req.into_inner();
        let name = queue_name("name", &req.name)?;
        let settings = settings_of(req.settings)?;
        let (info, created) = self
            .engine
            .create_queue(&name, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue_pb(&info)),
            created,
        }))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Res<pb::GetQueueResponse> {
        let name = queue_name("name", &req.into_inner().name)?;
        let info = self.engine.get_queue(&name).map_err(status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(queue_pb(&info)),
        }))
    }

    async fn list_queues(
        &self,
        _req: Request<pb::ListQueuesRequest>,
    ) -> Res<pb::ListQueuesResponse> {
        let queues = self.engine.list_queues().iter().map(queue_pb).collect();
        Ok(Response::new(pb::ListQueuesResponse {
            queues,
            next_page_token: String::new(),
        }))
    }

    async fn update_queue(
        &self,
        _req: Request<pb::UpdateQueueRequest>,
    ) -> Res<pb::UpdateQueueResponse> {
        Err(Status::unimplemented("UpdateQueue is not implemented yet"))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Res<pb::DeleteQueueResponse> {
        let req = req.into_inner();
        let name = queue_name("name", &req.name)?;
        match self.engine.delete_queue(&name).await {
            Ok(()) => Ok(Response::new(pb::DeleteQueueResponse { deleted: true })),
            Err(Error::QueueNotFound(_)) if req.allow_missing => {
                Ok(Response::new(pb::DeleteQueueResponse { deleted: false }))
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Res<pb::PurgeQueueResponse> {
        let name = queue_name("name", &req.into_inner().name)?;
        let purged = self.engine.purge(&name).await.map_err(status)?;
        Ok(Response::new(pb::PurgeQueueResponse {
            purged: i64::try_from(purged).unwrap_or(i64::MAX),
        }))
    }

    async fn seal_queue(&self, req: Request<pb::SealQueueRequest>) -> Res<pb::SealQueueResponse> {
        let name = queue_name("name", &req.into_inner().name)?;
        let info = self.engine.seal(&name).await.map_err(status)?;
        Ok(Response::new(pb::SealQueueResponse {
            queue: Some(queue_pb(&info)),
        }))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Res<pb::EnqueueResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let items = enqueue_items(req.items).map_err(|(f, e)| invalid_field(&f, e))?;
        let out = self
            .engine
            .enqueue(&name, items, req.create_queue)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnqueueResponse {
            items: enqueued_pb(&out),
            replayed: false,
        }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Res<pb::LeaseResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let max = non_negative("max_items", req.max_items)?;
        let lease = duration("lease", req.lease.as_ref())?;
        let wait = duration("wait", req.wait.as_ref())?.unwrap_or_default();
        let out = self
            .engine
            .complete_then_lease(
                &name,
                &tokens("complete_tokens", &req.complete_tokens)?,
                max,
                lease,
                wait,
            )
            .await
            .map_err(status)?;
        let state = match (out.drained, out.empty) {
            (true, _) => pb::QueueState::Drained,
            (false, true) => pb::QueueState::Empty,
            // Sealed or not: the lease answer tells drained from not.
            (false, false) => pb::QueueState::Active,
        };
        Ok(Response::new(pb::LeaseResponse {
            items: out.items.into_iter().map(leased_pb).collect(),
            queue_state: state as i32,
        }))
    }

    type EnqueueStreamStream = Outgoing<pb::EnqueueStreamResponse>;

    async fn enqueue_stream(
        &self,
        req: Request<tonic::Streaming<pb::EnqueueStreamRequest>>,
    ) -> Res<Self::EnqueueStreamStream> {
        let mut inbound = req.into_inner();
        let first = first_message(&mut inbound, "an EnqueueStream").await?;
        let name = queue_name("queue", &first.queue)?;
        if first.create_queue && self.engine.get_queue(&name).is_err() {
            self.engine
                .create_queue(&name, QueueSettings::UNSET)
                .await
                .map_err(status)?;
        }
        self.engine.get_queue(&name).map_err(status)?;
        let engine = self.engine.clone();
        spawn_stream(|tx| crate::enqueue_stream::serve(engine, name, first, inbound, tx))
    }

    type WorkStream = Outgoing<pb::WorkResponse>;

    async fn work(&self, req: Request<tonic::Streaming<pb::WorkRequest>>) -> Res<Self::WorkStream> {
        let mut inbound = req.into_inner();
        let first = first_message(&mut inbound, "a Work stream").await?;
        let name = queue_name("queue", &first.queue)?;
        let lease = duration("lease", first.lease.as_ref())?;
        // Refuse at once what every lease would refuse.
        self.engine.get_queue(&name).map_err(status)?;
        if let Some(d) = lease {
            self.engine
                .limits()
                .check_lease(d)
                .map_err(|e| invalid_field("lease", e))?;
        }
        let engine = self.engine.clone();
        spawn_stream(|tx| crate::work_stream::serve(engine, name, lease, first, inbound, tx))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Res<pb::RenewResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let lease = duration("lease", req.lease.as_ref())?;
        let deadlines = self
            .engine
            .renew(&name, &tokens("lease_tokens", &req.lease_tokens)?, lease)
            .await
            .map_err(status)?;
        let results = req
            .lease_tokens
            .into_iter()
            .zip(deadlines)
            .map(|(t, d)| pb::TokenResult {
                lease_token: t,
                outcome: pb::TokenOutcome::Done as i32,
                problem: None,
                lease_expire_time: Some(workq_proto::time::timestamp_ms(d)),
                dead: false,
            })
            .collect();
        Ok(Response::new(pb::RenewResponse { results }))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Res<pb::CompleteResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let tokens = tokens("lease_tokens", &req.lease_tokens)?;
        self.engine.complete(&name, &tokens).await.map_err(status)?;
        Ok(Response::new(pb::CompleteResponse {
            completed: int32(tokens.len()),
            already_completed: 0,
            results: Vec::new(),
        }))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Res<pb::FailResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let fatal = match pb::FailMode::try_from(req.mode) {
            Ok(pb::FailMode::Unspecified | pb::FailMode::Retry) => false,
            Ok(pb::FailMode::Fatal) => true,
            Err(_) => {
                return Err(invalid_field(
                    "mode",
                    format!("unknown fail mode {}: use RETRY or FATAL", req.mode),
                ));
            }
        };
        let retry_after = duration("retry_after", req.retry_after.as_ref())?.unwrap_or_default();
        let dead = self
            .engine
            .fail(
                &name,
                &tokens("lease_tokens", &req.lease_tokens)?,
                fatal,
                &req.reason,
                retry_after,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FailResponse {
            dead: int32(dead),
            already_failed: 0,
            results: Vec::new(),
        }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Res<pb::ReleaseResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let tokens = tokens("lease_tokens", &req.lease_tokens)?;
        self.engine.release(&name, &tokens).await.map_err(status)?;
        Ok(Response::new(pb::ReleaseResponse {
            released: int32(tokens.len()),
            already_released: 0,
            results: Vec::new(),
        }))
    }

    type WatchStream = Outgoing<pb::WatchResponse>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let rx = self.engine.watch(&name).map_err(status)?;
        let engine = self.engine.clone();
        let until_drained = req.until_drained;
        // State: the receiver, whether the current value was sent, whether to stop.
        let stream = futures::stream::unfold((rx, false, false), move |(mut rx, sent, done)| {
            let engine = engine.clone();
            async move {
                if done {
                    return None;
                }
                if sent {
                    tokio::select! {
                        changed = rx.changed() => changed.ok()?,
                        () = engine.stopping() => return None,
                    }
                }
                let info = rx.borrow_and_update().clone()?;
                let done = until_drained && info.drained;
                let msg = pb::WatchResponse {
                    stats: Some(stats_pb(&info)),
                };
                Some((Ok(msg), (rx, true, done)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_dead(&self, req: Request<pb::ListDeadRequest>) -> Res<pb::ListDeadResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let limit = match non_negative("page_size", req.page_size)? {
            0 => 1000,
            n => n,
        };
        let items = self.engine.list_dead(&name, limit).map_err(status)?;
        Ok(Response::new(pb::ListDeadResponse {
            items: items.into_iter().map(dead_pb).collect(),
            next_page_token: String::new(),
        }))
    }

    async fn requeue_dead(
        &self,
        req: Request<pb::RequeueDeadRequest>,
    ) -> Res<pb::RequeueDeadResponse> {
        let req = req.into_inner();
        let name = queue_name("queue", &req.queue)?;
        let ids = req
            .item_ids
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<ItemId>()
                    .map_err(|e| invalid_field(&format!("item_ids[{i}]"), e.0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let requeued = self
            .engine
            .requeue_dead(&name, &ids)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RequeueDeadResponse {
            requeued: i64::try_from(requeued).unwrap_or(i64::MAX),
        }))
    }
}
