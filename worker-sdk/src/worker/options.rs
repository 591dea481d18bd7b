//! [`WorkerOptions`]: how the worker loop runs.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How the worker loop runs. Build with [`WorkerOptions::default`] and the setters.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub(super) concurrency: usize,
    pub(super) prefetch: usize,
    pub(super) lease: Duration,
    pub(super) poll_wait: Duration,
    pub(super) max_items: Option<u64>,
    pub(super) until_empty: bool,
    pub(super) grace: Duration,
    pub(super) handle_signals: bool,
    pub(super) shutdown: CancellationToken,
    pub(super) max_batch_bytes: Option<u64>,
}

impl Default for WorkerOptions {
    /// One item at a time, the default lease (30 s), 2 s long polls, until drained, 20 s grace,
    /// SIGTERM and SIGINT handled.
    fn default() -> Self {
        WorkerOptions {
            concurrency: 1,
            prefetch: 0,
            lease: workq_proto::defaults::LEASE,
            poll_wait: Duration::from_secs(2),
            max_items: None,
            until_empty: false,
            grace: Duration::from_secs(20),
            handle_signals: true,
            shutdown: CancellationToken::new(),
            max_batch_bytes: None,
        }
    }
}

impl WorkerOptions {
    /// Items run at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Items taken ahead, waiting for a free slot (default 0): with a fast
    /// handler, a prefetch about the size of the concurrency keeps the slots
    /// busy while the next items are on their way. Prefetched items are
    /// leased, so other workers cannot take them meanwhile; their leases are
    /// renewed while they wait, and a shutdown releases them at once. The
    /// queue service's `Work` stream only (its credit is concurrency plus
    /// prefetch); other backends take only what free slots can run.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// Lease duration; the lease is renewed every third of it while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long one lease call waits for an item. Also bounds how long a shutdown
    /// waits for a lease call in flight (whose items are then released).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// Take at most this many items, then return once they are finished.
    pub fn max_items(mut self, n: u64) -> Self {
        self.max_items = Some(n);
        self
    }

    /// Return as soon as the queue is empty (nothing pending, delayed or leased),
    /// sealed or not: the Kubernetes tutorial's `rediswq` meaning. Without it the loop returns
    /// only once the queue is drained (sealed and empty).
    pub fn until_empty(mut self, yes: bool) -> Self {
        self.until_empty = yes;
        self
    }

    /// How long running handlers may take to finish after a shutdown.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether SIGTERM and SIGINT start a shutdown (default: yes).
    ///
    /// The handlers are tokio's, and tokio does not uninstall them: after the
    /// loop returns, these signals no longer end the process by default. A
    /// program that goes on to other work and must stay killable should turn
    /// this off and cancel [`WorkerOptions::shutdown_token`] itself.
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
        self
    }

    /// At most this many bytes of items in one lease call's answer (the
    /// first item comes however large); default: only the server's own
    /// budget. The queue service only; other backends ignore it.
    pub fn max_batch_bytes(mut self, bytes: u64) -> Self {
        self.max_batch_bytes = Some(bytes);
        self
    }

    /// A token whose cancellation starts a shutdown, as a signal would.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// The token whose cancellation starts a shutdown.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}
