//! One queue as the engine holds it: the state machine behind a lock, and
//! what wakes its waiting lease calls and its reaper.

use super::QueueInfo;
use crate::queue::Queue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// The queue and what the engine knows about it, behind the cell's lock.
pub(super) struct Slot {
    pub(super) queue: Queue,
    /// Deleted: calls on it answer "not found".
    pub(super) deleted: bool,
    /// The deadline the reaper sleeps until, if any.
    pub(super) armed: Option<u64>,
}

/// One queue: its slot, and what wakes its waiters, its reaper and its
/// watchers.
pub(super) struct QueueCell {
    slot: Mutex<Slot>,
    /// Wakes waiting lease calls.
    pub(super) available: Notify,
    /// Wakes the reaper to re-arm its timer.
    pub(super) timer: Notify,
    /// The latest description; `None` once deleted.
    pub(super) info: watch::Sender<Option<QueueInfo>>,
    /// Lease calls parked, waiting for an item.
    pub(super) waiting: AtomicUsize,
}

/// Counts a parked lease call for as long as it lives (also when the call is
/// cancelled).
pub(super) struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    pub(super) fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Parked(waiting)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl QueueCell {
    pub(super) fn new(queue: Queue) -> Self {
        let info = QueueInfo::of(&queue);
        QueueCell {
            slot: Mutex::new(Slot {
                queue,
                deleted: false,
                armed: None,
            }),
            available: Notify::new(),
            timer: Notify::new(),
            info: watch::Sender::new(Some(info)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Locks the slot; a poisoned lock (a panic elsewhere) is still usable
    /// because every transition checks before it changes anything.
    pub(super) fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After any change: wake a waiter if items are pending, every waiter if
    /// the queue is drained, the reaper if a deadline is now earlier, and
    /// publish the counters.
    pub(super) fn changed(&self, slot: &Slot) {
        let q = &slot.queue;
        let counters = q.counters();
        if counters.pending > 0 {
            self.available.notify_one();
        }
        if q.drained() {
            self.available.notify_waiters();
        }
        if let Some(next) = q.next_deadline()
            && slot.armed.is_none_or(|armed| next < armed)
        {
            self.timer.notify_one();
        }
        self.info.send_if_modified(|cur| {
            let new = QueueInfo::of(q);
            if cur.as_ref() == Some(&new) {
                false
            } else {
                *cur = Some(new);
                true
            }
        });
    }
}
