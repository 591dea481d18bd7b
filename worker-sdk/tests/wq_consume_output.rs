//! `wq consume --concurrency N`: the programs' output reaches one file line
//! by line, never a line cut by another program's; `--tag` puts the item's
//! id before each line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;

use common::{TestServer, unique};

/// Each program writes its line in three pieces: without line-by-line
/// forwarding, eight at once cut each other's lines.
const THREE_PIECES: &str = r#"x=$(cat); printf '%s ' "$x"; printf '%s ' "$x"; printf '%s\n' "$x""#;

/// Runs `wq consume ARGS -- sh -c THREE_PIECES` on a sealed queue of the
/// integers 1..=n, its output into a file; answers the file's lines.
async fn consume_into_a_file(n: u32, args: &[&str]) -> Vec<String> {
    let t = TestServer::start().await;
    let w = t.at(&unique("consume-lines"));
    let range = format!("1..{n}");
    let out = w.run(&["push", "--seal", "--range", &range]).await;
    assert_eq!(out.code(), 0, "{out:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.txt");
    let file = std::fs::File::create(&path).expect("create");
    let status = w
        .command()
        .arg("consume")
        .args(args)
        .args(["--", "sh", "-c", THREE_PIECES])
        .stdout(Stdio::from(file))
        .stderr(Stdio::inherit())
        .status()
        .await
        .expect("wq runs");
    assert_eq!(status.code(), Some(0));
    let s = w.stats().await;
    assert_eq!((s.completed, s.dead), (u64::from(n), 0));
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.ends_with('\n'));
    text.lines().map(str::to_owned).collect()
}

/// Checks that `line` is one whole item's line: "x x x", x one item.
fn whole(line: &str) -> u32 {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 3, "a cut line: {line:?}");
    assert!(
        parts[0] == parts[1] && parts[1] == parts[2],
        "a cut line: {line:?}"
    );
    parts[0]
        .parse()
        .unwrap_or_else(|_| panic!("a cut line: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_programs_at_once_write_10000_whole_lines_into_one_file() {
    let lines = consume_into_a_file(10_000, &["--concurrency", "8"]).await;
    assert_eq!(lines.len(), 10_000);
    let items: BTreeSet<u32> = lines.iter().map(|l| whole(l)).collect();
    assert_eq!(items, (1..=10_000).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_puts_the_item_id_before_each_line() {
    let lines = consume_into_a_file(2_000, &["--concurrency", "8", "--tag"]).await;
    assert_eq!(lines.len(), 2_000);
    let mut ids = BTreeSet::new();
    let mut items = BTreeSet::new();
    for l in &lines {
        let (id, rest) = l
            .split_once('\t')
            .unwrap_or_else(|| panic!("no tag: {l:?}"));
        assert!(!id.is_empty(), "{l:?}");
        ids.insert(id.to_owned());
        items.insert(whole(rest));
    }
    assert_eq!(ids.len(), 2_000, "one id per item");
    assert_eq!(items, (1..=2_000).collect());
}
