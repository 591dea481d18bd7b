//! The watch loop of a cluster run: one watch of the run's Jobs, one of its
//! pods, one per queue, merged into one stream of updates; after each, every
//! unfinished Job is decided ([`super::decide()`]) until all are finished, the
//! timeout passes or Ctrl-C.
//!
//! # Guarantees
//!
//! - A Job whose watch event overtook its queue's is decided again on fresh
//!   counters before it is called unfinished.
//! - An idle Job (drained queue, pods waiting) is deleted with background
//!   propagation after `idle_grace`, unless `--keep-idle-pods`.
//! - A Job deleted by someone else stops the watch of that Job and marks the
//!   run interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::{WatchStreamExt, watcher};

use super::ClusterRunOptions;
use super::client::{Cluster, follow_log, kube_error};
use super::decide::{Decision, decide};
use super::render::{self, QueuePlan, RUN_LABEL};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::process::Sink;

/// One Job of the run, as the watch sees it.
pub(super) struct Tracked {
    pub(super) name: String,
    pub(super) job: Job,
    pub(super) queue: Option<(QueuePlan, String, worker_sdk::Queue)>,
    pub(super) stats: Option<worker_sdk::Stats>,
    pub(super) finished: bool,
    pub(super) notes: Vec<String>,
    pub(super) unfinished: bool,
    pub(super) deleted: Option<String>,
    pub(super) idle_since: Option<tokio::time::Instant>,
    pub(super) pods: BTreeMap<String, String>,
}
/// What the merged watch streams say.
enum Update {
    Job(Box<Job>),
    JobDeleted(String),
    Pod(Box<Pod>),
    Queue(usize, worker_sdk::Stats),
    WatchError(String),
}
/// The Job a pod belongs to (its `job-name` label).
pub(super) fn pod_job(p: &Pod) -> Option<String> {
    let labels = p.metadata.labels.as_ref()?;
    labels
        .get("batch.kubernetes.io/job-name")
        .or_else(|| labels.get("job-name"))
        .cloned()
}
/// Watches until every Job is finished; true when stopped early (timeout,
/// Ctrl-C).
pub(super) async fn watch(
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

/// Updates the live line of one Job.
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
