//! The Job controller's decisions as pure functions of a Job's state and the
//! time, with no processes: which pods to create, what a pod's end means for
//! the Job (pod failure policy, back-off limits, per-index limits), and when
//! the Job is complete or failed.
//!
//! # Lifecycle
//!
//! The runner calls [`JobState::reconcile`] to learn which pods to create (and
//! when to call again), reports each creation with [`JobState::pod_created`],
//! each container restart of an `OnFailure` pod with
//! [`JobState::container_restarting`], and each pod's end with
//! [`JobState::pod_finished`]. Once [`JobState::finish`] is set, no more pods
//! are created; for a failed Job the runner terminates the active ones.
//!
//! Times are offsets from the Job's start, so tests control the clock.
//!
//! # Semantics (as `kube-controller-manager`'s job controller)
//!
//! - `completions` set, NonIndexed: the Job is complete when that many pods
//!   have succeeded; at most `min(parallelism, completions - succeeded)` pods
//!   run at once.
//! - `completions` unset (the work-queue meaning): `parallelism` pods run;
//!   once any has succeeded no new pod starts, and the Job is complete when
//!   every pod has ended.
//! - Indexed: one index per pod, lowest first; complete when every index has
//!   succeeded; with `backoffLimitPerIndex`, an index failing more often is
//!   marked failed, and the Job fails (`FailedIndexes`) once every index is
//!   done, or at once past `maxFailedIndexes`.
//! - A failed pod, unless a pod failure policy rule says `Ignore` (or
//!   `FailIndex`/`FailJob`), counts toward `backoffLimit` (default 6): the Job
//!   fails when more pods than that have failed. Replacements wait an
//!   exponential back-off (base ×2 per failure since the last success,
//!   ignored ones included, capped at 60× base: 10 s to 10 min by default);
//!   under `backoffLimitPerIndex` the back-off is per index, counting that
//!   index's failures (`batch.kubernetes.io/job-index-failure-count`).
//! - `successPolicy` (Indexed): the first matching rule makes the Job
//!   succeed (`SuccessCriteriaMet`, reason `SuccessPolicy`, "Matched rules at
//!   index N"); the remaining pods are terminated.
//! - `podReplacementPolicy`: `TerminatingOrFailed` (the default without a
//!   pod failure policy) counts a terminating pod as failed at once and
//!   replaces it; `Failed` waits for its end (see [`JobState::pod_terminating`]).
//! - `activeDeadlineSeconds`: past it, the Job fails with `DeadlineExceeded`.
//! - The interim condition (`FailureTarget`, `SuccessCriteriaMet`) is
//!   written when the outcome is decided, the final one (`Failed`,
//!   `Complete`) once no pod of the Job is left ([`Finish::ended`]).

//!
//! # Layout
//!
//! - `config`: [`JobConfig`], a Job spec with the API server's defaults.
//! - `failure_policy`: [`Rule`], `podFailurePolicy` rules and which one a
//!   failed pod matches.
//! - `success_policy`: [`SuccessRule`], `successPolicy` rules.
//! - `backoff`: the pod back-off, global and per index, and the
//!   index-failure-count annotations.
//! - this module: [`JobState`] and its transitions ([`JobState::reconcile`],
//!   [`JobState::pod_finished`], …).
//! - `status`: the state in Kubernetes' shape (`JobStatus`, conditions,
//!   counts, index ranges).

mod backoff;
mod config;
mod failure_policy;
mod status;
mod success_policy;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use backoff::{INDEX_FAILURE_COUNT, INDEX_IGNORED_FAILURE_COUNT};
pub use config::{DEFAULT_BACKOFF_LIMIT, DEFAULT_POD_BACKOFF, JobConfig, MAX_POD_BACKOFF_FACTOR};
pub use failure_policy::{Matcher, Rule, RuleAction};
pub use status::format_ranges;
pub use success_policy::{SuccessRule, parse_ranges};

/// How one container of a finished pod ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    /// The container's name.
    pub name: String,
    /// Its exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// An init container.
    pub init: bool,
}

/// A pod that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResult {
    /// The pod's name.
    pub pod: String,
    /// Its completion index (Indexed Jobs).
    pub index: Option<u32>,
    /// Phase `Succeeded` (else `Failed`).
    pub succeeded: bool,
    /// Containers that ran to an end.
    pub containers: Vec<ContainerExit>,
    /// Pod conditions with their status, e.g. `("DisruptionTarget", "True")`.
    pub conditions: Vec<(String, String)>,
    /// The pod's `status.reason` and `status.message`, e.g.
    /// `DeadlineExceeded` when its own `activeDeadlineSeconds` passed.
    pub reason: Option<(String, String)>,
}

/// What [`JobState::pod_finished`] made of a pod's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod succeeded.
    Succeeded,
    /// A failure counted toward the back-off limits.
    Counted,
    /// A failure that a pod failure policy rule told to ignore.
    Ignored {
        /// The rule's index.
        rule: usize,
    },
    /// The pod's index failed (rule `FailIndex`, or `backoffLimitPerIndex`).
    IndexFailed,
    /// The Job failed because of this pod.
    JobFailed,
    /// The Job had already ended; the pod was one of those terminated.
    AfterFinish,
}

/// The end of a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// Complete (else Failed).
    pub complete: bool,
    /// The condition's reason (`CompletionsReached`, `BackoffLimitExceeded`, …).
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// When the outcome was decided (`SuccessCriteriaMet`/`FailureTarget`),
    /// from the Job's start.
    pub at: Duration,
    /// When the last pod was gone (`Complete`/`Failed`, `completionTime`).
    pub ended: Option<Duration>,
}

/// One event of the Job, as `kubectl describe job` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When, from the Job's start.
    pub at: Duration,
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// Reason (`SuccessfulCreate`, …).
    pub reason: String,
    /// Message (`Created pod: …`).
    pub message: String,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconcile {
    /// Pods to create, one entry each: its completion index (Indexed) or `None`.
    pub create: Vec<Option<u32>>,
    /// Terminate every active pod (the Job has ended: failed, or succeeded
    /// by its success policy).
    pub terminate_active: bool,
    /// Call again at this time even if nothing happens (back-off, deadline).
    pub wake_at: Option<Duration>,
}

/// A Job's state as the controller sees it.
#[derive(Debug, Clone)]
pub struct JobState {
    /// The settings.
    pub config: JobConfig,
    /// Active pods and their index (not terminating).
    pub active: BTreeMap<String, Option<u32>>,
    /// Pods terminating (SIGTERM sent, not yet ended) and their index.
    pub terminating: BTreeMap<String, Option<u32>>,
    /// Active pods whose containers are all running (`status.ready`).
    pub ready: BTreeSet<String>,
    /// Terminating pods already counted (`TerminatingOrFailed`), with what
    /// their failure meant.
    counted_early: BTreeMap<String, Verdict>,
    /// Succeeded pods (for Indexed: succeeded indexes).
    pub succeeded: u32,
    /// Failed pods (ignored failures are not counted).
    pub failed: u32,
    /// Container restarts of `OnFailure` pods.
    pub restarts: u32,
    /// Indexes that succeeded.
    pub succeeded_indexes: BTreeSet<u32>,
    /// Indexes that failed for good.
    pub failed_indexes: BTreeSet<u32>,
    /// Counted failures per index.
    pub index_failures: BTreeMap<u32, u32>,
    /// Ignored failures per index (`Ignore` rules).
    pub index_ignored: BTreeMap<u32, u32>,
    index_last_failure: BTreeMap<u32, Duration>,
    consecutive_failures: u32,
    last_failure: Option<Duration>,
    /// The end, once reached.
    pub finish: Option<Finish>,
    /// Events so far.
    pub events: Vec<Event>,
}

impl JobState {
    /// A Job that has not started any pod.
    pub fn new(config: JobConfig) -> Self {
        JobState {
            config,
            active: BTreeMap::new(),
            terminating: BTreeMap::new(),
            ready: BTreeSet::new(),
            counted_early: BTreeMap::new(),
            succeeded: 0,
            failed: 0,
            restarts: 0,
            succeeded_indexes: BTreeSet::new(),
            failed_indexes: BTreeSet::new(),
            index_failures: BTreeMap::new(),
            index_ignored: BTreeMap::new(),
            index_last_failure: BTreeMap::new(),
            consecutive_failures: 0,
            last_failure: None,
            finish: None,
            events: Vec::new(),
        }
    }

    fn event(&mut self, at: Duration, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            at,
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn fail(&mut self, now: Duration, reason: &str, message: String) {
        if self.finish.is_some() {
            return;
        }
        self.finish = Some(Finish {
            complete: false,
            reason: reason.to_string(),
            message,
            at: now,
            ended: None,
        });
        self.check_ended(now);
    }

    fn succeed(&mut self, now: Duration, reason: &str, message: String) {
        if self.finish.is_some() {
            return;
        }
        self.finish = Some(Finish {
            complete: true,
            reason: reason.to_string(),
            message,
            at: now,
            ended: None,
        });
        self.check_ended(now);
    }

    /// Stamps the end (`Complete`/`Failed`) once the outcome is decided and
    /// no pod is left, active or terminating.
    fn check_ended(&mut self, now: Duration) {
        if !self.active.is_empty() || !self.terminating.is_empty() {
            return;
        }
        let Some(f) = self.finish.as_mut() else {
            return;
        };
        if f.ended.is_some() {
            return;
        }
        f.ended = Some(now);
        // As `recordJobFinished`, when the final condition is written.
        if f.complete {
            self.event(now, false, "Completed", "Job completed".into());
        } else {
            let (reason, message) = (f.reason.clone(), f.message.clone());
            self.event(now, true, &reason, message);
        }
    }

    /// Records an event the runner observed (e.g. `SuccessfulDelete`).
    pub fn record(&mut self, at: Duration, warning: bool, reason: &str, message: String) {
        self.event(at, warning, reason, message);
    }

    /// The pod back-off after `n` failures: `base × 2^(n-1)`, capped at
    /// [`MAX_POD_BACKOFF_FACTOR`] × `base` (10 s … 10 min by default).
    pub fn backoff_delay(base: Duration, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (n - 1).min(20);
        base.saturating_mul(factor)
            .min(base.saturating_mul(MAX_POD_BACKOFF_FACTOR))
    }

    /// Decides what to do at `now`.
    pub fn reconcile(&mut self, now: Duration) -> Reconcile {
        let mut out = Reconcile::default();
        if self.finish.is_none()
            && let Some(deadline) = self.config.active_deadline
        {
            if now >= deadline {
                self.fail(
                    now,
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".into(),
                );
            } else {
                out.wake_at = Some(deadline);
            }
        }
        self.check_done(now);
        if self.finish.is_some() {
            out.terminate_active = !self.active.is_empty();
            out.wake_at = None;
            return out;
        }
        // Under `Failed`, a terminating pod still holds its place.
        let holding = if self.config.replace_terminating {
            self.active.len()
        } else {
            self.active.len() + self.terminating.len()
        };
        let active = u32::try_from(holding).unwrap_or(u32::MAX);
        let c = &self.config;
        let wanted: Vec<Option<u32>> = if c.indexed {
            let completions = c.completions.unwrap_or(0);
            let mut busy: BTreeSet<u32> = self.active.values().flatten().copied().collect();
            if !c.replace_terminating {
                busy.extend(self.terminating.values().flatten().copied());
            }
            let slots = c.parallelism.saturating_sub(active) as usize;
            let pending = (0..completions).filter(|i| {
                !self.succeeded_indexes.contains(i)
                    && !self.failed_indexes.contains(i)
                    && !busy.contains(i)
            });
            if c.backoff_limit_per_index.is_some() {
                // Per-index back-off: an index waits for its own delay only.
                let mut ready = Vec::new();
                for i in pending {
                    match self.index_ready_at(i) {
                        Some(at) if now < at => {
                            out.wake_at = Some(out.wake_at.map_or(at, |w| w.min(at)));
                        }
                        _ => ready.push(Some(i)),
                    }
                }
                ready.truncate(slots);
                out.create = ready;
                return out;
            }
            pending.take(slots).map(Some).collect()
        } else {
            let target = match c.completions {
                Some(n) => c.parallelism.min(n.saturating_sub(self.succeeded)),
                None if self.succeeded > 0 => 0,
                None => c.parallelism,
            };
            vec![None; target.saturating_sub(active) as usize]
        };
        if wanted.is_empty() {
            return out;
        }
        if let Some(last) = self.last_failure {
            let ready = last + Self::backoff_delay(c.pod_backoff, self.consecutive_failures);
            if now < ready {
                out.wake_at = Some(out.wake_at.map_or(ready, |w| w.min(ready)));
                return out;
            }
        }
        out.create = wanted;
        out
    }

    /// Records a created pod (not ready until [`JobState::pod_ready`]).
    pub fn pod_created(&mut self, pod: &str, index: Option<u32>, now: Duration) {
        self.active.insert(pod.to_string(), index);
        self.event(
            now,
            false,
            "SuccessfulCreate",
            format!("Created pod: {pod}"),
        );
    }

    /// A container of an `OnFailure` pod failed: counts the restart and says
    /// whether the container may restart (false: the back-off limit is passed
    /// and the Job has failed).
    pub fn container_restarting(&mut self, now: Duration) -> bool {
        if self.finish.is_some() {
            return false;
        }
        self.restarts += 1;
        if self.restarts > self.config.backoff_limit {
            self.fail(
                now,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            );
            return false;
        }
        true
    }

    /// The first pod failure policy rule matching a failed pod, with the
    /// message Kubernetes gives for it.
    pub fn match_rule(&self, pod: &PodResult) -> Option<(usize, RuleAction, String)> {
        failure_policy::first_match(&self.config.rules, &self.config.namespace, pod)
    }

    /// Records that every container of an active pod is running: it counts
    /// as `ready` (pods here have no readiness probes).
    pub fn pod_ready(&mut self, pod: &str) {
        if self.active.contains_key(pod) {
            self.ready.insert(pod.to_string());
        }
    }

    /// Records that a pod got SIGTERM (evicted, or deleted by the controller)
    /// and has not ended yet. Under `podReplacementPolicy:
    /// TerminatingOrFailed` an evicted pod of a running Job counts as failed
    /// now (`Some` verdict; the Kubernetes controller counts a pod with a
    /// deletion timestamp as failed) and its replacement may start;
    /// under `Failed` it is counted, and replaced, once it has ended.
    pub fn pod_terminating(&mut self, pod: &str, now: Duration, evicted: bool) -> Option<Verdict> {
        let index = self.active.remove(pod)?;
        self.ready.remove(pod);
        self.terminating.insert(pod.to_string(), index);
        if !evicted || !self.config.replace_terminating || self.finish.is_some() {
            return None;
        }
        let early = PodResult {
            pod: pod.to_string(),
            index,
            succeeded: false,
            containers: Vec::new(),
            conditions: vec![("DisruptionTarget".into(), "True".into())],
            reason: None,
        };
        let verdict = self.failed_pod(&early, now);
        self.check_done(now);
        self.counted_early.insert(pod.to_string(), verdict.clone());
        Some(verdict)
    }

    /// Records a pod's end and says what it meant.
    pub fn pod_finished(&mut self, pod: &PodResult, now: Duration) -> Verdict {
        self.active.remove(&pod.pod);
        self.ready.remove(&pod.pod);
        self.terminating.remove(&pod.pod);
        if let Some(verdict) = self.counted_early.remove(&pod.pod) {
            self.check_done(now);
            self.check_ended(now);
            return verdict;
        }
        if self.finish.is_some() {
            if pod.succeeded {
                self.succeeded += 1;
            } else {
                self.failed += 1;
            }
            self.check_ended(now);
            return Verdict::AfterFinish;
        }
        let verdict = if pod.succeeded {
            match pod.index {
                Some(i) => {
                    if self.succeeded_indexes.insert(i) {
                        self.succeeded += 1;
                    }
                }
                None => self.succeeded += 1,
            }
            self.consecutive_failures = 0;
            self.last_failure = None;
            Verdict::Succeeded
        } else {
            self.failed_pod(pod, now)
        };
        self.check_done(now);
        verdict
    }

    fn failed_pod(&mut self, pod: &PodResult, now: Duration) -> Verdict {
        let matched = self.match_rule(pod);
        match matched {
            Some((rule, RuleAction::Ignore, _)) => {
                self.note_failure(pod.index, now, false);
                return Verdict::Ignored { rule };
            }
            Some((_, RuleAction::FailJob, msg)) => {
                self.failed += 1;
                self.fail(now, "PodFailurePolicy", msg);
                return Verdict::JobFailed;
            }
            Some((_, RuleAction::FailIndex, _)) => {
                self.failed += 1;
                if let Some(i) = pod.index {
                    self.failed_indexes.insert(i);
                }
                return self.after_index_failed(now);
            }
            Some((_, RuleAction::Count, _)) | None => {}
        }
        self.failed += 1;
        self.note_failure(pod.index, now, true);
        if let (Some(limit), Some(i)) = (self.config.backoff_limit_per_index, pod.index) {
            let n = self.index_failures.get(&i).copied().unwrap_or(0);
            if n > limit {
                self.failed_indexes.insert(i);
                return self.after_index_failed(now);
            }
            return Verdict::Counted;
        }
        if self.failed > self.config.backoff_limit {
            self.fail(
                now,
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            );
            return Verdict::JobFailed;
        }
        Verdict::Counted
    }

    fn after_index_failed(&mut self, now: Duration) -> Verdict {
        if let Some(max) = self.config.max_failed_indexes
            && self.failed_indexes.len() > max as usize
        {
            self.fail(
                now,
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".into(),
            );
            return Verdict::JobFailed;
        }
        Verdict::IndexFailed
    }

    fn check_done(&mut self, now: Duration) {
        if self.finish.is_some() {
            return;
        }
        let c = &self.config;
        if c.indexed
            && let Some(rule) =
                success_policy::first_match(&c.success_rules, &self.succeeded_indexes)
        {
            self.succeed(now, success_policy::REASON, success_policy::message(rule));
            return;
        }
        let complete = if c.indexed {
            let n = c.completions.unwrap_or(0) as usize;
            let done = self.succeeded_indexes.len() + self.failed_indexes.len();
            if done >= n && self.active.is_empty() && !self.failed_indexes.is_empty() {
                self.fail(now, "FailedIndexes", "Job has failed indexes".into());
                return;
            }
            self.succeeded_indexes.len() >= n
        } else {
            match c.completions {
                Some(n) => self.succeeded >= n,
                None => self.succeeded > 0 && self.active.is_empty(),
            }
        };
        if complete {
            self.succeed(
                now,
                "CompletionsReached",
                "Reached expected number of succeeded pods".into(),
            );
        }
    }
}
