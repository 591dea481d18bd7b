//! The wire contract `workq.v1` (`proto/`) only changes compatibly: `buf lint`
//! is clean, and `buf breaking` finds no change that breaks generated code or
//! the wire against `proto/baseline/workq-v1.binpb`, the contract as settled.
//!
//! A breaking change fails here unless it is versioned deliberately: a new
//! package `workq.v2` beside `workq.v1`. The baseline is never regenerated to
//! let a breaking change through; it may be regenerated after a compatible
//! change (an added field or RPC), which `buf breaking` accepts either way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

fn baseline() -> PathBuf {
    proto_dir().join("baseline/workq-v1.binpb")
}

fn buf(dir: &Path, args: &[&str]) -> Output {
    Command::new("buf")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run buf")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn have_buf() -> bool {
    workq_testkit::command("buf", "npm install -g @bufbuild/buf@1.75.0")
}

#[test]
fn buf_lint_is_clean() {
    if !have_buf() {
        return;
    }
    let out = buf(&proto_dir(), &["lint"]);
    assert!(out.status.success(), "buf lint:\n{}", text(&out));
}

#[test]
fn the_contract_has_no_breaking_change_against_its_baseline() {
    if !have_buf() {
        return;
    }
    let against = baseline();
    let out = buf(
        &proto_dir(),
        &["breaking", "--against", &against.to_string_lossy()],
    );
    assert!(out.status.success(), "buf breaking:\n{}", text(&out));
}

/// The check above can fail: a copy of the contract with one field renamed
/// is refused, naming the field.
#[test]
fn renaming_a_field_is_a_breaking_change() {
    if !have_buf() {
        return;
    }
    let copy = tempfile::tempdir().expect("tempdir");
    let v1 = copy.path().join("workq/v1");
    std::fs::create_dir_all(&v1).expect("mkdir");
    std::fs::copy(proto_dir().join("buf.yaml"), copy.path().join("buf.yaml")).expect("copy");
    let original =
        std::fs::read_to_string(proto_dir().join("workq/v1/queue.proto")).expect("read proto");
    let renamed = original.replacen("int32 max_items = 2;", "int32 max_item_count = 2;", 1);
    assert_ne!(renamed, original, "the field to rename is in the contract");
    std::fs::write(v1.join("queue.proto"), renamed).expect("write");

    let against = baseline();
    let out = buf(
        copy.path(),
        &["breaking", "--against", &against.to_string_lossy()],
    );
    assert!(!out.status.success(), "a renamed field passed buf breaking");
    let said = text(&out);
    assert!(
        said.contains("max_items") && said.contains("max_item_count"),
        "buf breaking did not name the field: {said}"
    );
}
