//! One workload driver per system, with the same three operations: enqueue a
//! batch, lease-and-complete up to a batch (waiting a little for the first
//! item), and wait for one item (for latency).
//!
//! Each speaks its system's own protocol the way its users do:
//! - workq: the `workq.v1` gRPC API (batch enqueue, batch lease, batch complete);
//! - Redis: the tutorial's `rediswq.py` protocol — `RPUSH`, `BRPOPLPUSH` into
//!   `Q:processing` plus a `SETEX` lease key, then `LREM` + `DEL` to complete;
//!   it has no batch lease, so it takes one item per round trip;
//! - RabbitMQ: a durable queue, persistent messages published with publisher
//!   confirms, consumed with manual acks and a prefetch of the batch size;
//! - NATS JetStream: a work-queue-retention file stream, publishes awaited for
//!   their acks, a durable pull consumer fetching batches with explicit acks.

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use sha2::{Digest, Sha224};
use std::time::Duration;

/// Which system, and where it is.
#[derive(Debug, Clone)]
pub enum System {
    /// workq over gRPC at this URL (`http://host:port`), completing leases
    /// this way.
    Workq(String, AckMode),
    /// Redis at this URL, rediswq layout.
    Redis(String),
    /// RabbitMQ at this AMQP URL.
    Amqp(String),
    /// NATS JetStream at this address.
    Nats(String),
}

/// How workq is driven: the streaming forms, or unary calls with one of three
/// ways to hand in finished items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum AckMode {
    /// As the worker SDK does: a background task sends whatever tokens
    /// gathered as one Complete call while the previous one is in flight;
    /// leasing goes on meanwhile.
    Background,
    /// With the next lease call (`complete_tokens`): one round trip a batch,
    /// but each lease waits for the previous batch's completion to be durable.
    WithLease,
    /// Lease, then Complete, one after the other: two round trips a batch.
    Separate,
    /// The streaming forms: producers send batches up an `EnqueueStream`;
    /// consumers grant credit and hand in completions on a `Work` stream and
    /// get items pushed down it. No call per batch.
    Stream,
}

/// A producer's `EnqueueStream`: one batch in flight at a time, as a
/// producer calling Enqueue has.
pub struct PushStream {
    tx: tokio::sync::mpsc::Sender<workq_proto::v1::EnqueueStreamRequest>,
    rx: tonic::Streaming<workq_proto::v1::EnqueueStreamResponse>,
    next_ref: u64,
}

impl PushStream {
    async fn push(
        stream: &mut Option<PushStream>,
        client: &mut WorkqClient,
        queue: &str,
        items: Vec<workq_proto::v1::NewItem>,
    ) -> Result<()> {
        let r#ref = stream.as_ref().map_or(1, |p| p.next_ref);
        let req = workq_proto::v1::EnqueueStreamRequest {
            queue: queue.into(),
            create_queue: false,
            items,
            r#ref,
        };
        let p = match stream {
            Some(p) => {
                p.tx.send(req)
                    .await
                    .map_err(|_| anyhow!("enqueue stream closed"))?;
                p
            }
            None => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                tx.send(req)
                    .await
                    .map_err(|_| anyhow!("enqueue stream closed"))?;
                let rx = client
                    .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                stream.insert(PushStream {
                    tx,
                    rx,
                    next_ref: 1,
                })
            }
        };
        p.next_ref += 1;
        let answer =
            p.rx.message()
                .await?
                .ok_or_else(|| anyhow!("enqueue stream ended"))?;
        if answer.code != 0 || answer.r#ref != r#ref {
            anyhow::bail!("enqueue refused: {} (ref {})", answer.message, answer.r#ref);
        }
        Ok(())
    }
}

/// A consumer's `Work` stream.
pub struct WorkStream {
    /// Our side; `None` once closed.
    tx: Option<tokio::sync::mpsc::Sender<workq_proto::v1::WorkRequest>>,
    rx: tonic::Streaming<workq_proto::v1::WorkResponse>,
    /// Items granted and not yet received.
    open_credit: usize,
    /// Completions sent and not yet answered, by `ref`.
    unanswered: std::collections::HashSet<u64>,
    next_ref: u64,
    drained: bool,
}

impl WorkStream {
    async fn open(client: &mut WorkqClient, queue: &str) -> Result<WorkStream> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(workq_proto::v1::WorkRequest {
            queue: queue.into(),
            lease_ms: 60_000,
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("work stream closed"))?;
        let rx = client
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(WorkStream {
            tx: Some(tx),
            rx,
            open_credit: 0,
            unanswered: Default::default(),
            next_ref: 0,
            drained: false,
        })
    }

    /// Grants credit up to `max` open and hands in `complete`.
    async fn send(&mut self, max: usize, complete: Vec<String>) -> Result<()> {
        let credit = max.saturating_sub(self.open_credit);
        if credit == 0 && complete.is_empty() {
            return Ok(());
        }
        self.next_ref += 1;
        if !complete.is_empty() {
            self.unanswered.insert(self.next_ref);
        }
        self.open_credit += credit;
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("work stream closed"))?
            .send(workq_proto::v1::WorkRequest {
                credit: u32::try_from(credit).unwrap_or(u32::MAX),
                complete_tokens: complete,
                r#ref: self.next_ref,
                ..Default::default()
            })
            .await
            .map_err(|_| anyhow!("work stream closed"))
    }

    /// Takes in the answer to a completion, if the message carries one.
    fn answered(&mut self, done: Option<workq_proto::v1::CompletionResult>) -> Result<()> {
        if let Some(done) = done {
            if done.code != 0 {
                anyhow::bail!("completion refused: {}", done.message);
            }
            self.unanswered.remove(&done.r#ref);
        }
        Ok(())
    }

    /// The next message: items (possibly none), after taking in answers.
    async fn receive(&mut self, wait: Duration) -> Result<Vec<workq_proto::v1::LeasedItem>> {
        loop {
            if self.drained {
                return Ok(Vec::new());
            }
            let Ok(m) = tokio::time::timeout(wait, self.rx.message()).await else {
                return Ok(Vec::new());
            };
            let Some(m) = m? else {
                self.drained = true;
                return Ok(Vec::new());
            };
            self.answered(m.completed)?;
            self.drained |= m.drained;
            if !m.items.is_empty() {
                self.open_credit = self.open_credit.saturating_sub(m.items.len());
                return Ok(m.items);
            }
        }
    }
}

/// The background completion task of one workq consumer.
pub struct Acker {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
    task: tokio::task::JoinHandle<Result<()>>,
    /// Tokens handed over and not yet completed.
    unacked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Acker {
    fn start(mut client: WorkqClient, queue: String) -> Acker {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        let unacked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let left = unacked.clone();
        let task = tokio::spawn(async move {
            while let Some(mut tokens) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    tokens.extend(more);
                }
                // The server's limit per call.
                for chunk in tokens.chunks(1000) {
                    client
                        .complete(workq_proto::v1::CompleteRequest {
                            queue: queue.clone(),
                            lease_tokens: chunk.to_vec(),
                        })
                        .await?;
                    left.fetch_sub(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                }
            }
            Ok(())
        });
        Acker { tx, task, unacked }
    }
}

type WorkqClient =
    workq_proto::v1::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// One connection to a system, for one queue. (Few exist, and each lives
/// for a whole measurement: the size difference of the variants is moot.)
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Workq {
        client: WorkqClient,
        queue: String,
        mode: AckMode,
        /// `WithLease`: leases taken and not yet completed, handed in with
        /// the next lease call or by [`Conn::finish`].
        held: Vec<String>,
        /// `Background`: the completion task, started on first use.
        acker: Option<Acker>,
        /// `Stream`: the work stream, opened on first use.
        stream: Option<WorkStream>,
        /// `Stream`: the enqueue stream, opened on first use.
        push: Option<PushStream>,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        queue: String,
        session: String,
    },
    Amqp {
        channel: lapin::Channel,
        queue: String,
        consumer: Option<lapin::Consumer>,
    },
    Nats {
        js: async_nats::jetstream::Context,
        stream: String,
        consumer: Option<async_nats::jetstream::consumer::PullConsumer>,
    },
}

fn amqp_name(s: &str) -> lapin::types::ShortString {
    s.into()
}

impl System {
    /// Creates (or recreates, empty) the queue.
    pub async fn reset(&self, queue: &str) -> Result<()> {
        self.drop_queue(queue).await?;
        let mut c = self.connect(queue).await?;
        match &mut c {
            Conn::Workq { client, queue, .. } => {
                client
                    .create_queue(workq_proto::v1::CreateQueueRequest {
                        name: queue.clone(),
                        settings: None,
                    })
                    .await?;
            }
            // A Redis list exists once something is pushed.
            Conn::Redis { .. } => {}
            Conn::Amqp { channel, queue, .. } => {
                channel
                    .queue_declare(
                        amqp_name(queue),
                        lapin::options::QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await?;
            }
            Conn::Nats { js, stream, .. } => {
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{stream}.items")],
                    retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("create stream: {e}"))?;
                let s = js.get_stream(&*stream).await.map_err(|e| anyhow!("{e}"))?;
                s.create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some("workers".into()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("create consumer: {e}"))?;
            }
        }
        Ok(())
    }

    /// Removes the queue.
    pub async fn drop_queue(&self, queue: &str) -> Result<()> {
        let mut c = self.connect(queue).await?;
        match &mut c {
            Conn::Workq { client, queue, .. } => {
                let _ = client
                    .delete_queue(workq_proto::v1::DeleteQueueRequest {
                        name: queue.clone(),
                    })
                    .await;
            }
            Conn::Redis { conn, queue, .. } => {
                redis::cmd("DEL")
                    .arg(&*queue)
                    .arg(format!("{queue}:processing"))
                    .query_async::<()>(conn)
                    .await?;
            }
            Conn::Amqp { channel, queue, .. } => {
                let _ = channel
                    .queue_delete(amqp_name(queue), Default::default())
                    .await;
            }
            Conn::Nats { js, stream, .. } => {
                let _ = js.delete_stream(&*stream).await;
            }
        }
        Ok(())
    }

    /// A new connection working `queue`.
    pub async fn connect(&self, queue: &str) -> Result<Conn> {
        Ok(match self {
            System::Workq(url, mode) => Conn::Workq {
                client: workq_proto::v1::queue_service_client::QueueServiceClient::connect(
                    url.clone(),
                )
                .await
                .with_context(|| format!("connect to workq at {url}"))?
                .max_decoding_message_size(64 << 20),
                queue: queue.into(),
                mode: *mode,
                held: Vec::new(),
                acker: None,
                stream: None,
                push: None,
            },
            System::Redis(url) => Conn::Redis {
                // No response timeout: BRPOPLPUSH blocks for whole seconds.
                conn: redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection_with_config(
                        &redis::AsyncConnectionConfig::new().set_response_timeout(None),
                    )
                    .await
                    .with_context(|| format!("connect to Redis at {url}"))?,
                queue: queue.into(),
                session: uuid::Uuid::new_v4().to_string(),
            },
            System::Amqp(url) => {
                let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                    .await
                    .with_context(|| format!("connect to RabbitMQ at {url}"))?;
                let channel = conn.create_channel().await?;
                channel.confirm_select(Default::default()).await?;
                Conn::Amqp {
                    channel,
                    queue: queue.into(),
                    consumer: None,
                }
            }
            System::Nats(addr) => {
                let client = async_nats::connect(addr.as_str())
                    .await
                    .with_context(|| format!("connect to NATS at {addr}"))?;
                Conn::Nats {
                    js: async_nats::jetstream::new(client),
                    stream: queue.into(),
                    consumer: None,
                }
            }
        })
    }
}

fn lease_key(queue: &str, item: &[u8]) -> String {
    let digest = Sha224::digest(item);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{queue}:leased_by_session:{hex}")
}

impl Conn {
    /// Enqueues `items`; returns once the system acknowledged them.
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        match self {
            Conn::Workq {
                client,
                queue,
                mode,
                push,
                ..
            } => {
                let items = items
                    .into_iter()
                    .map(|p| workq_proto::v1::NewItem {
                        payload: p.into(),
                        ..Default::default()
                    })
                    .collect();
                if *mode == AckMode::Stream {
                    PushStream::push(push, client, queue, items).await?;
                } else {
                    client
                        .enqueue(workq_proto::v1::EnqueueRequest {
                            queue: queue.clone(),
                            items,
                            create_queue: false,
                        })
                        .await?;
                }
            }
            Conn::Redis { conn, queue, .. } => {
                redis::cmd("RPUSH")
                    .arg(&*queue)
                    .arg(items)
                    .query_async::<()>(conn)
                    .await?;
            }
            Conn::Amqp { channel, queue, .. } => {
                let mut confirms = Vec::with_capacity(items.len());
                for p in &items {
                    confirms.push(
                        channel
                            .basic_publish(
                                amqp_name(""),
                                amqp_name(queue),
                                Default::default(),
                                p,
                                lapin::BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?,
                    );
                }
                for c in confirms {
                    c.await?;
                }
            }
            Conn::Nats { js, stream, .. } => {
                let subject = format!("{stream}.items");
                let mut acks = Vec::with_capacity(items.len());
                for p in items {
                    acks.push(
                        js.publish(subject.clone(), p.into())
                            .await
                            .map_err(|e| anyhow!("publish: {e}"))?,
                    );
                }
                for a in acks {
                    a.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Completes whatever this connection still holds (workq hands its
    /// completions in with the next lease call).
    pub async fn finish(&mut self) -> Result<()> {
        if let Conn::Workq {
            client,
            queue,
            held,
            acker,
            stream,
            ..
        } = self
        {
            if stream.is_none() && !held.is_empty() {
                client
                    .complete(workq_proto::v1::CompleteRequest {
                        queue: queue.clone(),
                        lease_tokens: std::mem::take(held),
                    })
                    .await?;
            }
            if let Some(a) = acker.take() {
                drop(a.tx);
                a.task.await??;
            }
            if let Some(mut w) = stream.take() {
                // Hand in the last completions, close our side, and read until
                // every completion is answered (the server then ends it).
                w.send(0, std::mem::take(held)).await?;
                w.tx = None;
                while !w.unanswered.is_empty() {
                    let Some(m) = w.rx.message().await? else {
                        anyhow::bail!("work stream ended with completions unanswered");
                    };
                    w.answered(m.completed)?;
                }
            }
        }
        Ok(())
    }

    /// Whether this connection holds leases it has not completed yet.
    pub fn holds(&self) -> bool {
        match self {
            Conn::Workq {
                held,
                acker,
                stream,
                ..
            } => {
                !held.is_empty()
                    || stream.as_ref().is_some_and(|w| !w.unanswered.is_empty())
                    || acker
                        .as_ref()
                        .is_some_and(|a| a.unacked.load(std::sync::atomic::Ordering::SeqCst) > 0)
            }
            _ => false,
        }
    }

    /// Says no more items will come, where the system can (workq's seal:
    /// waiting consumers answer at once when the queue is drained).
    pub async fn seal(&mut self) -> Result<()> {
        if let Conn::Workq { client, queue, .. } = self {
            client
                .seal_queue(workq_proto::v1::SealQueueRequest {
                    name: queue.clone(),
                })
                .await?;
        }
        Ok(())
    }

    /// Leases up to `max` items, waiting up to `wait` for the first, and
    /// completes them (workq: completes the previous batch in the same call,
    /// see [`Conn::finish`]). Returns their payloads and when the lease answered
    /// (ns since the Unix epoch), before the completion.
    pub async fn take(&mut self, max: usize, wait: Duration) -> Result<(Vec<Vec<u8>>, u64)> {
        let mut leased_at = 0;
        let items = self.take_inner(max, wait, &mut leased_at).await?;
        Ok((items, leased_at))
    }

    async fn take_inner(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        match self {
            Conn::Workq {
                client,
                queue,
                mode: AckMode::Stream,
                held,
                stream,
                ..
            } => {
                if stream.is_none() {
                    *stream = Some(WorkStream::open(client, queue).await?);
                }
                let Some(w) = stream.as_mut() else {
                    return Ok(Vec::new());
                };
                // The previous batch's completion and new credit go up at
                // once; the answer to the completion comes when it is durable,
                // without holding up the items.
                w.send(max, std::mem::take(held)).await?;
                // Items are pushed as they come: a zero wait is no reason to
                // spin.
                let items = w.receive(wait.max(Duration::from_millis(100))).await?;
                *leased_at = crate::now_ns();
                held.extend(items.iter().map(|i| i.lease_token.clone()));
                Ok(items.into_iter().map(|i| i.payload.to_vec()).collect())
            }
            Conn::Workq {
                client,
                queue,
                mode,
                held,
                acker,
                ..
            } => {
                let l = client
                    .lease(workq_proto::v1::LeaseRequest {
                        queue: queue.clone(),
                        max_items: u32::try_from(max).unwrap_or(u32::MAX),
                        lease_ms: 60_000,
                        wait_ms,
                        // WithLease: the previous batch's completion rides
                        // on this call.
                        complete_tokens: std::mem::take(held),
                    })
                    .await?
                    .into_inner();
                *leased_at = crate::now_ns();
                let tokens: Vec<String> = l.items.iter().map(|i| i.lease_token.clone()).collect();
                if !tokens.is_empty() {
                    match mode {
                        AckMode::WithLease | AckMode::Stream => *held = tokens,
                        AckMode::Separate => {
                            client
                                .complete(workq_proto::v1::CompleteRequest {
                                    queue: queue.clone(),
                                    lease_tokens: tokens,
                                })
                                .await?;
                        }
                        AckMode::Background => {
                            let a = acker
                                .get_or_insert_with(|| Acker::start(client.clone(), queue.clone()));
                            a.unacked
                                .fetch_add(tokens.len(), std::sync::atomic::Ordering::SeqCst);
                            if a.tx.send(tokens).is_err()
                                && let Some(a) = acker.take()
                            {
                                a.task.await??;
                                anyhow::bail!("the completion task stopped");
                            }
                        }
                    }
                }
                Ok(l.items.into_iter().map(|i| i.payload.to_vec()).collect())
            }
            Conn::Redis {
                conn,
                queue,
                session,
            } => {
                // rediswq.lease(): one item per call; BRPOPLPUSH takes whole seconds.
                let processing = format!("{queue}:processing");
                let item: Option<Vec<u8>> = if wait.is_zero() {
                    redis::cmd("RPOPLPUSH")
                        .arg(&*queue)
                        .arg(&processing)
                        .query_async(conn)
                        .await?
                } else {
                    redis::cmd("BRPOPLPUSH")
                        .arg(&*queue)
                        .arg(&processing)
                        .arg(wait.as_secs().max(1))
                        .query_async(conn)
                        .await?
                };
                let Some(item) = item else {
                    return Ok(Vec::new());
                };
                let key = lease_key(queue, &item);
                *leased_at = crate::now_ns();
                redis::cmd("SETEX")
                    .arg(&key)
                    .arg(60)
                    .arg(&*session)
                    .query_async::<()>(conn)
                    .await?;
                // rediswq.complete()
                redis::cmd("LREM")
                    .arg(&processing)
                    .arg(0)
                    .arg(&item)
                    .query_async::<()>(conn)
                    .await?;
                redis::cmd("DEL").arg(&key).query_async::<()>(conn).await?;
                Ok(vec![item])
            }
            Conn::Amqp {
                channel,
                queue,
                consumer,
            } => {
                if consumer.is_none() {
                    channel
                        .basic_qos(u16::try_from(max).unwrap_or(u16::MAX), Default::default())
                        .await?;
                    *consumer = Some(
                        channel
                            .basic_consume(
                                amqp_name(queue),
                                amqp_name(&uuid::Uuid::new_v4().to_string()),
                                Default::default(),
                                Default::default(),
                            )
                            .await?,
                    );
                }
                let Some(c) = consumer.as_mut() else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                let mut last = None;
                let first =
                    tokio::time::timeout(wait.max(Duration::from_millis(1)), c.next()).await;
                let mut next = match first {
                    Ok(Some(d)) => Some(d),
                    _ => return Ok(out),
                };
                *leased_at = crate::now_ns();
                while let Some(d) = next.take() {
                    let d = d?;
                    last = Some(d.acker.clone());
                    out.push(d.data);
                    if out.len() >= max {
                        break;
                    }
                    next = match futures::FutureExt::now_or_never(c.next()) {
                        Some(Some(d)) => Some(d),
                        _ => None,
                    };
                }
                if let Some(acker) = last {
                    acker
                        .ack(lapin::options::BasicAckOptions { multiple: true })
                        .await?;
                }
                Ok(out)
            }
            Conn::Nats {
                js,
                stream,
                consumer,
            } => {
                if consumer.is_none() {
                    let s = js.get_stream(&*stream).await.map_err(|e| anyhow!("{e}"))?;
                    *consumer = Some(
                        s.get_consumer("workers")
                            .await
                            .map_err(|e| anyhow!("get consumer: {e}"))?,
                    );
                }
                let Some(c) = consumer.as_ref() else {
                    return Ok(Vec::new());
                };
                let mut batch = c
                    .batch()
                    .max_messages(max)
                    .expires(wait.max(Duration::from_millis(10)))
                    .messages()
                    .await
                    .map_err(|e| anyhow!("fetch: {e}"))?;
                let mut out = Vec::new();
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow!("message: {e}"))?;
                    if *leased_at == 0 {
                        *leased_at = crate::now_ns();
                    }
                    m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                    out.push(m.message.payload.to_vec());
                }
                Ok(out)
            }
        }
    }
}
