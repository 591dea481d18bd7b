//! The controller's state in Kubernetes' shape: `status` with its
//! conditions, counts and index ranges (`0-2,4`).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::JobState;

impl JobState {
    /// `status.completedIndexes` as Kubernetes writes it (`0-2,4`).
    pub fn completed_indexes(&self) -> String {
        format_ranges(&self.succeeded_indexes)
    }

    /// The Job's status in Kubernetes' shape. `start` is the wall-clock time of
    /// the Job's start. `SuccessCriteriaMet`/`FailureTarget` carry the time
    /// the outcome was decided, `Complete`/`Failed` (and `completionTime`)
    /// the time the last pod was gone.
    pub fn status(&self, start: jiff::Timestamp) -> JobStatus {
        let at = |d: Duration| {
            Time(
                start
                    .checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
                    .unwrap_or(start),
            )
        };
        let mut conditions = Vec::new();
        if let Some(f) = &self.finish {
            let (interim, last) = if f.complete {
                ("SuccessCriteriaMet", "Complete")
            } else {
                ("FailureTarget", "Failed")
            };
            let stamps = [(interim, Some(f.at)), (last, f.ended)];
            for (kind, when) in stamps {
                let Some(when) = when else { continue };
                conditions.push(JobCondition {
                    type_: kind.to_string(),
                    status: "True".into(),
                    reason: Some(f.reason.clone()),
                    message: Some(f.message.clone()),
                    last_probe_time: Some(at(when)),
                    last_transition_time: Some(at(when)),
                });
            }
        }
        let completion = self
            .finish
            .as_ref()
            .filter(|f| f.complete)
            .and_then(|f| f.ended);
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        JobStatus {
            start_time: Some(at(Duration::ZERO)),
            completion_time: completion.map(at),
            active: Some(count(self.active.len())),
            ready: Some(count(self.ready.len())),
            terminating: Some(count(self.terminating.len())),
            succeeded: Some(i32::try_from(self.succeeded).unwrap_or(i32::MAX)),
            failed: Some(i32::try_from(self.failed).unwrap_or(i32::MAX)),
            completed_indexes: (self.config.indexed && !self.succeeded_indexes.is_empty())
                .then(|| self.completed_indexes()),
            failed_indexes: self
                .config
                .backoff_limit_per_index
                .map(|_| format_ranges(&self.failed_indexes)),
            conditions: (!conditions.is_empty()).then_some(conditions),
            // Every ended pod is counted at once here: nothing is ever
            // uncounted, which Kubernetes shows as `{}`.
            uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
        }
    }
}

/// Formats a set of indexes as Kubernetes does: `0-2,4,6-7`.
pub fn format_ranges(set: &BTreeSet<u32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}
