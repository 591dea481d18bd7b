//! workq over its `workq.v1` gRPC API: batch enqueue, batch lease, batch
//! complete, or the streaming forms (`EnqueueStream`, `Work`), as
//! [`AckMode`] says.

use anyhow::{Context, Result, anyhow};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How workq is driven: the streaming forms, or unary calls with one of three
/// ways to hand in finished items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum AckMode {
    /// Through the worker SDK, as users run it: its worker loop (on a
    /// `Work` stream) and its producer (on an `EnqueueStream`); see
    /// [`super::sdk`]. The other modes drive the API by hand.
    Sdk,
    /// As the worker SDK's unary loop does: a background task sends whatever tokens
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
    next_sequence: i64,
}

impl PushStream {
    async fn push(
        stream: &mut Option<PushStream>,
        client: &mut WorkqClient,
        queue: &str,
        items: Vec<workq_proto::v1::NewItem>,
    ) -> Result<()> {
        let sequence = stream.as_ref().map_or(1, |p| p.next_sequence);
        let req = workq_proto::v1::EnqueueStreamRequest {
            queue: queue.into(),
            create_queue: false,
            items,
            sequence,
            request_id: String::new(),
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
                    next_sequence: 1,
                })
            }
        };
        p.next_sequence += 1;
        let answer =
            p.rx.message()
                .await?
                .ok_or_else(|| anyhow!("enqueue stream ended"))?;
        if let Some(problem) = answer.problem {
            anyhow::bail!(
                "enqueue refused: {} ({:?}, sequence {})",
                problem.message,
                workq_proto::errors::problem_reason(&problem),
                answer.sequence
            );
        }
        if answer.sequence != sequence {
            anyhow::bail!(
                "enqueue answered sequence {} for {sequence}",
                answer.sequence
            );
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
    /// Completions sent and not yet answered, by `sequence`.
    unanswered: std::collections::HashSet<i64>,
    next_sequence: i64,
    drained: bool,
}

impl WorkStream {
    async fn open(client: &mut WorkqClient, queue: &str) -> Result<WorkStream> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(workq_proto::v1::WorkRequest {
            queue: queue.into(),
            lease: Some(workq_proto::time::duration(Duration::from_secs(60))),
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
            next_sequence: 0,
            drained: false,
        })
    }

    /// Grants credit up to `max` open and hands in `complete`.
    async fn send(&mut self, max: usize, complete: Vec<String>) -> Result<()> {
        let credit = max.saturating_sub(self.open_credit);
        if credit == 0 && complete.is_empty() {
            return Ok(());
        }
        self.next_sequence += 1;
        if !complete.is_empty() {
            self.unanswered.insert(self.next_sequence);
        }
        self.open_credit += credit;
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("work stream closed"))?
            .send(workq_proto::v1::WorkRequest {
                credit: i32::try_from(credit).unwrap_or(i32::MAX),
                complete_tokens: complete,
                sequence: self.next_sequence,
                ..Default::default()
            })
            .await
            .map_err(|_| anyhow!("work stream closed"))
    }

    /// Takes in the answer to a completion, if the message carries one.
    fn answered(&mut self, done: Option<workq_proto::v1::WorkAnswer>) -> Result<()> {
        if let Some(done) = done {
            // A problem with code OK is a note (a clamped credit grant).
            if let Some(p) = done.problem.as_ref().filter(|p| p.code != 0) {
                anyhow::bail!(
                    "completion refused: {} ({:?})",
                    p.message,
                    workq_proto::errors::problem_reason(p)
                );
            }
            self.unanswered.remove(&done.sequence);
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
            self.answered(m.answer)?;
            self.drained |= m.drained;
            if !m.items.is_empty() {
                self.open_credit = self.open_credit.saturating_sub(m.items.len());
                return Ok(m.items);
            }
        }
    }
}

/// `Background` mode: the worker SDK's completion task
/// ([`worker_sdk::ack::Acker`]), fed a batch at a time without waiting.
pub struct Acker {
    queue: worker_sdk::Queue,
    acker: worker_sdk::ack::Acker,
    /// Tokens handed over and not yet completed.
    unacked: Arc<AtomicUsize>,
    /// The first completion that failed, if any.
    failed: Arc<Mutex<Option<worker_sdk::Error>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Acker {
    async fn start(url: &str, queue: &str) -> Result<Acker> {
        let client = worker_sdk::connect(&url.replacen("http://", "grpc://", 1))
            .await
            .with_context(|| format!("connect the SDK to {url}"))?;
        let queue = client.queue(queue)?;
        Ok(Acker {
            acker: worker_sdk::ack::Acker::start(queue.clone()),
            queue,
            unacked: Arc::default(),
            failed: Arc::default(),
            tasks: tokio::task::JoinSet::new(),
        })
    }

    /// Hands `tokens` to the completion task and returns at once.
    fn complete(&mut self, tokens: Vec<String>) -> Result<()> {
        self.check()?;
        while self.tasks.try_join_next().is_some() {}
        self.unacked.fetch_add(tokens.len(), Ordering::SeqCst);
        let (queue, acker) = (self.queue.clone(), self.acker.clone());
        let (unacked, failed) = (self.unacked.clone(), self.failed.clone());
        self.tasks.spawn(async move {
            let n = tokens.len();
            let answers = futures::future::join_all(
                tokens
                    .into_iter()
                    .map(|t| acker.complete(&queue, worker_sdk::LeaseToken::new(t))),
            )
            .await;
            if let Some(Err(e)) = answers.into_iter().find(Result::is_err)
                && let Ok(mut slot) = failed.lock()
            {
                slot.get_or_insert(e);
            }
            unacked.fetch_sub(n, Ordering::SeqCst);
        });
        Ok(())
    }

    /// The first completion that failed, as an error.
    fn check(&self) -> Result<()> {
        match self.failed.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(anyhow!("completion failed: {e}")),
            None => Ok(()),
        }
    }

    /// Waits for every completion handed over.
    async fn finish(mut self) -> Result<()> {
        while self.tasks.join_next().await.is_some() {}
        self.check()
    }
}

type WorkqClient =
    workq_proto::v1::queue_service_client::QueueServiceClient<tonic::transport::Channel>;

/// One client working one queue.
pub struct Conn {
    url: String,
    client: WorkqClient,
    queue: String,
    mode: AckMode,
    /// `WithLease`/`Stream`: leases taken and not yet completed, handed in
    /// with the next lease call (or credit) or by [`Conn::finish`].
    held: Vec<String>,
    /// `Background`: the completion task, started on first use.
    acker: Option<Acker>,
    /// `Stream`: the work stream, opened on first use.
    stream: Option<WorkStream>,
    /// `Stream`: the enqueue stream, opened on first use.
    push: Option<PushStream>,
}

impl Conn {
    /// Connects to the queue-server at `url` (`http://host:port`).
    pub async fn connect(url: &str, queue: &str, mode: AckMode) -> Result<Conn> {
        Ok(Conn {
            url: url.to_string(),
            client: WorkqClient::connect(url.to_string())
                .await
                .with_context(|| format!("connect to workq at {url}"))?
                .max_decoding_message_size(64 << 20),
            queue: queue.into(),
            mode,
            held: Vec::new(),
            acker: None,
            stream: None,
            push: None,
        })
    }

    /// Creates the queue with the server's default settings.
    pub async fn create(&mut self) -> Result<()> {
        self.client
            .create_queue(workq_proto::v1::CreateQueueRequest {
                name: self.queue.clone(),
                settings: None,
            })
            .await?;
        Ok(())
    }

    /// Deletes the queue, if it exists.
    pub async fn drop_queue(&mut self) -> Result<()> {
        let _ = self
            .client
            .delete_queue(workq_proto::v1::DeleteQueueRequest {
                name: self.queue.clone(),
                allow_missing: true,
            })
            .await;
        Ok(())
    }

    /// Enqueues `items` (on the enqueue stream in `Stream` mode).
    pub async fn enqueue(&mut self, items: Vec<Vec<u8>>) -> Result<()> {
        let items = items
            .into_iter()
            .map(|p| workq_proto::v1::NewItem {
                payload: p.into(),
                ..Default::default()
            })
            .collect();
        if self.mode == AckMode::Stream {
            PushStream::push(&mut self.push, &mut self.client, &self.queue, items).await?;
        } else {
            self.client
                .enqueue(workq_proto::v1::EnqueueRequest {
                    queue: self.queue.clone(),
                    items,
                    create_queue: false,
                    request_id: String::new(),
                })
                .await?;
        }
        Ok(())
    }

    /// Seals the queue: waiting consumers answer at once when it is drained.
    pub async fn seal(&mut self) -> Result<()> {
        self.client
            .seal_queue(workq_proto::v1::SealQueueRequest {
                name: self.queue.clone(),
            })
            .await?;
        Ok(())
    }

    /// Completes whatever this connection still holds.
    pub async fn finish(&mut self) -> Result<()> {
        if self.stream.is_none() && !self.held.is_empty() {
            self.client
                .complete(workq_proto::v1::CompleteRequest {
                    queue: self.queue.clone(),
                    lease_tokens: std::mem::take(&mut self.held),
                    per_token_results: false,
                })
                .await?;
        }
        if let Some(a) = self.acker.take() {
            a.finish().await?;
        }
        if let Some(mut w) = self.stream.take() {
            // Hand in the last completions, close our side, and read until
            // every completion is answered (the server then ends it).
            w.send(0, std::mem::take(&mut self.held)).await?;
            w.tx = None;
            while !w.unanswered.is_empty() {
                let Some(m) = w.rx.message().await? else {
                    anyhow::bail!("work stream ended with completions unanswered");
                };
                w.answered(m.answer)?;
            }
        }
        Ok(())
    }

    /// Whether this connection holds leases it has not completed yet.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
            || self
                .stream
                .as_ref()
                .is_some_and(|w| !w.unanswered.is_empty())
            || self
                .acker
                .as_ref()
                .is_some_and(|a| a.unacked.load(Ordering::SeqCst) > 0)
    }

    /// Leases up to `max` items, waiting up to `wait` for the first, and
    /// hands their completion in as the [`AckMode`] says.
    pub async fn take(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        if self.mode == AckMode::Stream {
            return self.take_streamed(max, wait, leased_at).await;
        }
        let l = self
            .client
            .lease(workq_proto::v1::LeaseRequest {
                queue: self.queue.clone(),
                max_items: i32::try_from(max).unwrap_or(i32::MAX),
                lease: Some(workq_proto::time::duration(Duration::from_secs(60))),
                wait: Some(workq_proto::time::duration(wait)),
                // WithLease: the previous batch's completion rides on this call.
                complete_tokens: std::mem::take(&mut self.held),
                max_bytes: 0,
            })
            .await?
            .into_inner();
        *leased_at = crate::now_ns();
        let tokens: Vec<String> = l.items.iter().map(|i| i.lease_token.clone()).collect();
        if !tokens.is_empty() {
            match self.mode {
                AckMode::WithLease | AckMode::Stream => self.held = tokens,
                AckMode::Separate => {
                    self.client
                        .complete(workq_proto::v1::CompleteRequest {
                            queue: self.queue.clone(),
                            lease_tokens: tokens,
                            per_token_results: false,
                        })
                        .await?;
                }
                AckMode::Background | AckMode::Sdk => {
                    if self.acker.is_none() {
                        self.acker = Some(Acker::start(&self.url, &self.queue).await?);
                    }
                    if let Some(a) = self.acker.as_mut() {
                        a.complete(tokens)?;
                    }
                }
            }
        }
        Ok(l.items.into_iter().map(|i| i.payload.to_vec()).collect())
    }

    /// [`Conn::take`] on the `Work` stream.
    async fn take_streamed(
        &mut self,
        max: usize,
        wait: Duration,
        leased_at: &mut u64,
    ) -> Result<Vec<Vec<u8>>> {
        if self.stream.is_none() {
            self.stream = Some(WorkStream::open(&mut self.client, &self.queue).await?);
        }
        let Some(w) = self.stream.as_mut() else {
            return Ok(Vec::new());
        };
        // The previous batch's completion and new credit go up at once; the
        // answer to the completion comes when it is durable, without holding
        // up the items.
        w.send(max, std::mem::take(&mut self.held)).await?;
        // Items are pushed as they come: a zero wait is no reason to spin.
        let items = w.receive(wait.max(Duration::from_millis(100))).await?;
        *leased_at = crate::now_ns();
        self.held
            .extend(items.iter().map(|i| i.lease_token.clone()));
        Ok(items.into_iter().map(|i| i.payload.to_vec()).collect())
    }
}
