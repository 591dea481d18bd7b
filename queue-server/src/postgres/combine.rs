//! Grouping concurrent calls on one queue into one statement.
//!
//! Each statement pays a round trip, a plan's fixed work, a counter stripe
//! update and a commit (a WAL flush) whatever it carries; with a few
//! workers or producers on a queue, those were most of a batch's cost
//! (`docs/STORE.md`, "Where the time goes"). So calls of one kind on one
//! queue line up here, and up to a few driver tasks per queue and kind
//! (per replica) each take every call waiting as one group, runs it as one
//! statement, answers each caller its share, and takes the next group.
//!
//! No call waits for a group to fill: a call that finds fewer statements
//! of its kind in flight than the limit (`--database-statements-per-queue`)
//! starts one at once; only calls that arrive while the limit is reached
//! wait, and they all go in the next statement to start. So a lone caller
//! sees no added latency, the database works on up to that many statements
//! of a queue at once (its cores stay busy), and beyond that a statement
//! carries what arrived meanwhile: many small calls (workers of one item at
//! a time) become few statements.
//!
//! The statement runs in its own task, not in any caller's: a caller that
//! goes away (its client hung up) cancels nothing the others wait for.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// A call waiting for its group, and where its answer goes.
pub(crate) struct Waiting<C, A> {
    /// What the caller asked.
    pub(crate) call: C,
    /// Its answer (closed when the caller went away).
    pub(crate) answer: oneshot::Sender<A>,
}

struct State<C, A> {
    /// Drivers taking groups.
    drivers: usize,
    waiting: VecDeque<Waiting<C, A>>,
}

/// The line of one kind of call on one queue.
pub(crate) struct Combiner<C, A> {
    state: Mutex<State<C, A>>,
}

impl<C, A> Default for Combiner<C, A> {
    fn default() -> Self {
        Combiner {
            state: Mutex::new(State {
                drivers: 0,
                waiting: VecDeque::new(),
            }),
        }
    }
}

impl<C, A> Combiner<C, A> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<C, A>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lines `call` up. The answer comes on the receiver; `true` when fewer
    /// than `drivers` drivers are taking groups and the caller must start
    /// one (a task calling [`Combiner::next`] until it answers `None`).
    pub(crate) fn join(&self, call: C, drivers: usize) -> (oneshot::Receiver<A>, bool) {
        let (answer, rx) = oneshot::channel();
        let mut s = self.state();
        s.waiting.push_back(Waiting { call, answer });
        let start = s.drivers < drivers.max(1);
        if start {
            s.drivers += 1;
        }
        (rx, start)
    }

    /// The next group for the driver: the calls waiting, in order, while
    /// their `weight` together stays within `max` (always at least one);
    /// calls whose caller went away are left out. `None` when none wait:
    /// the driver stops (the next call starts another).
    pub(crate) fn next(
        &self,
        max: usize,
        weight: impl Fn(&C) -> usize,
    ) -> Option<Vec<Waiting<C, A>>> {
        let mut s = self.state();
        let mut group = Vec::new();
        let mut total = 0usize;
        while let Some(first) = s.waiting.front() {
            if first.answer.is_closed() {
                s.waiting.pop_front();
                continue;
            }
            let w = weight(&first.call);
            if !group.is_empty() && total.saturating_add(w) > max {
                break;
            }
            total = total.saturating_add(w);
            if let Some(call) = s.waiting.pop_front() {
                group.push(call);
            }
        }
        if group.is_empty() {
            s.drivers = s.drivers.saturating_sub(1);
            return None;
        }
        Some(group)
    }

    /// Puts calls back at the head of the line, in their order: they go in
    /// the next group.
    pub(crate) fn put_back(&self, calls: Vec<Waiting<C, A>>) {
        let mut s = self.state();
        for call in calls.into_iter().rev() {
            s.waiting.push_front(call);
        }
    }

    /// The driver ended without [`Combiner::next`] saying so (its task
    /// panicked): the calls waiting are dropped (their callers see the
    /// answer channel closed) and the next call starts a driver.
    fn abandon(&self) {
        let mut s = self.state();
        s.waiting.clear();
        s.drivers = s.drivers.saturating_sub(1);
    }
}

/// Held by a driver task: if the task ends by a panic, the line is not
/// left waiting for a driver that is gone.
pub(crate) struct Driving<'a, C, A> {
    combiner: &'a Combiner<C, A>,
    /// Set when [`Combiner::next`] answered `None` (a normal end).
    pub(crate) done: bool,
}

impl<'a, C, A> Driving<'a, C, A> {
    pub(crate) fn new(combiner: &'a Combiner<C, A>) -> Self {
        Driving {
            combiner,
            done: false,
        }
    }
}

impl<C, A> Drop for Driving<'_, C, A> {
    fn drop(&mut self) {
        if !self.done {
            self.combiner.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_drives_and_later_ones_wait_for_the_next_group() {
        let c: Combiner<usize, usize> = Combiner::default();
        let (_a, start) = c.join(3, 1);
        assert!(start);
        let (_b, start) = c.join(4, 1);
        assert!(!start, "a driver is running");
        let (_c, _) = c.join(5, 1);
        let group = c.next(8, |w| *w).expect("a group");
        assert_eq!(group.iter().map(|w| w.call).collect::<Vec<_>>(), [3, 4]);
        let group = c.next(8, |w| *w).expect("the rest");
        assert_eq!(group.iter().map(|w| w.call).collect::<Vec<_>>(), [5]);
        assert!(c.next(8, |w| *w).is_none());
        let (_d, start) = c.join(1, 1);
        assert!(start, "the driver stopped: the next call starts one");
        let (_e, start) = c.join(1, 2);
        assert!(start, "a second driver is allowed");
        let (_f, start) = c.join(1, 2);
        assert!(!start, "not a third");
    }

    #[test]
    fn a_call_heavier_than_the_limit_goes_alone_and_gone_callers_are_skipped() {
        let c: Combiner<usize, usize> = Combiner::default();
        let (gone, _) = c.join(1, 1);
        drop(gone);
        let (_a, _) = c.join(100, 1);
        let (_b, _) = c.join(1, 1);
        let group = c.next(10, |w| *w).expect("a group");
        assert_eq!(group.iter().map(|w| w.call).collect::<Vec<_>>(), [100]);
        c.put_back(group);
        let group = c.next(1000, |w| *w).expect("a group");
        assert_eq!(group.iter().map(|w| w.call).collect::<Vec<_>>(), [100, 1]);
    }

    #[test]
    fn a_driver_that_panicked_leaves_the_line_to_the_next_call() {
        let c: Combiner<usize, usize> = Combiner::default();
        let (rx, start) = c.join(1, 1);
        assert!(start);
        drop(Driving::new(&c));
        let (_b, start) = c.join(2, 1);
        assert!(start);
        drop(c);
        assert!(
            rx.blocking_recv().is_err(),
            "its caller hears the channel close"
        );
    }
}
