//! CronJobs of a local run: a task per CronJob sends a tick at each
//! scheduled time ([`crate::cron::Schedule`]); each tick starts a Job from
//! the template unless `concurrencyPolicy` or `startingDeadlineSeconds`
//! says otherwise; at the end, history limits and one summary per CronJob.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};

use super::{Msg, Runner};
use crate::process::Stop;
use crate::report::CronSummary;

/// One CronJob of the run.
pub(super) struct CronRun {
    pub(super) cron: CronJob,
    pub(super) name: String,
    pub(super) started_jobs: u32,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) suspended: bool,
    pub(super) last_schedule: Option<jiff::Timestamp>,
}

/// A Job made from a CronJob's `jobTemplate`, named `name`.
pub(super) fn job_from_template(cron: &CronJob, name: &str) -> Job {
    let spec = cron.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = Some(name.to_string());
    meta.namespace = cron.metadata.namespace.clone();
    Job {
        metadata: meta,
        spec: template.spec,
        status: None,
    }
}

impl Runner {
    /// Starts CronJob `i`'s schedule task (unless suspended): it sends a
    /// tick at each scheduled time, the first at once with `--start-now`.
    pub(super) fn start_cron(&mut self, i: usize) {
        let c = &self.crons[i];
        let name = c.name.clone();
        if c.suspended {
            self.out.event(&format!(
                "cronjob.batch/{name}: suspended (spec.suspend: true): no Job is scheduled; run with --resume to schedule it"
            ));
            return;
        }
        let spec = c.cron.spec.clone().unwrap_or_default();
        let Ok(schedule) = crate::cron::Schedule::parse(&spec.schedule, spec.time_zone.as_deref())
        else {
            return;
        };
        let tx = self.tx.clone();
        let start_now = self.opts.start_now;
        let out = self.out.clone();
        out.event(&format!(
            "cronjob.batch/{name}: schedule {:?} ({}){}",
            spec.schedule,
            schedule.time_zone(),
            if start_now {
                "; first Job now (--start-now)"
            } else {
                ""
            }
        ));
        let task = tokio::spawn(async move {
            if start_now
                && tx
                    .send(Msg::CronFire {
                        cron: i,
                        scheduled: jiff::Timestamp::now(),
                    })
                    .is_err()
            {
                return;
            }
            let mut after = jiff::Timestamp::now();
            loop {
                let Some(next) = schedule.next_after(after) else {
                    return;
                };
                let wait = next.duration_since(jiff::Timestamp::now());
                let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
                out.event(&format!("cronjob.batch/{name}: next Job at {next}"));
                tokio::time::sleep(wait).await;
                if tx
                    .send(Msg::CronFire {
                        cron: i,
                        scheduled: next,
                    })
                    .is_err()
                {
                    return;
                }
                after = next;
            }
        });
        self.crons[i].task = Some(task);
    }

    /// A tick of CronJob `i`: starts a Job from its template, unless
    /// `--runs`, `startingDeadlineSeconds` or `concurrencyPolicy` says not to
    /// (`Replace` deletes the running Jobs first).
    pub(super) async fn cron_fire(&mut self, i: usize, scheduled: jiff::Timestamp) {
        let runs = self.opts.runs;
        let c = &self.crons[i];
        if runs.is_some_and(|n| c.started_jobs >= n) {
            return;
        }
        let name = c.name.clone();
        let spec = c.cron.spec.clone().unwrap_or_default();
        let active: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| {
                self.jobs[j].owner == Some(i)
                    && !self.jobs[j].done()
                    && self.jobs[j].deleted.is_none()
            })
            .collect();
        let late = Duration::try_from(jiff::Timestamp::now().duration_since(scheduled))
            .unwrap_or_default();
        match crate::cron::decide(
            spec.concurrency_policy.as_deref(),
            active.len(),
            late,
            spec.starting_deadline_seconds,
        ) {
            crate::cron::Decision::SkipMissed => {
                self.out.event(&format!(
                    "cronjob.batch/{name}: missed the Job scheduled at {scheduled} by more than startingDeadlineSeconds; skipped"
                ));
                return;
            }
            crate::cron::Decision::SkipActive => {
                self.out.event(&format!(
                    "cronjob.batch/{name}: Job scheduled at {scheduled} skipped: the previous Job is still running (concurrencyPolicy: Forbid)"
                ));
                return;
            }
            crate::cron::Decision::ReplaceThenRun => {
                for j in active {
                    let run = &mut self.jobs[j];
                    run.deleted =
                        Some("replaced by a newer Job (concurrencyPolicy: Replace)".into());
                    for p in run.pods.values() {
                        let _ = p.stop.send(Some(Stop::Delete));
                    }
                    self.out.event(&format!(
                        "job.batch/{}: deleted: replaced by a newer Job (concurrencyPolicy: Replace)",
                        run.name()
                    ));
                }
            }
            crate::cron::Decision::Run => {}
        }
        let job = job_from_template(
            &self.crons[i].cron,
            &crate::cron::job_name(&name, scheduled),
        );
        self.crons[i].started_jobs += 1;
        self.crons[i].last_schedule = Some(jiff::Timestamp::now());
        self.out.event(&format!(
            "cronjob.batch/{name}: Created job {}",
            job.metadata.name.clone().unwrap_or_default()
        ));
        let dir = std::env::current_dir().unwrap_or_default();
        if let Err(e) = self.start_job(job, Some(i), &dir).await {
            self.out
                .event(&format!("cronjob.batch/{name}: cannot start Job: {e}"));
        }
        if runs.is_some_and(|n| self.crons[i].started_jobs >= n)
            && let Some(task) = self.crons[i].task.take()
        {
            task.abort();
        }
    }

    /// Whether any CronJob still schedules Jobs.
    pub(super) fn crons_running(&self) -> bool {
        self.crons
            .iter()
            .any(|c| c.task.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Stops every CronJob's schedule.
    pub(super) fn stop_crons(&mut self) {
        for c in &mut self.crons {
            if let Some(t) = c.task.take() {
                t.abort();
            }
        }
    }

    /// The Jobs a CronJob's history limits remove (it keeps its last N
    /// successful and M failed Jobs), by position in `jobs`, with why.
    pub(super) fn history_removed(&self) -> BTreeMap<usize, String> {
        let mut removed = BTreeMap::new();
        for (i, c) in self.crons.iter().enumerate() {
            let spec = c.cron.spec.clone().unwrap_or_default();
            let keep_ok =
                usize::try_from(spec.successful_jobs_history_limit.unwrap_or(3)).unwrap_or(3);
            let keep_failed =
                usize::try_from(spec.failed_jobs_history_limit.unwrap_or(1)).unwrap_or(1);
            let owned: Vec<usize> = (0..self.jobs.len())
                .filter(|&j| self.jobs[j].owner == Some(i))
                .collect();
            let outcomes: Vec<Option<bool>> = owned
                .iter()
                .map(|&j| self.jobs[j].state.finish.as_ref().map(|f| f.complete))
                .collect();
            for pos in crate::cron::history_removed(&outcomes, keep_ok, keep_failed) {
                let j = owned[pos];
                let limit = if outcomes[pos] == Some(true) {
                    format!("successfulJobsHistoryLimit ({keep_ok})")
                } else {
                    format!("failedJobsHistoryLimit ({keep_failed})")
                };
                removed.insert(j, format!("removed by {limit}"));
            }
        }
        removed
    }

    /// What each CronJob did.
    pub(super) fn cron_summaries(&self) -> Vec<CronSummary> {
        self.crons
            .iter()
            .map(|c| {
                let spec = c.cron.spec.clone().unwrap_or_default();
                CronSummary {
                    name: c.name.clone(),
                    schedule: spec.schedule,
                    time_zone: spec.time_zone.unwrap_or_else(|| "Local".into()),
                    concurrency_policy: spec.concurrency_policy.unwrap_or_else(|| "Allow".into()),
                    suspended: c.suspended,
                    jobs_started: c.started_jobs,
                    last_schedule: c.last_schedule,
                }
            })
            .collect()
    }
}
