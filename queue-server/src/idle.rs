//! Closing idle connections (issue 12 item 5): hyper and tonic have no idle
//! timeout, so a client that opened a connection and went quiet held it (and
//! its memory) for ever, answering keepalive pings. Each connection counts
//! its open calls ([`Activity`], counted by [`CountCalls`], a tower layer);
//! the connection's reads fail, closing it, once it has had no open call for
//! the idle timeout ([`Idle`], polled from [`crate::server::Conn`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// The open calls of one connection and when it last had none.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    /// Milliseconds after `base` when the last call ended.
    idle_since: AtomicU64,
    base: Instant,
}

impl Activity {
    /// A connection with no call yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            base: Instant::now(),
        })
    }

    fn enter(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.base + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(since + timeout)
    }
}

/// One open call; dropped when its answer (a stream's last message) is sent
/// or abandoned.
#[derive(Debug)]
struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since.store(ms, Ordering::Release);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The idle timer of one connection.
#[derive(Debug)]
pub struct Idle {
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    activity: Arc<Activity>,
}

impl Idle {
    /// A timer closing the connection of `activity` after `timeout` without
    /// an open call.
    pub fn new(timeout: Duration, activity: Arc<Activity>) -> Self {
        Idle {
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            activity,
        }
    }

    /// Ready when the connection has been idle for the timeout; otherwise
    /// the timer is (re)armed and wakes `cx` when it may be.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.activity.idle_deadline(self.timeout) {
                Some(deadline) if deadline <= Instant::now() => return Poll::Ready(()),
                Some(deadline) => self.sleep.as_mut().reset(deadline),
                // Busy: look again a timeout from now.
                None => self.sleep.as_mut().reset(Instant::now() + self.timeout),
            }
        }
    }
}

/// The tower layer counting each connection's open calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountCalls;

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted { inner }
    }
}

/// A service whose calls are counted on their connection's [`Activity`].
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<crate::server::ConnInfo>()
            .map(|c| c.activity.enter());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| {
                tonic::body::Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// An answer's body that holds its call open until it ends.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: Option<CallGuard>,
}

impl http_body::Body for GuardedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
