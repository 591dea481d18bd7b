//! What every store must do, and what the embedded one must survive.

use super::*;
use crate::item::{Attributes, ItemState};
use crate::settings::QueueSettings;
use prost::bytes::Bytes;
use std::time::Duration;

fn name(s: &str) -> QueueName {
    s.parse().expect("queue name")
}

fn record(q: &str) -> QueueRecord {
    QueueRecord {
        name: name(q),
        settings: QueueSettings {
            default_lease: Duration::from_secs(7),
            ..QueueSettings::default()
        },
        sealed: true,
        completed: 5,
        retried: 2,
    }
}

fn item(id: u64, state: ItemState) -> Item {
    Item {
        id: ItemId(id),
        payload: Bytes::from(format!("payload-{id}")),
        attributes: Attributes::new(vec![("a".into(), "1".into())]),
        idempotency_key: Some(format!("key-{id}").into()),
        attempts: 2,
        enqueued_at: 1_700_000_000_000,
        state,
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn commit(store: &dyn Store, ops: Vec<StoreOp>) {
    block_on(store.submit(ops).wait()).expect("commit");
}

#[test]
fn memory_store_keeps_nothing_and_acks_at_once() {
    let s = MemoryStore;
    assert!(!s.durable());
    commit(&s, vec![StoreOp::PutQueue(record("a"))]);
    assert!(s.load().expect("load").queues.is_empty());
    s.close().expect("close");
}

#[test]
fn embedded_store_round_trips_everything_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = EmbeddedStore::open(dir.path()).expect("open");
        assert!(s.durable());
        let snap = s.load().expect("load");
        assert!(snap.queues.is_empty() && snap.items.is_empty());
        commit(
            &s,
            vec![
                StoreOp::PutQueue(record("a")),
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(1, ItemState::Pending),
                },
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(2, ItemState::Delayed { due: 99 }),
                },
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(
                        3,
                        ItemState::Dead {
                            reason: "boom".into(),
                            at: 7,
                        },
                    ),
                },
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(
                        4,
                        ItemState::Leased {
                            seq: 1,
                            deadline: 2,
                        },
                    ),
                },
                StoreOp::PutKey {
                    queue: name("a"),
                    key: "done".into(),
                    item: ItemId(9),
                    expires: 50,
                },
            ],
        );
        s.close().expect("close");
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let snap = s.load().expect("load");
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
    assert_eq!(snap.keys.len(), 1);
    assert_eq!(snap.next_item_id, 5);
}

#[test]
fn deletes_remove_items_queues_and_keys_but_ids_are_never_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = EmbeddedStore::open(dir.path()).expect("open");
        commit(
            &s,
            vec![
                StoreOp::PutQueue(record("a")),
                StoreOp::PutQueue(record("b")),
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(10, ItemState::Pending),
                },
                StoreOp::PutItem {
                    queue: name("b"),
                    item: item(11, ItemState::Pending),
                },
                StoreOp::PutItem {
                    queue: name("b"),
                    item: item(12, ItemState::Pending),
                },
                StoreOp::PutKey {
                    queue: name("b"),
                    key: "x".into(),
                    item: ItemId(1),
                    expires: 1,
                },
            ],
        );
        commit(
            &s,
            vec![
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(10),
                },
                StoreOp::DeleteQueue(name("b")),
            ],
        );
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let snap = s.load().expect("load");
    assert_eq!(snap.queues, vec![record("a")]);
    assert!(snap.items.is_empty());
    assert!(snap.keys.is_empty());
    assert_eq!(
        snap.next_item_id, 13,
        "completed ids are not handed out again"
    );
}

#[test]
fn within_one_commit_only_the_last_write_of_each_record_lands() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = EmbeddedStore::open(dir.path()).expect("open");
        commit(
            &s,
            vec![
                StoreOp::PutQueue(record("a")),
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(20, ItemState::Pending),
                },
            ],
        );
        let mut updated = record("a");
        updated.completed = 9;
        let mut dead = item(21, ItemState::Pending);
        dead.attempts = 3;
        dead.state = ItemState::Dead {
            reason: "gave up".into(),
            at: 5,
        };
        commit(
            &s,
            vec![
                // Enqueued and completed in one commit: never written.
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(22, ItemState::Pending),
                },
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(22),
                },
                // Written twice: the second version lands.
                StoreOp::PutItem {
                    queue: name("a"),
                    item: item(21, ItemState::Pending),
                },
                StoreOp::PutItem {
                    queue: name("a"),
                    item: dead.clone(),
                },
                // Stored earlier, deleted now.
                StoreOp::DeleteItem {
                    queue: name("a"),
                    id: ItemId(20),
                },
                StoreOp::PutQueue(record("a")),
                StoreOp::PutQueue(updated.clone()),
                // A queue deleted and made again: only what came after stays.
                StoreOp::PutQueue(record("b")),
                StoreOp::PutItem {
                    queue: name("b"),
                    item: item(23, ItemState::Pending),
                },
                StoreOp::DeleteQueue(name("b")),
                StoreOp::PutQueue(record("b")),
                StoreOp::PutItem {
                    queue: name("b"),
                    item: item(24, ItemState::Pending),
                },
            ],
        );
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let snap = s.load().expect("load");
    let mut updated = record("a");
    updated.completed = 9;
    assert_eq!(snap.queues, vec![updated, record("b")]);
    let ids: Vec<(String, u64)> = snap
        .items
        .iter()
        .map(|(q, i)| (q.to_string(), i.id.0))
        .collect();
    assert_eq!(ids, vec![("a".into(), 21), ("b".into(), 24)]);
    assert!(
        matches!(&snap.items[0].1.state, ItemState::Dead { reason, at: 5 } if &**reason == "gave up"),
        "{:?}",
        snap.items[0].1
    );
    assert_eq!(
        snap.next_item_id, 25,
        "ids of items never written count too"
    );
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = EmbeddedStore::open(dir.path()).expect("open");
    let err = EmbeddedStore::open(dir.path()).expect_err("locked");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(
        err.to_string().contains("in use by another queue-server"),
        "{err}"
    );
}

#[test]
fn a_data_dir_that_is_a_file_or_garbage_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let err = EmbeddedStore::open(&file).expect_err("not a directory");
    assert!(err.to_string().contains("cannot create it"), "{err}");

    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).expect("mkdir");
    std::fs::write(garbage.join(embedded::DB_FILE), vec![7u8; 8192]).expect("write");
    let err = EmbeddedStore::open(&garbage).expect_err("garbage");
    assert!(err.to_string().contains("data directory"), "{err}");
}

#[test]
fn many_concurrent_commits_share_syncs_and_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = std::sync::Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        commit(&*s, vec![StoreOp::PutQueue(record("a"))]);
        block_on(async {
            let mut commits = Vec::new();
            for id in 0..2000u64 {
                commits.push(s.submit(vec![StoreOp::PutItem {
                    queue: name("a"),
                    item: item(id, ItemState::Pending),
                }]));
            }
            for c in commits {
                c.wait().await.expect("durable");
            }
        });
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(s.load().expect("load").items.len(), 2000);
}
