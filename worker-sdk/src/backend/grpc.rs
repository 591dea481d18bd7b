//! The `grpc://` backend: the workq queue service, through the client generated
//! from `proto/workq/v1/queue.proto`. Proto structs live here and nowhere else.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::transport::{Channel, Endpoint};
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_client::QueueServiceClient;

use super::QueueUrl;
use crate::error::{Error, Result};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, NewItem, Pushed,
    QueueInfo, QueueName, QueueSettings, Stats, from_ms, from_unix_ms, to_ms,
};

/// Deadline of an ordinary call; a lease call gets its wait on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a workq queue service.
#[derive(Clone)]
pub(crate) struct GrpcBackend {
    client: QueueServiceClient<Channel>,
}

impl GrpcBackend {
    /// Connects at once, so that an unreachable server is reported by `connect`.
    pub(crate) async fn connect(url: &QueueUrl, connect_timeout: Duration) -> Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{}", url.authority))
            .map_err(|e| Error::InvalidUrl {
                url: url.redacted(),
                reason: e.to_string(),
            })?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| Error::Unreachable {
                url: url.redacted(),
                reason: crate::error::root_cause(&source),
                source: Box::new(source),
            })?;
        Ok(GrpcBackend {
            // Answers up to the server's default message limit (tonic's own
            // default, 4 MiB, is smaller than a full lease answer may be).
            client: QueueServiceClient::new(channel)
                .max_decoding_message_size(workq_proto::defaults::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(workq_proto::defaults::MAX_MESSAGE_BYTES),
        })
    }

    fn client(&self) -> QueueServiceClient<Channel> {
        self.client.clone()
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        let req = pb::CreateQueueRequest {
            name: queue.to_string(),
            settings: Some(settings_to_pb(settings)),
        };
        let resp = self
            .client()
            .create_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        let info = resp
            .queue
            .map(info_from_pb)
            .ok_or_else(|| Error::Protocol("CreateQueue answered without a queue".into()))?;
        Ok((info, resp.created))
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        let req = pb::GetQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .get_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(info_from_pb(resp.into_inner()))
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let resp = self
            .client()
            .list_queues(request(pb::ListQueuesRequest {}, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status("", s))?;
        Ok(resp
            .into_inner()
            .queues
            .into_iter()
            .map(info_from_pb)
            .collect())
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        let req = pb::DeleteQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .delete_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(resp.into_inner().deleted)
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let req = pb::PurgeQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .purge_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(resp.into_inner().purged)
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        let req = pb::SealQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .seal_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(info_from_pb(resp.into_inner()))
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        create: bool,
    ) -> Result<Vec<Pushed>> {
        let n = items.len();
        let req = pb::EnqueueRequest {
            queue: queue.to_string(),
            items: items
                .into_iter()
                .map(|i| pb::NewItem {
                    payload: i.payload.into(),
                    attributes: i.attributes.into_iter().collect(),
                    idempotency_key: i.idempotency_key.unwrap_or_default(),
                    delay_ms: to_ms(i.delay),
                })
                .collect(),
            create_queue: create,
        };
        let resp = self
            .client()
            .enqueue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        if resp.item_ids.len() != n {
            return Err(Error::Protocol(format!(
                "Enqueue of {n} items answered {} ids",
                resp.item_ids.len()
            )));
        }
        let mut duplicate = resp.duplicate.into_iter();
        Ok(resp
            .item_ids
            .into_iter()
            .map(|id| Pushed {
                id: ItemId(id),
                duplicate: duplicate.next().unwrap_or(false),
            })
            .collect())
    }

    /// Completes `complete` (all or nothing) and leases, in one call.
    pub(crate) async fn complete_then_lease(
        &self,
        queue: &QueueName,
        complete: &[LeaseToken],
        opts: &LeaseOptions,
    ) -> Result<Leased> {
        let req = pb::LeaseRequest {
            queue: queue.to_string(),
            max_items: opts.max_items.max(1),
            lease_ms: to_ms(opts.lease),
            wait_ms: to_ms(Some(opts.wait)),
            complete_tokens: token_strings(complete),
        };
        let resp = self
            .client()
            .lease(request(req, CALL_TIMEOUT + opts.wait))
            .await
            .map_err(|s| {
                if complete.is_empty() {
                    Error::from_status(queue.as_str(), s)
                } else {
                    Error::from_token_status(queue.as_str(), s)
                }
            })?
            .into_inner();
        Ok(Leased {
            items: resp
                .items
                .into_iter()
                .map(|i| LeasedItem {
                    id: ItemId(i.id),
                    token: LeaseToken(i.lease_token),
                    payload: i.payload.into(),
                    attributes: i.attributes.into_iter().collect(),
                    attempt: i.attempt,
                    lease_deadline: from_unix_ms(i.lease_deadline_unix_ms),
                    enqueued_at: from_unix_ms(i.enqueued_at_unix_ms),
                })
                .collect(),
            drained: resp.drained,
            empty: resp.empty,
        })
    }

    pub(crate) async fn renew(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<SystemTime>> {
        let req = pb::RenewRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
            lease_ms: to_ms(lease),
        };
        let resp = self
            .client()
            .renew(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?
            .into_inner();
        Ok(resp
            .lease_deadline_unix_ms
            .into_iter()
            .map(from_unix_ms)
            .collect())
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let req = pb::CompleteRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
        };
        self.client()
            .complete(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?;
        Ok(())
    }

    pub(crate) async fn fail(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        failure: &Failure,
    ) -> Result<u32> {
        let req = pb::FailRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
            fatal: failure.fatal,
            reason: failure.reason.clone(),
            retry_after_ms: to_ms(failure.retry_after),
        };
        let resp = self
            .client()
            .fail(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?;
        Ok(resp.into_inner().dead)
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let req = pb::ReleaseRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
        };
        self.client()
            .release(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?;
        Ok(())
    }

    pub(crate) async fn watch(
        &self,
        queue: &QueueName,
        until_drained: bool,
    ) -> Result<BoxStream<'static, Result<Stats>>> {
        let req = pb::WatchRequest {
            queue: queue.to_string(),
            until_drained,
        };
        let name = queue.to_string();
        let stream = self
            .client()
            .watch(req)
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        Ok(stream
            .map(move |r| {
                r.map(stats_from_pb)
                    .map_err(|s| Error::from_status(&name, s))
            })
            .boxed())
    }

    pub(crate) async fn list_dead(&self, queue: &QueueName, limit: u32) -> Result<Vec<DeadItem>> {
        let req = pb::ListDeadRequest {
            queue: queue.to_string(),
            limit,
        };
        let resp = self
            .client()
            .list_dead(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(resp
            .into_inner()
            .items
            .into_iter()
            .map(|d| DeadItem {
                id: ItemId(d.id),
                payload: d.payload.into(),
                attributes: d.attributes.into_iter().collect(),
                attempts: d.attempts,
                reason: d.reason,
                died_at: from_unix_ms(d.died_at_unix_ms),
            })
            .collect())
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, ids: &[ItemId]) -> Result<u64> {
        let req = pb::RequeueDeadRequest {
            queue: queue.to_string(),
            item_ids: ids.iter().map(|i| i.0.clone()).collect(),
        };
        let resp = self
            .client()
            .requeue_dead(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(resp.into_inner().requeued)
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

fn token_strings(tokens: &[LeaseToken]) -> Vec<String> {
    tokens.iter().map(|t| t.0.clone()).collect()
}

fn settings_to_pb(s: &QueueSettings) -> pb::QueueSettings {
    pb::QueueSettings {
        default_lease_ms: to_ms(s.default_lease),
        max_attempts: s.max_attempts.unwrap_or(0),
        retry_backoff_ms: to_ms(s.retry_backoff),
        retry_backoff_max_ms: to_ms(s.retry_backoff_max),
    }
}

fn settings_from_pb(s: pb::QueueSettings) -> QueueSettings {
    QueueSettings {
        default_lease: from_ms(s.default_lease_ms),
        max_attempts: (s.max_attempts > 0).then_some(s.max_attempts),
        retry_backoff: from_ms(s.retry_backoff_ms),
        retry_backoff_max: from_ms(s.retry_backoff_max_ms),
    }
}

fn stats_from_pb(s: pb::QueueStats) -> Stats {
    Stats {
        queue: s.queue,
        enqueued: s.enqueued,
        pending: s.pending,
        delayed: s.delayed,
        leased: s.leased,
        completed: s.completed,
        dead: s.dead,
        retried: s.retried,
        sealed: s.sealed,
        drained: s.drained,
    }
}

fn info_from_pb(i: pb::QueueInfo) -> QueueInfo {
    let mut stats = i.stats.map(stats_from_pb).unwrap_or_default();
    if stats.queue.is_empty() {
        stats.queue = i.name.clone();
    }
    QueueInfo {
        name: i.name,
        settings: i.settings.map(settings_from_pb).unwrap_or_default(),
        stats,
    }
}
