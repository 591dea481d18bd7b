//! The `grpc://` backend: the workq queue service, through the client generated
//! from `proto/workq/v1/queue.proto`. Proto structs live here (and in
//! `convert` and `streams` below) and nowhere else.

mod convert;
mod streams;

use convert::*;

pub(crate) use streams::{
    EnqueueBatch, EnqueueStream, WorkAnswer, WorkEvent, WorkRequest, WorkStream,
};

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use workq_proto::v1 as pb;
use workq_proto::v1::queue_service_client::QueueServiceClient;

use super::QueueUrl;
use super::url::host_of;
use crate::credentials::{Bearer, ConnectOptions, TokenFile, read_file};
use crate::error::{Error, Result};
use crate::retry::{Backoff, retry};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, NewItem, Page, Pushed, QueueInfo,
    QueueName, QueueSettings, RequeueDead, ServerInfo, Stats,
};
use std::sync::Arc;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use workq_proto::time;

/// Deadline of an ordinary call; a lease call gets its wait on top.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of the GetServerInfo call made before a connection's first call
/// (again before later ones while it fails).
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

mod failover;

use failover::Failover;

/// The channel every call goes through: the connection (to one of the URL's
/// endpoints), with the bearer token (if any) put on each call.
type Svc = InterceptedService<Failover, Bearer>;

/// A connection to a workq queue service.
#[derive(Clone)]
pub(crate) struct GrpcBackend {
    client: QueueServiceClient<Svc>,
    /// What `GetServerInfo` answered, asked once per connection on the
    /// first call; `None` from a server without it.
    info: Arc<OnceCell<Option<ServerInfo>>>,
}

/// The TLS settings of a `grpcs://` connection: the CA bundle (or the
/// system's roots), the endpoint's host as the name to verify, the client
/// certificate for mutual TLS.
fn tls_config(host: &str, options: &ConnectOptions) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new().domain_name(host);
    match &options.ca_file {
        Some(path) => {
            let pem = read_file("CA", path)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::Credentials {
                    what: "CA",
                    path: path.display().to_string(),
                    reason: "no PEM certificate in it".into(),
                });
            }
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => tls = tls.with_native_roots(),
    }
    match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            let cert = read_file("client certificate", cert)?;
            let key = read_file("client key", key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(cert), None) | (None, Some(cert)) => {
            return Err(Error::Credentials {
                what: if options.client_key.is_none() {
                    "client certificate"
                } else {
                    "client key"
                },
                path: cert.display().to_string(),
                reason: "a client certificate and its key go together: give both".into(),
            });
        }
    }
    Ok(tls)
}

/// The endpoint `authority` (one of `url`'s) with the connection settings
/// every endpoint shares.
fn endpoint(
    url: &QueueUrl,
    authority: &str,
    connect_timeout: Duration,
    options: &ConnectOptions,
) -> Result<Endpoint> {
    let scheme = if url.tls { "https" } else { "http" };
    let invalid = |e: &dyn std::fmt::Display| Error::InvalidUrl {
        url: url.redacted(),
        reason: e.to_string(),
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
        .map_err(|e| invalid(&e))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if url.tls {
        endpoint = endpoint
            .tls_config(tls_config(host_of(authority), options)?)
            .map_err(|e| invalid(&e))?;
    }
    Ok(endpoint)
}

impl GrpcBackend {
    /// Connects at once, so that an unreachable server is reported by `connect`.
    /// A URL with several endpoints (`grpc://a:50051,b:50051`) connects to the
    /// first that answers, and calls move to the next when it goes away.
    /// `grpcs://` connects over TLS (trusting `options.ca_file`, else the
    /// system's roots, and presenting the client certificate if given); a
    /// token file puts its token on every call.
    pub(crate) async fn connect(
        url: &QueueUrl,
        connect_timeout: Duration,
        options: &ConnectOptions,
    ) -> Result<Self> {
        let token = match options.effective_token_file(url.tls) {
            Some(path) => Some(TokenFile::open(&path)?),
            None => None,
        };
        if !url.tls && options.client_cert.is_some() {
            return Err(Error::InvalidUrl {
                url: url.redacted(),
                reason: "a client certificate needs TLS: use grpcs://".into(),
            });
        }
        let endpoints = url
            .endpoints()
            .map(|authority| endpoint(url, authority, connect_timeout, options))
            .collect::<Result<Vec<_>>>()?;
        // The first endpoint that answers is where calls go; the others are
        // connected when calls move to them. With none answering, the first
        // one's error says why.
        let mut first_error = None;
        let mut channels = Vec::with_capacity(endpoints.len());
        let mut current = None;
        for endpoint in &endpoints {
            if current.is_some() {
                channels.push(endpoint.connect_lazy());
                continue;
            }
            match endpoint.connect().await {
                Ok(channel) => {
                    current = Some(channels.len());
                    channels.push(channel);
                }
                Err(source) => {
                    first_error.get_or_insert(source);
                    channels.push(endpoint.connect_lazy());
                }
            }
        }
        let Some(current) = current else {
            let Some(source) = first_error else {
                return Err(Error::InvalidUrl {
                    url: url.redacted(),
                    reason: "no endpoint in it".into(),
                });
            };
            let reason = crate::error::root_cause(&source);
            return Err(match crate::error::tls_problem(&source) {
                Some(problem) => Error::Tls {
                    url: url.redacted(),
                    reason: problem,
                    source: Box::new(source),
                },
                None => Error::Unreachable {
                    url: url.redacted(),
                    reason,
                    source: Box::new(source),
                },
            });
        };
        let channel = Failover::new(channels, current);
        Ok(GrpcBackend {
            // Until the server said its limit: answers up to its default
            // (tonic's own default, 4 MiB, is smaller than a full lease answer
            // may be).
            client: QueueServiceClient::with_interceptor(channel, Bearer(token))
                .max_decoding_message_size(workq_proto::defaults::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(workq_proto::defaults::MAX_MESSAGE_BYTES),
            info: Arc::new(OnceCell::new()),
        })
    }

    /// The client for a call, its message limits sized by the server's
    /// `max_message_bytes` (asked once, on the first call; the contract's
    /// default when the server has no GetServerInfo or the call failed).
    async fn client(&self) -> QueueServiceClient<Svc> {
        let limit = match self.info.get_or_try_init(|| self.fetch_info()).await {
            Ok(Some(info)) => usize::try_from(info.max_message_bytes)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(workq_proto::defaults::MAX_MESSAGE_BYTES),
            Ok(None) => workq_proto::defaults::MAX_MESSAGE_BYTES,
            Err(e) => {
                tracing::debug!(error = %e, "GetServerInfo failed; using the default message limit for now");
                workq_proto::defaults::MAX_MESSAGE_BYTES
            }
        };
        self.client
            .clone()
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// Asks the server about itself; `None` when it has no GetServerInfo.
    async fn fetch_info(&self) -> Result<Option<ServerInfo>> {
        match self
            .client
            .clone()
            .get_server_info(request(pb::GetServerInfoRequest {}, INFO_TIMEOUT))
            .await
        {
            Ok(resp) => Ok(Some(server_info_from_pb(resp.into_inner()))),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(Error::from_status("", s)),
        }
    }

    /// `page_size` within the server's largest page, when it said.
    async fn page_size(&self, page_size: u32) -> i32 {
        let max = match self.info.get_or_try_init(|| self.fetch_info()).await {
            Ok(Some(info)) if info.max_page_size > 0 => info.max_page_size,
            _ => u32::MAX,
        };
        i32::try_from(page_size.min(max)).unwrap_or(i32::MAX)
    }

    /// What the server says of itself (asked once per connection).
    pub(crate) async fn server_info(&self) -> Result<ServerInfo> {
        match self.info.get_or_try_init(|| self.fetch_info()).await? {
            Some(info) => Ok(info.clone()),
            None => Err(Error::NotSupported {
                backend: "grpc",
                what: "describe itself: this queue server has no GetServerInfo (it is older than the settled workq.v1)".into(),
            }),
        }
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
            .await
            .create_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        Ok((info_from_pb("CreateQueue", resp.queue)?, resp.created))
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        let req = pb::GetQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .await
            .get_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        info_from_pb("GetQueue", resp.into_inner().queue)
    }

    /// One page of queues, in name order (`page_size` within the server's
    /// largest page).
    pub(crate) async fn list_queues_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<QueueInfo>> {
        let resp = self
            .client()
            .await
            .list_queues(request(
                pb::ListQueuesRequest {
                    page_size: self.page_size(page_size).await,
                    page_token: page_token.to_owned(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(|s| Error::from_status("", s))?
            .into_inner();
        Ok(Page {
            items: resp
                .queues
                .into_iter()
                .map(|q| info_from_pb("ListQueues", Some(q)))
                .collect::<Result<_>>()?,
            next_page_token: next_token(resp.next_page_token),
        })
    }

    /// Changes the settings that are set in `settings` (the others stay).
    pub(crate) async fn update_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<QueueInfo> {
        let mut paths = Vec::new();
        for (set, path) in [
            (settings.default_lease.is_some(), "settings.default_lease"),
            (settings.max_attempts.is_some(), "settings.max_attempts"),
            (settings.retry_backoff.is_some(), "settings.retry_backoff"),
            (
                settings.retry_backoff_max.is_some(),
                "settings.retry_backoff_max",
            ),
        ] {
            if set {
                paths.push(path.to_owned());
            }
        }
        if paths.is_empty() {
            return self.get_queue(queue).await;
        }
        let req = pb::UpdateQueueRequest {
            queue: Some(pb::Queue {
                name: queue.to_string(),
                settings: Some(settings_to_pb(settings)),
                stats: None,
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        let resp = self
            .client()
            .await
            .update_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        info_from_pb("UpdateQueue", resp.into_inner().queue)
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        let req = pb::DeleteQueueRequest {
            name: queue.to_string(),
            allow_missing: true,
        };
        let resp = self
            .client()
            .await
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
            .await
            .purge_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(count(resp.into_inner().purged))
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        let req = pb::SealQueueRequest {
            name: queue.to_string(),
        };
        let resp = self
            .client()
            .await
            .seal_queue(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        info_from_pb("SealQueue", resp.into_inner().queue)
    }

    /// Adds `items`, all or nothing. The call carries a fresh `request_id`
    /// and is retried with the same id on a transient error (a lost answer),
    /// so that a retry never adds the items twice while the server runs;
    /// across a server restart only idempotency keys protect.
    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        create: bool,
    ) -> Result<Vec<Pushed>> {
        let n = items.len();
        let req = pb::EnqueueRequest {
            queue: queue.to_string(),
            items: items.into_iter().map(new_item_to_pb).collect(),
            create_queue: create,
            request_id: crate::random::random_uuid(),
        };
        let resp = retry(
            Backoff::for_server(),
            Instant::now() + CALL_TIMEOUT,
            || {
                let req = req.clone();
                async move {
                    self.client().await
                        .enqueue(request(req, CALL_TIMEOUT))
                        .await
                        .map_err(|s| Error::from_status(queue.as_str(), s))
                }
            },
            Error::is_transient,
            |e, delay| tracing::warn!(queue = %queue, error = %e, ?delay, "enqueue failed; retrying with the same request_id"),
        )
        .await?
        .into_inner();
        if resp.replayed {
            tracing::debug!(queue = %queue, n, "enqueue answered by an earlier try of the same request_id");
        }
        if resp.items.len() != n {
            return Err(Error::Protocol(format!(
                "Enqueue of {n} items answered {} items",
                resp.items.len()
            )));
        }
        Ok(resp
            .items
            .into_iter()
            .map(|i| Pushed {
                id: ItemId(i.id),
                duplicate: i.duplicate,
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
            max_items: i32::try_from(opts.max_items.max(1)).unwrap_or(i32::MAX),
            lease: opts.lease.map(time::duration),
            wait: Some(time::duration(opts.wait)),
            complete_tokens: token_strings(complete),
            max_bytes: opts
                .max_bytes
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        };
        let resp = self
            .client()
            .await
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
        let state = state_from_pb(resp.queue_state);
        Ok(Leased {
            items: resp.items.into_iter().map(leased_from_pb).collect(),
            drained: state.is_drained(),
            empty: state.is_empty(),
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
            lease: lease.map(time::duration),
            per_token_results: false,
        };
        let resp = self
            .client()
            .await
            .renew(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?
            .into_inner();
        Ok(resp
            .results
            .iter()
            .map(|r| system_time(r.lease_expire_time.as_ref()))
            .collect())
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let req = pb::CompleteRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
            per_token_results: false,
        };
        self.client()
            .await
            .complete(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?;
        Ok(())
    }

    /// Completes each of `tokens` on its own (`per_token_results`): one
    /// call, one outcome per token, in order. `Err` when the call as a whole
    /// failed (nothing is known of any token).
    pub(crate) async fn complete_each(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<Result<()>>> {
        let req = pb::CompleteRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
            per_token_results: true,
        };
        let resp = self
            .client()
            .await
            .complete(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?
            .into_inner();
        token_results(queue, tokens.len(), resp.results)
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
            mode: if failure.fatal {
                pb::FailMode::Fatal
            } else {
                pb::FailMode::Retry
            } as i32,
            reason: failure.reason.clone(),
            retry_after: failure.retry_after.map(time::duration),
            per_token_results: false,
        };
        let resp = self
            .client()
            .await
            .fail(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_token_status(queue.as_str(), s))?;
        Ok(u32::try_from(resp.into_inner().dead).unwrap_or(0))
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        let req = pb::ReleaseRequest {
            queue: queue.to_string(),
            lease_tokens: token_strings(tokens),
            per_token_results: false,
        };
        self.client()
            .await
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
            .await
            .watch(req)
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        Ok(stream
            .map(move |r| {
                r.map(|w| stats_from_pb(w.stats.unwrap_or_default()))
                    .map_err(|s| Error::from_status(&name, s))
            })
            .boxed())
    }

    /// One page of dead items, in id order (`page_size` within the server's
    /// largest page).
    pub(crate) async fn list_dead_page(
        &self,
        queue: &QueueName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<DeadItem>> {
        let req = pb::ListDeadRequest {
            queue: queue.to_string(),
            page_size: self.page_size(page_size).await,
            page_token: page_token.to_owned(),
        };
        let resp = self
            .client()
            .await
            .list_dead(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        Ok(Page {
            items: resp
                .items
                .into_iter()
                .map(|d| DeadItem {
                    id: ItemId(d.id),
                    payload: d.payload.into(),
                    attributes: d.attributes.into_iter().collect(),
                    attempts: u32::try_from(d.attempts).unwrap_or(0),
                    reason: d.reason,
                    died_at: system_time(d.death_time.as_ref()),
                })
                .collect(),
            next_page_token: next_token(resp.next_page_token),
        })
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, which: &RequeueDead) -> Result<u64> {
        let req = match which {
            RequeueDead::All => pb::RequeueDeadRequest {
                queue: queue.to_string(),
                item_ids: Vec::new(),
                all: true,
            },
            RequeueDead::Ids(ids) if ids.is_empty() => return Ok(0),
            RequeueDead::Ids(ids) => pb::RequeueDeadRequest {
                queue: queue.to_string(),
                item_ids: ids.iter().map(|i| i.0.clone()).collect(),
                all: false,
            },
        };
        let resp = self
            .client()
            .await
            .requeue_dead(request(req, CALL_TIMEOUT))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?;
        Ok(count(resp.into_inner().requeued))
    }
}
