//! Replays the inputs of the `engine_calls` fuzz target kept in
//! `fuzz/regressions/engine_calls/` (inputs that once failed, and seeds):
//! protobuf requests applied to the gRPC service over the memory store,
//! counters checked after each call. The body is the fuzz target's own
//! (`fuzz/replay/engine_calls.rs`); CI runs this, never the fuzzer.

#[allow(dead_code, clippy::unwrap_used)]
mod replay {
    include!("../../fuzz/replay/engine_calls.rs");
}

#[test]
fn every_kept_input_replays_without_a_panic_or_unbalanced_counters() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/engine_calls");
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
