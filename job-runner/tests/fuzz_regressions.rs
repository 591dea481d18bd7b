//! Replays the inputs of the `job_manifest` fuzz target kept in
//! `fuzz/regressions/job_manifest/` (inputs that once failed, and seeds):
//! the manifest reader and template expansion on the kept text, items and
//! variables. The body is the fuzz target's own
//! (`fuzz/replay/job_manifest.rs`); CI runs this, never the fuzzer.

#![allow(missing_docs)]

#[allow(dead_code, clippy::unwrap_used)]
mod replay {
    include!("../../fuzz/replay/job_manifest.rs");
}

#[test]
fn every_kept_input_replays_without_a_panic() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/job_manifest");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    for path in inputs {
        let data = std::fs::read(&path).expect("read an input");
        eprintln!("replaying {}", path.display());
        replay::run(&data);
    }
}
