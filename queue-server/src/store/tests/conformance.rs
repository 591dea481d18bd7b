//! One body per case, run on every store: the [`conformance!`] invocation at
//! the end makes one `#[test]` per store and case (`memory::…`,
//! `embedded::…`), so a failure names the store. A new store is one line
//! there and a [`Fixture`].
//!
//! A store that keeps nothing ([`Store::durable`] false) must still take
//! every commit, and must load nothing after a reopen; a durable one must
//! load exactly what was committed.

use super::*;

/// What a reopened store loads: `Some` from a durable store; a store that
/// keeps nothing must load nothing, and the case ends there (`None`).
fn reopen(f: &mut impl Fixture) -> Option<Snapshot> {
    let store = f.open();
    let snap = store.load().expect("load");
    if store.durable() {
        return Some(snap);
    }
    assert!(
        snap.queues.is_empty() && snap.items.is_empty() && snap.keys.is_empty(),
        "a store that keeps nothing loads nothing: {snap:?}"
    );
    None
}

/// Opens a store, loads it (a store takes commits once loaded) and makes
/// `commits`, one after the other; answers the store, still open.
fn write(f: &mut impl Fixture, commits: Vec<Vec<StoreOp>>) -> Arc<dyn Store> {
    let s = f.open();
    s.load().expect("load");
    for ops in commits {
        commit(&*s, ops);
    }
    s
}

pub(super) fn a_new_store_holds_nothing(mut f: impl Fixture) {
    let store = f.open();
    let snap = store.load().expect("load");
    assert!(snap.queues.is_empty() && snap.items.is_empty() && snap.keys.is_empty());
    commit(&*store, Vec::new());
    store.close().expect("close");
}

pub(super) fn everything_committed_is_loaded_after_a_reopen(mut f: impl Fixture) {
    {
        let s = write(
            &mut f,
            vec![vec![
                StoreOp::PutQueue(record("a")),
                put("a", item(1, ItemState::Pending)),
                put("a", item(2, ItemState::Delayed { due: 99 })),
                put(
                    "a",
                    item(
                        3,
                        ItemState::Dead {
                            reason: "boom".into(),
                            at: 7,
                        },
                    ),
                ),
                put(
                    "a",
                    item(
                        4,
                        ItemState::Leased {
                            seq: 1,
                            deadline: 2,
                        },
                    ),
                ),
                StoreOp::PutKey {
                    queue: name("a"),
                    key: "done".into(),
                    item: ItemId(9),
                    expires: 50,
                },
            ]],
        );
        s.close().expect("close");
    }
    let Some(snap) = reopen(&mut f) else { return };
    assert_eq!(snap.queues, vec![record("a")]);
    let items: Vec<Item> = snap.items.into_iter().map(|(_, i)| i).collect();
    assert_eq!(items[0], item(1, ItemState::Pending));
    assert_eq!(items[1], item(2, ItemState::Delayed { due: 99 }));
    assert_eq!(
        items[2],
        item(
            3,
            ItemState::Dead {
                reason: "boom".into(),
                at: 7
            }
        )
    );
    assert_eq!(
        items[3],
        item(4, ItemState::Pending),
        "a lease is stored as pending"
    );
    assert_eq!(
        snap.keys,
        vec![StoredKey {
            queue: name("a"),
            key: "done".into(),
            item: ItemId(9),
            expires: 50
        }]
    );
    assert_eq!(snap.next_item_id, 5);
}

pub(super) fn deletes_remove_items_queues_and_keys_but_ids_are_never_reused(mut f: impl Fixture) {
    write(
        &mut f,
        vec![
            vec![
                StoreOp::PutQueue(record("a")),
                StoreOp::PutQueue(record("b")),
                put("a", item(10, ItemState::Pending)),
                put("b", item(11, ItemState::Pending)),
                put("b", item(12, ItemState::Pending)),
                StoreOp::PutKey {
                    queue: name("b"),
                    key: "x".into(),
                    item: ItemId(1),
                    expires: 1,
                },
            ],
            vec![
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(10),
                },
                StoreOp::DeleteQueue(name("b")),
            ],
        ],
    );
    let Some(snap) = reopen(&mut f) else { return };
    assert_eq!(snap.queues, vec![record("a")]);
    assert!(snap.items.is_empty());
    assert!(snap.keys.is_empty());
    assert_eq!(
        snap.next_item_id, 13,
        "completed ids are not handed out again"
    );
}

pub(super) fn within_one_commit_only_the_last_write_of_each_record_lands(mut f: impl Fixture) {
    let mut updated = record("a");
    updated.completed = 9;
    let mut dead = item(21, ItemState::Pending);
    dead.attempts = 3;
    dead.state = ItemState::Dead {
        reason: "gave up".into(),
        at: 5,
    };
    write(
        &mut f,
        vec![
            vec![
                StoreOp::PutQueue(record("a")),
                put("a", item(20, ItemState::Pending)),
            ],
            vec![
                // Enqueued and completed in one commit: never written.
                put("a", item(22, ItemState::Pending)),
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(22),
                },
                // Written twice: the second version lands.
                put("a", item(21, ItemState::Pending)),
                put("a", dead.clone()),
                // Stored earlier, deleted now.
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(20),
                },
                StoreOp::PutQueue(record("a")),
                StoreOp::PutQueue(updated.clone()),
                // A queue deleted and made again: only what came after stays.
                StoreOp::PutQueue(record("b")),
                put("b", item(23, ItemState::Pending)),
                StoreOp::DeleteQueue(name("b")),
                StoreOp::PutQueue(record("b")),
                put("b", item(24, ItemState::Pending)),
            ],
        ],
    );
    let Some(snap) = reopen(&mut f) else { return };
    assert_eq!(snap.queues, vec![updated, record("b")]);
    let ids: Vec<(String, u64)> = snap
        .items
        .iter()
        .map(|(q, i)| (q.to_string(), i.id.0))
        .collect();
    assert_eq!(ids, vec![("a".into(), 21), ("b".into(), 24)]);
    assert_eq!(snap.items[0].1, dead);
    assert_eq!(
        snap.next_item_id, 25,
        "ids of items never written count too"
    );
}

pub(super) fn many_concurrent_commits_all_land(mut f: impl Fixture) {
    {
        let s = write(&mut f, vec![vec![StoreOp::PutQueue(record("a"))]]);
        block_on(async {
            let commits: Vec<Commit> = (0..2000u64)
                .map(|id| s.submit(vec![put("a", item(id, ItemState::Pending))]))
                .collect();
            for c in commits {
                c.wait().await.expect("durable");
            }
        });
    }
    let Some(snap) = reopen(&mut f) else { return };
    assert_eq!(snap.items.len(), 2000);
}

/// One module per store, one `#[test]` per case in it.
macro_rules! conformance {
    (cases: $cases:tt; $($store:ident => $fixture:expr;)+) => {$(
        mod $store {
            use super::super::*;

            conformance!(@cases $fixture, $cases);
        }
    )+};
    (@cases $fixture:expr, [$($case:ident),+ $(,)?]) => {$(
        #[test]
        fn $case() {
            super::$case($fixture)
        }
    )+};
}

conformance! {
    cases: [
        a_new_store_holds_nothing,
        everything_committed_is_loaded_after_a_reopen,
        deletes_remove_items_queues_and_keys_but_ids_are_never_reused,
        within_one_commit_only_the_last_write_of_each_record_lands,
        many_concurrent_commits_all_land,
    ];
    memory => Memory;
    embedded => Embedded::new();
}
