//! The seam between the SDK and the systems that hold queues.
//!
//! A queue URL names its backend by scheme. `Backend` is one enum with one
//! variant per backend, so every operation is one `match` and adding a backend
//! is adding a variant (and the compiler lists every place that must learn it):
//!
//! | scheme | backend | status |
//! |---|---|---|
//! | `grpc://host:port` | the workq queue service | supported |
//! | `redis://host[:port]` | a Redis list laid out like the seeds' `rediswq.py` | not yet |
//! | `amqp://user:pass@host[:port]` | a RabbitMQ queue | not yet |

pub(crate) mod grpc;

use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, NewItem, Pushed, QueueInfo,
    QueueName, QueueSettings, Stats,
};

/// Which kind of system a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// `grpc://`: the workq queue service.
    Grpc,
    /// `redis://`: a `rediswq`-style Redis queue (not supported yet).
    Redis,
    /// `amqp://`: a RabbitMQ queue (not supported yet).
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
            url: url.to_owned(),
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

/// A connection to one backend. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub(crate) enum Backend {
    /// The workq queue service over gRPC.
    Grpc(grpc::GrpcBackend),
}

impl Backend {
    /// Connects to the backend `url` names.
    pub(crate) async fn connect(url: &QueueUrl, connect_timeout: Duration) -> Result<Backend> {
        match url.scheme {
            Scheme::Grpc => Ok(Backend::Grpc(
                grpc::GrpcBackend::connect(url, connect_timeout).await?,
            )),
            Scheme::Redis | Scheme::Amqp => Err(Error::UnsupportedScheme {
                url: url.url.clone(),
                scheme: url.scheme.to_string(),
            }),
        }
    }

    pub(crate) async fn create_queue(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
    ) -> Result<(QueueInfo, bool)> {
        match self {
            Backend::Grpc(b) => b.create_queue(queue, settings).await,
        }
    }

    pub(crate) async fn get_queue(&self, queue: &QueueName) -> Result<QueueInfo> {
        match self {
            Backend::Grpc(b) => b.get_queue(queue).await,
        }
    }

    pub(crate) async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        match self {
            Backend::Grpc(b) => b.list_queues().await,
        }
    }

    pub(crate) async fn delete_queue(&self, queue: &QueueName) -> Result<bool> {
        match self {
            Backend::Grpc(b) => b.delete_queue(queue).await,
        }
    }

    pub(crate) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        match self {
            Backend::Grpc(b) => b.purge(queue).await,
        }
    }

    pub(crate) async fn seal(&self, queue: &QueueName) -> Result<QueueInfo> {
        match self {
            Backend::Grpc(b) => b.seal(queue).await,
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
        }
    }

    pub(crate) async fn lease(&self, queue: &QueueName, opts: &LeaseOptions) -> Result<Leased> {
        match self {
            Backend::Grpc(b) => b.lease(queue, opts).await,
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
        }
    }

    pub(crate) async fn complete(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        match self {
            Backend::Grpc(b) => b.complete(queue, tokens).await,
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
        }
    }

    pub(crate) async fn release(&self, queue: &QueueName, tokens: &[LeaseToken]) -> Result<()> {
        match self {
            Backend::Grpc(b) => b.release(queue, tokens).await,
        }
    }

    pub(crate) async fn watch(
        &self,
        queue: &QueueName,
        until_drained: bool,
    ) -> Result<BoxStream<'static, Result<Stats>>> {
        match self {
            Backend::Grpc(b) => b.watch(queue, until_drained).await,
        }
    }

    pub(crate) async fn list_dead(&self, queue: &QueueName, limit: u32) -> Result<Vec<DeadItem>> {
        match self {
            Backend::Grpc(b) => b.list_dead(queue, limit).await,
        }
    }

    pub(crate) async fn requeue_dead(&self, queue: &QueueName, ids: &[ItemId]) -> Result<u64> {
        match self {
            Backend::Grpc(b) => b.requeue_dead(queue, ids).await,
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

    #[tokio::test]
    async fn other_backends_are_not_supported_yet() {
        for url in [
            "redis://127.0.0.1:6379",
            "amqp://guest:guest@127.0.0.1:5672",
        ] {
            let parsed = QueueUrl::parse(url).expect("parses");
            let err = Backend::connect(&parsed, Duration::from_secs(1))
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("not supported yet"), "{err}");
        }
    }
}
