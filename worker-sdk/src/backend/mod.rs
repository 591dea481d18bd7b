//! The seam between the SDK and the systems that hold queues.
//!
//! A queue URL names its backend by scheme. `Backend` is one enum with one
//! variant per backend, so every operation is one `match` and adding a backend
//! is adding a variant (and the compiler lists every place that must learn it):
//!
//! | scheme | backend | status |
//! |---|---|---|
//! | `grpc://host:port` | the workq queue service | supported |
//! | `redis://host[:port][/db]` | a Redis list laid out like the seeds' `rediswq.py` ([`redis`]) | supported |
//! | `amqp://user:pass@host[:port][/vhost]` | a RabbitMQ queue ([`amqp`]) | supported, without seal and dead listing |

pub mod amqp;
pub(crate) mod grpc;
pub mod redis;

use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, NewItem, Pushed, QueueInfo,
    QueueName, QueueSettings, Stats,
};

/// How often a watch reads the counters of a backend that cannot push them.
const WATCH_POLL: Duration = Duration::from_millis(250);

/// Which kind of system a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `grpc://`: the workq queue service.
    Grpc,
    /// `redis://`: a `rediswq`-style Redis queue.
    Redis,
    /// `amqp://`: a RabbitMQ queue.
    Amqp,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Grpc => "grpc",
            Scheme::Redis => "redis",
            Scheme::Amqp => "amqp",
        })
    }
}

/// A parsed queue URL: scheme plus the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl {
    /// The URL as given.
    pub url: String,
    /// Its scheme.
    pub scheme: Scheme,
    /// What follows `scheme://` (for `grpc`, `host:port`).
    pub authority: String,
}

impl QueueUrl {
    /// Parses `url`, checking its scheme and that it names a host.
    pub fn parse(url: &str) -> Result<QueueUrl> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://host:port, e.g. grpc://127.0.0.1:50051"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "grpc" => Scheme::Grpc,
            "redis" => Scheme::Redis,
            "amqp" => Scheme::Amqp,
            other => {
                return Err(invalid(&format!(
                    "unknown scheme {other:?} (known: grpc, redis, amqp)"
                )));
            }
        };
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() {
            return Err(invalid("no host after the scheme"));
        }
        if scheme == Scheme::Grpc {
            if authority.contains('/') {
                return Err(invalid("a grpc:// URL has no path: grpc://host:port"));
            }
            let port_ok = authority
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(invalid("expected grpc://host:port with a numeric port"));
            }
        }
        Ok(QueueUrl {
            url: url.to_owned(),
            scheme,
            authority,
        })
    }
}

impl QueueUrl {
    /// The URL with its password, if it has one, replaced by `***`: what errors
    /// and logs show.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A connection to one backend. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub(crate) enum Backend {
    /// The workq queue service over gRPC.
    Grpc(grpc::GrpcBackend),
    /// A `rediswq`-style queue in Redis.
    Redis(redis::RedisBackend),
    /// A RabbitMQ queue.
    Amqp(amqp::AmqpBackend),
}

impl Backend {
    /// Connects to the backend `url` names.
    pub(crate) async fn connect(url: &QueueUrl, connect_timeout: Duration) -> Result<Backend> {
        match url.scheme {
            Scheme::Grpc => Ok(Backend::Grpc(
                grpc::GrpcBackend::connect(url, connect_timeout).await?,
            )),
            Scheme::Redis => Ok(Backend::Redis(
                redis::RedisBackend::connect(url, connect_timeout).await?,
            )),
            Scheme::Amqp => Ok(Backend::Amqp(
                amqp::AmqpBackend::connect(url, connect_timeout).await?,
            )),
        }
    }

    /// Whether queues of this backend can be sealed (and so ever be drained).
    pub(crate) fn can_seal(&self) -> bool {
        !matches!(self, Backend::Amqp(_))
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        match self {
            Backend::Grpc(b) => b.create_queue(queue, settings).await,
            Backend::Redis(b) => b.create_queue(queue, settings).await,
            Backend::Amqp(b) => b.create_queue(queue, settings).await,
        }
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        match self {
            Backend::Grpc(b) => b.get_queue(queue).await,
            Backend::Redis(b) => b.get_queue(queue).await,
            Backend::Amqp(b) => b.get_queue(queue).await,
        }
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        match self {
            Backend::Grpc(b) => b.list_queues().await,
            Backend::Redis(b) => b.list_queues().await,
            Backend::Amqp(b) => b.list_queues().await,
        }
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        match self {
            Backend::Grpc(b) => b.delete_queue(queue).await,
            Backend::Redis(b) => b.delete_queue(queue).await,
            Backend::Amqp(b) => b.delete_queue(queue).await,
        }
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        match self {
            Backend::Grpc(b) => b.purge(queue).await,
            Backend::Redis(b) => b.purge(queue).await,
            Backend::Amqp(b) => b.purge(queue).await,
        }
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        match self {
            Backend::Grpc(b) => b.seal(queue).await,
            Backend::Redis(b) => b.seal(queue).await,
            Backend::Amqp(b) => b.seal(queue).await,
        }
    }

    pub(crate) async fn enqueue(
        &self,
        queue: &QueueName,
        items: Vec<NewItem>,
        create: bool,
    ) -> Result<Vec<Pushed>> {
        match self {
            Backend::Grpc(b) => b.enqueue(queue, items, create).await,
            Backend::Redis(b) => b.enqueue(queue, items, create).await,
            Backend::Amqp(b) => b.enqueue(queue, items, create).await,
        }
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
            Backend::Grpc(b) => b.complete_then_lease(queue, complete, opts).await,
            Backend::Redis(b) => {
                if !complete.is_empty() {
                    b.complete(queue, complete).await?;
                }
                b.lease(queue, opts).await
            }
            Backend::Amqp(b) => {
                if !complete.is_empty() {
                    b.complete(queue, complete).await?;
                }
                b.lease(queue, opts).await
            }
        }
    }

    pub(crate) async fn renew(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<std::time::SystemTime>> {
        match self {
            Backend::Grpc(b) => b.renew(queue, tokens, lease).await,
            Backend::Redis(b) => b.renew(queue, tokens, lease).await,
            Backend::Amqp(b) => b.renew(queue, tokens, lease).await,
        }
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        match self {
            Backend::Grpc(b) => b.complete(queue, tokens).await,
            Backend::Redis(b) => b.complete(queue, tokens).await,
            Backend::Amqp(b) => b.complete(queue, tokens).await,
        }
    }

    pub(crate) async fn fail(
        &self,
        queue: &QueueName,
        tokens: &[LeaseToken],
        failure: &Failure,
    ) -> Result<u32> {
        match self {
            Backend::Grpc(b) => b.fail(queue, tokens, failure).await,
            Backend::Redis(b) => b.fail(queue, tokens, failure).await,
            Backend::Amqp(b) => b.fail(queue, tokens, failure).await,
        }
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        match self {
            Backend::Grpc(b) => b.release(queue, tokens).await,
            Backend::Redis(b) => b.release(queue, tokens).await,
            Backend::Amqp(b) => b.release(queue, tokens).await,
        }
    }

    pub(crate) async fn watch(
        &self,
        queue: &QueueName,
        until_drained: bool,
    ) -> Result<BoxStream<'static, Result<Stats>>> {
        match self {
            Backend::Grpc(b) => b.watch(queue, until_drained).await,
            Backend::Amqp(_) if until_drained => Err(Error::NotSupported {
                backend: "amqp",
                what: "watch a queue until it is drained: an AMQP queue cannot be sealed, so it is never drained".into(),
            }),
            Backend::Redis(_) | Backend::Amqp(_) => self.poll_watch(queue, until_drained).await,
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

    pub(crate) async fn list_dead(&self, queue: &QueueName, limit: u32) -> Result<Vec<DeadItem>> {
        match self {
            Backend::Grpc(b) => b.list_dead(queue, limit).await,
            Backend::Redis(b) => b.list_dead(queue, limit).await,
            Backend::Amqp(b) => b.list_dead(queue, limit).await,
        }
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, ids: &[ItemId]) -> Result<u64> {
        match self {
            Backend::Grpc(b) => b.requeue_dead(queue, ids).await,
            Backend::Redis(b) => b.requeue_dead(queue, ids).await,
            Backend::Amqp(b) => b.requeue_dead(queue, ids).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc() {
        let u = QueueUrl::parse("grpc://127.0.0.1:50051").expect("valid");
        assert_eq!(u.scheme, Scheme::Grpc);
        assert_eq!(u.authority, "127.0.0.1:50051");
        assert!(QueueUrl::parse("grpc://[::1]:7").is_ok());
        assert!(QueueUrl::parse("grpc://localhost:7/").is_ok());
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "127.0.0.1:50051",
            "http://x:1",
            "grpc://",
            "grpc://host",
            "grpc://host:port",
            "grpc://h:1/path",
        ] {
            assert!(
                matches!(QueueUrl::parse(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        let u = QueueUrl::parse("amqp://guest:secret@h:5672/%2f").expect("valid");
        assert_eq!(u.redacted(), "amqp://guest:***@h:5672/%2f");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("grpc://h:1"), "grpc://h:1");
    }

    #[test]
    fn parses_redis_and_amqp() {
        let u = QueueUrl::parse("redis://127.0.0.1:6379").expect("valid");
        assert_eq!(u.scheme, Scheme::Redis);
        let u = QueueUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(u.scheme, Scheme::Amqp);
    }
}
