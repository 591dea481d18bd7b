//! CronJobs of a local run, synced as the CronJob controller syncs them
//! ([`crate::cron::sync`]): a task per CronJob wakes the loop at each
//! scheduled time; each wake starts the most recent unmet scheduled time
//! (warning `TooManyMissedTimes` past 100) unless `startingDeadlineSeconds`
//! or `concurrencyPolicy` says otherwise. A time skipped under `Forbid`
//! (`JobAlreadyActive`) leaves `lastScheduleTime` alone, so the sync after
//! the active Job ends starts it late, as Kubernetes does. At the end,
//! history limits and one summary per CronJob.
//!
//! Times come from [`CronClock`]: wall-clock time that moves with tokio's
//! clock, so tests on a paused clock move the schedule too.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use tokio::time::Instant;

use super::{Msg, Runner};
use crate::cron::{Action, Schedule, SyncInput};
use crate::process::Stop;
use crate::report::CronSummary;

/// Wall-clock time read through tokio's clock: the wall time at start plus
/// tokio's elapsed time. Under `tokio::time::pause()` it stands still and
/// `advance()` moves it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CronClock {
    wall: Timestamp,
    mono: Instant,
}

impl CronClock {
    /// A clock reading the wall time now.
    pub(super) fn start() -> Self {
        CronClock {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }

    /// The current wall-clock time.
    pub(super) fn now(&self) -> Timestamp {
        let elapsed = jiff::SignedDuration::try_from(self.mono.elapsed()).unwrap_or_default();
        self.wall.checked_add(elapsed).unwrap_or(self.wall)
    }

    /// The tokio instant at which the wall clock reads `t`.
    pub(super) fn instant_at(&self, t: Timestamp) -> Instant {
        let ahead = Duration::try_from(t.duration_since(self.wall)).unwrap_or(Duration::ZERO);
        self.mono + ahead
    }
}

/// One CronJob of the run.
pub(super) struct CronRun {
    pub(super) cron: CronJob,
    pub(super) name: String,
    pub(super) started_jobs: u32,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) suspended: bool,
    /// `status.lastScheduleTime`: the scheduled time of the last Job started.
    pub(super) last_schedule: Option<Timestamp>,
    clock: CronClock,
    /// When the schedule began (the CronJob's creationTimestamp locally).
    created: Timestamp,
    /// A scheduled time skipped by `Forbid`: sync again when no Job is active.
    waiting_for_active: bool,
    /// `--start-now`: start a Job at the first turn of the loop.
    start_now: bool,
}

impl CronRun {
    /// A CronJob about to be scheduled (`suspended` unless `--resume`).
    pub(super) fn new(cron: CronJob, suspended: bool) -> Self {
        let clock = CronClock::start();
        CronRun {
            name: cron.metadata.name.clone().unwrap_or_default(),
            cron,
            started_jobs: 0,
            task: None,
            suspended,
            last_schedule: None,
            clock,
            created: clock.now(),
            waiting_for_active: false,
            start_now: false,
        }
    }

    fn scheduling(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
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
    /// Starts CronJob `i`'s schedule task (unless suspended): it wakes the
    /// loop at each scheduled time; with `--start-now` the loop also starts
    /// a Job at once.
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
        let Ok(schedule) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) else {
            return;
        };
        let tx = self.tx.clone();
        let start_now = self.opts.start_now;
        let out = self.out.clone();
        let clock = c.clock;
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
            let mut after = clock.now();
            loop {
                let Some(next) = schedule.next_after(after) else {
                    return;
                };
                out.event(&format!("cronjob.batch/{name}: next Job at {next}"));
                tokio::time::sleep_until(clock.instant_at(next)).await;
                if tx
                    .send(Msg::CronFire {
                        cron: i,
                        scheduled: next,
                    })
                    .is_err()
                {
                    return;
                }
                after = next.max(clock.now());
            }
        });
        self.crons[i].task = Some(task);
        self.crons[i].start_now = start_now;
    }

    /// Positions in `jobs` of CronJob `i`'s active Jobs.
    fn active_jobs(&self, i: usize) -> Vec<usize> {
        (0..self.jobs.len())
            .filter(|&j| {
                self.jobs[j].owner == Some(i)
                    && !self.jobs[j].done()
                    && self.jobs[j].deleted.is_none()
            })
            .collect()
    }

    /// A wake of CronJob `i`'s schedule (for the time `_tick`): syncs it.
    pub(super) async fn cron_fire(&mut self, i: usize, _tick: Timestamp) {
        self.cron_sync(i).await;
    }

    /// What the loop owes the CronJobs after each reconcile: the
    /// `--start-now` Job, and the late start of a time `Forbid` skipped once
    /// its active Job has ended. True when a Job was started.
    pub(super) async fn cron_pending(&mut self) -> bool {
        let mut started = false;
        for i in 0..self.crons.len() {
            if !self.crons[i].scheduling() {
                continue;
            }
            if self.crons[i].start_now {
                self.crons[i].start_now = false;
                let now = self.crons[i].clock.now();
                self.cron_start(i, now, false).await;
                started = true;
            } else if self.crons[i].waiting_for_active && self.active_jobs(i).is_empty() {
                self.crons[i].waiting_for_active = false;
                let before = self.crons[i].started_jobs;
                self.cron_sync(i).await;
                started |= self.crons[i].started_jobs > before;
            }
        }
        started
    }

    /// One sync of CronJob `i` ([`crate::cron::sync`]), carried out.
    async fn cron_sync(&mut self, i: usize) {
        let c = &self.crons[i];
        if self.opts.runs.is_some_and(|n| c.started_jobs >= n) {
            return;
        }
        let name = c.name.clone();
        let spec = c.cron.spec.clone().unwrap_or_default();
        let Ok(schedule) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) else {
            return;
        };
        let active = self.active_jobs(i);
        let result = crate::cron::sync(&SyncInput {
            schedule: &schedule,
            policy: spec.concurrency_policy.as_deref(),
            starting_deadline_seconds: spec.starting_deadline_seconds,
            created: c.created,
            last_schedule: c.last_schedule,
            active: active.len(),
            now: c.clock.now(),
        });
        if let Some(n) = result.too_many_missed {
            self.out.event(&format!(
                "cronjob.batch/{name}: Warning TooManyMissedTimes: {}",
                crate::cron::too_many_missed_message(n)
            ));
        }
        match result.action {
            Action::Wait => {}
            Action::Missed { .. } => {
                if let Some((reason, message)) = result.action.event("") {
                    self.out.event(&format!(
                        "cronjob.batch/{name}: Warning {reason}: {message} (startingDeadlineSeconds: {})",
                        spec.starting_deadline_seconds.unwrap_or_default()
                    ));
                }
            }
            Action::SkipActive { scheduled } => {
                self.crons[i].waiting_for_active = true;
                if let Some((reason, message)) = result.action.event("") {
                    self.out.event(&format!(
                        "cronjob.batch/{name}: {reason}: {message} (the Job for {scheduled} starts when it ends, unless startingDeadlineSeconds passes first)"
                    ));
                }
            }
            Action::Start { scheduled, replace } => {
                if replace {
                    for j in active {
                        let run = &mut self.jobs[j];
                        run.deleted =
                            Some("replaced by a newer Job (concurrencyPolicy: Replace)".into());
                        for p in run.pods.values() {
                            let _ = p.stop.send(Some(Stop::Delete));
                        }
                        self.out.event(&format!(
                            "cronjob.batch/{name}: SuccessfulDelete: Deleted job {} (concurrencyPolicy: Replace)",
                            run.name()
                        ));
                    }
                }
                self.cron_start(i, scheduled, true).await;
            }
        }
    }

    /// Starts CronJob `i`'s Job for `scheduled`; a scheduled start records
    /// it as `lastScheduleTime` (a `--start-now` Job does not, as a Job
    /// created by hand from a CronJob does not).
    async fn cron_start(&mut self, i: usize, scheduled: Timestamp, record: bool) {
        let name = self.crons[i].name.clone();
        let job = job_from_template(
            &self.crons[i].cron,
            &crate::cron::job_name(&name, scheduled),
        );
        let job_name = job.metadata.name.clone().unwrap_or_default();
        self.crons[i].started_jobs += 1;
        if record {
            self.crons[i].last_schedule = Some(scheduled);
        }
        let late = self.crons[i].clock.now().as_second() - scheduled.as_second();
        self.out.event(&format!(
            "cronjob.batch/{name}: SuccessfulCreate: Created job {job_name}{}",
            if record && late > 1 {
                format!(" (scheduled at {scheduled}, started {late}s late)")
            } else {
                String::new()
            }
        ));
        let dir = std::env::current_dir().unwrap_or_default();
        if let Err(e) = self.start_job(job, Some(i), &dir).await {
            self.out
                .event(&format!("cronjob.batch/{name}: cannot start Job: {e}"));
        }
        if self
            .opts
            .runs
            .is_some_and(|n| self.crons[i].started_jobs >= n)
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
