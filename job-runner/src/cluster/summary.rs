//! The summary of a cluster run: the run's pods and each Job's events, listed
//! once the watch is over, in the shape of a local run's [`JobReport`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod};
use kube::api::ListParams;

use super::client::{Cluster, kube_error};
use super::render::RUN_LABEL;
use super::watch::{Tracked, pod_job};
use crate::controller::Event;
use crate::error::Result;
use crate::report::{JobReport, PodSummary};

/// The offset of `t` from the Job's start (zero when unknown or before it).
fn since(start: Option<jiff::Timestamp>, t: jiff::Timestamp) -> Duration {
    start
        .map(|s| t.duration_since(s))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

/// One pod as the summary lists it.
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

/// A Kubernetes Event as the summary lists it.
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

/// Every Job's report, from a final list of the run's pods and of each
/// Job's events.
pub(super) async fn summarize(
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
            notes: Vec::new(),
            deleted: t.deleted.clone(),
            queue,
            on_cluster: true,
        });
    }
    Ok(out)
}
