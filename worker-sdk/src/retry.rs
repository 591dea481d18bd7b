//! The one retry helper: exponential back-off on tokio's clock.
//!
//! Every place the SDK tries again — connecting, renewing a lease, completing
//! items, the worker's lease loop, `wq watch`, the Redis and AMQP lease polls —
//! waits with a [`Backoff`] (public, so that the `wq` binary uses it too) and sleeps with `tokio::time`, so tests that pause
//! tokio's clock control every wait. Calls that are simply repeated until they
//! succeed or a deadline passes go through [`retry`].
//!
//! Jitter comes from a random-number generator (`fastrand`), so that many
//! workers that lost the same server do not come back in step.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// Doubling delays between an initial one and a maximum, each with up to an
/// eighth of jitter either way.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Delays from `initial` doubling up to `max`, jittered.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            next: initial,
            max,
            jitter: true,
        }
    }

    /// Calls to a queue backend: 100 ms doubling up to 5 s.
    pub fn for_server() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Waiting for a server to accept connections: 50 ms doubling up to 1 s.
    pub fn for_connect() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Polling an empty queue during a lease call's wait: 10 ms doubling up to
    /// `max`, without jitter (a poll is cheap and its pause is short).
    pub fn for_poll(max: Duration) -> Self {
        Backoff {
            jitter: false,
            ..Backoff::new(Duration::from_millis(10), max)
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        if !self.jitter {
            return base;
        }
        // base ± base/8, uniformly.
        let spread = base / 4;
        let jitter = spread.mul_f64(fastrand::f64());
        base - base / 8 + jitter
    }

    /// Starts again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Runs `call` until it succeeds, fails with an error `retriable` refuses, or
/// the next wait would pass `deadline` (then its last error is returned). A
/// wait is never shorter than the server asked for ([`Error::retry_after`]).
/// `on_retry` is told of each error that is retried and the wait before the
/// next try.
pub async fn retry<T, F, Fut>(
    mut backoff: Backoff,
    deadline: Instant,
    mut call: F,
    retriable: impl Fn(&Error) -> bool,
    on_retry: impl Fn(&Error, Duration),
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        match call().await {
            Err(e) if retriable(&e) => {
                // The server's RetryInfo, when it gave one, is the least wait.
                let delay = backoff
                    .next_delay()
                    .max(e.retry_after().unwrap_or_default());
                if Instant::now() + delay > deadline {
                    return Err(e);
                }
                on_retry(&e, delay);
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
