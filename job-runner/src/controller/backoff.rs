//! The pod back-off, as `pkg/controller/job/backoff_utils.go` computes it:
//! globally from the failures since the last success (ignored ones
//! included), or, under `backoffLimitPerIndex`, per index from that index's
//! failures — which its next pod carries in the
//! `batch.kubernetes.io/job-index-failure-count` annotations.

use std::time::Duration;

use super::JobState;

/// Failures of the pod's index counted before it was created.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// Failures of the pod's index an `Ignore` rule ignored before it was created.
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

impl JobState {
    /// Records a failure (counted, or ignored by a rule) for the back-off.
    pub(super) fn note_failure(&mut self, index: Option<u32>, now: Duration, counted: bool) {
        self.consecutive_failures += 1;
        self.last_failure = Some(now);
        if let Some(i) = index {
            let per_index = if counted {
                &mut self.index_failures
            } else {
                &mut self.index_ignored
            };
            *per_index.entry(i).or_insert(0) += 1;
            self.index_last_failure.insert(i, now);
        }
    }

    /// When index `i` may get a new pod (per-index back-off), if it failed
    /// before: its last failure plus the delay for all its failures so far.
    pub fn index_ready_at(&self, i: u32) -> Option<Duration> {
        let last = *self.index_last_failure.get(&i)?;
        let n = self.index_failures.get(&i).copied().unwrap_or(0)
            + self.index_ignored.get(&i).copied().unwrap_or(0);
        Some(last + Self::backoff_delay(self.config.pod_backoff, n))
    }

    /// The annotations the controller gives a new pod of index `index`
    /// under `backoffLimitPerIndex`: the failure count always, the ignored
    /// count when not zero.
    pub fn pod_annotations(&self, index: Option<u32>) -> Vec<(String, String)> {
        let (Some(i), Some(_)) = (index, self.config.backoff_limit_per_index) else {
            return Vec::new();
        };
        let mut out = vec![(
            INDEX_FAILURE_COUNT.to_string(),
            self.index_failures
                .get(&i)
                .copied()
                .unwrap_or(0)
                .to_string(),
        )];
        if let Some(n) = self.index_ignored.get(&i).filter(|n| **n > 0) {
            out.push((INDEX_IGNORED_FAILURE_COUNT.to_string(), n.to_string()));
        }
        out
    }
}
