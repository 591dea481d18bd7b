//! The gRPC service: a thin adapter. Proto in, one engine call, proto out.
//!
//! - `reject`: engine errors become a status (or an in-stream
//!   `Problem`) with their `ErrorReason`, metadata and details in exactly one
//!   place, [`rejection`];
//! - `request`: fields parsed at the edge, refused naming the field;
//! - `convert`: the wire's types to the engine's and back;
//! - [`pages`]: the page tokens of ListQueues and ListDead.

mod convert;
pub mod pages;
mod reject;
mod request;

pub use convert::{
    dead_pb, enqueue_items, enqueued_pb, leased_pb, opt_duration, queue_pb, settings_pb, state_pb,
    stats_pb,
};
pub use reject::{invalid_field, invalid_field_rejection, rejection, status};
use request::{
    batch, count, duration, first_message, int32, non_negative, queue_name, results_pb,
    settings_of, settings_update, tokens,
};
pub use request::{lease_state, parse_tokens, token_result_pb};

use crate::auth::{Verb, allow};
use crate::backend::Backend;
use crate::error::Error;
use crate::names::ItemId;
use crate::queue::TokenResult;
use crate::settings::QueueSettings;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_server::QueueService;

/// The `workq.v1.QueueService` implementation over a [`Backend`].
#[derive(Debug, Clone)]
pub struct GrpcService {
    engine: Backend,
}

impl GrpcService {
    /// A service answering from `engine` (an [`crate::Engine`] or a
    /// [`Backend`]).
    pub fn new(engine: impl Into<Backend>) -> Self {
        GrpcService {
            engine: engine.into(),
        }
    }
}

type Res<T> = Result<Response<T>, Status>;

impl GrpcService {
    /// Enqueue needs `produce`; with `create_queue` on a queue that does not
    /// exist yet, `admin` too.
    async fn allow_enqueue(
        &self,
        caller: &crate::auth::Grantee,
        name: &crate::names::QueueName,
        create: bool,
    ) -> Result<(), Status> {
        caller.check(Verb::Produce, name.as_str())?;
        // Whether the queue exists matters only to a caller who may not
        // create it (a read of the store, on postgres a statement: not paid
        // by every enqueue of an admin or with authentication off).
        if create
            && !caller.may(Verb::Admin, name.as_str())
            && self.engine.get_queue(name).await.is_err()
        {
            caller.check(Verb::Admin, name.as_str())?;
        }
        Ok(())
    }
}

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
            max_page_size: int32(l.max_page_size),
            max_attribute_bytes: i64::try_from(l.max_attribute_bytes).unwrap_or(i64::MAX),
            max_queues: int32(l.max_queues),
            max_queued_bytes: i64::try_from(l.max_queued_bytes).unwrap_or(i64::MAX),
        }))
    }

    async fn create_queue(
        &self,
        req: Request<pb::CreateQueueRequest>,
    ) -> Res<pb::CreateQueueResponse> {
        let name = queue_name("name", &req.get_ref().name)?;
        allow(&req, Verb::Admin, name.as_str())?;
        let req = req.into_inner();
        let settings = settings_of(req.settings)?;
        let (info, created) = self
            .engine
            .create_queue_with(&name, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue_pb(&info)),
            created,
        }))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Res<pb::GetQueueResponse> {
        let name = queue_name("name", &req.get_ref().name)?;
        allow(&req, Verb::Read, name.as_str())?;
        let info = self.engine.get_queue(&name).await.map_err(status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(queue_pb(&info)),
        }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Res<pb::ListQueuesResponse> {
        let caller = crate::auth::Grantee::of(&req);
        let req = req.into_inner();
        let size = non_negative("page_size", req.page_size)?;
        let size = self.engine.limits().check_page_size(size).map_err(status)?;
        let after = pages::after_queue(&req.page_token).map_err(status)?;
        let (queues, more) = self
            .engine
            .list_queues_page(after.as_ref(), size)
            .await
            .map_err(status)?;
        let next_page_token = match (more, queues.last()) {
            (true, Some(last)) => pages::queue_token(&last.name),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListQueuesResponse {
            // Only the queues the caller may read (a page may show fewer).
            queues: queues
                .iter()
                .filter(|q| caller.may(Verb::Read, q.name.as_str()))
                .map(queue_pb)
                .collect(),
            next_page_token,
        }))
    }

    async fn update_queue(
        &self,
        req: Request<pb::UpdateQueueRequest>,
    ) -> Res<pb::UpdateQueueResponse> {
        let name = req.get_ref().queue.as_ref().map(|q| q.name.clone());
        let name = name
            .ok_or_else(|| invalid_field("queue", "queue is missing: name the queue to change"))?;
        let name = queue_name("queue.name", &name)?;
        allow(&req, Verb::Admin, name.as_str())?;
        let req = req.into_inner();
        let queue = req
            .queue
            .ok_or_else(|| invalid_field("queue", "queue is missing: name the queue to change"))?;
        let given = settings_of(queue.settings)?;
        let patch = settings_update(given, req.update_mask, self.engine.default_settings())?;
        let info = self
            .engine
            .update_queue(&name, patch)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateQueueResponse {
            queue: Some(queue_pb(&info)),
        }))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Res<pb::DeleteQueueResponse> {
        let name = queue_name("name", &req.get_ref().name)?;
        allow(&req, Verb::Admin, name.as_str())?;
        let req = req.into_inner();
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
        let name = queue_name("name", &req.get_ref().name)?;
        allow(&req, Verb::Admin, name.as_str())?;
        let purged = self.engine.purge(&name).await.map_err(status)?;
        Ok(Response::new(pb::PurgeQueueResponse {
            purged: i64::try_from(purged).unwrap_or(i64::MAX),
        }))
    }

    async fn seal_queue(&self, req: Request<pb::SealQueueRequest>) -> Res<pb::SealQueueResponse> {
        let name = queue_name("name", &req.get_ref().name)?;
        allow(&req, Verb::Produce, name.as_str())?;
        let info = self.engine.seal(&name).await.map_err(status)?;
        Ok(Response::new(pb::SealQueueResponse {
            queue: Some(queue_pb(&info)),
        }))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Res<pb::EnqueueResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        self.allow_enqueue(
            &crate::auth::Grantee::of(&req),
            &name,
            req.get_ref().create_queue,
        )
        .await?;
        let req = req.into_inner();
        let items = enqueue_items(req.items).map_err(|(f, e)| invalid_field(&f, e))?;
        let (out, replayed) = self
            .engine
            .enqueue_request(
                &name,
                items,
                req.create_queue,
                Some(req.request_id.as_str()),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnqueueResponse {
            items: enqueued_pb(&out),
            replayed,
        }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Res<pb::LeaseResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Consume, name.as_str())?;
        let req = req.into_inner();
        let max = non_negative("max_items", req.max_items)?;
        let max_bytes = usize::try_from(req.max_bytes).map_err(|_| {
            invalid_field(
                "max_bytes",
                format!("max_bytes is {}: it must not be negative", req.max_bytes),
            )
        })?;
        let lease = duration("lease", req.lease.as_ref())?;
        let wait = duration("wait", req.wait.as_ref())?.unwrap_or_default();
        let out = self
            .engine
            .complete_then_lease(
                &name,
                &tokens("complete_tokens", &req.complete_tokens)?,
                max,
                max_bytes,
                lease,
                wait,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseResponse {
            items: out.items.into_iter().map(leased_pb).collect(),
            queue_state: lease_state(out.sealed, out.empty) as i32,
        }))
    }

    type EnqueueStreamStream = Outgoing<pb::EnqueueStreamResponse>;

    async fn enqueue_stream(
        &self,
        req: Request<tonic::Streaming<pb::EnqueueStreamRequest>>,
    ) -> Res<Self::EnqueueStreamStream> {
        let caller = crate::auth::Grantee::of(&req);
        let mut inbound = req.into_inner();
        let first = first_message(&mut inbound, "an EnqueueStream").await?;
        let name = queue_name("queue", &first.queue)?;
        self.allow_enqueue(&caller, &name, first.create_queue)
            .await?;
        if first.create_queue && self.engine.get_queue(&name).await.is_err() {
            self.engine
                .create_queue(&name, QueueSettings::UNSET)
                .await
                .map_err(status)?;
        }
        self.engine.get_queue(&name).await.map_err(status)?;
        let engine = self.engine.clone();
        spawn_stream(|tx| crate::enqueue_stream::serve(engine, name, first, inbound, tx))
    }

    type WorkStream = Outgoing<pb::WorkResponse>;

    async fn work(&self, req: Request<tonic::Streaming<pb::WorkRequest>>) -> Res<Self::WorkStream> {
        let caller = crate::auth::Grantee::of(&req);
        let recheck = crate::auth::Recheck::of(&req);
        let mut inbound = req.into_inner();
        let first = first_message(&mut inbound, "a Work stream").await?;
        let name = queue_name("queue", &first.queue)?;
        caller.check(Verb::Consume, name.as_str())?;
        let lease = duration("lease", first.lease.as_ref())?;
        if first.max_outstanding_bytes < 0 {
            return Err(invalid_field(
                "max_outstanding_bytes",
                format!(
                    "max_outstanding_bytes is {}: it must not be negative (0: no limit)",
                    first.max_outstanding_bytes
                ),
            ));
        }
        // Refuse at once what every lease would refuse.
        self.engine.get_queue(&name).await.map_err(status)?;
        if let Some(d) = lease {
            self.engine
                .limits()
                .check_lease("lease", d)
                .map_err(status)?;
        }
        let engine = self.engine.clone();
        spawn_stream(|tx| {
            crate::work_stream::serve(engine, name, lease, first, inbound, tx, recheck)
        })
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Res<pb::RenewResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Consume, name.as_str())?;
        let req = req.into_inner();
        let lease = duration("lease", req.lease.as_ref())?;
        let results = self
            .engine
            .renew_as(
                &name,
                &tokens("lease_tokens", &req.lease_tokens)?,
                lease,
                batch(req.per_token_results),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RenewResponse {
            results: results_pb(&results, true),
        }))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Res<pb::CompleteResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Consume, name.as_str())?;
        let req = req.into_inner();
        let tokens = tokens("lease_tokens", &req.lease_tokens)?;
        let results = self
            .engine
            .complete_as(&name, &tokens, batch(req.per_token_results))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompleteResponse {
            completed: count(&results, TokenResult::done),
            already_completed: count(&results, TokenResult::already_done),
            results: results_pb(&results, req.per_token_results),
        }))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Res<pb::FailResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Consume, name.as_str())?;
        let req = req.into_inner();
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
        let retry_after = duration("retry_after", req.retry_after.as_ref())?;
        let results = self
            .engine
            .fail_as(
                &name,
                &tokens("lease_tokens", &req.lease_tokens)?,
                fatal,
                &req.reason,
                retry_after,
                batch(req.per_token_results),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FailResponse {
            dead: count(&results, |r| r.done() && r.dead),
            already_failed: count(&results, TokenResult::already_done),
            results: results_pb(&results, req.per_token_results),
        }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Res<pb::ReleaseResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Consume, name.as_str())?;
        let req = req.into_inner();
        let tokens = tokens("lease_tokens", &req.lease_tokens)?;
        let results = self
            .engine
            .release_as(&name, &tokens, batch(req.per_token_results))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReleaseResponse {
            released: count(&results, TokenResult::done),
            already_released: count(&results, TokenResult::already_done),
            results: results_pb(&results, req.per_token_results),
        }))
    }

    type WatchStream = Outgoing<pb::WatchResponse>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Read, name.as_str())?;
        let req = req.into_inner();
        let rx = self.engine.watch(&name).await.map_err(status)?;
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
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Read, name.as_str())?;
        let req = req.into_inner();
        let size = non_negative("page_size", req.page_size)?;
        let size = self.engine.limits().check_page_size(size).map_err(status)?;
        let after = pages::after_item(&req.page_token).map_err(status)?;
        let (items, more) = self
            .engine
            .list_dead_page(&name, after, size)
            .await
            .map_err(status)?;
        let next_page_token = match (more, items.last()) {
            (true, Some(last)) => pages::dead_token(last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadResponse {
            items: items.into_iter().map(dead_pb).collect(),
            next_page_token,
        }))
    }

    async fn requeue_dead(
        &self,
        req: Request<pb::RequeueDeadRequest>,
    ) -> Res<pb::RequeueDeadResponse> {
        let name = queue_name("queue", &req.get_ref().queue)?;
        allow(&req, Verb::Admin, name.as_str())?;
        let req = req.into_inner();
        match (req.all, req.item_ids.is_empty()) {
            (true, false) => {
                return Err(invalid_field(
                    "all",
                    "both item_ids and all are given: name the dead items, or set all, not both",
                ));
            }
            (false, true) => {
                return Err(invalid_field(
                    "item_ids",
                    "no dead items named: give item_ids, or set all to requeue every dead item",
                ));
            }
            _ => {}
        }
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
