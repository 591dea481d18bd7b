//! Running the manifests on a Kubernetes cluster (`job-runner run -f FILE`
//! without `--local`), and the kubectl-shaped `get jobs`, `logs` and
//! `delete` by label.
//!
//! # Layout
//!
//! - [`render`]: what is created, computed without a cluster (labels,
//!   wrapper injection, coarse `completions`).
//! - [`client`]: [`Cluster`], a kube client and a namespace; create, list,
//!   delete, logs; errors with a hint at the usual cause.
//! - this module: [`run`], the lifecycle below.
//! - `watch`: the watch loop — the Jobs, their pods and their queues
//!   together until the work is done.
//! - [`decide`](mod@decide): when a Job and its queue agree that the work is
//!   over — pure, table-tested.
//! - `summary`: the final pods and events, as [`JobReport`](crate::report::JobReport)s.
//! - [`table`]: `get jobs`' table.
//!
//! # Lifecycle of a run
//!
//! 1. Work-queue Jobs: items pushed to `--queue-url`, queue sealed; a coarse
//!    Job with `completions` unset gets the sealed queue's size
//!    ([`crate::queue::fill_and_seal`], as `--local` does).
//! 2. Services, then Jobs, then CronJobs are created (`POST`), each labelled
//!    `workq.dev/run=<id>`. CronJobs are created and left to the cluster's
//!    schedule; they are not waited for.
//! 3. One watch stream of the run's Jobs, one of its pods, one per queue.
//! 4. A Job is finished when it has a `Complete` or `Failed` condition and
//!    its queue agrees ([`decide()`]). Two caveats are reported plainly: pods
//!    all ended with work still queued (the run exits 1), and a drained queue
//!    with pods still waiting — the run then deletes that Job (background
//!    propagation) once the finished pods succeeded, unless
//!    `--keep-idle-pods`.
//! 5. The summary is that of `--local`, from a final list of pods and events.

pub mod client;
pub mod decide;
pub mod render;
mod summary;
pub mod table;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;

use crate::error::{Error, Result};
use crate::output::Output;
use crate::report::RunReport;
pub use client::Cluster;
pub use decide::{Decision, decide, finished_condition};
pub use render::{Planned, QueuePlan, RUN_LABEL, RenderOptions, plan, to_yaml};
pub use table::jobs_table;
use watch::Tracked;

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
/// Connects to the queue service at `url` and fills a work-queue Job's
/// queue ([`crate::queue::fill_and_seal`]); returns the queue's handle.
async fn fill_queue(
    job: &mut Job,
    qp: &QueuePlan,
    url: &str,
    out: &Output,
) -> Result<worker_sdk::Queue> {
    let client = worker_sdk::connect(url).await.map_err(|e| {
        Error::Queue(format!(
            "cannot reach the queue service at {url} ({e}); check --queue-url (e.g. `kubectl -n workq port-forward svc/workq 50051` and --queue-url grpc://127.0.0.1:50051)"
        ))
    })?;
    let name = &qp.name;
    let queue = client
        .queue(name)
        .map_err(|e| Error::Queue(format!("queue {name:?}: {e}")))?;
    crate::queue::fill_and_seal(
        job,
        &queue,
        url,
        qp.items.as_deref(),
        qp.completions_from_queue,
        out,
    )
    .await?;
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
    let interrupted = watch::watch(cluster, &mut tracked, run_id, &opts, &out).await?;
    if interrupted {
        out.event(&format!(
            "the run's objects are left on the cluster: `job-runner delete -l {RUN_LABEL}={run_id}` removes them"
        ));
    }
    let reports = summary::summarize(cluster, &mut tracked, run_id).await?;
    Ok(RunReport {
        jobs: reports,
        interrupted,
        crons: Vec::new(),
    })
}
