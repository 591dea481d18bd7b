//! The seam between the SDK and the systems that hold queues.
//!
//! A queue URL ([`url`]) names its backend by scheme. `Backend` is one enum
//! with one variant per backend, so every operation is one `match` and adding a
//! backend is adding a variant (and the compiler lists every place that must
//! learn it). Each backend is a cargo feature:
//!
//! | scheme | backend | feature | status |
//! |---|---|---|---|
//! | `grpc://host:port` | the workq queue service | `grpc` | supported |
//! | `redis://host[:port][/db]` | a Redis list laid out like the Kubernetes tutorial's `rediswq.py` (module `redis`) | `redis` | supported |
//! | `amqp://user:pass@host[:port][/vhost]` | a RabbitMQ queue (module `amqp`) | `amqp` | supported, without seal and dead listing |
//!
//! A URL of a backend the build lacks is refused by `connect` with
//! [`Error::UnsupportedScheme`].

#[cfg(not(any(feature = "grpc", feature = "redis", feature = "amqp")))]
compile_error!("worker-sdk needs at least one backend feature: grpc, redis or amqp");

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "grpc")]
pub(crate) mod grpc;
#[cfg(feature = "redis")]
pub mod redis;
pub mod url;

use std::time::Duration;

use futures::stream::BoxStream;

pub use url::{QueueUrl, Scheme};

use crate::error::{Error, Result};
use crate::types::{
    DeadItem, Failure, LeaseOptions, LeaseToken, Leased, NewItem, Page, Pushed, QueueInfo,
    QueueName, QueueSettings, RequeueDead, ServerInfo, Stats,
};

/// How often a watch reads the counters of a backend that cannot push them.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// A connection to one backend. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub(crate) enum Backend {
    /// The workq queue service over gRPC.
    #[cfg(feature = "grpc")]
    Grpc(grpc::GrpcBackend),
    /// A `rediswq`-style queue in Redis.
    #[cfg(feature = "redis")]
    Redis(redis::RedisBackend),
    /// A RabbitMQ queue.
    #[cfg(feature = "amqp")]
    Amqp(amqp::AmqpBackend),
}

/// `match` on every backend this build has, binding the backend to `$b`.
macro_rules! each {
    ($self:expr, $b:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "grpc")]
            Backend::Grpc($b) => $call,
            #[cfg(feature = "redis")]
            Backend::Redis($b) => $call,
            #[cfg(feature = "amqp")]
            Backend::Amqp($b) => $call,
        }
    };
}

impl Backend {
    /// Connects to the backend `url` names.
    pub(crate) async fn connect(
        url: &QueueUrl,
        connect_timeout: Duration,
        options: &crate::credentials::ConnectOptions,
    ) -> Result<Backend> {
        match url.scheme {
            #[cfg(feature = "grpc")]
            Scheme::Grpc => Ok(Backend::Grpc(
                grpc::GrpcBackend::connect(url, connect_timeout, options).await?,
            )),
            #[cfg(feature = "redis")]
            Scheme::Redis => Ok(Backend::Redis(
                redis::RedisBackend::connect(url, connect_timeout).await?,
            )),
            #[cfg(feature = "amqp")]
            Scheme::Amqp => Ok(Backend::Amqp(
                amqp::AmqpBackend::connect(url, connect_timeout).await?,
            )),
            #[allow(unreachable_patterns)]
            other => Err(Error::UnsupportedScheme {
                url: url.redacted(),
                scheme: other.to_string(),
            }),
        }
    }

    /// Whether queues of this backend can be sealed (and so ever be drained).
    pub(crate) fn can_seal(&self) -> bool {
        #[cfg(feature = "amqp")]
        if matches!(self, Backend::Amqp(_)) {
            return false;
        }
        true
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        each!(self, b => b.create_queue(queue, settings).await)
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        each!(self, b => b.get_queue(queue).await)
    }

    /// One page of queues. Redis answers every queue on one page; RabbitMQ
    /// cannot list queues.
    pub(crate) async fn list_queues_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<QueueInfo>> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.list_queues_page(page_size, page_token).await,
            #[cfg(feature = "redis")]
            Backend::Redis(b) => one_page(b.list_queues().await),
            #[cfg(feature = "amqp")]
            Backend::Amqp(b) => one_page(b.list_queues().await),
        }
    }

    /// Every queue, page after page.
    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_queues_page(0, &token).await?;
            all.extend(page.items);
            match page.next_page_token {
                Some(next) if next != token => token = next,
                _ => return Ok(all),
            }
        }
    }

    /// Changes the settings set in `settings`; the queue service only.
    pub(crate) async fn update_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<QueueInfo> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.update_queue(queue, settings).await,
            #[allow(unreachable_patterns)]
            _ => Err(Error::NotSupported {
                backend: self.scheme(),
                what: "change a queue's settings (delete and create it again)".into(),
            }),
        }
    }

    /// What the server says of itself; the queue service only.
    pub(crate) async fn server_info(&self) -> Result<ServerInfo> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.server_info().await,
            #[allow(unreachable_patterns)]
            _ => Err(Error::NotSupported {
                backend: self.scheme(),
                what: "describe a server (GetServerInfo is the queue service's)".into(),
            }),
        }
    }

    /// The scheme of this backend, without `://`.
    #[cfg_attr(not(any(feature = "redis", feature = "amqp")), allow(dead_code))]
    fn scheme(&self) -> &'static str {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(_) => "grpc",
            #[cfg(feature = "redis")]
            Backend::Redis(_) => "redis",
            #[cfg(feature = "amqp")]
            Backend::Amqp(_) => "amqp",
        }
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        each!(self, b => b.delete_queue(queue).await)
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        each!(self, b => b.purge(queue).await)
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        each!(self, b => b.seal(queue).await)
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        create: bool,
    ) -> Result<Vec<Pushed>> {
        each!(self, b => b.enqueue(queue, items, create).await)
    }

    pub(crate) async fn lease(&self, queue: &QueueName, opts: &LeaseOptions) -> Result<Leased> {
        self.complete_then_lease(queue, &[], opts).await
    }

    /// Completes `complete`, then leases: one round trip on workq; two steps
    /// on Redis and RabbitMQ, which have no such call.
    pub(crate) async fn complete_then_lease(
        &self,
        queue: &QueueName,
        complete: &[LeaseToken],
        opts: &LeaseOptions,
    ) -> Result<Leased> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.complete_then_lease(queue, complete, opts).await,
            #[cfg(feature = "redis")]
            Backend::Redis(b) => {
                in_two_steps(complete, b.complete(queue, complete), b.lease(queue, opts)).await
            }
            #[cfg(feature = "amqp")]
            Backend::Amqp(b) => {
                in_two_steps(complete, b.complete(queue, complete), b.lease(queue, opts)).await
            }
        }
    }

    pub(crate) async fn renew(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<std::time::SystemTime>> {
        each!(self, b => b.renew(queue, tokens, lease).await)
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        each!(self, b => b.complete(queue, tokens).await)
    }

    /// Completes each token on its own: one outcome per token, in order.
    /// `Err` when the call as a whole failed. One call on workq
    /// (`per_token_results`); on Redis and RabbitMQ, whose completions are
    /// all or nothing, the batch and, if a token is refused, each token alone.
    pub(crate) async fn complete_each(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<Result<()>>> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.complete_each(queue, tokens).await,
            #[allow(unreachable_patterns)]
            _ => self.complete_one_by_one(queue, tokens).await,
        }
    }

    /// [`Backend::complete_each`] on a backend whose completions are all or
    /// nothing: the batch, then each token alone if one was refused.
    #[cfg_attr(not(any(feature = "redis", feature = "amqp")), allow(dead_code))]
    async fn complete_one_by_one(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
    ) -> Result<Vec<Result<()>>> {
        match self.complete(queue, tokens).await {
            Ok(()) => Ok(tokens.iter().map(|_| Ok(())).collect()),
            Err(e @ Error::LeaseLost { .. }) if tokens.len() > 1 => {
                tracing::debug!(error = %e, n = tokens.len(), "batch completion refused; completing one by one");
                let mut each = Vec::with_capacity(tokens.len());
                for t in tokens {
                    each.push(self.complete(queue, std::slice::from_ref(t)).await);
                }
                Ok(each)
            }
            Err(e @ Error::LeaseLost { .. }) => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn fail(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        failure: &Failure,
    ) -> Result<u32> {
        each!(self, b => b.fail(queue, tokens, failure).await)
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        each!(self, b => b.release(queue, tokens).await)
    }

    pub(crate) async fn watch(
        &self,
        queue: &QueueName,
        until_drained: bool,
    ) -> Result<BoxStream<'static, Result<Stats>>> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.watch(queue, until_drained).await,
            #[cfg(feature = "amqp")]
            Backend::Amqp(_) if until_drained => Err(Error::NotSupported {
                backend: "amqp",
                what: "watch a queue until it is drained: an AMQP queue cannot be sealed, so it is never drained".into(),
            }),
            #[allow(unreachable_patterns)]
            _ => self.poll_watch(queue, until_drained).await,
        }
    }

    /// A watch for backends that cannot push changes: reads the counters every
    /// [`WATCH_POLL`] and yields them when they changed.
    async fn poll_watch(
        &self,
        queue: &QueueName,
        until_drained: bool,
    ) -> Result<BoxStream<'static, Result<Stats>>> {
        use futures::StreamExt;
        let first = self.get_queue(queue).await?.stats;
        let (this, queue) = (self.clone(), queue.clone());
        let stream = futures::stream::unfold(
            (Some(first), None::<Stats>, false),
            move |(mut next, last, done)| {
                let (this, queue) = (this.clone(), queue.clone());
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        let s = match next.take() {
                            Some(s) => s,
                            None => {
                                tokio::time::sleep(WATCH_POLL).await;
                                match this.get_queue(&queue).await {
                                    Ok(i) => i.stats,
                                    Err(e) => return Some((Err(e), (None, last, false))),
                                }
                            }
                        };
                        if last.as_ref() != Some(&s) {
                            let done = until_drained && s.drained;
                            return Some((Ok(s.clone()), (None, Some(s), done)));
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }

    /// One page of dead items. Redis and RabbitMQ answer at most
    /// `page_size` on one page (0: their default).
    pub(crate) async fn list_dead_page(
        &self,
        queue: &QueueName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<DeadItem>> {
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.list_dead_page(queue, page_size, page_token).await,
            #[cfg(feature = "redis")]
            Backend::Redis(b) => one_page(b.list_dead(queue, page_size).await),
            #[cfg(feature = "amqp")]
            Backend::Amqp(b) => one_page(b.list_dead(queue, page_size).await),
        }
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, which: &RequeueDead) -> Result<u64> {
        // Redis and RabbitMQ take "all" as an empty list.
        #[cfg(any(feature = "redis", feature = "amqp"))]
        let ids: &[crate::types::ItemId] = match which {
            RequeueDead::All => &[],
            RequeueDead::Ids(ids) if ids.is_empty() => return Ok(0),
            RequeueDead::Ids(ids) => ids,
        };
        match self {
            #[cfg(feature = "grpc")]
            Backend::Grpc(b) => b.requeue_dead(queue, which).await,
            #[cfg(feature = "redis")]
            Backend::Redis(b) => b.requeue_dead(queue, ids).await,
            #[cfg(feature = "amqp")]
            Backend::Amqp(b) => b.requeue_dead(queue, ids).await,
        }
    }
}

/// A whole listing as one page.
#[cfg(any(feature = "redis", feature = "amqp"))]
fn one_page<T>(items: Result<Vec<T>>) -> Result<Page<T>> {
    Ok(Page {
        items: items?,
        next_page_token: None,
    })
}

/// Complete-then-lease on a backend without such a call: `complete_call`
/// (skipped when there are no `tokens`), then `lease_call`. Both are futures
/// not yet polled.
#[cfg(any(feature = "redis", feature = "amqp"))]
async fn in_two_steps(
    tokens: &[LeaseToken],
    complete_call: impl Future<Output = Result<()>>,
    lease_call: impl Future<Output = Result<Leased>>,
) -> Result<Leased> {
    if !tokens.is_empty() {
        complete_call.await?;
    }
    lease_call.await
}
