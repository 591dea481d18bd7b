//! When a Job on the cluster and its queue agree that the work is over: a
//! pure function of the Job's latest state and the queue's latest counters,
//! table-tested.
//!
//! # Guarantees
//!
//! - A Job without a queue is finished when it has a `Complete` or `Failed`
//!   condition.
//! - A work-queue Job is finished when, besides, its queue's counters have
//!   been seen: drained, or with work left that no pod will take (said in a
//!   note, and counted as unfinished).
//! - A drained queue whose Job still has running pods, and whose ended pods
//!   all succeeded, is [`Decision::Idle`]: the pods wait for nothing.
//! - A suspended Job is finished at once: created, not waited for.

use k8s_openapi::api::batch::v1::Job;

use super::render;

/// The Job's final condition with status `True`: `(complete, reason)`.
pub fn finished_condition(job: &Job) -> Option<(bool, String)> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| (c.type_ == "Complete", c.reason.clone().unwrap_or_default()))
}

/// What the watch loop should do about one Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep watching.
    Wait,
    /// The Job and its queue agree: finished. `note` reports a caveat;
    /// `unfinished` means work is left in the queue that no pod will take.
    Finish {
        /// A caveat in plain words.
        note: Option<String>,
        /// Work left behind.
        unfinished: bool,
    },
    /// The queue is drained but `active` pods of the Job still run, and the
    /// pods that finished all succeeded: they wait for nothing.
    Idle {
        /// Pods still running.
        active: i32,
    },
}

/// Decides about one Job from its latest state and its queue's latest
/// counters (`None` for a Job without a queue, or counters not yet seen).
pub fn decide(job: &Job, has_queue: bool, stats: Option<&worker_sdk::Stats>) -> Decision {
    let name = render::name_of(&job.metadata);
    let status = job.status.clone().unwrap_or_default();
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return Decision::Finish {
            note: Some("suspended: created, not waited for (resume it with kubectl patch)".into()),
            unfinished: false,
        };
    }
    let remaining = stats.map(|s| s.pending + s.delayed + s.leased);
    match (finished_condition(job), has_queue) {
        (Some(_), false) => Decision::Finish {
            note: None,
            unfinished: false,
        },
        (Some(_), true) => match stats {
            None => Decision::Wait,
            Some(s) if s.drained => Decision::Finish {
                note: None,
                unfinished: false,
            },
            Some(s) => {
                let left = remaining.unwrap_or(0);
                let note = if finished_condition(job).is_some_and(|c| c.0) {
                    format!(
                        "job.batch/{name} completed but its queue {} still holds {left} item(s) that no pod will take: all its pods ended with work left (completions {} is smaller than the work; with the coarse pattern leave completions unset)",
                        s.queue,
                        job.spec
                            .as_ref()
                            .and_then(|s| s.completions)
                            .map_or("unset".into(), |c| c.to_string()),
                    )
                } else {
                    format!(
                        "job.batch/{name} failed with {left} item(s) still in its queue {}",
                        s.queue
                    )
                };
                Decision::Finish {
                    note: Some(note),
                    unfinished: left > 0 || !s.sealed,
                }
            }
        },
        (None, true) => match stats {
            Some(s)
                if s.drained
                    && status.active.unwrap_or(0) > 0
                    && status.succeeded.unwrap_or(0) > 0
                    && status.failed.unwrap_or(0) == 0 =>
            {
                Decision::Idle {
                    active: status.active.unwrap_or(0),
                }
            }
            _ => Decision::Wait,
        },
        (None, false) => Decision::Wait,
    }
}
