//! What a run produced, whichever way it ran (`--local` or on a cluster):
//! one [`JobReport`] per Job, one [`CronSummary`] per CronJob, gathered in a
//! [`RunReport`]. [`crate::output`] prints them.
//!
//! # Guarantees
//!
//! - Both modes fill the same types, so the summary and the JSON document
//!   look the same for a local run and a cluster run.
//! - [`RunReport::exit_code`] is the process's exit status: 0 only when every
//!   Job that ran completed and no queue was left with work.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;

use crate::controller::{Event, Verdict};

/// One pod as the summary lists it.
#[derive(Debug, Clone)]
pub struct PodSummary {
    /// Its name.
    pub name: String,
    /// Its completion index.
    pub index: Option<u32>,
    /// `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    /// How its containers ended (`main=42`).
    pub exits: String,
    /// What the controller made of it.
    pub note: String,
    /// When it started, from the Job's start.
    pub started: Duration,
    /// When it ended.
    pub ended: Option<Duration>,
}

/// Words for a verdict in the pod list.
pub fn verdict_note(v: &Verdict) -> String {
    match v {
        Verdict::Succeeded => String::new(),
        Verdict::Counted => "counted toward backoffLimit".into(),
        Verdict::Ignored { rule } => format!("ignored (podFailurePolicy rule {rule})"),
        Verdict::IndexFailed => "index failed".into(),
        Verdict::JobFailed => "failed the Job".into(),
        Verdict::AfterFinish => "ended after the Job had ended".into(),
    }
}

/// Queue counters for the summary of a work-queue Job.
#[derive(Debug, Clone, Default)]
pub struct QueueSummary {
    /// The queue's name.
    pub name: String,
    /// The URL its workers used.
    pub url: String,
    /// Items enqueued, completed, dead, retried; still pending or leased.
    pub counters: Vec<(String, u64)>,
    /// Dead items with their reasons.
    pub dead: Vec<String>,
    /// Plain-words notes about the queue and the Job disagreeing (cluster
    /// runs: pods ended with work left, or a drained queue with pods waiting).
    pub notes: Vec<String>,
    /// Work was left in the queue that no pod will take: the run did not
    /// finish its work even if the Job completed.
    pub unfinished: bool,
}

/// Everything the summary shows of one Job.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The Job, with `status` and the controller's labels filled in.
    pub job: Job,
    /// Its pods.
    pub pods: Vec<PodSummary>,
    /// Its events.
    pub events: Vec<Event>,
    /// The CronJob that made it.
    pub owner: Option<String>,
    /// Not run: `spec.suspend` is true.
    pub suspended: bool,
    /// What fields that only mean something on a cluster mean here (e.g.
    /// `ttlSecondsAfterFinished`), each said once in the summary.
    pub notes: Vec<String>,
    /// Deleted by its CronJob (`concurrencyPolicy: Replace`, history limits).
    pub deleted: Option<String>,
    /// Its queue, for work-queue Jobs.
    pub queue: Option<QueueSummary>,
    /// It ran on a cluster (images were pulled there), not on this machine.
    pub on_cluster: bool,
}

impl JobReport {
    /// The final condition (`Complete`/`Failed`), if any.
    pub fn outcome(&self) -> Option<(&str, &str, &str)> {
        let conds = self.job.status.as_ref()?.conditions.as_ref()?;
        conds
            .iter()
            .rev()
            .find(|c| c.type_ == "Complete" || c.type_ == "Failed")
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or(""),
                )
            })
    }

    /// The Job completed.
    pub fn complete(&self) -> bool {
        self.outcome().is_some_and(|o| o.0 == "Complete")
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Every Job, in the order they started.
    pub jobs: Vec<JobReport>,
    /// The run was stopped by a second Ctrl-C or SIGTERM.
    pub interrupted: bool,
    /// Every CronJob, one summary each.
    pub crons: Vec<CronSummary>,
}

/// What a CronJob did during the run.
#[derive(Debug, Clone)]
pub struct CronSummary {
    /// Its name.
    pub name: String,
    /// `spec.schedule`.
    pub schedule: String,
    /// `spec.timeZone`, or `Local`.
    pub time_zone: String,
    /// `spec.concurrencyPolicy` (default `Allow`).
    pub concurrency_policy: String,
    /// Suspended (nothing was scheduled).
    pub suspended: bool,
    /// Jobs it started.
    pub jobs_started: u32,
    /// `status.lastScheduleTime`: the scheduled time of its last scheduled Job.
    pub last_schedule: Option<jiff::Timestamp>,
}

impl RunReport {
    /// 0 when every Job completed, 1 otherwise. A Job suspended (or with
    /// `parallelism: 0`) in a local run never completed; on a cluster it was
    /// created, which is all that was asked.
    pub fn exit_code(&self) -> i32 {
        let ok = !self.interrupted
            && self
                .jobs
                .iter()
                .filter(|j| !(j.suspended && j.on_cluster) && j.deleted.is_none())
                .all(JobReport::complete)
            && !self
                .jobs
                .iter()
                .any(|j| j.queue.as_ref().is_some_and(|q| q.unfinished));
        if ok { 0 } else { 1 }
    }
}
