//! `job-runner run --local`: the event loop that ties the Job controller
//! ([`crate::controller`]) to pods as processes ([`crate::process`]).
//!
//! # Lifecycle
//!
//! Every Job of the input starts at once (as `kubectl create -f` creates
//! them all); every CronJob schedules Jobs. The loop reconciles each Job,
//! creates the pods it asks for, and waits for a pod's end, a container's
//! restart question, a CronJob's tick, a timer (back-off, deadline) or a
//! signal. It ends when every Job has ended and no pod is left.
//!
//! Ctrl-C (SIGINT) once evicts every running pod — SIGTERM, the pod gets the
//! `DisruptionTarget` condition and the pod failure policy applies, replaced
//! pods start as the controller decides — and stops CronJob scheduling; a
//! second Ctrl-C (or SIGTERM, or SIGHUP when the terminal goes away) kills
//! every pod and ends the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::controller::{JobConfig, JobState, PodResult, Verdict};
use crate::error::{Error, Result};
use crate::manifest::{Loaded, Object};
use crate::output::{JobReport, Output, PodSummary, verdict_note};
use crate::pod::PodPlan;
use crate::process::{self, PodContext, Stop};
use crate::queue::{self, QueueRun};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base of the pod back-off (Kubernetes: 10 s). Only an explicit flag
    /// shortens it.
    pub pod_backoff: Duration,
    /// Run Jobs whose `spec.suspend` is true (and suspended CronJobs).
    pub resume: bool,
    /// CronJobs: stop after this many Jobs each.
    pub runs: Option<u32>,
    /// CronJobs: start the first Job at once instead of at the next
    /// scheduled time.
    pub start_now: bool,
    /// Use this queue service for work-queue Jobs instead of starting one.
    pub queue_url: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            pod_backoff: crate::controller::DEFAULT_POD_BACKOFF,
            resume: false,
            runs: None,
            start_now: false,
            queue_url: None,
        }
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
    /// The start time of its last Job.
    pub last_schedule: Option<jiff::Timestamp>,
}

impl CronSummary {
    /// A `kubectl describe cronjob`-like text.
    pub fn describe(&self) -> String {
        format!(
            "{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n{:<18} {}\n",
            "Name:",
            self.name,
            "Schedule:",
            self.schedule,
            "Time Zone:",
            self.time_zone,
            "Concurrency Policy:",
            self.concurrency_policy,
            "Suspend:",
            self.suspended,
            "Jobs Started:",
            self.jobs_started,
            "Last Schedule Time:",
            self.last_schedule.map_or("<unset>".to_string(), |t| t
                .strftime("%a, %d %b %Y %H:%M:%S %z")
                .to_string()),
        )
    }
}

impl RunReport {
    /// 0 when every Job that ran completed, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let ok = !self.interrupted
            && self
                .jobs
                .iter()
                .filter(|j| !j.suspended && j.deleted.is_none())
                .all(JobReport::complete)
            && !self
                .jobs
                .iter()
                .any(|j| j.queue.as_ref().is_some_and(|q| q.unfinished));
        if ok { 0 } else { 1 }
    }
}

enum Msg {
    PodDone {
        job: usize,
        result: PodResult,
    },
    Restart {
        job: usize,
        reply: oneshot::Sender<bool>,
    },
    CronFire {
        cron: usize,
        scheduled: jiff::Timestamp,
    },
}

struct PodTrack {
    stop: watch::Sender<Option<Stop>>,
    index: Option<u32>,
    started: Duration,
    ended: Option<Duration>,
    result: Option<PodResult>,
    verdict: Option<Verdict>,
}

struct JobRun {
    job: Job,
    uid: String,
    state: JobState,
    started: Instant,
    start_ts: jiff::Timestamp,
    pods: BTreeMap<String, PodTrack>,
    order: Vec<String>,
    hosts: Option<PathBuf>,
    extra_env: Vec<(String, String)>,
    owner: Option<usize>,
    suspended: bool,
    deleted: Option<String>,
    queue: Option<QueueRun>,
    announced: bool,
}

impl JobRun {
    fn name(&self) -> &str {
        &self.state.config.name
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn active_pods(&self) -> usize {
        self.pods.values().filter(|p| p.ended.is_none()).count()
    }

    fn done(&self) -> bool {
        (self.suspended || self.deleted.is_some() || self.state.finish.is_some())
            && self.active_pods() == 0
    }
}

struct CronRun {
    cron: CronJob,
    name: String,
    started_jobs: u32,
    task: Option<tokio::task::JoinHandle<()>>,
    suspended: bool,
    last_schedule: Option<jiff::Timestamp>,
}

/// The runner: all Jobs and CronJobs of one invocation.
struct Runner {
    opts: RunOptions,
    out: Arc<Output>,
    tx: mpsc::UnboundedSender<Msg>,
    jobs: Vec<JobRun>,
    crons: Vec<CronRun>,
    services: Vec<String>,
    bwrap: Option<PathBuf>,
    dir: tempfile::TempDir,
    queue_server: Option<queue::LocalServer>,
    queue_changed: Arc<tokio::sync::Notify>,
}

/// Runs every Job and CronJob of `loaded` on this machine.
pub async fn run(loaded: Loaded, opts: RunOptions, out: Arc<Output>) -> Result<RunReport> {
    for s in &loaded.skipped {
        out.event(&format!("warning: {s}"));
    }
    let dir = tempfile::Builder::new()
        .prefix("job-runner-")
        .tempdir()
        .map_err(|e| Error::io("creating the run's temporary directory", e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut runner = Runner {
        opts,
        out,
        tx,
        jobs: Vec::new(),
        crons: Vec::new(),
        services: Vec::new(),
        bwrap: process::find_bwrap(),
        dir,
        queue_server: None,
        queue_changed: Arc::new(tokio::sync::Notify::new()),
    };
    let mut to_start = Vec::new();
    for m in loaded.manifests {
        match m.object {
            Object::Service(s) => {
                if s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
                    runner
                        .services
                        .push(s.metadata.name.clone().unwrap_or_default());
                } else {
                    runner.out.event(&format!(
                        "warning: {}: Service/{} is not headless (clusterIP: None); only headless Services name pods locally, it is ignored",
                        m.origin,
                        s.metadata.name.clone().unwrap_or_default()
                    ));
                }
            }
            Object::Job(j) => to_start.push((*j, m.origin.dir.clone())),
            Object::CronJob(c) => {
                let suspended =
                    c.spec.as_ref().and_then(|s| s.suspend) == Some(true) && !runner.opts.resume;
                runner.preflight(&job_from_template(&c, "preflight"))?;
                runner.crons.push(CronRun {
                    name: c.metadata.name.clone().unwrap_or_default(),
                    cron: *c,
                    started_jobs: 0,
                    task: None,
                    suspended,
                    last_schedule: None,
                });
            }
        }
    }
    if to_start.is_empty() && runner.crons.is_empty() {
        return Err(Error::NothingToRun("the input".into()));
    }
    for (job, _) in &to_start {
        runner.preflight(job)?;
    }
    for (job, dir) in to_start {
        runner.start_job(job, None, &dir).await?;
    }
    for i in 0..runner.crons.len() {
        runner.start_cron(i);
    }
    let (evict_tx, mut evict_rx) = mpsc::unbounded_channel();
    let control = crate::control::listen(evict_tx);
    if let Err(e) = &control {
        runner.out.event(&format!(
            "warning: `job-runner evict` will not reach this run: {e}"
        ));
    }
    let interrupted = runner.event_loop(&mut rx, &mut evict_rx).await;
    drop(control);
    let jobs = runner.report().await;
    if let Some(server) = runner.queue_server.take() {
        server.shutdown().await;
    }
    let crons = runner
        .crons
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
        .collect();
    Ok(RunReport {
        jobs,
        interrupted,
        crons,
    })
}

fn job_from_template(cron: &CronJob, name: &str) -> Job {
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
    /// Refuses, before anything runs, a Job this machine cannot run.
    fn preflight(&self, job: &Job) -> Result<()> {
        let plan = PodPlan::new(job, "preflight", job_is_indexed(job).then_some(0), &[]);
        if plan.needs_sandbox() {
            match &self.bwrap {
                None => return Err(process::no_bwrap_error(&plan)),
                Some(bwrap) => process::check_bwrap(bwrap)?,
            }
        }
        if let Some(sub) = &plan.subdomain
            && !self.services.contains(sub)
        {
            self.out.event(&format!(
                "warning: Job {} sets subdomain {sub:?} but no headless Service {sub:?} is in the input: its pods' hostnames will not resolve",
                plan.job
            ));
        }
        Ok(())
    }

    async fn start_job(
        &mut self,
        mut job: Job,
        owner: Option<usize>,
        dir: &std::path::Path,
    ) -> Result<()> {
        let name = job.metadata.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}",
                job.metadata.generate_name.clone().unwrap_or_default(),
                crate::pod::random_suffix(5)
            )
        });
        job.metadata.name = Some(name.clone());
        let namespace = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        job.metadata.namespace = Some(namespace.clone());
        let uid = uuid::Uuid::new_v4().to_string();
        job.metadata.uid = Some(uid.clone());

        let labels = job.metadata.labels.get_or_insert_with(Default::default);
        labels.insert("controller-uid".into(), uid.clone());
        labels.insert("job-name".into(), name.clone());
        labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
        labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
        let start_ts = jiff::Timestamp::now();
        job.metadata.creation_timestamp = Some(Time(start_ts));
        let queue = queue::prepare(
            &mut job,
            dir,
            self.dir.path(),
            &self.opts,
            &mut self.queue_server,
            &self.out,
            self.queue_changed.clone(),
        )
        .await?;
        let extra_env = queue.as_ref().map(QueueRun::env).unwrap_or_default();
        // The API server's defaults: with neither set, both are 1.
        if let Some(spec) = job.spec.as_mut()
            && spec.completions.is_none()
            && spec.parallelism.is_none()
        {
            spec.completions = Some(1);
            spec.parallelism = Some(1);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let config = JobConfig::from_spec(&name, &namespace, &spec, self.opts.pod_backoff);
        let mut suspended = spec.suspend == Some(true) && !self.opts.resume;
        if spec.parallelism == Some(0) && !suspended {
            suspended = true;
            self.out.event(&format!(
                "job.batch/{name}: parallelism is 0: no pod starts (set spec.parallelism to run it)"
            ));
        }
        let hosts = self.hosts_file(&job, &config)?;
        if suspended && spec.suspend == Some(true) {
            self.out.event(&format!(
                "job.batch/{name}: suspended (spec.suspend: true): no pod starts; run with --resume to start it"
            ));
        }
        self.jobs.push(JobRun {
            job,
            uid,
            state: JobState::new(config),
            started: Instant::now(),
            start_ts,
            pods: BTreeMap::new(),
            order: Vec::new(),
            hosts,
            extra_env,
            owner,
            suspended,
            deleted: None,
            queue,
            announced: false,
        });
        Ok(())
    }

    /// For pods with a subdomain: an `/etc/hosts` naming every pod of the Job
    /// as `<job>-<index>.<subdomain>` on the loopback address.
    fn hosts_file(&self, job: &Job, config: &JobConfig) -> Result<Option<PathBuf>> {
        let sub = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.subdomain.clone());
        let Some(sub) = sub else { return Ok(None) };
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if self.services.contains(&sub) && config.indexed {
            for i in 0..config.completions.unwrap_or(0) {
                let host = format!("{}-{i}", config.name);
                text.push_str(&format!(
                    "127.0.0.1\t{host}.{sub}.{ns}.svc.cluster.local {host}.{sub}.{ns}.svc {host}.{sub} {host}\n",
                    ns = config.namespace
                ));
            }
        }
        let path = self.dir.path().join(format!("{}.hosts", config.name));
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(Some(path))
    }

    fn start_cron(&mut self, i: usize) {
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

    async fn cron_fire(&mut self, i: usize, scheduled: jiff::Timestamp) {
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

    fn crons_running(&self) -> bool {
        self.crons
            .iter()
            .any(|c| c.task.as_ref().is_some_and(|t| !t.is_finished()))
    }

    fn stop_crons(&mut self) {
        for c in &mut self.crons {
            if let Some(t) = c.task.take() {
                t.abort();
            }
        }
    }

    fn spawn_pod(&mut self, j: usize, index: Option<u32>) -> Result<()> {
        let run = &self.jobs[j];
        let plan = Arc::new(PodPlan::new(&run.job, &run.uid, index, &run.extra_env));
        let pod_dir = self.dir.path().join(&plan.name);
        process::prepare_volumes(&plan, &pod_dir)?;
        let (stop_tx, stop_rx) = watch::channel(None);
        let tx = self.tx.clone();
        let restarter: process::Restarter = Arc::new(move || {
            let (reply, rx) = oneshot::channel();
            let _ = tx.send(Msg::Restart { job: j, reply });
            rx
        });
        let ctx = PodContext {
            dir: pod_dir,
            bwrap: self.bwrap.clone(),
            hosts: run.hosts.clone(),
            sink: self.out.clone(),
            restart_backoff: self.opts.pod_backoff,
            restarter,
        };
        let run = &mut self.jobs[j];
        if !run.announced {
            run.announced = true;
            let images: Vec<String> = plan
                .all_containers()
                .map(|c| format!("{} ({})", c.name, c.image))
                .collect();
            self.out.event(&format!(
                "job.batch/{}: images are not pulled; containers run programs from this host: {}",
                plan.job,
                images.join(", ")
            ));
        }
        let now = run.now();
        run.state.pod_created(&plan.name, index, now);
        self.out.event(&format!(
            "job.batch/{}: Created pod: {}",
            plan.job, plan.name
        ));
        run.order.push(plan.name.clone());
        run.pods.insert(
            plan.name.clone(),
            PodTrack {
                stop: stop_tx,
                index,
                started: now,
                ended: None,
                result: None,
                verdict: None,
            },
        );
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = process::run_pod(plan, ctx, stop_rx).await;
            let _ = tx.send(Msg::PodDone { job: j, result });
        });
        Ok(())
    }

    /// Reconciles every Job; returns the earliest time to look again.
    fn reconcile_all(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        for j in 0..self.jobs.len() {
            let run = &mut self.jobs[j];
            if run.suspended || run.deleted.is_some() {
                continue;
            }
            let was_finished = run.state.finish.is_some();
            let now = run.now();
            let r = run.state.reconcile(now);
            if r.terminate_active {
                let mut deleted = Vec::new();
                for (name, p) in run.pods.iter().filter(|(_, p)| p.ended.is_none()) {
                    if p.stop.borrow().is_none() {
                        let _ = p.stop.send(Some(Stop::Delete));
                        deleted.push(name.clone());
                    }
                }
                for name in deleted {
                    run.state.record(
                        now,
                        false,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                }
            }
            if let Some(at) = r.wake_at {
                let at = run.started + at;
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if !was_finished && let Some(f) = &run.state.finish {
                let name = run.name().to_string();
                let word = if f.complete { "Complete" } else { "Failed" };
                self.out.event(&format!(
                    "job.batch/{name}: {word}: {} ({})",
                    f.message, f.reason
                ));
            }
            for index in r.create {
                if let Err(e) = self.spawn_pod(j, index) {
                    self.out.event(&format!(
                        "job.batch/{}: cannot create pod: {e}",
                        self.jobs[j].name()
                    ));
                }
            }
            self.show_progress(j);
        }
        wake
    }

    fn show_progress(&self, j: usize) {
        let run = &self.jobs[j];
        let s = &run.state;
        let total = s.config.completions.map(u64::from);
        let msg = format!(
            "{} running · {} succeeded · {} failed",
            run.active_pods(),
            s.succeeded,
            s.failed
        );
        self.out
            .progress(run.name(), u64::from(s.succeeded), total, msg);
        if let Some(q) = &run.queue
            && let Some((done, enqueued)) = q.last_stats()
        {
            self.out.progress(
                &format!("{} queue {}", run.name(), q.name()),
                done,
                Some(enqueued),
                "items done".into(),
            );
        }
    }

    fn pod_done(&mut self, j: usize, result: PodResult) {
        let run = &mut self.jobs[j];
        let now = run.now();
        let verdict = if run.deleted.is_some() {
            Verdict::AfterFinish
        } else {
            run.state.pod_finished(&result, now)
        };
        let exits: Vec<String> = result
            .containers
            .iter()
            .map(|c| format!("{}={}", c.name, c.exit_code))
            .collect();
        let phase = if result.succeeded {
            "Succeeded"
        } else {
            "Failed"
        };
        let evicted = if result.conditions.is_empty() {
            ""
        } else {
            " (evicted: DisruptionTarget)"
        };
        let note = verdict_note(&verdict);
        self.out.event(&format!(
            "job.batch/{}: pod {} {phase}{evicted} [{}]{}",
            run.name(),
            result.pod,
            exits.join(" "),
            if note.is_empty() {
                String::new()
            } else {
                format!(": {note}")
            }
        ));
        if let Some(p) = run.pods.get_mut(&result.pod) {
            p.ended = Some(now);
            p.verdict = Some(verdict);
            p.result = Some(result);
        }
    }

    async fn event_loop(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        evictions: &mut mpsc::UnboundedReceiver<crate::control::EvictRequest>,
    ) -> bool {
        let mut sigint = signal(SignalKind::interrupt()).ok();
        let mut sigterm = signal(SignalKind::terminate()).ok();
        let mut sighup = signal(SignalKind::hangup()).ok();
        let mut presses = 0u32;
        let mut killed = false;
        loop {
            let wake = if killed { None } else { self.reconcile_all() };
            let all_done = self.jobs.iter().all(JobRun::done) && !self.crons_running();
            if all_done {
                return killed;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::PodDone { job, result }) => self.pod_done(job, result),
                    Some(Msg::Restart { job, reply }) => {
                        let run = &mut self.jobs[job];
                        let now = run.now();
                        let ok = !killed && run.deleted.is_none() && run.state.container_restarting(now);
                        let _ = reply.send(ok);
                    }
                    Some(Msg::CronFire { cron, scheduled }) => {
                        if presses == 0 {
                            self.cron_fire(cron, scheduled).await;
                        }
                    }
                    None => return killed,
                },
                Some((pod, reply)) = evictions.recv() => {
                    let mut found = false;
                    for run in &self.jobs {
                        if let Some(p) = run.pods.get(&pod).filter(|p| p.ended.is_none()) {
                            let _ = p.stop.send(Some(Stop::Evict));
                            found = true;
                            self.out.event(&format!("job.batch/{}: evicting pod {pod} (SIGTERM, condition DisruptionTarget)", run.name()));
                        }
                    }
                    let _ = reply.send(found);
                }
                _ = async { match sigint.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    presses += 1;
                    if presses == 1 {
                        self.stop_crons();
                        let mut n = 0;
                        for run in &self.jobs {
                            for p in run.pods.values().filter(|p| p.ended.is_none()) {
                                let _ = p.stop.send(Some(Stop::Evict));
                                n += 1;
                            }
                        }
                        self.out.event(&format!(
                            "interrupt: evicting {n} running pod(s) (SIGTERM, condition DisruptionTarget); the Jobs go on as their pod failure policy says; press Ctrl-C again to stop everything"
                        ));
                    } else {
                        killed = true;
                        self.kill_all();
                    }
                }
                _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    killed = true;
                    self.kill_all();
                }
                _ = async { match sighup.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    killed = true;
                    self.kill_all();
                }
                _ = sleep => {}
                _ = self.queue_changed.notified() => {}
            }
            if killed && self.jobs.iter().all(|r| r.active_pods() == 0) {
                return true;
            }
        }
    }

    fn kill_all(&mut self) {
        self.stop_crons();
        self.out.event("stopping: killing every pod");
        for run in &self.jobs {
            for p in run.pods.values().filter(|p| p.ended.is_none()) {
                let _ = p.stop.send(Some(Stop::Kill));
            }
        }
    }

    async fn report(&mut self) -> Vec<JobReport> {
        // History limits: a CronJob keeps its last N successful and M failed Jobs.
        let mut removed: BTreeMap<usize, String> = BTreeMap::new();
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
        let mut reports = Vec::new();
        for (j, run) in self.jobs.iter_mut().enumerate() {
            let queue = match &mut run.queue {
                Some(q) => Some(q.summary().await),
                None => None,
            };
            let now = run.now();
            let mut job = run.job.clone();
            if !run.suspended {
                job.status = Some(run.state.status(run.start_ts, now));
            }
            let pods = run
                .order
                .iter()
                .filter_map(|name| run.pods.get(name).map(|p| (name, p)))
                .map(|(name, p)| PodSummary {
                    name: name.clone(),
                    index: p.index,
                    phase: match &p.result {
                        Some(r) if r.succeeded => "Succeeded".into(),
                        Some(_) => "Failed".into(),
                        None => "Running".into(),
                    },
                    exits: p
                        .result
                        .iter()
                        .flat_map(|r| {
                            r.containers
                                .iter()
                                .map(|c| format!("{}={}", c.name, c.exit_code))
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                    note: {
                        let mut n = p.verdict.as_ref().map(verdict_note).unwrap_or_default();
                        if p.result.as_ref().is_some_and(|r| !r.conditions.is_empty()) {
                            n = format!("evicted (DisruptionTarget); {n}");
                        }
                        n
                    },
                    started: p.started,
                    ended: p.ended,
                })
                .collect();
            reports.push(JobReport {
                job,
                pods,
                events: run.state.events.clone(),
                owner: run.owner.map(|i| self.crons[i].name.clone()),
                suspended: run.suspended,
                deleted: run.deleted.clone().or_else(|| removed.get(&j).cloned()),
                queue,
                on_cluster: false,
            });
        }
        reports
    }
}

fn job_is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}
