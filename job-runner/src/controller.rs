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
//!   exponential back-off (base ×2 per consecutive failure, capped at 36×
//!   base: 10 s to 6 min by default).
//! - `activeDeadlineSeconds`: past it, the Job fails with `DeadlineExceeded`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The Job controller's default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;
/// The Job controller's default pod back-off base.
pub const DEFAULT_POD_BACKOFF: Duration = Duration::from_secs(10);

/// What a pod failure policy rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Fail the whole Job at once.
    FailJob,
    /// Fail this pod's index (needs `backoffLimitPerIndex`).
    FailIndex,
    /// Do not count the failure; replace the pod.
    Ignore,
    /// Count the failure as usual.
    Count,
}

impl RuleAction {
    fn parse(s: &str) -> Self {
        match s {
            "FailJob" => RuleAction::FailJob,
            "FailIndex" => RuleAction::FailIndex,
            "Ignore" => RuleAction::Ignore,
            _ => RuleAction::Count,
        }
    }

    /// The action's name as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::FailJob => "FailJob",
            RuleAction::FailIndex => "FailIndex",
            RuleAction::Ignore => "Ignore",
            RuleAction::Count => "Count",
        }
    }
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// `onExitCodes`.
    ExitCodes {
        /// Only this container (init or regular), or any.
        container: Option<String>,
        /// `NotIn` rather than `In`.
        not_in: bool,
        /// The codes.
        values: Vec<i32>,
    },
    /// `onPodConditions`: any of these (type, status) pairs.
    Conditions(Vec<(String, String)>),
}

/// One `podFailurePolicy` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What to do on a match.
    pub action: RuleAction,
    /// What to match.
    pub matcher: Matcher,
}

/// A Job's settings, with the API server's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The Job's name.
    pub name: String,
    /// Its namespace (`default` unless set).
    pub namespace: String,
    /// `spec.completions`, or `None` for the work-queue meaning.
    pub completions: Option<u32>,
    /// `spec.parallelism` (default 1).
    pub parallelism: u32,
    /// `completionMode: Indexed`.
    pub indexed: bool,
    /// `spec.backoffLimit` (default 6).
    pub backoff_limit: u32,
    /// `spec.backoffLimitPerIndex`.
    pub backoff_limit_per_index: Option<u32>,
    /// `spec.maxFailedIndexes`.
    pub max_failed_indexes: Option<u32>,
    /// `spec.activeDeadlineSeconds`.
    pub active_deadline: Option<Duration>,
    /// `restartPolicy: OnFailure` (containers restart in place).
    pub restart_on_failure: bool,
    /// `spec.podFailurePolicy.rules`.
    pub rules: Vec<Rule>,
    /// Base of the exponential pod back-off.
    pub pod_backoff: Duration,
}

fn non_negative(v: Option<i32>) -> Option<u32> {
    v.map(|v| u32::try_from(v).unwrap_or(0))
}

impl JobConfig {
    /// Reads a (validated) Job spec.
    pub fn from_spec(name: &str, namespace: &str, spec: &JobSpec, pod_backoff: Duration) -> Self {
        let per_index = non_negative(spec.backoff_limit_per_index);
        let rules = spec
            .pod_failure_policy
            .iter()
            .flat_map(|p| p.rules.iter())
            .map(|r| Rule {
                action: RuleAction::parse(&r.action),
                matcher: match (&r.on_exit_codes, &r.on_pod_conditions) {
                    (Some(c), _) => Matcher::ExitCodes {
                        container: c.container_name.clone(),
                        not_in: c.operator == "NotIn",
                        values: c.values.clone(),
                    },
                    (None, conds) => Matcher::Conditions(
                        conds
                            .iter()
                            .flatten()
                            .map(|c| {
                                (
                                    c.type_.clone(),
                                    c.status.clone().unwrap_or_else(|| "True".into()),
                                )
                            })
                            .collect(),
                    ),
                },
            })
            .collect();
        JobConfig {
            name: name.to_string(),
            namespace: namespace.to_string(),
            completions: non_negative(spec.completions),
            parallelism: non_negative(spec.parallelism).unwrap_or(1),
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            // With backoffLimitPerIndex the global limit defaults to "none".
            backoff_limit: non_negative(spec.backoff_limit).unwrap_or(if per_index.is_some() {
                u32::MAX
            } else {
                DEFAULT_BACKOFF_LIMIT
            }),
            backoff_limit_per_index: per_index,
            max_failed_indexes: non_negative(spec.max_failed_indexes),
            active_deadline: spec
                .active_deadline_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0))),
            restart_on_failure: spec
                .template
                .spec
                .as_ref()
                .and_then(|p| p.restart_policy.as_deref())
                == Some("OnFailure"),
            rules,
            pod_backoff,
        }
    }
}

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
    /// When, from the Job's start.
    pub at: Duration,
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
    /// Terminate every active pod (the Job has failed).
    pub terminate_active: bool,
    /// Call again at this time even if nothing happens (back-off, deadline).
    pub wake_at: Option<Duration>,
}

/// A Job's state as the controller sees it.
#[derive(Debug, Clone)]
pub struct JobState {
    /// The settings.
    pub config: JobConfig,
    /// Active pods and their index.
    pub active: BTreeMap<String, Option<u32>>,
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
            succeeded: 0,
            failed: 0,
            restarts: 0,
            succeeded_indexes: BTreeSet::new(),
            failed_indexes: BTreeSet::new(),
            index_failures: BTreeMap::new(),
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
        self.event(now, true, reason, message.clone());
        self.finish = Some(Finish {
            complete: false,
            reason: reason.to_string(),
            message,
            at: now,
        });
    }

    /// Records an event the runner observed (e.g. `SuccessfulDelete`).
    pub fn record(&mut self, at: Duration, warning: bool, reason: &str, message: String) {
        self.event(at, warning, reason, message);
    }

    /// The pod back-off after `n` consecutive failures.
    pub fn backoff_delay(base: Duration, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (n - 1).min(20);
        base.saturating_mul(factor).min(base.saturating_mul(36))
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
        if let Some(finish) = &self.finish {
            out.terminate_active = !finish.complete && !self.active.is_empty();
            out.wake_at = None;
            return out;
        }
        let active = u32::try_from(self.active.len()).unwrap_or(u32::MAX);
        let c = &self.config;
        let wanted: Vec<Option<u32>> = if c.indexed {
            let completions = c.completions.unwrap_or(0);
            let busy: BTreeSet<u32> = self.active.values().flatten().copied().collect();
            let slots = c.parallelism.saturating_sub(active) as usize;
            (0..completions)
                .filter(|i| {
                    !self.succeeded_indexes.contains(i)
                        && !self.failed_indexes.contains(i)
                        && !busy.contains(i)
                })
                .take(slots)
                .map(Some)
                .collect()
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

    /// Records a created pod.
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
        let ns = &self.config.namespace;
        for (i, rule) in self.config.rules.iter().enumerate() {
            match &rule.matcher {
                Matcher::ExitCodes {
                    container,
                    not_in,
                    values,
                } => {
                    // Regular containers first, then init containers; exit code
                    // 0 never matches.
                    let ordered = pod
                        .containers
                        .iter()
                        .filter(|c| !c.init)
                        .chain(pod.containers.iter().filter(|c| c.init));
                    for c in ordered {
                        if c.exit_code == 0 || container.as_ref().is_some_and(|n| *n != c.name) {
                            continue;
                        }
                        if values.contains(&c.exit_code) != *not_in {
                            let msg = format!(
                                "Container {} for pod {ns}/{} failed with exit code {} matching {} rule at index {i}",
                                c.name,
                                pod.pod,
                                c.exit_code,
                                rule.action.as_str()
                            );
                            return Some((i, rule.action, msg));
                        }
                    }
                }
                Matcher::Conditions(patterns) => {
                    for (ty, status) in patterns {
                        if pod.conditions.iter().any(|(t, s)| t == ty && s == status) {
                            let msg = format!(
                                "Pod {ns}/{} has condition {ty} matching {} rule at index {i}",
                                pod.pod,
                                rule.action.as_str()
                            );
                            return Some((i, rule.action, msg));
                        }
                    }
                }
            }
        }
        None
    }

    /// Records a pod's end and says what it meant.
    pub fn pod_finished(&mut self, pod: &PodResult, now: Duration) -> Verdict {
        self.active.remove(&pod.pod);
        if self.finish.is_some() {
            if pod.succeeded {
                self.succeeded += 1;
            } else {
                self.failed += 1;
            }
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
            Some((rule, RuleAction::Ignore, _)) => return Verdict::Ignored { rule },
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
        self.consecutive_failures += 1;
        self.last_failure = Some(now);
        if let (Some(limit), Some(i)) = (self.config.backoff_limit_per_index, pod.index) {
            let n = self.index_failures.entry(i).or_insert(0);
            *n += 1;
            if *n > limit {
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
            self.event(now, false, "Completed", "Job completed".into());
            self.finish = Some(Finish {
                complete: true,
                reason: "CompletionsReached".into(),
                message: "Reached expected number of succeeded pods".into(),
                at: now,
            });
        }
    }

    /// `status.completedIndexes` as Kubernetes writes it (`0-2,4`).
    pub fn completed_indexes(&self) -> String {
        format_ranges(&self.succeeded_indexes)
    }

    /// The Job's status in Kubernetes' shape. `start` is the wall-clock time of
    /// the Job's start; `now` the offset of the status.
    pub fn status(&self, start: jiff::Timestamp, now: Duration) -> JobStatus {
        let at = |d: Duration| {
            Time(
                start
                    .checked_add(jiff::SignedDuration::try_from(d).unwrap_or_default())
                    .unwrap_or(start),
            )
        };
        let mut conditions = Vec::new();
        if let Some(f) = &self.finish {
            let kinds: [&str; 2] = if f.complete {
                ["SuccessCriteriaMet", "Complete"]
            } else {
                ["FailureTarget", "Failed"]
            };
            for kind in kinds {
                conditions.push(JobCondition {
                    type_: kind.to_string(),
                    status: "True".into(),
                    reason: Some(f.reason.clone()),
                    message: Some(f.message.clone()),
                    last_probe_time: Some(at(f.at)),
                    last_transition_time: Some(at(f.at)),
                });
            }
        }
        let complete = self.finish.as_ref().is_some_and(|f| f.complete);
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        JobStatus {
            start_time: Some(at(Duration::ZERO)),
            completion_time: complete.then(|| at(self.finish.as_ref().map_or(now, |f| f.at))),
            active: Some(count(self.active.len())),
            ready: Some(0),
            terminating: Some(0),
            succeeded: Some(i32::try_from(self.succeeded).unwrap_or(i32::MAX)),
            failed: Some(i32::try_from(self.failed).unwrap_or(i32::MAX)),
            completed_indexes: (self.config.indexed && !self.succeeded_indexes.is_empty())
                .then(|| self.completed_indexes()),
            failed_indexes: self
                .config
                .backoff_limit_per_index
                .map(|_| format_ranges(&self.failed_indexes)),
            conditions: (!conditions.is_empty()).then_some(conditions),
            uncounted_terminated_pods: None,
        }
    }
}

/// Formats a set of indexes as Kubernetes does: `0-2,4,6-7`.
pub fn format_ranges(set: &BTreeSet<u32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JobConfig {
        JobConfig {
            name: "j".into(),
            namespace: "default".into(),
            completions: Some(1),
            parallelism: 1,
            indexed: false,
            backoff_limit: DEFAULT_BACKOFF_LIMIT,
            backoff_limit_per_index: None,
            max_failed_indexes: None,
            active_deadline: None,
            restart_on_failure: false,
            rules: Vec::new(),
            pod_backoff: Duration::from_secs(10),
        }
    }

    fn exit(pod: &str, index: Option<u32>, code: i32) -> PodResult {
        PodResult {
            pod: pod.into(),
            index,
            succeeded: code == 0,
            containers: vec![ContainerExit {
                name: "main".into(),
                exit_code: code,
                init: false,
            }],
            conditions: Vec::new(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Creates every pod `reconcile` asks for, naming them `p<N>`.
    fn start(state: &mut JobState, now: Duration, next: &mut u32) -> Vec<(String, Option<u32>)> {
        let r = state.reconcile(now);
        r.create
            .into_iter()
            .map(|index| {
                *next += 1;
                let name = format!("p{next}");
                state.pod_created(&name, index, now);
                (name, index)
            })
            .collect()
    }

    #[test]
    fn completions_and_parallelism() {
        let mut s = JobState::new(JobConfig {
            completions: Some(5),
            parallelism: 2,
            ..config()
        });
        let mut n = 0;
        let pods = start(&mut s, secs(0), &mut n);
        assert_eq!(pods.len(), 2);
        s.pod_finished(&exit(&pods[0].0, None, 0), secs(1));
        assert_eq!(start(&mut s, secs(1), &mut n).len(), 1);
        for p in ["p2", "p3"] {
            s.pod_finished(&exit(p, None, 0), secs(2));
        }
        assert_eq!(
            start(&mut s, secs(2), &mut n).len(),
            2,
            "min(parallelism, remaining)"
        );
        s.pod_finished(&exit("p4", None, 0), secs(3));
        assert_eq!(
            s.reconcile(secs(3)).create.len(),
            0,
            "one left, one running"
        );
        s.pod_finished(&exit("p5", None, 0), secs(4));
        let f = s.finish.clone().expect("finished");
        assert!(f.complete);
        assert_eq!(s.succeeded, 5);
    }

    #[test]
    fn completions_unset_waits_for_every_pod_after_a_success() {
        let mut s = JobState::new(JobConfig {
            completions: None,
            parallelism: 3,
            ..config()
        });
        let mut n = 0;
        assert_eq!(start(&mut s, secs(0), &mut n).len(), 3);
        s.pod_finished(&exit("p1", None, 1), secs(1));
        assert_eq!(
            start(&mut s, secs(20), &mut n).len(),
            1,
            "a failure is replaced"
        );
        s.pod_finished(&exit("p2", None, 0), secs(21));
        assert!(s.finish.is_none(), "others still running");
        assert_eq!(
            s.reconcile(secs(21)).create.len(),
            0,
            "no new pod after a success"
        );
        s.pod_finished(&exit("p3", None, 0), secs(22));
        s.pod_finished(&exit("p4", None, 0), secs(23));
        assert!(s.finish.as_ref().is_some_and(|f| f.complete));
        assert_eq!((s.succeeded, s.failed), (3, 1));
    }

    #[test]
    fn backoff_limit_counts_failures_and_delays_grow() {
        let mut s = JobState::new(JobConfig {
            backoff_limit: 2,
            ..config()
        });
        let mut n = 0;
        let mut now = secs(0);
        let mut delays = Vec::new();
        for round in 0..3 {
            let pods = start(&mut s, now, &mut n);
            assert_eq!(pods.len(), 1, "round {round}");
            let v = s.pod_finished(&exit(&pods[0].0, None, 1), now);
            if round < 2 {
                assert_eq!(v, Verdict::Counted);
                let r = s.reconcile(now);
                assert!(r.create.is_empty(), "back-off first");
                let wake = r.wake_at.expect("wakes after back-off");
                delays.push(wake - now);
                now = wake;
            } else {
                assert_eq!(v, Verdict::JobFailed);
            }
        }
        assert_eq!(delays, [secs(10), secs(20)]);
        let f = s.finish.expect("failed");
        assert_eq!(f.reason, "BackoffLimitExceeded");
        assert_eq!(f.message, "Job has reached the specified backoff limit");
        assert_eq!(s.failed, 3);
    }

    #[test]
    fn backoff_delay_is_capped() {
        let base = secs(10);
        let table = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (6, 320),
            (7, 360),
            (30, 360),
        ];
        for (n, want) in table {
            assert_eq!(JobState::backoff_delay(base, n), secs(want), "n={n}");
        }
    }

    #[test]
    fn backoff_limit_zero_fails_at_the_first_failure() {
        let mut s = JobState::new(JobConfig {
            backoff_limit: 0,
            ..config()
        });
        let mut n = 0;
        start(&mut s, secs(0), &mut n);
        assert_eq!(
            s.pod_finished(&exit("p1", None, 3), secs(1)),
            Verdict::JobFailed
        );
    }

    #[test]
    fn indexed_creates_lowest_indexes_and_reports_them() {
        let mut s = JobState::new(JobConfig {
            completions: Some(5),
            parallelism: 3,
            indexed: true,
            ..config()
        });
        let mut n = 0;
        let pods = start(&mut s, secs(0), &mut n);
        assert_eq!(
            pods.iter().map(|p| p.1).collect::<Vec<_>>(),
            [Some(0), Some(1), Some(2)]
        );
        s.pod_finished(&exit("p2", Some(1), 0), secs(1));
        s.pod_finished(&exit("p1", Some(0), 1), secs(1));
        let pods = start(&mut s, secs(20), &mut n);
        assert_eq!(
            pods.iter().map(|p| p.1).collect::<Vec<_>>(),
            [Some(0), Some(3)]
        );
        assert_eq!(s.completed_indexes(), "1");
        for (p, i) in [("p3", 2), ("p4", 0), ("p5", 3)] {
            s.pod_finished(&exit(p, Some(i), 0), secs(21));
        }
        assert_eq!(s.completed_indexes(), "0-3");
        let pods = start(&mut s, secs(21), &mut n);
        assert_eq!(pods, [("p6".to_string(), Some(4))]);
        s.pod_finished(&exit("p6", Some(4), 0), secs(22));
        assert!(s.finish.as_ref().is_some_and(|f| f.complete));
        let status = s.status(jiff::Timestamp::UNIX_EPOCH, secs(22));
        assert_eq!(status.completed_indexes.as_deref(), Some("0-4"));
        assert_eq!(status.succeeded, Some(5));
        assert_eq!(status.failed, Some(1));
        let types: Vec<_> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    }

    #[test]
    fn backoff_limit_per_index_and_max_failed_indexes() {
        let cfg = JobConfig {
            completions: Some(3),
            parallelism: 3,
            indexed: true,
            backoff_limit: u32::MAX,
            backoff_limit_per_index: Some(1),
            pod_backoff: Duration::ZERO,
            ..config()
        };
        // Index 1 fails twice: failed for good; the others succeed.
        let mut s = JobState::new(cfg.clone());
        let mut n = 0;
        start(&mut s, secs(0), &mut n);
        assert_eq!(
            s.pod_finished(&exit("p2", Some(1), 1), secs(1)),
            Verdict::Counted
        );
        let again = start(&mut s, secs(1), &mut n);
        assert_eq!(again, [("p4".to_string(), Some(1))]);
        assert_eq!(
            s.pod_finished(&exit("p4", Some(1), 1), secs(2)),
            Verdict::IndexFailed
        );
        assert!(
            start(&mut s, secs(2), &mut n).is_empty(),
            "a failed index is not retried"
        );
        s.pod_finished(&exit("p1", Some(0), 0), secs(3));
        assert!(s.finish.is_none());
        s.pod_finished(&exit("p3", Some(2), 0), secs(3));
        let f = s.finish.clone().expect("done");
        assert_eq!((f.complete, f.reason.as_str()), (false, "FailedIndexes"));
        assert_eq!(
            s.status(jiff::Timestamp::UNIX_EPOCH, secs(3))
                .failed_indexes
                .as_deref(),
            Some("1")
        );

        // maxFailedIndexes 0: the first failed index fails the Job.
        let mut s = JobState::new(JobConfig {
            max_failed_indexes: Some(0),
            backoff_limit_per_index: Some(0),
            ..cfg
        });
        start(&mut s, secs(0), &mut n);
        assert_eq!(
            s.pod_finished(&exit("p5", Some(0), 1), secs(1)),
            Verdict::JobFailed
        );
        assert!(s.reconcile(secs(1)).terminate_active);
        assert_eq!(s.finish.expect("failed").reason, "MaxFailedIndexesExceeded");
    }

    fn rules(list: &[(RuleAction, Matcher)]) -> Vec<Rule> {
        list.iter()
            .map(|(action, matcher)| Rule {
                action: *action,
                matcher: matcher.clone(),
            })
            .collect()
    }

    fn codes(container: Option<&str>, not_in: bool, values: &[i32]) -> Matcher {
        Matcher::ExitCodes {
            container: container.map(String::from),
            not_in,
            values: values.to_vec(),
        }
    }

    #[test]
    fn rule_matching_takes_the_first_match_in_order() {
        let disruption = Matcher::Conditions(vec![("DisruptionTarget".into(), "True".into())]);
        type Case = (Vec<Rule>, PodResult, Option<(usize, RuleAction)>);
        let table: Vec<Case> = vec![
            (
                rules(&[(RuleAction::FailJob, codes(Some("main"), false, &[42]))]),
                exit("a", None, 42),
                Some((0, RuleAction::FailJob)),
            ),
            (
                rules(&[(RuleAction::FailJob, codes(Some("other"), false, &[42]))]),
                exit("a", None, 42),
                None,
            ),
            (
                rules(&[(RuleAction::FailJob, codes(None, true, &[1, 2]))]),
                exit("a", None, 3),
                Some((0, RuleAction::FailJob)),
            ),
            (
                rules(&[(RuleAction::FailJob, codes(None, true, &[1, 2]))]),
                exit("a", None, 2),
                None,
            ),
            (
                rules(&[
                    (RuleAction::Ignore, codes(None, false, &[1])),
                    (RuleAction::FailJob, codes(None, false, &[1])),
                ]),
                exit("a", None, 1),
                Some((0, RuleAction::Ignore)),
            ),
            (
                rules(&[
                    (RuleAction::Count, codes(None, false, &[5])),
                    (RuleAction::Ignore, disruption.clone()),
                ]),
                PodResult {
                    conditions: vec![("DisruptionTarget".into(), "True".into())],
                    ..exit("a", None, 143)
                },
                Some((1, RuleAction::Ignore)),
            ),
            (
                rules(&[(RuleAction::Ignore, disruption)]),
                exit("a", None, 143),
                None,
            ),
        ];
        for (i, (rules, pod, want)) in table.into_iter().enumerate() {
            let s = JobState::new(JobConfig { rules, ..config() });
            let got = s.match_rule(&pod).map(|(i, a, _)| (i, a));
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn exit_code_zero_never_matches_and_init_containers_come_last() {
        let s = JobState::new(JobConfig {
            rules: rules(&[(RuleAction::FailJob, codes(None, true, &[7]))]),
            ..config()
        });
        let pod = PodResult {
            pod: "a".into(),
            index: None,
            succeeded: false,
            containers: vec![
                ContainerExit {
                    name: "init".into(),
                    exit_code: 3,
                    init: true,
                },
                ContainerExit {
                    name: "main".into(),
                    exit_code: 0,
                    init: false,
                },
                ContainerExit {
                    name: "side".into(),
                    exit_code: 9,
                    init: false,
                },
            ],
            conditions: vec![],
        };
        let (_, _, msg) = s.match_rule(&pod).expect("matches");
        assert_eq!(
            msg,
            "Container side for pod default/a failed with exit code 9 matching FailJob rule at index 0"
        );
    }

    #[test]
    fn fail_job_rule_fails_at_once_with_kubernetes_message() {
        let mut s = JobState::new(JobConfig {
            completions: Some(8),
            parallelism: 2,
            rules: rules(&[(RuleAction::FailJob, codes(Some("main"), false, &[42]))]),
            ..config()
        });
        let mut n = 0;
        start(&mut s, secs(0), &mut n);
        assert_eq!(
            s.pod_finished(&exit("p1", None, 42), secs(30)),
            Verdict::JobFailed
        );
        let r = s.reconcile(secs(30));
        assert!(r.terminate_active && r.create.is_empty());
        let f = s.finish.clone().expect("failed");
        assert_eq!(f.reason, "PodFailurePolicy");
        assert_eq!(
            f.message,
            "Container main for pod default/p1 failed with exit code 42 matching FailJob rule at index 0"
        );
        assert_eq!(
            s.pod_finished(&exit("p2", None, 143), secs(31)),
            Verdict::AfterFinish
        );
        let status = s.status(jiff::Timestamp::UNIX_EPOCH, secs(31));
        assert_eq!(status.failed, Some(2));
        let types: Vec<_> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["FailureTarget", "Failed"]);
    }

    #[test]
    fn ignored_disruption_does_not_count() {
        let mut s = JobState::new(JobConfig {
            backoff_limit: 0,
            rules: rules(&[(
                RuleAction::Ignore,
                Matcher::Conditions(vec![("DisruptionTarget".into(), "True".into())]),
            )]),
            ..config()
        });
        let mut n = 0;
        start(&mut s, secs(0), &mut n);
        let evicted = PodResult {
            conditions: vec![("DisruptionTarget".into(), "True".into())],
            ..exit("p1", None, 143)
        };
        assert_eq!(
            s.pod_finished(&evicted, secs(1)),
            Verdict::Ignored { rule: 0 }
        );
        assert_eq!(s.failed, 0);
        let again = start(&mut s, secs(1), &mut n);
        assert_eq!(again.len(), 1, "replaced at once, no back-off");
        s.pod_finished(&exit("p2", None, 0), secs(2));
        assert!(s.finish.expect("done").complete);
    }

    #[test]
    fn deadline_fails_the_job() {
        let mut s = JobState::new(JobConfig {
            active_deadline: Some(secs(5)),
            ..config()
        });
        let mut n = 0;
        start(&mut s, secs(0), &mut n);
        assert_eq!(s.reconcile(secs(1)).wake_at, Some(secs(5)));
        let r = s.reconcile(secs(5));
        assert!(r.terminate_active);
        let f = s.finish.expect("failed");
        assert_eq!(
            (f.reason.as_str(), f.message.as_str()),
            (
                "DeadlineExceeded",
                "Job was active longer than specified deadline"
            )
        );
    }

    #[test]
    fn on_failure_restarts_count_toward_the_limit() {
        let mut s = JobState::new(JobConfig {
            backoff_limit: 2,
            restart_on_failure: true,
            ..config()
        });
        assert!(s.container_restarting(secs(1)));
        assert!(s.container_restarting(secs(2)));
        assert!(!s.container_restarting(secs(3)));
        assert_eq!(s.finish.expect("failed").reason, "BackoffLimitExceeded");
    }

    #[test]
    fn ranges_format_like_kubernetes() {
        let set: BTreeSet<u32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_ranges(&set), "0-2,4,6-7");
        assert_eq!(format_ranges(&BTreeSet::new()), "");
    }

    #[test]
    fn defaults_from_spec() {
        let spec: JobSpec = serde_saphyr::from_str(
            "template:\n  spec:\n    restartPolicy: OnFailure\n    containers: [{name: c}]\n",
        )
        .expect("parses");
        let c = JobConfig::from_spec("j", "default", &spec, DEFAULT_POD_BACKOFF);
        assert_eq!(
            (
                c.completions,
                c.parallelism,
                c.backoff_limit,
                c.restart_on_failure
            ),
            (None, 1, 6, true)
        );
    }
}
