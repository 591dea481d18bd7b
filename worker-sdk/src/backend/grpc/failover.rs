//! Several endpoints of one queue service (`grpc://a:50051,b:50051`): calls
//! go to one of them at a time and move to the next when it cannot be
//! reached or says it is stopping.
//!
//! Replicas of queue-server on a shared store (`--store postgres`) answer
//! any call the same way, and a lease lives in the database, not in a
//! replica: after a move, the worker's tokens complete on the new endpoint.
//! A DNS name with several addresses needs none of this (the connector
//! tries each address in turn); this is for a list the user writes.
//!
//! Each endpoint has one [`Channel`] (tonic reconnects it by itself); the
//! call that finds the current endpoint gone fails as before, with
//! UNAVAILABLE, and the next call goes to the next endpoint. Callers
//! already retry UNAVAILABLE, so a move costs one retried call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::transport::Channel;

/// gRPC's code for UNAVAILABLE, as it appears in a trailers-only answer's
/// `grpc-status` header.
const UNAVAILABLE: &[u8] = b"14";

/// One queue service behind one or more endpoints.
#[derive(Clone)]
pub(crate) struct Failover {
    channels: Arc<[Channel]>,
    /// Index into `channels` of the endpoint calls go to now.
    current: Arc<AtomicUsize>,
}

impl Failover {
    /// Calls go to `channels[first]` until it fails. `channels` is not
    /// empty.
    pub(crate) fn new(channels: Vec<Channel>, first: usize) -> Self {
        debug_assert!(!channels.is_empty());
        Failover {
            current: Arc::new(AtomicUsize::new(first % channels.len().max(1))),
            channels: channels.into(),
        }
    }

    /// The endpoint calls go to now (an index into the URL's list).
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Moves to the endpoint after `from`, unless another call already
    /// moved away from it.
    fn move_on(&self, from: usize) {
        let next = (from + 1) % self.channels.len();
        if next != from
            && self
                .current
                .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(from, to = next, "endpoint unavailable; moving to the next");
        }
    }
}

impl Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen channel's, awaited in `call`: which one is
        // chosen can change between the two.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let index = self.current();
        let mut channel = self.channels[index].clone();
        let this = self.clone();
        Box::pin(async move {
            let answer = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            match &answer {
                // Not reached, or the connection broke.
                Err(_) => this.move_on(index),
                // A replica that is stopping answers UNAVAILABLE at once.
                Ok(response)
                    if response
                        .headers()
                        .get("grpc-status")
                        .is_some_and(|s| s.as_bytes() == UNAVAILABLE) =>
                {
                    this.move_on(index)
                }
                Ok(_) => {}
            }
            answer
        })
    }
}
