//! The streaming forms of the queue service, as the SDK drives them: a
//! worker's `Work` stream ([`WorkStream`]) and a producer's `EnqueueStream`
//! ([`EnqueueStream`]). Proto messages stay in here; what goes out are the
//! SDK's own types.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use workq_proto::time;
use workq_proto::v1 as pb;

use super::GrpcBackend;
use super::convert::{leased_from_pb, new_item_to_pb, token_strings};
use crate::error::{Error, Result};
use crate::types::{ItemId, LeaseToken, LeasedItem, NewItem, Pushed, QueueName};

/// Messages our side may have queued before the stream's sender waits.
const OUTBOX: usize = 64;

/// A worker's open `Work` stream.
pub(crate) struct WorkStream {
    queue: QueueName,
    /// Our side; dropped to half-close.
    tx: Option<mpsc::Sender<pb::WorkRequest>>,
    rx: tonic::Streaming<pb::WorkResponse>,
}

/// What one message of a `Work` stream brought.
#[derive(Debug, Default)]
pub(crate) struct WorkEvent {
    /// Items leased to the worker.
    pub(crate) items: Vec<LeasedItem>,
    /// The answer to a request's completions and renewals.
    pub(crate) answer: Option<WorkAnswer>,
    /// The queue is drained: no item will ever come.
    pub(crate) drained: bool,
}

/// The answer to one [`WorkRequest`], token by token.
#[derive(Debug)]
pub(crate) struct WorkAnswer {
    /// The request's sequence.
    pub(crate) sequence: i64,
    /// `Err` when the request as a whole was refused (nothing was done).
    pub(crate) outcome: Result<TokenOutcomes>,
}

/// One outcome per token of a request, in the order sent: the completions,
/// then the renewals.
pub(crate) type TokenOutcomes = Vec<Result<()>>;

/// What a worker hands in on its stream.
pub(crate) struct WorkRequest<'a> {
    pub(crate) sequence: i64,
    pub(crate) credit: u32,
    /// Tokens to complete, each with a flag the stream ignores.
    pub(crate) complete: &'a [(LeaseToken, bool)],
    pub(crate) renew: &'a [LeaseToken],
    /// Answered token by token (`per_token_results`); otherwise the
    /// completions are all or nothing and only renewals have results.
    pub(crate) per_token: bool,
}

impl GrpcBackend {
    /// Opens a `Work` stream on `queue`, its items leased for `lease`.
    pub(crate) async fn open_work(
        &self,
        queue: &QueueName,
        lease: Duration,
        max_outstanding_bytes: Option<u64>,
    ) -> Result<WorkStream> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let first = pb::WorkRequest {
            queue: queue.to_string(),
            lease: Some(time::duration(lease)),
            max_outstanding_bytes: max_outstanding_bytes
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        tx.send(first)
            .await
            .map_err(|_| Error::Protocol("work stream closed before it opened".into()))?;
        let rx = self
            .client()
            .await
            .work(ReceiverStream::new(rx))
            .await
            .map_err(|s| Error::from_status(queue.as_str(), s))?
            .into_inner();
        Ok(WorkStream {
            queue: queue.clone(),
            tx: Some(tx),
            rx,
        })
    }

    /// Opens an `EnqueueStream` on `queue` (creating it first when `create`).
    pub(crate) async fn open_enqueue(
        &self,
        queue: &QueueName,
        create: bool,
    ) -> Result<EnqueueStream> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let outbox = ReceiverStream::new(rx);
        // The first message names the queue and carries the first batch;
        // until a batch comes, the call is opened lazily by `send`.
        Ok(EnqueueStream {
            backend: self.clone(),
            queue: queue.clone(),
            create,
            tx,
            pending_open: Some(outbox),
            rx: None,
        })
    }
}

impl WorkStream {
    /// Sends `req`; an error means the stream is gone.
    pub(crate) async fn send(&self, req: WorkRequest<'_>) -> Result<()> {
        let msg = pb::WorkRequest {
            credit: i32::try_from(req.credit).unwrap_or(i32::MAX),
            complete_tokens: req.complete.iter().map(|(t, _)| t.0.clone()).collect(),
            renew_tokens: token_strings(req.renew),
            sequence: req.sequence,
            per_token_results: req.per_token,
            ..Default::default()
        };
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| stream_gone("closed by us"))?;
        tx.send(msg).await.map_err(|_| stream_gone("send failed"))
    }

    /// Ends the stream cleanly: half-closes our side, then reads until the
    /// server ends it (at most `within`). The server then releases what it
    /// still holds — items pushed that were never handed to a handler —
    /// counting no attempt; a stream merely dropped may end abnormally,
    /// and an abnormal end counts an attempt for every item it held.
    pub(crate) async fn close(mut self, within: Duration) {
        self.tx = None;
        let rest = async { while let Ok(Some(_)) = self.rx.message().await {} };
        if tokio::time::timeout(within, rest).await.is_err() {
            tracing::debug!(queue = %self.queue, "the server did not end the work stream in time");
        }
    }

    /// The next message; `Ok(None)` when the server ended the stream.
    ///
    /// Cancel-safe: a message is taken only by the poll that returns it.
    pub(crate) async fn next(&mut self) -> Result<Option<WorkEvent>> {
        let m = match self.rx.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(s) => return Err(stream_error(&self.queue, s)),
        };
        Ok(Some(WorkEvent {
            items: m.items.into_iter().map(leased_from_pb).collect(),
            answer: m.answer.map(|a| answer_from_pb(&self.queue, a)),
            drained: m.drained,
        }))
    }
}

/// The error a stream ended with. A broken connection under a stream
/// surfaces as UNKNOWN or INTERNAL without a reason from the server (an h2
/// error, not an answer): transient, as a unary call's UNAVAILABLE is.
fn stream_error(queue: &QueueName, status: tonic::Status) -> Error {
    let from_transport = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal)
        && workq_proto::errors::reason(&status).is_none()
        && status.metadata().is_empty();
    if from_transport {
        return Error::Unavailable {
            code: status.code(),
            message: format!(
                "the connection under the stream broke: {}",
                status.message()
            ),
            retry_after: None,
        };
    }
    Error::from_status(queue.as_str(), status)
}

/// A lost stream: transient, so the caller opens another.
fn stream_gone(why: &str) -> Error {
    Error::Unavailable {
        code: tonic::Code::Unavailable,
        message: format!("the stream to the queue service ended ({why})"),
        retry_after: None,
    }
}

/// A [`WorkAnswer`] from the wire. With
/// `per_token_results`, `results` hold the completions then the renewals;
/// without it, the renewals only (the completions were all done).
fn answer_from_pb(queue: &QueueName, a: pb::WorkAnswer) -> WorkAnswer {
    let refused = a
        .problem
        .as_ref()
        .filter(|p| p.code != tonic::Code::Ok as i32);
    if let Some(p) = refused {
        let status = workq_proto::errors::problem_status(p);
        return WorkAnswer {
            sequence: a.sequence,
            outcome: Err(Error::from_token_status(queue.as_str(), status)),
        };
    }
    if let Some(note) = a.problem.as_ref() {
        tracing::debug!(queue = %queue, note = %note.message, "work stream note");
    }
    WorkAnswer {
        sequence: a.sequence,
        outcome: Ok(a
            .results
            .into_iter()
            .map(|r| super::convert::token_outcome(queue, r))
            .collect()),
    }
}

/// A batch ready for the wire, kept for a resend.
pub(crate) struct EnqueueBatch(Vec<pb::NewItem>);

impl EnqueueBatch {
    pub(crate) fn new(items: Vec<NewItem>) -> Self {
        EnqueueBatch(items.into_iter().map(new_item_to_pb).collect())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// A producer's `EnqueueStream`, opened with its first batch.
pub(crate) struct EnqueueStream {
    backend: GrpcBackend,
    queue: QueueName,
    create: bool,
    tx: mpsc::Sender<pb::EnqueueStreamRequest>,
    /// Our side, until the call is made with the first batch.
    pending_open: Option<ReceiverStream<pb::EnqueueStreamRequest>>,
    rx: Option<tonic::Streaming<pb::EnqueueStreamResponse>>,
}

/// The answer to one batch.
#[derive(Debug)]
pub(crate) struct EnqueueAnswer {
    pub(crate) sequence: i64,
    pub(crate) outcome: Result<Vec<Pushed>>,
}

impl EnqueueStream {
    /// Sends a batch with its `sequence` and `request_id` (the same on a
    /// resend, so the server adds it once); opens the call with the first.
    pub(crate) async fn send(
        &mut self,
        sequence: i64,
        request_id: &str,
        items: &EnqueueBatch,
    ) -> Result<()> {
        let msg = pb::EnqueueStreamRequest {
            queue: self.queue.to_string(),
            create_queue: self.create,
            // Payloads are shared (`Bytes`), not copied.
            items: items.0.clone(),
            sequence,
            request_id: request_id.to_owned(),
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| stream_gone("send failed"))?;
        if let Some(outbox) = self.pending_open.take() {
            let rx = self
                .backend
                .client()
                .await
                .enqueue_stream(outbox)
                .await
                .map_err(|s| Error::from_status(self.queue.as_str(), s))?
                .into_inner();
            self.rx = Some(rx);
        }
        Ok(())
    }

    /// The next answer; `Ok(None)` when the server ended the stream (or
    /// nothing was sent yet).
    pub(crate) async fn next(&mut self) -> Result<Option<EnqueueAnswer>> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(None);
        };
        let m = match rx.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(s) => return Err(stream_error(&self.queue, s)),
        };
        if let Some(p) = m
            .problem
            .as_ref()
            .filter(|p| p.code != tonic::Code::Ok as i32)
        {
            let status = workq_proto::errors::problem_status(p);
            return Ok(Some(EnqueueAnswer {
                sequence: m.sequence,
                outcome: Err(Error::from_status(self.queue.as_str(), status)),
            }));
        }
        if m.replayed {
            tracing::debug!(queue = %self.queue, sequence = m.sequence, "batch answered by an earlier try of the same request_id");
        }
        Ok(Some(EnqueueAnswer {
            sequence: m.sequence,
            outcome: Ok(m
                .items
                .into_iter()
                .map(|i| Pushed {
                    id: ItemId(i.id),
                    duplicate: i.duplicate,
                })
                .collect()),
        }))
    }
}
