//! [`Client`] (one connection to a backend) and [`Queue`] (one queue on it): the
//! low-level calls, one per operation of the contract.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures::stream::BoxStream;

use crate::backend::{Backend, QueueUrl};
use crate::credentials::ConnectOptions;
use crate::error::{Error, Result};
use crate::lease::LeaseHandle;
use crate::retry::{Backoff, retry};
use crate::types::{
    DeadItem, Failure, ItemId, LeaseOptions, LeaseToken, Leased, LeasedItem, NewItem, Page, Pushed,
    QueueInfo, QueueName, QueueSettings, RequeueDead, ServerInfo, Stats,
};

/// How long [`Client::connect`] waits for the server to accept a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most items per enqueue call when [`Queue::push`] is given many.
pub const PUSH_BATCH: usize = 1000;

/// Most payload bytes per enqueue call when [`Queue::push`] is given many (a
/// single larger item still goes, alone).
pub const PUSH_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A connection to the backend a queue URL names. Cloning is cheap and shares
/// the connection; a lost connection is re-established on the next call.
#[derive(Clone)]
pub struct Client {
    url: QueueUrl,
    backend: Backend,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url.redacted())
            .finish()
    }
}

impl Client {
    /// Connects to `url` (`grpc://host:port`, `grpcs://host:port` over TLS,
    /// `grpc://a:50051,b:50051` for replicas on a shared store,
    /// `redis://host:port`, `amqp://user:pass@host:port/vhost`), failing at
    /// once with [`Error::Unreachable`] when nothing answers within
    /// [`DEFAULT_CONNECT_TIMEOUT`]. The CA, token and client certificate come
    /// from the environment ([`ConnectOptions::from_env`]).
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with_timeout(url, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Like [`Client::connect`], waiting up to `timeout` for the server: refused
    /// connections are retried with back-off until then (a worker may start before
    /// its server does).
    pub async fn connect_with_timeout(url: &str, timeout: Duration) -> Result<Client> {
        Self::connect_with(url, timeout, &ConnectOptions::from_env()).await
    }

    /// Like [`Client::connect_with_timeout`], with the CA, token and client
    /// certificate given here (the environment is not read). A TLS handshake
    /// that fails is [`Error::Tls`] at once (not retried); a credential file
    /// that cannot be read is [`Error::Credentials`].
    pub async fn connect_with(
        url: &str,
        timeout: Duration,
        options: &ConnectOptions,
    ) -> Result<Client> {
        let url = QueueUrl::parse(url)?;
        let give_up = Instant::now() + timeout;
        let backend = retry(
            Backoff::for_connect(),
            give_up,
            || {
                let left = give_up.saturating_duration_since(Instant::now());
                Backend::connect(&url, left.max(Duration::from_millis(100)), options)
            },
            |e| matches!(e, Error::Unreachable { .. }),
            |e, _| tracing::debug!(error = %e, "server not there yet; retrying"),
        )
        .await?;
        Ok(Client { url, backend })
    }

    /// The URL this client was connected with.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    /// A handle on the queue `name` (validated here; nothing is sent).
    pub fn queue(&self, name: &str) -> Result<Queue> {
        Ok(Queue {
            name: QueueName::new(name)?,
            backend: self.backend.clone(),
        })
    }

    /// Every queue with its settings and counters, in name order (following
    /// the server's pages).
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        self.backend.list_queues().await
    }

    /// One page of queues, in name order: at most `page_size` (0: the
    /// server's largest page), from `page_token` (empty for the first page;
    /// then the previous page's [`Page::next_page_token`]). A queue created or
    /// deleted meanwhile may or may not show; every other shows exactly once.
    pub async fn list_queues_page(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<QueueInfo>> {
        self.backend.list_queues_page(page_size, page_token).await
    }

    /// What the queue server says of itself: version and limits (asked once
    /// per connection, on the first call; the SDK sizes its receive limit by
    /// it). [`Error::NotSupported`] on Redis and RabbitMQ, and from a server
    /// without `GetServerInfo`.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        self.backend.server_info().await
    }
}

/// One queue on a [`Client`]'s backend. Cloning is cheap.
///
/// Calls that carry lease tokens ([`renew`](Queue::renew), [`complete`](Queue::complete),
/// [`fail`](Queue::fail), [`release`](Queue::release)) are all-or-nothing: one stale
/// token refuses the whole call with [`Error::LeaseLost`]
/// and changes nothing.
#[derive(Clone)]
pub struct Queue {
    name: QueueName,
    backend: Backend,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("name", &self.name).finish()
    }
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &QueueName {
        &self.name
    }

    /// The queue service connection, when this queue is on one (the
    /// streaming forms are the queue service's).
    #[cfg(feature = "grpc")]
    pub(crate) fn grpc(&self) -> Option<&crate::backend::grpc::GrpcBackend> {
        match &self.backend {
            Backend::Grpc(b) => Some(b),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Creates the queue; `Ok(false)` when it already existed with these settings.
    pub async fn create(&self, settings: &QueueSettings) -> Result<bool> {
        Ok(self.backend.create_queue(&self.name, settings).await?.1)
    }

    /// The queue's settings and counters.
    pub async fn info(&self) -> Result<QueueInfo> {
        self.backend.get_queue(&self.name).await
    }

    /// The queue's counters.
    pub async fn stats(&self) -> Result<Stats> {
        Ok(self.info().await?.stats)
    }

    /// Adds items, creating the queue with default settings if it does not exist.
    /// Sent in calls of at most [`PUSH_BATCH`] items and [`PUSH_BATCH_BYTES`]
    /// bytes, each all-or-nothing; answers the ids in order once they are
    /// durable (see [`Queue::push_detailed`] to learn which were duplicates). When
    /// a call fails, the calls before it stand: the error is
    /// [`Error::PushInterrupted`], which says how many items were added.
    ///
    /// On the queue service each call carries a fresh `request_id` and is
    /// retried with it when its answer does not come, so a retry never adds
    /// the items twice while the server runs; across a server restart only
    /// idempotency keys ([`NewItem::idempotency_key`]) protect.
    pub async fn push<I>(&self, items: I) -> Result<Vec<ItemId>>
    where
        I: IntoIterator,
        I::Item: Into<NewItem>,
    {
        Ok(self
            .push_detailed(items)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect())
    }

    /// Like [`Queue::push`], answering for each item whether its idempotency key
    /// matched an item the queue already had.
    pub async fn push_detailed<I>(&self, items: I) -> Result<Vec<Pushed>>
    where
        I: IntoIterator,
        I::Item: Into<NewItem>,
    {
        let mut pushed = Vec::new();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut items = items.into_iter().map(Into::into).peekable();
        while let Some(item) = items.next() {
            bytes += item.payload.len();
            batch.push(item);
            let full = batch.len() >= PUSH_BATCH
                || items
                    .peek()
                    .is_some_and(|next| bytes + next.payload.len() > PUSH_BATCH_BYTES);
            if full || items.peek().is_none() {
                let sent = std::mem::take(&mut batch);
                bytes = 0;
                match self.backend.enqueue(&self.name, sent, true).await {
                    Ok(new) => pushed.extend(new),
                    Err(source) if pushed.is_empty() => return Err(source),
                    Err(source) => {
                        return Err(Error::PushInterrupted {
                            queue: self.name.to_string(),
                            pushed: pushed.len(),
                            source: Box::new(source),
                        });
                    }
                }
            }
        }
        Ok(pushed)
    }

    /// Changes the queue's settings: those set in `settings` (`Some`) take
    /// the new value, the others stay. Items already leased or delayed keep
    /// their deadlines. Answers the queue as it is now. The queue service
    /// only ([`Error::NotSupported`] elsewhere).
    pub async fn update(&self, settings: &QueueSettings) -> Result<QueueInfo> {
        self.backend.update_queue(&self.name, settings).await
    }

    /// Deletes the queue and every item in it; `Ok(false)` when there was none.
    pub async fn delete(&self) -> Result<bool> {
        self.backend.delete_queue(&self.name).await
    }

    /// Removes every pending and delayed item (leased, completed and dead ones
    /// stay); answers how many were removed.
    pub async fn purge(&self) -> Result<u64> {
        self.backend.purge(&self.name).await
    }

    /// Seals the queue: no more items will come. Answers the counters after sealing.
    pub async fn seal(&self) -> Result<Stats> {
        Ok(self.backend.seal(&self.name).await?.stats)
    }

    /// Leases up to `opts.max_items` items, waiting up to `opts.wait` for a first one.
    /// The answer also says whether the queue is drained or empty.
    pub async fn lease(&self, opts: &LeaseOptions) -> Result<Leased> {
        self.backend.lease(&self.name, opts).await
    }

    /// Completes `tokens` (all or nothing, as [`Queue::complete`]), then leases
    /// as [`Queue::lease`]: a worker hands in what it finished and takes its
    /// next items in one round trip (two calls on Redis and RabbitMQ). If the
    /// completion is refused, nothing is leased and its error is returned.
    pub async fn complete_then_lease(
        &self,
        tokens: &[LeaseToken],
        opts: &LeaseOptions,
    ) -> Result<Leased> {
        self.backend
            .complete_then_lease(&self.name, tokens, opts)
            .await
    }

    /// Extends leases by `lease` (`None`: the queue's default); answers the new
    /// deadlines in order.
    pub async fn renew(
        &self,
        tokens: &[LeaseToken],
        lease: Option<Duration>,
    ) -> Result<Vec<SystemTime>> {
        self.backend.renew(&self.name, tokens, lease).await
    }

    /// Completes leased items.
    pub async fn complete(&self, tokens: &[LeaseToken]) -> Result<()> {
        self.backend.complete(&self.name, tokens).await
    }

    /// Completes each of `tokens` on its own: one stale token does not refuse
    /// the others. Answers one outcome per token, in order (a refused one is
    /// [`Error::LeaseLost`] with its reason); `Err` when the call as a whole
    /// failed. One call on the queue service; on Redis and RabbitMQ the batch,
    /// then each token alone if one was refused.
    pub async fn complete_each(&self, tokens: &[LeaseToken]) -> Result<Vec<Result<()>>> {
        self.backend.complete_each(&self.name, tokens).await
    }

    /// Fails leased items; answers how many went dead.
    pub async fn fail(&self, tokens: &[LeaseToken], failure: &Failure) -> Result<u32> {
        self.backend.fail(&self.name, tokens, failure).await
    }

    /// Gives leased items back at once, counting no attempt.
    pub async fn release(&self, tokens: &[LeaseToken]) -> Result<()> {
        self.backend.release(&self.name, tokens).await
    }

    /// The queue's counters now, then on every change. With `until_drained` the
    /// stream ends once the queue is drained.
    pub async fn watch(&self, until_drained: bool) -> Result<BoxStream<'static, Result<Stats>>> {
        self.backend.watch(&self.name, until_drained).await
    }

    /// Dead items with the reason each died, in id order: at most `limit`
    /// (0: all of them), following the server's pages.
    pub async fn dead(&self, limit: u32) -> Result<Vec<DeadItem>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let left = match limit {
                0 => 0,
                n => n.saturating_sub(u32::try_from(all.len()).unwrap_or(u32::MAX)),
            };
            let page = self
                .backend
                .list_dead_page(&self.name, left, &token)
                .await?;
            all.extend(page.items);
            if limit > 0 && all.len() >= limit as usize {
                all.truncate(limit as usize);
                return Ok(all);
            }
            match page.next_page_token {
                Some(next) if next != token => token = next,
                _ => return Ok(all),
            }
        }
    }

    /// One page of dead items, in id order: at most `page_size` (0: the
    /// server's largest page), from `page_token` (empty for the first page;
    /// then the previous page's [`Page::next_page_token`]).
    pub async fn dead_page(&self, page_size: u32, page_token: &str) -> Result<Page<DeadItem>> {
        self.backend
            .list_dead_page(&self.name, page_size, page_token)
            .await
    }

    /// Moves dead items back to pending with their attempts reset: every
    /// one ([`RequeueDead::All`]) or those named; answers how many moved.
    pub async fn requeue_dead(&self, which: RequeueDead) -> Result<u64> {
        self.backend.requeue_dead(&self.name, &which).await
    }

    /// Whether this queue's backend can seal it (an AMQP queue cannot, so it is
    /// never drained).
    pub fn can_seal(&self) -> bool {
        self.backend.can_seal()
    }

    /// Holds a leased item: renews its lease in the background every third of
    /// `lease` until the returned handle is completed, failed, released or dropped.
    pub fn hold(&self, item: LeasedItem, lease: Duration) -> LeaseHandle {
        LeaseHandle::new(self.clone(), item, lease)
    }
}
