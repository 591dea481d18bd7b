//! The streaming form of enqueue (`EnqueueStream`): one long-lived stream per
//! producer instead of a call per batch.
//!
//! Each batch is added to the queue the moment its message is read, so a
//! producer's batches land in the order it sent them; its answer goes out
//! once the batch is durable. Several batches may wait for their sync at
//! once and share it.

use crate::backend::{Backend as Engine, EnqueueOrder, Pending};
use crate::engine::EnqueueItem;
use crate::grpc::{enqueue_items, enqueued_pb, invalid_field_rejection, rejection};
use crate::names::QueueName;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use workq_proto::errors::Rejection;
use workq_proto::v1 as pb;

/// What the server sends on an `EnqueueStream`.
pub type Outbound = mpsc::Sender<Result<pb::EnqueueStreamResponse, Status>>;

/// Serves one `EnqueueStream` until the producer closes its side (every batch
/// then answered), goes away, or the server stops.
pub async fn serve(
    engine: Engine,
    name: QueueName,
    first: pb::EnqueueStreamRequest,
    mut inbound: Streaming<pb::EnqueueStreamRequest>,
    tx: Outbound,
) {
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    let mut order = EnqueueOrder::default();
    let mut add = |req: pb::EnqueueStreamRequest| {
        let sequence = req.sequence;
        let items: Vec<EnqueueItem> = match enqueue_items(req.items) {
            Ok(items) => items,
            Err((field, e)) => return Err(refused(sequence, invalid_field_rejection(&field, e))),
        };
        let request_id = Some(req.request_id.as_str());
        match engine.enqueue_in_order(&name, items, request_id, &mut order) {
            Ok(pending) => Ok(durable(sequence, pending)),
            Err(e) => Err(refused(sequence, rejection(&e))),
        }
    };
    let mut answer_now = None;
    // Sent last, after the answers to batches in flight.
    let mut last_word: Option<Status> = None;
    match add(first) {
        Ok(w) => waiting.push(w),
        Err(r) => answer_now = Some(r),
    }
    let stopping = engine.stopping();
    tokio::pin!(stopping);
    loop {
        if let Some(r) = answer_now.take()
            && tx.send(Ok(r)).await.is_err()
        {
            return;
        }
        if !open && waiting.is_empty() {
            if let Some(s) = last_word {
                let _ = tx.send(Err(s)).await;
            }
            return;
        }
        tokio::select! {
            biased;
            Some(r) = waiting.next(), if !waiting.is_empty() => {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            msg = inbound.message(), if open => match msg {
                Ok(Some(req)) => match add(req) {
                    Ok(w) => waiting.push(w),
                    Err(r) => answer_now = Some(r),
                },
                Ok(None) => open = false,
                // A message that could not be read (too large, malformed):
                // the stream ends with why, after the answers in flight.
                Err(s) => {
                    last_word = Some(s);
                    open = false;
                }
            },
            () = &mut stopping, if open => {
                last_word = Some(rejection(&crate::Error::ShuttingDown).to_status());
                open = false;
            }
            () = tx.closed() => return,
        }
    }
}

/// The answer to batch `sequence`, once its commit is durable.
async fn durable(sequence: i64, pending: Pending) -> pb::EnqueueStreamResponse {
    match pending.wait().await {
        Ok((out, replayed)) => pb::EnqueueStreamResponse {
            sequence,
            problem: None,
            items: enqueued_pb(&out),
            replayed,
        },
        Err(e) => refused(sequence, rejection(&e)),
    }
}

fn refused(sequence: i64, r: Rejection) -> pb::EnqueueStreamResponse {
    pb::EnqueueStreamResponse {
        sequence,
        problem: Some(r.to_problem()),
        ..Default::default()
    }
}
