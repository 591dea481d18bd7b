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
//! Every pod gets a hostname of its own (`hostname` says the pod's name)
//! when `bwrap` works; without it the run says once that pods share the
//! host's. An evicted pod is terminating until its process ends: under
//! `podReplacementPolicy: TerminatingOrFailed` the controller replaces it at
//! once, under `Failed` once it has ended.
//!
//! Ctrl-C (SIGINT) once evicts every running pod — SIGTERM, the pod gets the
//! `DisruptionTarget` condition and the pod failure policy applies, replaced
//! pods start as the controller decides — and stops CronJob scheduling; a
//! second Ctrl-C (or SIGTERM, or SIGHUP when the terminal goes away) kills
//! every pod and ends the run.
//!
//! # Guarantees
//!
//! - Every decision about a Job is the controller's ([`crate::controller`]);
//!   this module only carries them out and reports what happened.
//! - The run ends only when no pod process is left.
//! - A work-queue Job's queue is filled and sealed before its first pod
//!   starts ([`crate::queue::fill_and_seal`]).
//!
//! # Layout
//!
//! - this module: [`RunOptions`], [`run`] and the event loop (pods created,
//!   pods ended, signals, evictions, timers).
//! - `job`: one Job's run — start (names, labels, queue, `/etc/hosts`), its
//!   pods, its report.
//! - `cron`: CronJobs — the schedule task, each tick (`concurrencyPolicy`,
//!   `startingDeadlineSeconds`), history limits, the summary.
//! - `queue`: work-queue Jobs here — the in-process queue service, the
//!   queue's counters, `wq` on the containers' `PATH`.

mod cron;
mod job;
mod queue;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::controller::{PodResult, Verdict};
use crate::error::{Error, Result};
use crate::manifest::{Loaded, Object};
use crate::output::Output;
use crate::pod::PodPlan;
use crate::process::{self, PodContext, Stop};
use crate::report::{JobReport, RunReport, verdict_note};
use cron::{CronRun, job_from_template};
use job::{JobRun, PodTrack};

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

enum Msg {
    PodDone {
        job: usize,
        result: PodResult,
    },
    Restart {
        job: usize,
        reply: oneshot::Sender<bool>,
    },
    PodReady {
        job: usize,
        pod: String,
    },
    CronFire {
        cron: usize,
        scheduled: jiff::Timestamp,
    },
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
    /// Whether pods get a hostname of their own (a working `bwrap`);
    /// decided, and said when not, at the first pod.
    own_hostname: Option<bool>,
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
    process::adopt_orphans();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut runner = Runner {
        opts,
        out,
        tx,
        jobs: Vec::new(),
        crons: Vec::new(),
        services: Vec::new(),
        bwrap: process::find_bwrap(),
        own_hostname: None,
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
                runner.crons.push(CronRun::new(*c, suspended));
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
    let crons = runner.cron_summaries();
    Ok(RunReport {
        jobs,
        interrupted,
        crons,
    })
}

impl Runner {
    /// Creates a pod of Job `j` (with its completion index) as a process.
    fn spawn_pod(&mut self, j: usize, index: Option<u32>) -> Result<()> {
        let run = &self.jobs[j];
        let plan = Arc::new(PodPlan::new(
            &run.job,
            &run.uid,
            index,
            &run.extra_env,
            &run.state.pod_annotations(index),
        ));
        let pod_dir = self.dir.path().join(&plan.name);
        process::prepare_volumes(&plan, &pod_dir)?;
        let (stop_tx, stop_rx) = watch::channel(None);
        let tx = self.tx.clone();
        let restarter: process::Restarter = Arc::new(move || {
            let (reply, rx) = oneshot::channel();
            let _ = tx.send(Msg::Restart { job: j, reply });
            rx
        });
        let (tx, pod) = (self.tx.clone(), plan.name.clone());
        let on_ready: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = tx.send(Msg::PodReady {
                job: j,
                pod: pod.clone(),
            });
        });
        let own_hostname = self.own_hostname();
        let run = &self.jobs[j];
        let ctx = PodContext {
            dir: pod_dir,
            bwrap: self.bwrap.clone(),
            own_hostname,
            hosts: run.hosts.clone(),
            sink: self.out.clone(),
            restart_backoff: self.opts.pod_backoff,
            restarter,
            on_ready: Some(on_ready),
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

    /// Whether pods can have a hostname of their own; said once when not.
    fn own_hostname(&mut self) -> bool {
        if let Some(ok) = self.own_hostname {
            return ok;
        }
        let ok = self
            .bwrap
            .as_deref()
            .is_some_and(|b| process::check_bwrap(b).is_ok());
        if !ok {
            self.out.event(
                "warning: without a working `bwrap` (bubblewrap) pods without volumes or subdomain share this host's hostname: `hostname` says the host's name, $HOSTNAME the pod's",
            );
        }
        self.own_hostname = Some(ok);
        ok
    }

    /// Reconciles every Job; returns the earliest time to look again.
    fn reconcile_all(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        for j in 0..self.jobs.len() {
            let run = &mut self.jobs[j];
            if run.suspended || run.deleted.is_some() {
                continue;
            }
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
                    run.state.pod_terminating(&name, now, false);
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
            if let Some(f) = &run.state.finish {
                let ended = f.ended.is_some();
                let (interim, last) = if f.complete {
                    ("SuccessCriteriaMet", "Complete")
                } else {
                    ("FailureTarget", "Failed")
                };
                let said = match (run.said_finish, ended) {
                    (0, false) => Some(format!(
                        "{interim}: {} ({}); terminating the remaining pods",
                        f.message, f.reason
                    )),
                    (0 | 1, true) => Some(format!("{last}: {} ({})", f.message, f.reason)),
                    _ => None,
                };
                if let Some(said) = said {
                    run.said_finish = if ended { 2 } else { 1 };
                    self.out.event(&format!("job.batch/{}: {said}", run.name()));
                }
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

    /// Updates Job `j`'s live lines (the Job, and its queue).
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

    /// A pod of Job `j` ended: the controller's verdict, and an event line.
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
        let evicted = match (&result.reason, result.conditions.is_empty()) {
            (Some((reason, message)), _) => format!(" ({reason}: {message})"),
            (None, true) => String::new(),
            (None, false) => " (evicted: DisruptionTarget)".into(),
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

    /// Runs until every Job is done; true when stopped by a signal.
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
            if !killed && presses == 0 && self.cron_pending().await {
                continue;
            }
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
                    Some(Msg::PodReady { job, pod }) => self.jobs[job].state.pod_ready(&pod),
                    Some(Msg::CronFire { cron, scheduled }) => {
                        if presses == 0 {
                            self.cron_fire(cron, scheduled).await;
                        }
                    }
                    None => return killed,
                },
                Some((pod, reply)) = evictions.recv() => {
                    let mut found = false;
                    for j in 0..self.jobs.len() {
                        let run = &self.jobs[j];
                        if let Some(p) = run.pods.get(&pod).filter(|p| p.ended.is_none()) {
                            let _ = p.stop.send(Some(Stop::Evict));
                            found = true;
                            self.out.event(&format!("job.batch/{}: evicting pod {pod} (SIGTERM, condition DisruptionTarget)", run.name()));
                            self.terminating(j, &pod);
                        }
                    }
                    let _ = reply.send(found);
                }
                _ = async { match sigint.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    presses += 1;
                    if presses == 1 {
                        self.stop_crons();
                        let mut evicted = Vec::new();
                        for (j, run) in self.jobs.iter().enumerate() {
                            for (name, p) in run.pods.iter().filter(|(_, p)| p.ended.is_none()) {
                                let _ = p.stop.send(Some(Stop::Evict));
                                evicted.push((j, name.clone()));
                            }
                        }
                        let n = evicted.len();
                        for (j, name) in evicted {
                            self.terminating(j, &name);
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

    /// Pod `pod` of Job `j` was evicted and is terminating: tells the
    /// controller, and says so when `podReplacementPolicy:
    /// TerminatingOrFailed` counted it as failed already.
    fn terminating(&mut self, j: usize, pod: &str) {
        let run = &mut self.jobs[j];
        if run.deleted.is_some() {
            return;
        }
        let now = run.now();
        if let Some(verdict) = run.state.pod_terminating(pod, now, true) {
            self.out.event(&format!(
                "job.batch/{}: pod {pod} is terminating: counted as failed now (podReplacementPolicy: TerminatingOrFailed), {}",
                run.name(),
                verdict_note(&verdict)
            ));
        }
    }

    /// Stops the CronJobs and kills every running pod.
    fn kill_all(&mut self) {
        self.stop_crons();
        self.out.event("stopping: killing every pod");
        for run in &self.jobs {
            for p in run.pods.values().filter(|p| p.ended.is_none()) {
                let _ = p.stop.send(Some(Stop::Kill));
            }
        }
    }

    /// Every Job's report, in the order they started.
    async fn report(&mut self) -> Vec<JobReport> {
        let removed = self.history_removed();
        let mut reports = Vec::new();
        for (j, run) in self.jobs.iter_mut().enumerate() {
            let owner = run.owner.map(|i| self.crons[i].name.clone());
            reports.push(run.report(owner, removed.get(&j).cloned()).await);
        }
        reports
    }
}
