//! Every transition of the state machine, each refusal, and a property test
//! over random operation sequences.

use super::*;
use crate::error::{Finish, StaleCause};
use crate::store::StoreOp;
use prost::bytes::Bytes;
use std::time::Duration;

const LEASE: u64 = 10_000;

struct Fixture {
    q: Queue,
    next_id: u64,
    next_seq: u64,
    journal: Journal,
}

impl Fixture {
    fn new() -> Self {
        Self::with(QueueSettings {
            max_attempts: 3,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_millis(1000),
            ..QueueSettings::default()
        })
    }

    fn with(settings: QueueSettings) -> Self {
        Fixture {
            q: Queue::new("q".parse().expect("name"), settings, 60_000),
            next_id: 1,
            next_seq: 100,
            journal: Journal::new(true),
        }
    }

    fn enqueue_items(&mut self, now: u64, items: Vec<NewItem>) -> Result<Vec<Enqueued>> {
        let next_id = &mut self.next_id;
        self.q.enqueue(
            now,
            items,
            || {
                *next_id += 1;
                ItemId(*next_id - 1)
            },
            &mut self.journal,
        )
    }

    fn enqueue(&mut self, now: u64, payloads: &[&str]) -> Vec<ItemId> {
        let items = payloads
            .iter()
            .map(|p| NewItem {
                payload: Bytes::copy_from_slice(p.as_bytes()),
                ..NewItem::default()
            })
            .collect();
        self.enqueue_items(now, items)
            .expect("enqueue")
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    fn lease(&mut self, now: u64, max: usize) -> Vec<Leased> {
        let seq = &mut self.next_seq;
        self.q.lease(now, max, LEASE, || {
            *seq += 1;
            *seq
        })
    }

    fn lease_one(&mut self, now: u64) -> Leased {
        self.lease(now, 1).pop().expect("an item to lease")
    }

    fn ops(&mut self) -> Vec<StoreOp> {
        std::mem::replace(&mut self.journal, Journal::new(true)).into_ops()
    }

    fn counters(&self) -> Counters {
        let c = self.q.counters();
        assert!(c.balanced(), "{c:?}");
        c
    }
}

const A: Batch = Batch::AllOrNothing;

fn stale(r: Result<impl std::fmt::Debug>) -> StaleCause {
    match r {
        Err(Error::StaleLease { cause, .. }) => cause,
        other => panic!("expected a stale lease, got {other:?}"),
    }
}

#[test]
fn enqueue_makes_items_pending_in_order_and_journals_them() {
    let mut f = Fixture::new();
    let ids = f.enqueue(0, &["a", "b"]);
    assert_eq!(ids, vec![ItemId(1), ItemId(2)]);
    let c = f.counters();
    assert_eq!((c.enqueued, c.pending), (2, 2));
    assert_eq!(f.ops().len(), 2);
    let leased = f.lease(0, 10);
    assert_eq!(
        leased.iter().map(|l| &l.payload[..]).collect::<Vec<_>>(),
        [b"a", b"b"]
    );
}

#[test]
fn delayed_items_wait_until_due() {
    let mut f = Fixture::new();
    f.enqueue_items(
        1000,
        vec![NewItem {
            delay_ms: 500,
            ..NewItem::default()
        }],
    )
    .expect("enqueue");
    assert_eq!(f.counters().delayed, 1);
    assert!(f.lease(1499, 1).is_empty());
    assert_eq!(f.q.next_deadline(), Some(1500));
    assert_eq!(f.q.reap(1500, &mut f.journal).pending, 1);
    assert_eq!(f.counters().pending, 1);
    assert_eq!(f.lease_one(1500).attempt, 1);
}

#[test]
fn lease_honours_due_delays_without_the_reaper() {
    let mut f = Fixture::new();
    f.enqueue_items(
        0,
        vec![NewItem {
            delay_ms: 10,
            ..NewItem::default()
        }],
    )
    .expect("enqueue");
    assert_eq!(f.lease(10, 1).len(), 1);
    assert_eq!(f.counters().leased, 1);
}

#[test]
fn sealed_queue_refuses_enqueue_and_drains() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    assert!(f.q.seal(&mut f.journal));
    assert!(!f.q.seal(&mut f.journal), "sealing twice changes nothing");
    assert!(matches!(
        f.enqueue_items(0, vec![NewItem::default()]),
        Err(Error::Sealed(_))
    ));
    assert!(!f.q.drained());
    let l = f.lease_one(0);
    assert!(!f.q.drained(), "a leased item keeps it open");
    f.q.complete(1, &[l.token], A, &mut f.journal)
        .expect("complete");
    assert!(f.q.drained());
}

#[test]
fn idempotency_keys_deduplicate_while_live_and_within_the_window() {
    let mut f = Fixture::new();
    let keyed = |k: &str| NewItem {
        idempotency_key: Some(k.into()),
        ..NewItem::default()
    };
    let first = f
        .enqueue_items(0, vec![keyed("k"), keyed("k")])
        .expect("enqueue");
    assert_eq!(
        first[0],
        Enqueued {
            id: ItemId(1),
            duplicate: false
        }
    );
    assert_eq!(
        first[1],
        Enqueued {
            id: ItemId(1),
            duplicate: true
        }
    );
    assert_eq!(f.counters().enqueued, 1);
    let l = f.lease_one(0);
    f.q.complete(5, &[l.token], A, &mut f.journal)
        .expect("complete");
    let again = f.enqueue_items(10, vec![keyed("k")]).expect("enqueue");
    assert!(again[0].duplicate, "completed within the window");
    f.q.reap(5 + 60_000, &mut f.journal);
    let after = f.enqueue_items(60_006, vec![keyed("k")]).expect("enqueue");
    assert!(!after[0].duplicate, "forgotten after the window");
    assert!(
        f.ops()
            .iter()
            .any(|op| matches!(op, StoreOp::DeleteKey { .. }))
    );
}

#[test]
fn lease_takes_at_most_max_and_counts_attempts_from_one() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b", "c"]);
    let l = f.lease(0, 2);
    assert_eq!(l.len(), 2);
    assert!(l.iter().all(|i| i.attempt == 1 && i.deadline == LEASE));
    let c = f.counters();
    assert_eq!((c.pending, c.leased), (1, 2));
    assert!(f.ops().len() == 3, "leases are not journaled");
}

#[test]
fn complete_removes_the_item_and_keeps_its_count() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    f.ops();
    f.q.complete(1, &[l.token], A, &mut f.journal)
        .expect("complete");
    let c = f.counters();
    assert_eq!((c.leased, c.completed), (0, 1));
    assert!(f.q.item(l.id).is_none());
    let ops = f.ops();
    assert!(matches!(ops[0], StoreOp::DeleteItem { id, .. } if id == l.id));
    assert!(matches!(&ops[1], StoreOp::PutQueue(r) if r.completed == 1));
}

#[test]
fn finishing_twice_with_the_same_token_is_already_done_and_counted_once() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b", "c"]);
    let l = f.lease(0, 3);
    let first =
        f.q.complete(1, &[l[0].token], A, &mut f.journal)
            .expect("complete");
    assert!(first[0].done());
    let again =
        f.q.complete(2, &[l[0].token], A, &mut f.journal)
            .expect("again");
    assert!(again[0].already_done());
    assert_eq!(f.counters().completed, 1, "counted once");
    assert_eq!(
        stale(f.q.release(2, &[l[0].token], A)),
        StaleCause::Finished(Finish::Completed)
    );
    f.q.release(2, &[l[1].token], A).expect("release");
    assert!(f.q.release(3, &[l[1].token], A).expect("again")[0].already_done());
    assert_eq!(
        stale(f.q.complete(3, &[l[1].token], A, &mut f.journal)),
        StaleCause::Finished(Finish::Released)
    );
    let failed =
        f.q.fail(3, &[l[2].token], true, "x", None, A, &mut f.journal)
            .expect("fail");
    let again =
        f.q.fail(4, &[l[2].token], true, "x", None, A, &mut f.journal)
            .expect("again");
    assert!(failed[0].done() && failed[0].dead);
    assert!(again[0].already_done() && again[0].dead);
    let c = f.counters();
    assert_eq!((c.completed, c.dead, c.pending, c.leased), (1, 1, 1, 0));
}

#[test]
fn a_forgotten_finish_still_says_what_became_of_the_item() {
    // No memory (a zero window, as after a restart): the item's state tells.
    let mut f = Fixture::new();
    f.q = Queue::new("q".parse().expect("name"), QueueSettings::default(), 0);
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    f.q.complete(1, &[l.token], A, &mut f.journal)
        .expect("complete");
    assert_eq!(
        stale(f.q.complete(2, &[l.token], A, &mut f.journal)),
        StaleCause::ItemCompleted
    );
}

#[test]
fn per_token_batches_apply_the_live_tokens_and_report_the_rest() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b", "c"]);
    let l = f.lease(0, 3);
    let bogus = LeaseToken::mint(ItemId(99), 1);
    let tokens = [l[0].token, bogus, l[1].token, l[1].token];
    let out =
        f.q.complete(1, &tokens, Batch::EachToken, &mut f.journal)
            .expect("per token");
    assert!(out[0].done() && out[2].done());
    assert!(matches!(
        &out[1].outcome,
        Outcome::Refused(Error::StaleLease {
            cause: StaleCause::ItemCompleted,
            ..
        })
    ));
    assert!(matches!(
        &out[3].outcome,
        Outcome::Refused(Error::DuplicateToken { .. })
    ));
    assert_eq!(f.counters().completed, 2);
}

#[test]
fn an_expired_lease_cannot_complete_even_before_the_reaper_runs() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    assert_eq!(
        stale(f.q.complete(LEASE, &[l.token], A, &mut f.journal)),
        StaleCause::Expired
    );
    assert_eq!(f.counters().leased, 1, "nothing changed");
}

#[test]
fn a_zombie_cannot_complete_an_item_someone_else_now_holds() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let zombie = f.lease_one(0);
    f.q.reap(LEASE, &mut f.journal);
    let fresh = f.lease_one(LEASE);
    assert_eq!(fresh.id, zombie.id);
    assert_eq!(fresh.attempt, 2, "the expiry counted an attempt");
    assert_eq!(
        stale(f.q.complete(LEASE + 1, &[zombie.token], A, &mut f.journal)),
        StaleCause::Taken
    );
    f.q.complete(LEASE + 1, &[fresh.token], A, &mut f.journal)
        .expect("the owner completes");
    assert_eq!(f.counters().completed, 1);
}

#[test]
fn batches_are_all_or_nothing() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b"]);
    let l = f.lease(0, 2);
    let bogus = LeaseToken::mint(ItemId(99), 1);
    assert!(
        f.q.complete(1, &[l[0].token, bogus], A, &mut f.journal)
            .is_err()
    );
    assert_eq!(f.counters().leased, 2, "the good token was not applied");
    assert!(matches!(
        f.q.complete(1, &[l[0].token, l[0].token], A, &mut f.journal),
        Err(Error::DuplicateToken { item }) if item == l[0].id
    ));
    f.q.complete(1, &[l[0].token, l[1].token], A, &mut f.journal)
        .expect("complete both");
    assert_eq!(f.counters().completed, 2);
}

#[test]
fn renew_extends_the_deadline_and_old_deadlines_do_not_expire_it() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    let d = f.q.renew(LEASE - 1, &[l.token], LEASE, A).expect("renew");
    assert_eq!(d[0].deadline, Some(2 * LEASE - 1));
    let r = f.q.reap(LEASE, &mut f.journal);
    assert_eq!(r.expired, 0, "the stale heap entry is skipped");
    assert_eq!(f.counters().leased, 1);
    assert_eq!(f.q.reap(2 * LEASE - 1, &mut f.journal).expired, 1);
    assert_eq!(
        stale(f.q.renew(2 * LEASE, &[l.token], LEASE, A)),
        StaleCause::Expired
    );
}

#[test]
fn retriable_failure_backs_off_then_retries_then_dies() {
    let mut f = Fixture::new(); // max 3 attempts, back-off 100 ms doubling
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    assert_eq!(
        f.q.fail(0, &[l.token], false, "boom", None, A, &mut f.journal)
            .expect("fail")
            .iter()
            .filter(|r| r.dead)
            .count(),
        0
    );
    let c = f.counters();
    assert_eq!((c.delayed, c.retried), (1, 1));
    assert!(f.lease(99, 1).is_empty(), "backing off");
    let l = f.lease_one(100);
    assert_eq!(l.attempt, 2);
    f.q.fail(100, &[l.token], false, "boom", None, A, &mut f.journal)
        .expect("fail");
    assert!(f.lease(299, 1).is_empty(), "back-off doubled to 200 ms");
    let l = f.lease_one(300);
    assert_eq!(l.attempt, 3);
    assert_eq!(
        f.q.fail(300, &[l.token], false, "boom", None, A, &mut f.journal)
            .expect("fail")
            .iter()
            .filter(|r| r.dead)
            .count(),
        1
    );
    let c = f.counters();
    assert_eq!((c.dead, c.pending, c.delayed), (1, 0, 0));
    let dead = f.q.dead_items(10);
    assert_eq!(dead[0].reason, "attempt 3 of 3 failed: boom");
}

#[test]
fn retry_after_overrides_the_backoff() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    f.q.fail(0, &[l.token], false, "later", Some(5000), A, &mut f.journal)
        .expect("fail");
    assert!(f.lease(4999, 1).is_empty());
    assert_eq!(f.lease(5000, 1).len(), 1);
}

#[test]
fn fatal_failure_is_dead_at_once_with_its_reason() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a"]);
    let l = f.lease_one(0);
    assert_eq!(
        f.q.fail(0, &[l.token], true, "exit code 42", None, A, &mut f.journal)
            .expect("fail")
            .iter()
            .filter(|r| r.dead)
            .count(),
        1
    );
    assert_eq!(f.counters().dead, 1);
    let dead = f.q.dead_items(10);
    assert_eq!(dead[0].reason, "failed fatally on attempt 1: exit code 42");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(
        stale(f.q.complete(1, &[l.token], A, &mut f.journal)),
        StaleCause::Finished(Finish::Failed)
    );
}

#[test]
fn release_puts_the_item_first_in_line_without_counting_an_attempt() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b"]);
    let a = f.lease_one(0);
    f.q.release(1, &[a.token], A).expect("release");
    let c = f.counters();
    assert_eq!((c.pending, c.leased, c.retried), (2, 0, 0));
    let again = f.lease_one(1);
    assert_eq!((again.id, again.attempt), (a.id, 1));
    assert!(f.q.release(1, &[a.token], A).expect("again")[0].already_done());
    assert_eq!(
        stale(f.q.complete(1, &[a.token], A, &mut f.journal)),
        StaleCause::Finished(Finish::Released)
    );
}

#[test]
fn expiry_on_the_last_attempt_sends_the_item_dead() {
    let mut f = Fixture::with(QueueSettings {
        max_attempts: 1,
        ..QueueSettings::default()
    });
    f.enqueue(0, &["a"]);
    f.lease_one(0);
    let r = f.q.reap(LEASE, &mut f.journal);
    assert_eq!((r.expired, r.dead), (1, 1));
    assert_eq!(
        f.q.dead_items(1)[0].reason,
        "attempt 1 of 1 failed: the lease expired"
    );
}

#[test]
fn requeue_dead_resets_attempts_and_refuses_live_items() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b"]);
    let l = f.lease_one(0);
    f.q.fail(0, &[l.token], true, "x", None, A, &mut f.journal)
        .expect("fail");
    assert!(matches!(
        f.q.requeue_dead(&[ItemId(2)], &mut f.journal),
        Err(Error::ItemNotDead { .. })
    ));
    assert!(matches!(
        f.q.requeue_dead(&[ItemId(99)], &mut f.journal),
        Err(Error::ItemNotFound { .. })
    ));
    assert_eq!(
        f.q.requeue_dead(&[l.id, l.id], &mut f.journal)
            .expect("requeue"),
        1
    );
    let c = f.counters();
    assert_eq!((c.dead, c.pending), (0, 2));
    let leased = f.lease(0, 2);
    assert!(leased.iter().all(|i| i.attempt == 1));
    assert_eq!(f.q.requeue_dead(&[], &mut f.journal).expect("none dead"), 0);
}

#[test]
fn purge_drops_pending_and_delayed_but_not_leased() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b"]);
    f.enqueue_items(
        0,
        vec![NewItem {
            delay_ms: 100,
            idempotency_key: Some("k".into()),
            ..NewItem::default()
        }],
    )
    .expect("enqueue");
    let l = f.lease_one(0);
    assert_eq!(f.q.purge(&mut f.journal), 2);
    let c = f.counters();
    assert_eq!((c.enqueued, c.pending, c.delayed, c.leased), (1, 0, 0, 1));
    let again = f
        .enqueue_items(
            0,
            vec![NewItem {
                idempotency_key: Some("k".into()),
                ..NewItem::default()
            }],
        )
        .expect("enqueue");
    assert!(!again[0].duplicate, "purged keys are forgotten");
    f.q.complete(1, &[l.token], A, &mut f.journal)
        .expect("the leased one survives");
}

#[test]
fn restore_brings_leased_items_back_pending_and_keeps_counts() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b", "c"]);
    let a = f.lease_one(0);
    f.q.complete(0, &[a.token], A, &mut f.journal)
        .expect("complete");
    f.lease_one(0); // b stays leased
    let items: Vec<Item> = f.q.items().cloned().collect();
    let q = Queue::restore(f.q.record(), items, [], 60_000, 1, RecallBudget::new(100));
    let c = q.counters();
    assert!(c.balanced());
    assert_eq!((c.enqueued, c.pending, c.leased, c.completed), (3, 2, 0, 1));
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue(u8, Option<u8>, u16),
        Lease(u8),
        Complete(usize),
        Fail(usize, bool),
        Release(usize),
        Renew(usize),
        Advance(u16),
        Seal,
        Purge,
        Requeue,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                1u8..5,
                proptest::option::of(0u8..4),
                prop_oneof![Just(0u16), 1u16..300]
            )
                .prop_map(|(n, k, d)| Op::Enqueue(n, k, d)),
            (1u8..4).prop_map(Op::Lease),
            any::<usize>().prop_map(Op::Complete),
            (any::<usize>(), any::<bool>()).prop_map(|(i, f)| Op::Fail(i, f)),
            any::<usize>().prop_map(Op::Release),
            any::<usize>().prop_map(Op::Renew),
            (1u16..15_000).prop_map(Op::Advance),
            Just(Op::Seal),
            Just(Op::Purge),
            Just(Op::Requeue),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random operation sequences keep the counters exact and balanced,
        /// never complete an item twice, and lose none: every enqueued item
        /// is live or completed (or purged).
        #[test]
        fn counters_stay_exact_and_no_item_is_lost_or_completed_twice(ops in proptest::collection::vec(op(), 1..120)) {
            let mut f = Fixture::with(QueueSettings {
                max_attempts: 3,
                retry_backoff: Duration::from_millis(50),
                retry_backoff_max: Duration::from_millis(400),
                ..QueueSettings::default()
            });
            let mut now = 0u64;
            let mut held: Vec<Leased> = Vec::new();
            let mut added: HashSet<ItemId> = HashSet::new();
            let mut completed: HashSet<ItemId> = HashSet::new();
            let mut purged: HashSet<ItemId> = HashSet::new();
            for op in ops {
                match op {
                    Op::Enqueue(n, key, delay) => {
                        let items = (0..n).map(|_| NewItem {
                            idempotency_key: key.map(|k| format!("k{k}").into()),
                            delay_ms: u64::from(delay),
                            ..NewItem::default()
                        }).collect();
                        if let Ok(out) = f.enqueue_items(now, items) {
                            added.extend(out.iter().map(|e| e.id));
                        }
                    }
                    Op::Lease(n) => held.extend(f.lease(now, n as usize)),
                    Op::Complete(i) if !held.is_empty() => {
                        let l = held.remove(i % held.len());
                        if f.q.complete(now, &[l.token], A, &mut f.journal).is_ok() {
                            prop_assert!(completed.insert(l.id), "item {} completed twice", l.id);
                        }
                    }
                    Op::Fail(i, fatal) if !held.is_empty() => {
                        let l = held.remove(i % held.len());
                        let _ = f.q.fail(now, &[l.token], fatal, "x", None, A, &mut f.journal);
                    }
                    Op::Release(i) if !held.is_empty() => {
                        let l = held.remove(i % held.len());
                        let _ = f.q.release(now, &[l.token], A);
                    }
                    Op::Renew(i) if !held.is_empty() => {
                        let l = &held[i % held.len()];
                        let _ = f.q.renew(now, &[l.token], LEASE, A);
                    }
                    Op::Advance(ms) => {
                        now += u64::from(ms);
                        f.q.reap(now, &mut f.journal);
                    }
                    Op::Seal => { f.q.seal(&mut f.journal); }
                    Op::Purge => {
                        let before: HashSet<ItemId> = f.q.items().map(|i| i.id).collect();
                        f.q.purge(&mut f.journal);
                        let after: HashSet<ItemId> = f.q.items().map(|i| i.id).collect();
                        purged.extend(before.difference(&after));
                    }
                    Op::Requeue => { let _ = f.q.requeue_dead(&[], &mut f.journal); }
                    _ => {}
                }
                let c = f.q.counters();
                prop_assert!(c.balanced(), "{c:?}");
                let held_bytes: u64 = f.q.items().map(|i| i.queued_bytes()).sum();
                prop_assert_eq!(f.q.queued_bytes(), held_bytes);
                // Recount from the items themselves.
                let mut recount = Counters { completed: c.completed, retried: c.retried, ..Counters::default() };
                for item in f.q.items() {
                    match item.state {
                        ItemState::Pending => recount.pending += 1,
                        ItemState::Delayed { .. } => recount.delayed += 1,
                        ItemState::Leased { .. } => recount.leased += 1,
                        ItemState::Dead { .. } => recount.dead += 1,
                    }
                }
                recount.enqueued = recount.pending + recount.delayed + recount.leased + recount.dead + recount.completed;
                prop_assert_eq!(c, recount);
                prop_assert_eq!(c.completed as usize, completed.len());
                prop_assert_eq!(f.q.drained(), f.q.sealed() && c.is_empty());
                // Nothing lost: every added item is live, completed or purged.
                for id in &added {
                    prop_assert!(
                        f.q.item(*id).is_some() || completed.contains(id) || purged.contains(id),
                        "item {} was lost", id
                    );
                }
            }
        }
    }
}

#[test]
fn ended_leases_do_not_pile_up_in_the_deadline_heap() {
    let mut f = Fixture::new();
    for i in 0..20_000u64 {
        f.enqueue(i, &["x"]);
        let l = f.lease_one(i);
        f.q.complete(i, &[l.token], A, &mut f.journal)
            .expect("complete");
    }
    // One lease still live: its entry must survive the compaction.
    f.enqueue(20_000, &["last"]);
    let live = f.lease_one(20_000);
    assert!(f.q.leases.len() <= 1027, "{} entries", f.q.leases.len());
    // The live lease's entry survived: it still expires.
    f.q.reap(20_000 + LEASE, &mut f.journal);
    assert_eq!(f.counters().leased, 0, "the live lease expired: {live:?}");
}

/// Issue 13: holding one token, guesses at neighbouring ids and sequence
/// numbers — with the held token's secret or a made-up one — complete
/// nothing, and each is refused exactly as a stale token of that item.
#[test]
fn guessed_neighbour_tokens_complete_nothing() {
    let mut f = Fixture::new();
    f.enqueue(0, &["a", "b", "c", "d", "e"]);
    let leased = f.lease(0, 5);
    let held = leased[2].token;
    let mut tries = 0;
    for d_item in -2i64..=2 {
        for d_seq in -7i64..=7 {
            let item = ItemId(held.item.0.wrapping_add_signed(d_item));
            let seq = held.seq.wrapping_add_signed(d_seq);
            for secret in [held.secret, [0x5a; crate::names::SECRET_BYTES]] {
                let guess = LeaseToken { item, seq, secret };
                if guess == held {
                    continue;
                }
                tries += 1;
                let out =
                    f.q.complete(1, &[guess], Batch::EachToken, &mut f.journal)
                        .expect("per token");
                assert!(
                    matches!(
                        &out[0].outcome,
                        Outcome::Refused(Error::StaleLease { cause, .. })
                            if matches!(cause, StaleCause::Taken | StaleCause::Expired
                                | StaleCause::ItemCompleted)
                    ),
                    "{guess}: {:?}",
                    out[0].outcome
                );
            }
        }
    }
    assert!(tries >= 76, "{tries} guesses");
    let c = f.counters();
    assert_eq!((c.leased, c.completed), (5, 0), "nothing completed");
    // A live lease's item with a wrong secret gets what a token of an
    // earlier lease of it gets.
    let victim = leased[1].token;
    let forged = LeaseToken {
        secret: [0; crate::names::SECRET_BYTES],
        ..victim
    };
    let older = LeaseToken::mint(victim.item, victim.seq - 100);
    let mut reason = |t| match f.q.complete(1, &[t], A, &mut Journal::new(true)) {
        Err(Error::StaleLease { cause, .. }) => cause,
        other => panic!("{other:?}"),
    };
    assert_eq!(reason(forged), reason(older));
    // The real tokens still work, and a retry with the full token is
    // "already done".
    for l in &leased {
        f.q.complete(2, &[l.token], A, &mut f.journal)
            .expect("the holder completes");
    }
    let again =
        f.q.complete(3, &[held], Batch::EachToken, &mut f.journal)
            .expect("retry");
    assert!(again[0].already_done());
    let forged_retry = LeaseToken {
        secret: [1; crate::names::SECRET_BYTES],
        ..held
    };
    let out =
        f.q.complete(3, &[forged_retry], Batch::EachToken, &mut f.journal)
            .expect("per token");
    assert!(
        matches!(out[0].outcome, Outcome::Refused(_)),
        "{:?}",
        out[0].outcome
    );
}
