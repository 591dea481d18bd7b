//! [`Producer`]: pushing many batches fast, with back-pressure.
//!
//! On the queue service a producer holds one `EnqueueStream`: each
//! [`Producer::send`] puts its batch on the stream and returns when the server
//! answered that the batch is durable, so no call is set up per batch. Sends
//! may run at once (a producer is cheap to clone, or drive several sends
//! with `futures`' `buffered`); at most [`Producer::with_in_flight`] batches are
//! unanswered at once, and further sends wait: the producer goes as fast as
//! the server acknowledges, never faster.
//!
//! A stream that breaks (a lost connection, a server restart) is opened again
//! with back-off, and the unanswered batches are sent again with the same
//! `request_id`, so the server adds each once while it runs (across a restart
//! only idempotency keys protect, as for [`Queue::push`]). A batch unanswered
//! for 30 s of trying fails with the last error.
//!
//! On Redis and RabbitMQ, a send is [`Queue::push_detailed`].
//!
//! ```no_run
//! # async fn run(queue: worker_sdk::Queue) -> worker_sdk::Result<()> {
//! use futures::{StreamExt, TryStreamExt};
//! let producer = queue.producer();
//! let batches = (0..100u32).map(|b| (b * 100..(b + 1) * 100).map(|n| n.to_string()).collect::<Vec<_>>());
//! let pushed: Vec<_> = futures::stream::iter(batches)
//!     .map(|batch| producer.send(batch))
//!     .buffered(8) // 8 batches in flight, answered in order
//!     .try_collect()
//!     .await?;
//! assert_eq!(pushed.len(), 100);
//! # Ok(()) }
//! ```

// Without the queue service a send is `push_detailed`: the stream parts rest.
#![cfg_attr(not(feature = "grpc"), allow(dead_code, unused_imports))]

#[cfg(feature = "grpc")]
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio::time::Instant;

use crate::client::Queue;
#[cfg_attr(not(feature = "grpc"), allow(unused_imports))]
use crate::error::{Error, Result};
use crate::types::{NewItem, Pushed};

/// Batches unanswered at once, by default.
pub const DEFAULT_IN_FLIGHT: usize = 8;

/// How long a batch is tried again before its send fails.
#[cfg(feature = "grpc")]
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Pushes batches to one queue; see the [module docs](crate::producer).
#[derive(Clone)]
pub struct Producer {
    queue: Queue,
    in_flight: usize,
    /// The stream's driver, started by the first send.
    driver: Arc<OnceCell<mpsc::Sender<Batch>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("queue", self.queue.name())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// A batch handed to the driver, with where its answer goes.
struct Batch {
    items: Vec<NewItem>,
    reply: oneshot::Sender<Result<Vec<Pushed>>>,
}

impl Queue {
    /// A [`Producer`] for this queue (created with default settings if it
    /// does not exist, as [`Queue::push`] does).
    pub fn producer(&self) -> Producer {
        Producer {
            queue: self.clone(),
            in_flight: DEFAULT_IN_FLIGHT,
            driver: Arc::new(OnceCell::new()),
        }
    }
}

impl Producer {
    /// At most `n` batches unanswered at once (at least 1; default
    /// [`DEFAULT_IN_FLIGHT`]). Set before the first send.
    pub fn with_in_flight(mut self, n: usize) -> Self {
        self.in_flight = n.max(1);
        self
    }

    /// Pushes one batch, all or nothing, and returns when it is durable: one
    /// [`Pushed`] per item, in order. A batch must fit the server's limits
    /// (`max_batch_items`, 1000 by default, and its message size); on the
    /// queue service, an empty batch answers at once.
    pub async fn send<I>(&self, items: I) -> Result<Vec<Pushed>>
    where
        I: IntoIterator,
        I::Item: Into<NewItem>,
    {
        let items: Vec<NewItem> = items.into_iter().map(Into::into).collect();
        if items.is_empty() {
            return Ok(Vec::new());
        }
        #[cfg(feature = "grpc")]
        if self.queue.grpc().is_some() {
            let driver = self.driver.get_or_init(|| async { self.start() }).await;
            let (reply, answer) = oneshot::channel();
            driver
                .send(Batch { items, reply })
                .await
                .map_err(|_| Error::Protocol("the producer's stream task ended".into()))?;
            return answer
                .await
                .map_err(|_| Error::Protocol("the producer's stream task ended".into()))?;
        }
        self.queue.push_detailed(items).await
    }

    /// Starts the task that owns the stream.
    #[cfg(feature = "grpc")]
    fn start(&self) -> mpsc::Sender<Batch> {
        let (tx, rx) = mpsc::channel(self.in_flight);
        tokio::spawn(drive(self.queue.clone(), self.in_flight, rx));
        tx
    }
}

/// A batch sent and not yet answered.
#[cfg(feature = "grpc")]
struct Unanswered {
    request_id: String,
    items: crate::backend::grpc::EnqueueBatch,
    reply: oneshot::Sender<Result<Vec<Pushed>>>,
    since: Instant,
}

/// Owns the `EnqueueStream`: sends what comes on `rx`, at most `in_flight`
/// unanswered, and hands each answer to its sender. Ends when every
/// producer is gone and every batch answered.
#[cfg(feature = "grpc")]
async fn drive(queue: Queue, in_flight: usize, mut rx: mpsc::Receiver<Batch>) {
    use crate::backend::grpc::EnqueueStream;
    use crate::finish::retry_delay;
    use crate::retry::Backoff;

    let Some(grpc) = queue.grpc().cloned() else {
        return;
    };
    let name = queue.name().clone();
    let mut stream: Option<EnqueueStream> = None;
    let mut unanswered: BTreeMap<i64, Unanswered> = BTreeMap::new();
    let mut next_sequence: i64 = 0;
    let mut backoff = Backoff::for_server();
    let mut reconnect_at: Option<Instant> = None;
    let mut closed = false;

    loop {
        if closed && unanswered.is_empty() {
            return;
        }
        // (Re)open and resend what is unanswered, in order.
        if stream.is_none() && reconnect_at.is_none_or(|t| t <= Instant::now()) {
            let now = Instant::now();
            let expired: Vec<i64> = unanswered
                .iter()
                .filter(|(_, u)| now.duration_since(u.since) > GIVE_UP_AFTER)
                .map(|(s, _)| *s)
                .collect();
            for s in expired {
                if let Some(u) = unanswered.remove(&s) {
                    let _ = u.reply.send(Err(Error::Unavailable {
                        code: tonic::Code::Unavailable,
                        message: format!(
                            "no answer for a batch of {} items after {GIVE_UP_AFTER:?} of trying",
                            u.items.len()
                        ),
                        retry_after: None,
                    }));
                }
            }
            match grpc.open_enqueue(&name, true).await {
                Ok(mut s) => {
                    let mut ok = true;
                    for (seq, u) in &unanswered {
                        if let Err(e) = s.send(*seq, &u.request_id, &u.items).await {
                            tracing::warn!(queue = %name, error = %e, "resending on a new enqueue stream failed");
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        stream = Some(s);
                        reconnect_at = None;
                    } else {
                        reconnect_at = Some(Instant::now() + backoff.next_delay());
                        continue;
                    }
                }
                Err(e) => {
                    reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    continue;
                }
            }
        }
        let room = !closed && unanswered.len() < in_flight;
        tokio::select! {
            batch = rx.recv(), if room => match batch {
                None => closed = true,
                Some(b) => {
                    next_sequence += 1;
                    let u = Unanswered {
                        request_id: crate::random::random_uuid(),
                        items: crate::backend::grpc::EnqueueBatch::new(b.items),
                        reply: b.reply,
                        since: Instant::now(),
                    };
                    if let Some(s) = stream.as_mut()
                        && let Err(e) = s.send(next_sequence, &u.request_id, &u.items).await
                    {
                        tracing::warn!(queue = %name, error = %e, "enqueue stream lost; opening another");
                        stream = None;
                        reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                    }
                    unanswered.insert(next_sequence, u);
                }
            },
            answer = async {
                match stream.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            }, if !unanswered.is_empty() => match answer {
                Ok(Some(a)) => {
                    backoff.reset();
                    if let Some(u) = unanswered.remove(&a.sequence) {
                        let _ = u.reply.send(a.outcome);
                    }
                }
                Ok(None) => {
                    tracing::warn!(queue = %name, "the server ended the enqueue stream; opening another");
                    stream = None;
                    reconnect_at = Some(Instant::now() + backoff.next_delay());
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(queue = %name, error = %e, "enqueue stream lost; opening another");
                    stream = None;
                    reconnect_at = Some(Instant::now() + retry_delay(&mut backoff, &e));
                }
                Err(e) => {
                    // Every batch in flight is refused with the stream.
                    for (_, u) in std::mem::take(&mut unanswered) {
                        let _ = u.reply.send(Err(e.replicate()));
                    }
                    stream = None;
                }
            },
            () = async {
                match reconnect_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if stream.is_none() && !unanswered.is_empty() => {}
        }
    }
}
