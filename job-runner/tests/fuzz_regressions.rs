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
    workq_testkit::replay_kept_inputs("job_manifest", replay::run);
}
