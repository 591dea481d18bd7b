//! The embedded store's own cases: its directory, and its failure path
//! (driven by [`fault`]).

use super::*;
use crate::store::fault::{FaultKind, Faults, Op};

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
    std::fs::write(
        garbage.join(crate::store::embedded::DB_FILE),
        vec![7u8; 8192],
    )
    .expect("write");
    let err = EmbeddedStore::open(&garbage).expect_err("garbage");
    assert!(err.to_string().contains("data directory"), "{err}");
}

#[test]
fn the_faulty_storage_still_locks_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = EmbeddedStore::open_with_faults(dir.path(), Faults::new()).expect("open");
    let err = EmbeddedStore::open(dir.path()).expect_err("locked");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

/// Today's behaviour after a failed commit, for one fault: the commit's
/// callers get the error; every later commit is refused with it, even once
/// the disk is fine again; closing reports it; what was durable before is
/// still there after a restart.
fn a_failed_commit_fails_its_callers_and_refuses_every_later_change(
    op: Op,
    kind: FaultKind,
    says: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    {
        let s = EmbeddedStore::open_with_faults(dir.path(), faults.clone()).expect("open");
        s.load().expect("load");
        commit(
            &s,
            vec![
                StoreOp::PutQueue(record("a")),
                put("a", item(1, ItemState::Pending)),
            ],
        );

        faults.fail(op, 1, kind);
        // Two calls in flight share the failed commit or meet the refusal.
        let (first, second) = block_on(async {
            let a = s.submit(vec![put("a", item(2, ItemState::Pending))]);
            let b = s.submit(vec![put("a", item(3, ItemState::Pending))]);
            (a.wait().await, b.wait().await)
        });
        for got in [&first, &second] {
            match got {
                Err(StoreError::Write(msg)) => assert!(msg.contains(says), "{msg}"),
                other => panic!("expected the injected failure, got {other:?}"),
            }
        }
        assert!(faults.injected() >= 1);

        faults.clear();
        let later = try_commit(&s, vec![put("a", item(4, ItemState::Pending))]);
        assert!(
            matches!(&later, Err(StoreError::Write(msg)) if msg.contains(says)),
            "a later change is refused with the first failure: {later:?}"
        );
        let closed = s.close();
        assert!(
            matches!(&closed, Err(StoreError::Write(_))),
            "closing reports the failure: {closed:?}"
        );
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let snap = s.load().expect("load");
    assert_eq!(snap.queues, vec![record("a")]);
    let ids: Vec<u64> = snap.items.iter().map(|(_, i)| i.id.0).collect();
    assert_eq!(ids.first(), Some(&1), "what was durable stays: {ids:?}");
    assert!(
        !ids.contains(&4),
        "nothing after the failure was written: {ids:?}"
    );
}

#[test]
fn a_full_disk_on_write_fails_the_commit_and_refuses_later_changes() {
    a_failed_commit_fails_its_callers_and_refuses_every_later_change(
        Op::Write,
        FaultKind::NoSpace,
        "no space left on device",
    );
}

#[test]
fn a_failed_sync_fails_the_commit_and_refuses_later_changes() {
    a_failed_commit_fails_its_callers_and_refuses_every_later_change(
        Op::Sync,
        FaultKind::Io,
        "input/output error",
    );
}

#[test]
fn a_full_disk_on_sync_fails_the_commit_and_refuses_later_changes() {
    a_failed_commit_fails_its_callers_and_refuses_every_later_change(
        Op::Sync,
        FaultKind::NoSpace,
        "no space left on device",
    );
}

#[test]
fn the_nth_commit_of_a_faulty_store_fails_and_the_others_pass_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new();
    {
        let inner = EmbeddedStore::open(dir.path()).expect("open");
        let s = fault::FaultyStore::new(inner, faults.clone());
        assert!(s.durable());
        s.load().expect("load");
        faults.fail(Op::Commit, 2, FaultKind::NoSpace);
        commit(&s, vec![StoreOp::PutQueue(record("a"))]);
        let err = try_commit(&s, vec![put("a", item(1, ItemState::Pending))]).expect_err("2nd");
        assert!(err.to_string().contains("no space left"), "{err}");
        faults.clear();
        commit(&s, vec![put("a", item(2, ItemState::Pending))]);
        assert_eq!(faults.count(Op::Commit), 3);
        s.close().expect("close");
    }
    let s = EmbeddedStore::open(dir.path()).expect("reopen");
    let ids: Vec<u64> = s
        .load()
        .expect("load")
        .items
        .iter()
        .map(|(_, i)| i.id.0)
        .collect();
    assert_eq!(ids, vec![2], "the failed commit never reached the store");
}

#[test]
fn the_page_cache_is_bounded_by_its_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q: QueueName = "cache".parse().expect("name");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let mut ops = vec![StoreOp::PutQueue(QueueRecord {
            name: q.clone(),
            settings: QueueSettings::default(),
            sealed: false,
            completed: 0,
            retried: 0,
        })];
        ops.extend((1..=2000u64).map(|id| StoreOp::PutItem {
            queue: q.clone(),
            item: Item {
                id: ItemId(id),
                payload: Bytes::from(vec![7u8; 4096]),
                attributes: Attributes::default(),
                idempotency_key: None,
                attempts: 0,
                enqueued_at: 0,
                state: ItemState::Pending,
            },
        }));
        futures::executor::block_on(store.submit(ops).wait()).expect("write 8 MiB");
        store.close().expect("close");
    }
    let small = EmbeddedStore::open_with_cache(dir.path(), 256 * 1024).expect("reopen");
    assert!(small.evictions_at_open() > 0, "256 KiB cannot hold 8 MiB");
    small.close().expect("close");
    let default = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        default.evictions_at_open(),
        0,
        "the 16 MiB default holds 8 MiB"
    );
    default.close().expect("close");
}
