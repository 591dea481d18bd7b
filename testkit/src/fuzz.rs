//! Replaying a fuzz target's kept inputs (`fuzz/regressions/<target>/`:
//! inputs that once failed, and seeds) as an ordinary test: CI runs the
//! replay, never the fuzzer.

use std::path::Path;

/// Runs `run` on every input kept for fuzz target `target`, in name order;
/// panics when there are none (a moved directory must not pass silently).
pub fn replay_kept_inputs(target: &str, mut run: impl FnMut(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    for path in inputs {
        let data = std::fs::read(&path).expect("read an input");
        eprintln!("replaying {}", path.display());
        run(&data);
    }
}
