//! What the worker loop did: [`WorkSummary`] and its [`StopReason`].

/// Why the worker loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The queue is sealed and nothing is left: the work is over.
    Drained,
    /// The queue was empty ([`WorkerOptions::until_empty`](super::WorkerOptions::until_empty)).
    Empty,
    /// [`WorkerOptions::max_items`](super::WorkerOptions::max_items) items were taken and finished.
    Limit,
    /// A shutdown was asked for.
    Shutdown {
        /// The signal that asked, if one did.
        signal: Option<i32>,
    },
}

/// What the worker loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkSummary {
    /// Why it returned.
    pub stop: StopReason,
    /// Items leased.
    pub leased: u64,
    /// Items completed.
    pub completed: u64,
    /// Items failed as retriable (they go back to the queue, or dead once their
    /// attempts are exhausted).
    pub failed: u64,
    /// Items failed as fatal.
    pub fatal: u64,
    /// Items failed (either way) that went dead.
    pub dead: u64,
    /// Items given back untried (shutdown, or the handler asked).
    pub released: u64,
    /// Items whose lease was lost before they could be finished.
    pub lost: u64,
    /// The signal that asked for a shutdown, if one did (whatever the stop reason:
    /// a signal may come while the last items are finishing).
    pub signal: Option<i32>,
}

impl WorkSummary {
    /// Nothing done yet, stopped because drained (the loop sets the reason when it returns).
    pub(crate) fn new() -> Self {
        WorkSummary {
            stop: StopReason::Drained,
            leased: 0,
            completed: 0,
            failed: 0,
            fatal: 0,
            dead: 0,
            released: 0,
            lost: 0,
            signal: None,
        }
    }

    pub(super) fn add(&mut self, o: ItemOutcome) {
        match o {
            ItemOutcome::Completed => self.completed += 1,
            ItemOutcome::Failed { fatal, dead } => {
                if fatal {
                    self.fatal += 1;
                } else {
                    self.failed += 1;
                }
                if dead {
                    self.dead += 1;
                }
            }
            ItemOutcome::Released => self.released += 1,
            ItemOutcome::Lost => self.lost += 1,
        }
    }
}

/// How one item ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum ItemOutcome {
    Completed,
    Failed { fatal: bool, dead: bool },
    Released,
    Lost,
}
