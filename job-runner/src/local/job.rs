//! One Job of a local run: how it starts (name, labels, queue, API server
//! defaults, `/etc/hosts` for pods with a subdomain), its pods, and its
//! report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Runner;
use super::queue::{self, QueueRun};
use crate::controller::{JobConfig, JobState, PodResult, Verdict};
use crate::error::{Error, Result};
use crate::pod::PodPlan;
use crate::process::{self, Stop};
use crate::report::{JobReport, PodSummary, verdict_note};

/// One pod of a Job.
pub(super) struct PodTrack {
    pub(super) stop: watch::Sender<Option<Stop>>,
    pub(super) index: Option<u32>,
    pub(super) started: Duration,
    pub(super) ended: Option<Duration>,
    pub(super) result: Option<PodResult>,
    pub(super) verdict: Option<Verdict>,
}

/// One Job of the run.
pub(super) struct JobRun {
    pub(super) job: Job,
    pub(super) uid: String,
    pub(super) state: JobState,
    pub(super) started: Instant,
    pub(super) start_ts: jiff::Timestamp,
    pub(super) pods: BTreeMap<String, PodTrack>,
    pub(super) order: Vec<String>,
    pub(super) hosts: Option<PathBuf>,
    pub(super) extra_env: Vec<(String, String)>,
    pub(super) owner: Option<usize>,
    /// Not run: suspended, or `parallelism: 0`.
    pub(super) suspended: bool,
    /// `spec.suspend: true` without `--resume`: status `Suspended`.
    pub(super) spec_suspended: bool,
    /// `spec.suspend: true` with `--resume`: status `Suspended=False`
    /// (`JobResumed`), and the Job shows `suspend: false`.
    pub(super) resumed: bool,
    /// What a field means here when it only means something on a cluster,
    /// said once in the summary.
    pub(super) notes: Vec<String>,
    pub(super) deleted: Option<String>,
    pub(super) queue: Option<QueueRun>,
    pub(super) announced: bool,
    /// The Job's outcome as said on the live lines: 0 nothing yet, 1 the
    /// interim condition, 2 the final one.
    pub(super) said_finish: u8,
}

impl JobRun {
    /// The Job's name.
    pub(super) fn name(&self) -> &str {
        &self.state.config.name
    }

    /// The time since the Job started (the controller's clock).
    pub(super) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Pods still running.
    pub(super) fn active_pods(&self) -> usize {
        self.pods.values().filter(|p| p.ended.is_none()).count()
    }

    /// Ended (finished, suspended or deleted) with no pod left.
    pub(super) fn done(&self) -> bool {
        (self.suspended || self.deleted.is_some() || self.state.finish.is_some())
            && self.active_pods() == 0
    }
}

impl Runner {
    /// Refuses, before anything runs, a Job this machine cannot run.
    pub(super) fn preflight(&self, job: &Job) -> Result<()> {
        let plan = PodPlan::new(job, "preflight", job_is_indexed(job).then_some(0), &[], &[]);
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

    /// Starts a Job as the API server and the Job controller would: a name
    /// (from `generateName` if need be), a uid, the controller's labels, the
    /// API server's defaults; fills its queue for a work-queue Job.
    /// `owner` is the CronJob that made it; `dir` resolves `items-file`.
    pub(super) async fn start_job(
        &mut self,
        mut job: Job,
        owner: Option<usize>,
        dir: &Path,
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
        let resumed = job.spec.as_ref().and_then(|s| s.suspend) == Some(true) && self.opts.resume;
        if resumed && let Some(spec) = job.spec.as_mut() {
            // `--resume` does what `kubectl patch --patch '{"spec":{"suspend":false}}'` does.
            spec.suspend = Some(false);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let config = JobConfig::from_spec(&name, &namespace, &spec, self.opts.pod_backoff);
        let spec_suspended = spec.suspend == Some(true);
        let mut suspended = spec_suspended;
        let mut notes = Vec::new();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            notes.push(format!(
                "ttlSecondsAfterFinished: {ttl}: on a cluster the TTL-after-finished controller deletes this Job and its pods {ttl}s after it finishes; locally nothing outlives the run, so there is nothing to clean up"
            ));
        }
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
            spec_suspended,
            resumed,
            notes,
            deleted: None,
            queue,
            announced: false,
            said_finish: 0,
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
}

impl JobRun {
    /// The Job's report: the Job with its final status, its pods and events.
    /// `owner` is its CronJob's name; `removed` says why a CronJob's history
    /// limit removed it.
    pub(super) async fn report(
        &mut self,
        owner: Option<String>,
        removed: Option<String>,
    ) -> JobReport {
        let queue = match &mut self.queue {
            Some(q) => Some(q.summary().await),
            None => None,
        };
        let mut job = self.job.clone();
        job.status = Some(if self.spec_suspended {
            JobStatus {
                conditions: Some(vec![suspended_condition(self.start_ts, true)]),
                ..JobStatus::default()
            }
        } else {
            let mut status = self.state.status(self.start_ts);
            if self.resumed {
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                conditions.insert(0, suspended_condition(self.start_ts, false));
            }
            status
        });
        let pods = self
            .order
            .iter()
            .filter_map(|name| self.pods.get(name).map(|p| (name, p)))
            .map(|(name, p)| p.summary(name))
            .collect();
        JobReport {
            job,
            pods,
            events: self.state.events.clone(),
            owner,
            suspended: self.spec_suspended,
            notes: self.notes.clone(),
            deleted: self.deleted.clone().or(removed),
            queue,
            on_cluster: false,
        }
    }
}

impl PodTrack {
    /// The pod as the summary lists it.
    fn summary(&self, name: &str) -> PodSummary {
        PodSummary {
            name: name.to_string(),
            index: self.index,
            phase: match &self.result {
                Some(r) if r.succeeded => "Succeeded".into(),
                Some(_) => "Failed".into(),
                None => "Running".into(),
            },
            exits: self
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
                let mut n = self.verdict.as_ref().map(verdict_note).unwrap_or_default();
                if let Some((reason, _)) = self.result.as_ref().and_then(|r| r.reason.as_ref()) {
                    n = format!("{reason}; {n}");
                }
                if self
                    .result
                    .as_ref()
                    .is_some_and(|r| !r.conditions.is_empty())
                {
                    n = format!("evicted (DisruptionTarget); {n}");
                }
                n
            },
            started: self.started,
            ended: self.ended,
        }
    }
}

/// The `Suspended` condition as the Job controller writes it: `True`
/// (`JobSuspended`, "Job suspended"), or `False` (`JobResumed`, "Job
/// resumed") once a suspended Job is resumed.
fn suspended_condition(at: jiff::Timestamp, suspended: bool) -> JobCondition {
    let (status, reason, message) = if suspended {
        ("True", "JobSuspended", "Job suspended")
    } else {
        ("False", "JobResumed", "Job resumed")
    };
    JobCondition {
        type_: "Suspended".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(at)),
        last_transition_time: Some(Time(at)),
    }
}

/// `completionMode: Indexed`.
pub(super) fn job_is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}
