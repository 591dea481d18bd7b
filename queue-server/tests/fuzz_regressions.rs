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
    workq_testkit::replay_kept_inputs("engine_calls", replay::run);
}
