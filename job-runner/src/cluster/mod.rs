//! Running the manifests on a Kubernetes cluster (`job-runner run -f FILE`
//! without `--local`), and the kubectl-shaped `get jobs`, `logs` and
//! `delete` by label.
//!
//! # Layout
//!
//! - [`render`]: what is created, computed without a cluster (labels,
//!   wrapper injection, coarse `completions`).
//! - [`Cluster`]: a kube client and a namespace; create, list, delete, logs.
//! - [`run`]: fill and seal the queues, create the objects, then watch the
//!   Jobs, their pods and their queues together until the work is done.
//! - [`decide`]: when a Job and its queue agree that the work is over —
//!   pure, table-tested.
//!
//! # Lifecycle of a run
//!
//! 1. Work-queue Jobs: items pushed to `--queue-url`, queue sealed; a coarse
//!    Job with `completions` unset gets the sealed queue's size.
//! 2. Services, then Jobs, then CronJobs are created (`POST`), each labelled
//!    `workq.dev/run=<id>`. CronJobs are created and left to the cluster's
//!    schedule; they are not waited for.
//! 3. One watch stream of the run's Jobs, one of its pods, one per queue.
//! 4. A Job is finished when it has a `Complete` or `Failed` condition and
//!    its queue agrees ([`decide`]). Two caveats are reported plainly: pods
//!    all ended with work still queued (the run exits 1), and a drained queue
//!    with pods still waiting — the run then deletes that Job (background
//!    propagation) once the finished pods succeeded, unless
//!    `--keep-idle-pods`.
//! 5. The summary is that of `--local`, from a final list of pods and events.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::controller::Event;
use crate::error::{Error, Result};
use crate::output::{JobReport, Output, PodSummary};
use crate::process::Sink;
use crate::run::RunReport;
pub use render::{Planned, QueuePlan, RUN_LABEL, RenderOptions, plan, to_yaml};

/// A kube client bound to one namespace.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn kube_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| {
        let hint = match &source {
            kube::Error::Api(s) if s.code == 403 => {
                " (forbidden: give job-runner's user or service account the verbs of deploy/job-runner/rbac.yaml)"
            }
            kube::Error::Api(s) if s.code == 409 => {
                " (it already exists: delete it first, e.g. `job-runner delete -l workq.dev/run=<id>`, or rename it)"
            }
            kube::Error::Api(s) if s.code == 404 => " (not found: check -n/--namespace)",
            kube::Error::Api(s) if s.code == 401 => {
                " (unauthorized: the kubeconfig's credentials were refused; log in again or pick another --context)"
            }
            kube::Error::Service(_) | kube::Error::HyperError(_) => {
                " (the Kubernetes API server cannot be reached: check the kubeconfig's current context with `kubectl cluster-info`, or pick one with --context)"
            }
            kube::Error::Auth(_) => {
                " (the kubeconfig's credentials cannot be used: check its user entry, or pick another --context)"
            }
            _ => "",
        };
        Error::Kube {
            what: format!("{what}{hint}"),
            source,
        }
    }
}

impl Cluster {
    /// A cluster reached through `client`, working in `namespace`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        Cluster {
            client,
            namespace: namespace.into(),
        }
    }

    /// Connects as `kubectl` does: the kubeconfig (`KUBECONFIG` or
    /// `~/.kube/config`, its current context or `context`), else the
    /// in-cluster service account. `namespace` defaults to the context's.
    pub async fn connect(context: Option<&str>, namespace: Option<&str>) -> Result<Self> {
        let config = match context {
            Some(ctx) => {
                let opts = kube::config::KubeConfigOptions {
                    context: Some(ctx.to_string()),
                    ..Default::default()
                };
                kube::Config::from_kubeconfig(&opts).await.map_err(|e| {
                    Error::Cluster(format!(
                        "cannot use context {ctx:?} of the kubeconfig: {e}; list them with `kubectl config get-contexts`"
                    ))
                })?
            }
            None => kube::Config::infer().await.map_err(|e| {
                Error::Cluster(format!(
                    "no cluster to talk to ({e}); set KUBECONFIG or create ~/.kube/config (kind and k3d write it), run inside a pod, or add --local to run on this machine"
                ))
            })?,
        };
        let namespace = namespace
            .map(String::from)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).map_err(kube_error("creating the client"))?;
        Ok(Cluster::new(client, namespace))
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates one planned object.
    pub async fn create(&self, p: &Planned) -> Result<()> {
        let pp = PostParams::default();
        let what = format!("creating {}", p.display_name());
        match p {
            Planned::Job { job, .. } => {
                self.api::<Job>()
                    .create(&pp, job)
                    .await
                    .map_err(kube_error(what))?;
            }
            Planned::CronJob(c) => {
                self.api::<CronJob>()
                    .create(&pp, c)
                    .await
                    .map_err(kube_error(what))?;
            }
            Planned::Service(s) => {
                self.api::<Service>()
                    .create(&pp, s)
                    .await
                    .map_err(kube_error(what))?;
            }
        }
        Ok(())
    }

    /// The Jobs matching a label selector (`get jobs -l`).
    pub async fn get_jobs(&self, selector: &str) -> Result<Vec<Job>> {
        let list = self
            .api::<Job>()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(kube_error("listing jobs"))?;
        Ok(list.items)
    }

    /// Deletes the Jobs, CronJobs and Services matching a label selector,
    /// with background propagation (as `kubectl delete` does: the Jobs'
    /// pods are deleted by the garbage collector). Returns what was deleted,
    /// as `kind.group/name`.
    pub async fn delete(&self, selector: &str) -> Result<Vec<String>> {
        let lp = ListParams::default().labels(selector);
        let dp = DeleteParams::background();
        let mut out = Vec::new();
        let jobs = self.api::<Job>();
        for j in jobs.list(&lp).await.map_err(kube_error("listing jobs"))? {
            let name = j.metadata.name.unwrap_or_default();
            jobs.delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting job.batch/{name}")))?;
            out.push(format!("job.batch/{name}"));
        }
        let crons = self.api::<CronJob>();
        for c in crons
            .list(&lp)
            .await
            .map_err(kube_error("listing cronjobs"))?
        {
            let name = c.metadata.name.unwrap_or_default();
            crons
                .delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting cronjob.batch/{name}")))?;
            out.push(format!("cronjob.batch/{name}"));
        }
        let services = self.api::<Service>();
        for s in services
            .list(&lp)
            .await
            .map_err(kube_error("listing services"))?
        {
            let name = s.metadata.name.unwrap_or_default();
            services
                .delete(&name, &dp)
                .await
                .map_err(kube_error(format!("deleting service/{name}")))?;
            out.push(format!("service/{name}"));
        }
        Ok(out)
    }

    /// Prints the logs of every container of the pods matching a selector,
    /// each line prefixed `pod/NAME/CONTAINER` (`kubectl logs -l … --prefix`);
    /// with `follow`, streams them until the containers end. Returns the
    /// number of pods.
    pub async fn logs(&self, selector: &str, follow: bool, sink: Arc<dyn Sink>) -> Result<usize> {
        let pods = self
            .api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(kube_error("listing pods"))?;
        let mut tasks = Vec::new();
        let n = pods.items.len();
        for p in pods.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            for c in p.spec.map(|s| s.containers).unwrap_or_default() {
                let prefix = format!("pod/{name}/{}", c.name);
                if follow {
                    tasks.push(tokio::spawn(follow_log(
                        self.api::<Pod>(),
                        name.clone(),
                        c.name.clone(),
                        prefix,
                        sink.clone(),
                    )));
                } else {
                    let lp = LogParams {
                        container: Some(c.name.clone()),
                        ..Default::default()
                    };
                    let text = self
                        .api::<Pod>()
                        .logs(&name, &lp)
                        .await
                        .map_err(kube_error(format!("reading the log of {prefix}")))?;
                    for line in text.lines() {
                        sink.line(&prefix, line);
                    }
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(n)
    }
}

async fn follow_log(
    api: Api<Pod>,
    pod: String,
    container: String,
    prefix: String,
    sink: Arc<dyn Sink>,
) {
    let lp = LogParams {
        container: Some(container),
        follow: true,
        ..Default::default()
    };
    match api.log_stream(&pod, &lp).await {
        Ok(reader) => {
            let mut lines = reader.lines();
            while let Some(Ok(line)) = lines.next().await {
                sink.line(&prefix, &line);
            }
        }
        Err(e) => sink.line(&prefix, &format!("(cannot stream the log: {e})")),
    }
}

/// A `kubectl get jobs`-like table: NAME STATUS COMPLETIONS DURATION AGE.
pub fn jobs_table(jobs: &[Job], now: jiff::Timestamp) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATUS".into(),
        "COMPLETIONS".into(),
        "DURATION".into(),
        "AGE".into(),
    ]];
    for j in jobs {
        let status = j.status.clone().unwrap_or_default();
        let spec = j.spec.clone().unwrap_or_default();
        let state = match finished_condition(j) {
            Some((true, _)) => "Complete",
            Some((false, _)) => "Failed",
            None if spec.suspend == Some(true) => "Suspended",
            None => "Running",
        };
        let completions = match spec.completions {
            Some(c) => format!("{}/{c}", status.succeeded.unwrap_or(0)),
            None => format!(
                "{}/1 of {}",
                status.succeeded.unwrap_or(0),
                spec.parallelism.unwrap_or(1)
            ),
        };
        let start = status.start_time.as_ref().map(|t| t.0);
        let end = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
        let duration = start.map_or("-".into(), |s| short(end.duration_since(s)));
        let age = j
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or("-".into(), |t| short(now.duration_since(t.0)));
        rows.push([
            j.metadata.name.clone().unwrap_or_default(),
            state.into(),
            completions,
            duration,
            age,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn short(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

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

/// How to run on a cluster.
#[derive(Debug, Clone)]
pub struct ClusterRunOptions {
    /// The queue service job-runner fills and watches (`--queue-url`).
    pub queue_url: Option<String>,
    /// Stop watching after this long (the objects are left running).
    pub timeout: Option<Duration>,
    /// Stream the pods' logs, prefixed with pod and container names.
    pub follow: bool,
    /// Delete a Job whose queue is drained while its pods still wait.
    pub delete_idle: bool,
    /// How long a drained queue's pods may keep running before they count
    /// as idle (a `wq consume` exits by itself within moments).
    pub idle_grace: Duration,
}

impl Default for ClusterRunOptions {
    fn default() -> Self {
        ClusterRunOptions {
            queue_url: None,
            timeout: None,
            follow: false,
            delete_idle: true,
            idle_grace: Duration::from_secs(30),
        }
    }
}

struct Tracked {
    name: String,
    job: Job,
    queue: Option<(QueuePlan, String, worker_sdk::Queue)>,
    stats: Option<worker_sdk::Stats>,
    finished: bool,
    notes: Vec<String>,
    unfinished: bool,
    deleted: Option<String>,
    idle_since: Option<tokio::time::Instant>,
    pods: BTreeMap<String, String>,
}

enum Update {
    Job(Box<Job>),
    JobDeleted(String),
    Pod(Box<Pod>),
    Queue(usize, worker_sdk::Stats),
    WatchError(String),
}

async fn fill_queue(
    job: &mut Job,
    qp: &QueuePlan,
    url: &str,
    out: &Output,
) -> Result<worker_sdk::Queue> {
    let job_name = render::name_of(&job.metadata).to_string();
    let client = worker_sdk::connect(url).await.map_err(|e| {
        Error::Queue(format!(
            "cannot reach the queue service at {url} ({e}); check --queue-url (e.g. `kubectl -n workq port-forward svc/workq 50051` and --queue-url grpc://127.0.0.1:50051)"
        ))
    })?;
    let name = &qp.name;
    let queue = client
        .queue(name)
        .map_err(|e| Error::Queue(format!("queue {name:?}: {e}")))?;
    let stats = if let Some(items) = &qp.items {
        queue
            .push(items.iter().map(String::as_str))
            .await
            .map_err(|e| Error::Queue(format!("pushing to {name}: {e}")))?;
        let s = queue
            .seal()
            .await
            .map_err(|e| Error::Queue(format!("sealing {name}: {e}")))?;
        out.event(&format!(
            "job.batch/{job_name}: queue {name} at {url}: pushed {} item(s) and sealed it",
            items.len()
        ));
        if s.enqueued > items.len() as u64 {
            out.event(&format!(
                "warning: queue {name} already held {} item(s) before this run",
                s.enqueued - items.len() as u64
            ));
        }
        s
    } else {
        queue
            .stats()
            .await
            .map_err(|e| Error::Queue(format!("reading queue {name}: {e}")))?
    };
    if qp.coarse && qp.completions_from_queue {
        if !stats.sealed {
            return Err(Error::Invalid {
                origin: format!("Job/{job_name}"),
                problems: vec![format!(
                    "spec.completions: a coarse Job takes its completions from the sealed queue's size, but queue {name} is not sealed; seal it (`wq seal`), set workq.dev/items, or set completions"
                )],
            });
        }
        let n = stats.pending + stats.delayed + stats.leased;
        if let Some(spec) = job.spec.as_mut() {
            spec.completions = Some(i32::try_from(n).unwrap_or(i32::MAX));
        }
        out.event(&format!(
            "job.batch/{job_name}: coarse pattern: completions set to {n}, the sealed queue's size"
        ));
    }
    Ok(queue)
}

/// The one namespace the planned objects name in `metadata.namespace`, if
/// they name exactly one (a run without `-n` then works there, as `kubectl
/// create -f` would).
pub fn manifest_namespace(planned: &[Planned]) -> Option<String> {
    let named: BTreeSet<&String> = planned
        .iter()
        .filter_map(|p| p.metadata().namespace.as_ref())
        .collect();
    match named.into_iter().collect::<Vec<_>>()[..] {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Runs the planned objects on the cluster (see the module docs' Lifecycle).
/// Every object must be in the cluster's namespace (or name none).
pub async fn run(
    cluster: &Cluster,
    planned: Vec<Planned>,
    run_id: &str,
    opts: ClusterRunOptions,
    out: Arc<Output>,
) -> Result<RunReport> {
    let mut planned = planned;
    for p in &planned {
        if let Some(ns) = &p.metadata().namespace
            && ns != cluster.namespace()
        {
            return Err(Error::Invalid {
                origin: p.display_name(),
                problems: vec![format!(
                    "metadata.namespace: Invalid value: {ns:?}: the run creates everything in namespace {:?}; pass -n {ns} or remove metadata.namespace",
                    cluster.namespace()
                )],
            });
        }
    }
    let mut tracked: Vec<Tracked> = Vec::new();
    for p in &mut planned {
        let Planned::Job { job, queue } = p else {
            continue;
        };
        let name = render::name_of(&job.metadata).to_string();
        let q = match queue {
            None => None,
            Some(qp) => {
                let Some(url) = &opts.queue_url else {
                    return Err(Error::Invalid {
                        origin: format!("Job/{name}"),
                        problems: vec![format!(
                            "metadata.annotations[workq.dev/queue]: job-runner fills and watches the queue {:?}, so it needs the queue service's address: pass --queue-url grpc://HOST:PORT (e.g. after `kubectl -n workq port-forward svc/workq 50051`: --queue-url grpc://127.0.0.1:50051)",
                            qp.name
                        )],
                    });
                };
                let handle = fill_queue(job, qp, url, &out).await?;
                Some((qp.clone(), url.clone(), handle))
            }
        };
        tracked.push(Tracked {
            name,
            job: (**job).clone(),
            queue: q,
            stats: None,
            finished: false,
            notes: Vec::new(),
            unfinished: false,
            deleted: None,
            idle_since: None,
            pods: BTreeMap::new(),
        });
    }
    let order = |p: &Planned| match p {
        Planned::Service(_) => 0,
        Planned::Job { .. } => 1,
        Planned::CronJob(_) => 2,
    };
    planned.sort_by_key(order);
    for p in &planned {
        cluster.create(p).await?;
        out.event(&format!("{} created", p.display_name()));
    }
    if tracked.is_empty() {
        return Ok(RunReport {
            jobs: Vec::new(),
            interrupted: false,
            crons: Vec::new(),
        });
    }
    let interrupted = watch(cluster, &mut tracked, run_id, &opts, &out).await?;
    if interrupted {
        out.event(&format!(
            "the run's objects are left on the cluster: `job-runner delete -l {RUN_LABEL}={run_id}` removes them"
        ));
    }
    let reports = summarize(cluster, &mut tracked, run_id).await?;
    Ok(RunReport {
        jobs: reports,
        interrupted,
        crons: Vec::new(),
    })
}

fn pod_job(p: &Pod) -> Option<String> {
    let labels = p.metadata.labels.as_ref()?;
    labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
        .cloned()
}

/// Watches until every Job is finished; true when stopped early (timeout,
/// Ctrl-C).
async fn watch(
    cluster: &Cluster,
    tracked: &mut [Tracked],
    run_id: &str,
    opts: &ClusterRunOptions,
    out: &Arc<Output>,
) -> Result<bool> {
    let selector = format!("{RUN_LABEL}={run_id}");
    let wc = watcher::Config::default().labels(&selector);
    let jobs = watcher(cluster.api::<Job>(), wc.clone())
        .default_backoff()
        .filter_map(|r| async move {
            match r {
                Ok(watcher::Event::Apply(j) | watcher::Event::InitApply(j)) => {
                    Some(Update::Job(Box::new(j)))
                }
                Ok(watcher::Event::Delete(j)) => {
                    Some(Update::JobDeleted(j.metadata.name.unwrap_or_default()))
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Update::WatchError(format!("watching jobs: {e}"))),
            }
        })
        .boxed();
    let pods = watcher(cluster.api::<Pod>(), wc)
        .default_backoff()
        .applied_objects()
        .map(|r| match r {
            Ok(p) => Update::Pod(Box::new(p)),
            Err(e) => Update::WatchError(format!("watching pods: {e}")),
        })
        .boxed();
    let mut streams: Vec<BoxStream<'static, Update>> = vec![jobs, pods];
    for (i, t) in tracked.iter().enumerate() {
        if let Some((qp, _, q)) = &t.queue {
            match q.watch(false).await {
                Ok(s) => streams.push(
                    s.filter_map(move |r| async move { r.ok().map(|s| Update::Queue(i, s)) })
                        .boxed(),
                ),
                Err(e) => {
                    return Err(Error::Queue(format!("watching queue {}: {e}", qp.name)));
                }
            }
        }
    }
    let mut updates = stream::select_all(streams);
    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut followed: BTreeSet<String> = BTreeSet::new();
    let mut log_tasks = Vec::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut interrupted = false;
    loop {
        let mut next_idle: Option<tokio::time::Instant> = None;
        for t in tracked.iter_mut().filter(|t| !t.finished) {
            let mut d = decide(&t.job, t.queue.is_some(), t.stats.as_ref());
            if matches!(
                d,
                Decision::Finish {
                    unfinished: true,
                    ..
                }
            ) && let Some((_, _, q)) = &t.queue
                && let Ok(s) = q.stats().await
            {
                // The Job's watch event may have overtaken the queue's: look again.
                t.stats = Some(s);
                d = decide(&t.job, true, t.stats.as_ref());
            }
            match d {
                Decision::Wait => t.idle_since = None,
                Decision::Finish { note, unfinished } => {
                    t.finished = true;
                    t.unfinished = unfinished;
                    if let Some(n) = note {
                        out.event(&format!("warning: {n}"));
                        t.notes.push(n);
                    }
                }
                Decision::Idle { active } => {
                    let now = tokio::time::Instant::now();
                    let since = *t.idle_since.get_or_insert_with(|| {
                        let q = t.stats.as_ref().map_or("", |s| s.queue.as_str());
                        let n = format!(
                            "queue {q} is drained but {active} pod(s) of job.batch/{} still run with nothing left to take",
                            t.name
                        );
                        out.event(&format!("warning: {n}"));
                        t.notes.push(n);
                        now
                    });
                    let due = since + opts.idle_grace;
                    if opts.delete_idle && now >= due {
                        let dp = DeleteParams::background();
                        cluster
                            .api::<Job>()
                            .delete(&t.name, &dp)
                            .await
                            .map_err(kube_error(format!("deleting job.batch/{}", t.name)))?;
                        let why = format!(
                            "by job-runner: its queue was drained and its {active} idle pod(s) had nothing left to do"
                        );
                        out.event(&format!("job.batch/{} deleted {why}", t.name));
                        t.notes
                            .push(format!("job.batch/{} and its idle pods deleted", t.name));
                        t.deleted = Some(why);
                        t.finished = true;
                    } else if opts.delete_idle {
                        next_idle =
                            Some(next_idle.map_or(due, |n: tokio::time::Instant| n.min(due)));
                    }
                }
            }
        }
        for t in tracked.iter() {
            progress(out, t);
        }
        if tracked.iter().all(|t| t.finished) {
            break;
        }
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let idle = async {
            match next_idle {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            u = updates.next() => match u {
                Some(Update::Job(j)) => {
                    let name = render::name_of(&j.metadata).to_string();
                    if let Some(t) = tracked.iter_mut().find(|t| t.name == name) {
                        t.job = *j;
                    }
                }
                Some(Update::JobDeleted(name)) => {
                    if let Some(t) = tracked.iter_mut().find(|t| t.name == name && !t.finished) {
                        let n = format!("job.batch/{name} was deleted from the cluster before it finished");
                        out.event(&format!("warning: {n}"));
                        t.notes.push(n);
                        t.deleted = Some("by someone else, before it finished".into());
                        t.unfinished = true;
                        t.finished = true;
                        interrupted = true;
                    }
                }
                Some(Update::Pod(p)) => {
                    let pod = p.metadata.name.clone().unwrap_or_default();
                    let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
                    if let Some(job) = pod_job(&p)
                        && let Some(t) = tracked.iter_mut().find(|t| t.name == job)
                        && t.pods.get(&pod) != Some(&phase)
                    {
                        out.event(&format!("job.batch/{job}: pod/{pod} {phase}"));
                        t.pods.insert(pod.clone(), phase.clone());
                    }
                    if opts.follow && phase != "Pending" && followed.insert(pod.clone()) {
                        for c in p.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default() {
                            let sink: Arc<dyn Sink> = out.clone();
                            log_tasks.push(tokio::spawn(follow_log(
                                cluster.api::<Pod>(),
                                pod.clone(),
                                c.name.clone(),
                                format!("{pod}/{}", c.name),
                                sink,
                            )));
                        }
                    }
                }
                Some(Update::Queue(i, s)) => {
                    if let Some(t) = tracked.get_mut(i) {
                        t.stats = Some(s);
                    }
                }
                Some(Update::WatchError(e)) => out.event(&format!("warning: {e} (retrying)")),
                None => {
                    return Err(Error::Cluster("the watch streams ended unexpectedly".into()));
                }
            },
            _ = timeout => {
                out.event(&format!(
                    "timed out after {}: stopped watching",
                    humantime::format_duration(opts.timeout.unwrap_or_default())
                ));
                interrupted = true;
                break;
            }
            _ = idle => {}
            _ = &mut ctrl_c => {
                out.event("interrupted: stopped watching");
                interrupted = true;
                break;
            }
        }
    }
    for t in log_tasks {
        // Logs of ended containers end by themselves; give them a moment.
        if tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .is_err()
        {
            break;
        }
    }
    Ok(interrupted)
}

fn progress(out: &Output, t: &Tracked) {
    let status = t.job.status.clone().unwrap_or_default();
    let spec = t.job.spec.clone().unwrap_or_default();
    let msg = format!(
        "{} active / {} succeeded / {} failed",
        status.active.unwrap_or(0),
        status.succeeded.unwrap_or(0),
        status.failed.unwrap_or(0)
    );
    match &t.stats {
        Some(s) => out.progress(
            &t.name,
            s.finished(),
            Some(s.enqueued),
            format!("items (queue {}); pods {msg}", s.queue),
        ),
        None => out.progress(
            &t.name,
            u64::try_from(status.succeeded.unwrap_or(0)).unwrap_or(0),
            spec.completions.and_then(|c| u64::try_from(c).ok()),
            msg,
        ),
    }
}

fn since(start: Option<jiff::Timestamp>, t: jiff::Timestamp) -> Duration {
    start
        .map(|s| t.duration_since(s))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

fn pod_summary(p: &Pod, start: Option<jiff::Timestamp>) -> PodSummary {
    let status = p.status.clone().unwrap_or_default();
    let terminated: Vec<_> = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((c.name.clone(), t.exit_code, t.finished_at.clone()))
        })
        .collect();
    let ended = terminated
        .iter()
        .filter_map(|(_, _, f)| f.as_ref().map(|f| f.0))
        .max();
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    PodSummary {
        name: p.metadata.name.clone().unwrap_or_default(),
        index: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
            .and_then(|i| i.parse().ok()),
        exits: terminated
            .iter()
            .map(|(n, c, _)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(","),
        note: String::new(),
        started: status
            .start_time
            .map(|t| since(start, t.0))
            .unwrap_or_default(),
        ended: if phase == "Succeeded" || phase == "Failed" {
            Some(ended.map(|e| since(start, e)).unwrap_or_default())
        } else {
            None
        },
        phase,
    }
}

fn event_of(e: &KubeEvent, start: Option<jiff::Timestamp>) -> Event {
    let at = e
        .last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0));
    Event {
        at: at.map(|t| since(start, t)).unwrap_or_default(),
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
    }
}

async fn summarize(
    cluster: &Cluster,
    tracked: &mut [Tracked],
    run_id: &str,
) -> Result<Vec<JobReport>> {
    let pods = cluster
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run_id}")))
        .await
        .map_err(kube_error("listing the run's pods"))?;
    let mut out = Vec::new();
    for t in tracked.iter_mut() {
        let start = t
            .job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        let fields = format!("involvedObject.kind=Job,involvedObject.name={}", t.name);
        let events = cluster
            .api::<KubeEvent>()
            .list(&ListParams::default().fields(&fields))
            .await
            .map_err(kube_error(format!(
                "listing the events of job.batch/{}",
                t.name
            )))?;
        let mut events: Vec<Event> = events.items.iter().map(|e| event_of(e, start)).collect();
        events.sort_by_key(|e| e.at);
        let mut job_pods: Vec<PodSummary> = pods
            .items
            .iter()
            .filter(|p| pod_job(p).as_deref() == Some(t.name.as_str()))
            .map(|p| pod_summary(p, start))
            .collect();
        job_pods.sort_by_key(|p| p.started);
        let queue = match &t.queue {
            Some((qp, url, q)) => {
                let mut s = crate::queue::summary(&qp.name, url, q).await;
                s.notes = t.notes.clone();
                s.unfinished = t.unfinished;
                Some(s)
            }
            None => None,
        };
        out.push(JobReport {
            job: t.job.clone(),
            pods: job_pods,
            events,
            owner: None,
            suspended: t.job.spec.as_ref().and_then(|s| s.suspend) == Some(true),
            deleted: t.deleted.clone(),
            queue,
            on_cluster: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: &str) -> Job {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: j}}\nspec:\n  completions: 2\n  template: {{}}\nstatus: {status}\n"
        ))
        .expect("test yaml")
    }

    fn stats(pending: u64, leased: u64, drained: bool) -> worker_sdk::Stats {
        worker_sdk::Stats {
            queue: "q".into(),
            enqueued: 3,
            pending,
            delayed: 0,
            leased,
            completed: 3 - pending - leased,
            dead: 0,
            retried: 0,
            sealed: true,
            drained,
        }
    }

    #[test]
    fn decide_table() {
        let complete = "{succeeded: 2, conditions: [{type: Complete, status: \"True\"}]}";
        let failed = "{failed: 1, conditions: [{type: Failed, status: \"True\", reason: BackoffLimitExceeded}]}";
        let running = "{active: 2}";
        let one_done = "{active: 1, succeeded: 1}";
        let one_failed = "{active: 1, succeeded: 1, failed: 1}";
        let finish = |unfinished| move |d: &Decision| matches!(d, Decision::Finish { unfinished: u, .. } if *u == unfinished);
        type Check = Box<dyn Fn(&Decision) -> bool>;
        let cases: Vec<(&str, &str, bool, Option<worker_sdk::Stats>, Check)> = vec![
            (
                "no queue, complete",
                complete,
                false,
                None,
                Box::new(finish(false)),
            ),
            (
                "no queue, running",
                running,
                false,
                None,
                Box::new(|d| *d == Decision::Wait),
            ),
            (
                "complete, queue unseen",
                complete,
                true,
                None,
                Box::new(|d| *d == Decision::Wait),
            ),
            (
                "complete, drained",
                complete,
                true,
                Some(stats(0, 0, true)),
                Box::new(finish(false)),
            ),
            (
                "complete, work left (caveat 1)",
                complete,
                true,
                Some(stats(1, 0, false)),
                Box::new(
                    |d| matches!(d, Decision::Finish { unfinished: true, note: Some(n) } if n.contains("1 item(s) that no pod will take")),
                ),
            ),
            (
                "failed, work left",
                failed,
                true,
                Some(stats(2, 0, false)),
                Box::new(
                    |d| matches!(d, Decision::Finish { unfinished: true, note: Some(n) } if n.contains("failed with 2 item(s)")),
                ),
            ),
            (
                "running, work left",
                running,
                true,
                Some(stats(1, 1, false)),
                Box::new(|d| *d == Decision::Wait),
            ),
            (
                "drained, pods wait (caveat 2)",
                one_done,
                true,
                Some(stats(0, 0, true)),
                Box::new(|d| *d == Decision::Idle { active: 1 }),
            ),
            (
                "drained, a pod failed",
                one_failed,
                true,
                Some(stats(0, 0, true)),
                Box::new(|d| *d == Decision::Wait),
            ),
            (
                "drained, nothing succeeded yet",
                running,
                true,
                Some(stats(0, 0, true)),
                Box::new(|d| *d == Decision::Wait),
            ),
        ];
        for (name, status, has_queue, s, check) in cases {
            let d = decide(&job(status), has_queue, s.as_ref());
            assert!(check(&d), "{name}: {d:?}");
        }
    }

    #[test]
    fn suspended_jobs_are_not_waited_for() {
        let j: Job =
            serde_saphyr::from_str("metadata: {name: j}\nspec:\n  suspend: true\n  template: {}\n")
                .expect("yaml");
        assert!(matches!(
            decide(&j, false, None),
            Decision::Finish {
                unfinished: false,
                ..
            }
        ));
    }

    #[test]
    fn jobs_table_reads_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("ts");
        let j: Job = serde_saphyr::from_str(
            "metadata: {name: job-wq-1, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  completions: 8\n  template: {}\nstatus:\n  succeeded: 8\n  startTime: \"2026-01-01T00:00:01Z\"\n  completionTime: \"2026-01-01T00:00:31Z\"\n  conditions: [{type: Complete, status: \"True\"}]\n",
        )
        .expect("yaml");
        let table = jobs_table(&[j], now);
        assert_eq!(
            table,
            "NAME       STATUS     COMPLETIONS   DURATION   AGE\njob-wq-1   Complete   8/8           30s        10m0s\n"
        );
    }
}
