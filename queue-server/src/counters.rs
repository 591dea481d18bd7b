//! A queue's exact counters.

/// Exact per-queue counters. Always
/// `enqueued == pending + delayed + leased + completed + dead`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Items ever added (less purged ones).
    pub enqueued: u64,
    /// Items ready to be leased.
    pub pending: u64,
    /// Items waiting for their delay or retry back-off.
    pub delayed: u64,
    /// Items held by a worker.
    pub leased: u64,
    /// Items completed.
    pub completed: u64,
    /// Items that failed fatally or exhausted their attempts.
    pub dead: u64,
    /// Retriable failures and lease expiries that sent an item back.
    pub retried: u64,
}

impl Counters {
    /// Nothing pending, delayed or leased.
    pub fn is_empty(&self) -> bool {
        self.pending == 0 && self.delayed == 0 && self.leased == 0
    }

    /// Whether the invariant `enqueued == pending + delayed + leased +
    /// completed + dead` holds.
    pub fn balanced(&self) -> bool {
        self.enqueued == self.pending + self.delayed + self.leased + self.completed + self.dead
    }
}
