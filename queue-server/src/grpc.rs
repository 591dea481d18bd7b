//! The gRPC service: a thin adapter. Proto in, one engine call, proto out;
//! engine errors become `tonic::Status` in exactly one place, [`status`].

use crate::engine::{Engine, EnqueueItem, QueueInfo};
use crate::error::Error;
use crate::names::{ItemId, LeaseToken, QueueName};
use crate::queue::{DeadItem, Leased};
use crate::settings::QueueSettings;
use futures::Stream;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_server::QueueService;

/// Maps an engine error to the gRPC status a client sees.
pub fn status(err: Error) -> Status {
    let msg = err.to_string();
    match err {
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::QueueNotFound(_) => Status::not_found(msg),
        Error::QueueExists(_) => Status::already_exists(msg),
        Error::Sealed(_) | Error::StaleLease { .. } => Status::failed_precondition(msg),
        Error::Store(_) | Error::ShuttingDown => Status::unavailable(msg),
        Error::Exhausted(_) => Status::resource_exhausted(msg),
    }
}

fn queue_name(s: &str) -> Result<QueueName, Status> {
    s.parse()
        .map_err(|e: crate::names::ParseError| Status::invalid_argument(e.0))
}

fn tokens(raw: &[String]) -> Result<Vec<LeaseToken>, Status> {
    raw.iter()
        .map(|t| {
            t.parse()
                .map_err(|e: crate::names::ParseError| Status::invalid_argument(e.0))
        })
        .collect()
}

fn opt_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn settings_pb(s: &QueueSettings) -> pb::QueueSettings {
    pb::QueueSettings {
        default_lease_ms: ms(s.default_lease),
        max_attempts: s.max_attempts,
        retry_backoff_ms: ms(s.retry_backoff),
        retry_backoff_max_ms: ms(s.retry_backoff_max),
    }
}

/// The proto form of a queue's counters.
pub fn stats_pb(info: &QueueInfo) -> pb::QueueStats {
    let c = &info.counters;
    pb::QueueStats {
        queue: info.name.to_string(),
        enqueued: c.enqueued,
        pending: c.pending,
        delayed: c.delayed,
        leased: c.leased,
        completed: c.completed,
        dead: c.dead,
        retried: c.retried,
        sealed: info.sealed,
        drained: info.drained,
    }
}

fn info_pb(info: &QueueInfo) -> pb::QueueInfo {
    pb::QueueInfo {
        name: info.name.to_string(),
        settings: Some(settings_pb(&info.settings)),
        stats: Some(stats_pb(info)),
    }
}

fn attributes_pb(a: &crate::item::Attributes) -> std::collections::HashMap<String, String> {
    a.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The first message of a client stream, which names the queue.
async fn first_message<T>(inbound: &mut tonic::Streaming<T>, what: &str) -> Result<T, Status> {
    inbound.message().await?.ok_or_else(|| {
        Status::invalid_argument(format!(
            "{what} starts with a message naming the queue; none came"
        ))
    })
}

/// Items to enqueue, from their proto form.
pub fn enqueue_items(items: Vec<pb::NewItem>) -> Vec<EnqueueItem> {
    items
        .into_iter()
        .map(|i| EnqueueItem {
            payload: i.payload,
            attributes: i.attributes.into_iter().collect(),
            idempotency_key: (!i.idempotency_key.is_empty()).then_some(i.idempotency_key),
            delay: Duration::from_millis(i.delay_ms),
        })
        .collect()
}

/// The proto form of a leased item.
pub fn leased_pb(l: Leased) -> pb::LeasedItem {
    pb::LeasedItem {
        id: l.id.to_string(),
        lease_token: l.token.to_string(),
        attributes: attributes_pb(&l.attributes),
        payload: l.payload,
        attempt: l.attempt,
        lease_deadline_unix_ms: l.deadline,
        enqueued_at_unix_ms: l.enqueued_at,
    }
}

fn dead_pb(d: DeadItem) -> pb::DeadItem {
    pb::DeadItem {
        id: d.id.to_string(),
        attributes: attributes_pb(&d.attributes),
        payload: d.payload,
        attempts: d.attempts,
        reason: d.reason,
        died_at_unix_ms: d.died_at,
    }
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

#[tonic::async_trait]
impl QueueService for GrpcService {
    async fn create_queue(
        &self,
        req: Request<pb::CreateQueueRequest>,
    ) -> Res<pb::CreateQueueResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.name)?;
        let s = req.settings.unwrap_or_default();
        let settings = QueueSettings {
            default_lease: Duration::from_millis(s.default_lease_ms),
            max_attempts: s.max_attempts,
            retry_backoff: Duration::from_millis(s.retry_backoff_ms),
            retry_backoff_max: Duration::from_millis(s.retry_backoff_max_ms),
        };
        let (info, created) = self
            .engine
            .create_queue(&name, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(info_pb(&info)),
            created,
        }))
    }

    async fn get_queue(&self, req: Request<pb::GetQueueRequest>) -> Res<pb::QueueInfo> {
        let name = queue_name(&req.into_inner().name)?;
        let info = self.engine.get_queue(&name).map_err(status)?;
        Ok(Response::new(info_pb(&info)))
    }

    async fn list_queues(
        &self,
        _req: Request<pb::ListQueuesRequest>,
    ) -> Res<pb::ListQueuesResponse> {
        let queues = self.engine.list_queues().iter().map(info_pb).collect();
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Res<pb::DeleteQueueResponse> {
        let name = queue_name(&req.into_inner().name)?;
        self.engine.delete_queue(&name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteQueueResponse { deleted: true }))
    }

    async fn purge_queue(
        &self,
        req: Request<pb::PurgeQueueRequest>,
    ) -> Res<pb::PurgeQueueResponse> {
        let name = queue_name(&req.into_inner().name)?;
        let purged = self.engine.purge(&name).await.map_err(status)?;
        Ok(Response::new(pb::PurgeQueueResponse { purged }))
    }

    async fn seal_queue(&self, req: Request<pb::SealQueueRequest>) -> Res<pb::QueueInfo> {
        let name = queue_name(&req.into_inner().name)?;
        let info = self.engine.seal(&name).await.map_err(status)?;
        Ok(Response::new(info_pb(&info)))
    }

    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Res<pb::EnqueueResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let items = enqueue_items(req.items);
        let out = self
            .engine
            .enqueue(&name, items, req.create_queue)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnqueueResponse {
            item_ids: out.iter().map(|e| e.id.to_string()).collect(),
            duplicate: out.iter().map(|e| e.duplicate).collect(),
        }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Res<pb::LeaseResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let max = usize::try_from(req.max_items).unwrap_or(usize::MAX);
        let out = self
            .engine
            .complete_then_lease(
                &name,
                &tokens(&req.complete_tokens)?,
                max,
                opt_ms(req.lease_ms),
                Duration::from_millis(req.wait_ms),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LeaseResponse {
            items: out.items.into_iter().map(leased_pb).collect(),
            drained: out.drained,
            empty: out.empty,
        }))
    }

    type EnqueueStreamStream = Outgoing<pb::EnqueueStreamResponse>;

    async fn enqueue_stream(
        &self,
        req: Request<tonic::Streaming<pb::EnqueueStreamRequest>>,
    ) -> Res<Self::EnqueueStreamStream> {
        let mut inbound = req.into_inner();
        let first = first_message(&mut inbound, "an EnqueueStream").await?;
        let name = queue_name(&first.queue)?;
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
        let name = queue_name(&first.queue)?;
        let lease = opt_ms(first.lease_ms);
        // Refuse at once what every lease would refuse.
        self.engine.get_queue(&name).map_err(status)?;
        if let Some(d) = lease {
            self.engine
                .limits()
                .check_lease(d)
                .map_err(Status::invalid_argument)?;
        }
        let engine = self.engine.clone();
        spawn_stream(|tx| crate::work_stream::serve(engine, name, lease, first, inbound, tx))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Res<pb::RenewResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let deadlines = self
            .engine
            .renew(&name, &tokens(&req.lease_tokens)?, opt_ms(req.lease_ms))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RenewResponse {
            lease_deadline_unix_ms: deadlines,
        }))
    }

    async fn complete(&self, req: Request<pb::CompleteRequest>) -> Res<pb::CompleteResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        self.engine
            .complete(&name, &tokens(&req.lease_tokens)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Res<pb::FailResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let dead = self
            .engine
            .fail(
                &name,
                &tokens(&req.lease_tokens)?,
                req.fatal,
                &req.reason,
                Duration::from_millis(req.retry_after_ms),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FailResponse {
            dead: u32::try_from(dead).unwrap_or(u32::MAX),
        }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Res<pb::ReleaseResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        self.engine
            .release(&name, &tokens(&req.lease_tokens)?)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    type WatchStream = Outgoing<pb::QueueStats>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Res<Self::WatchStream> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
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
                Some((Ok(stats_pb(&info)), (rx, true, done)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_dead(&self, req: Request<pb::ListDeadRequest>) -> Res<pb::ListDeadResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let limit = match req.limit {
            0 => 1000,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let items = self.engine.list_dead(&name, limit).map_err(status)?;
        Ok(Response::new(pb::ListDeadResponse {
            items: items.into_iter().map(dead_pb).collect(),
        }))
    }

    async fn requeue_dead(
        &self,
        req: Request<pb::RequeueDeadRequest>,
    ) -> Res<pb::RequeueDeadResponse> {
        let req = req.into_inner();
        let name = queue_name(&req.queue)?;
        let ids = req
            .item_ids
            .iter()
            .map(|s| {
                s.parse::<ItemId>()
                    .map_err(|e| Status::invalid_argument(e.0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let requeued = self
            .engine
            .requeue_dead(&name, &ids)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RequeueDeadResponse { requeued }))
    }
}
