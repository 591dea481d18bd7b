//! A Job's settings as the controller reads them: the Job spec with the API
//! server's defaults applied.

use std::time::Duration;

use k8s_openapi::api::batch::v1::JobSpec;

use super::failure_policy::{Matcher, Rule, RuleAction};
use super::success_policy::{self, SuccessRule};

/// The Job controller's default `backoffLimit`.
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;
/// The Job controller's default pod back-off base (`DefaultJobPodFailureBackOff`).
pub const DEFAULT_POD_BACKOFF: Duration = Duration::from_secs(10);
/// The pod back-off's cap as a multiple of its base: 60 × 10 s is the
/// controller's `MaxJobPodFailureBackOff` of 10 minutes.
pub const MAX_POD_BACKOFF_FACTOR: u32 = 60;

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
    /// `spec.successPolicy.rules` (Indexed Jobs).
    pub success_rules: Vec<SuccessRule>,
    /// `podReplacementPolicy: TerminatingOrFailed` (the default without a pod
    /// failure policy): a terminating pod is replaced at once; `Failed` (the
    /// default with one) waits until it has ended.
    pub replace_terminating: bool,
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
        let replace_terminating = match spec.pod_replacement_policy.as_deref() {
            Some("Failed") => false,
            Some(_) => true,
            None => spec.pod_failure_policy.is_none(),
        };
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
            success_rules: success_policy::rules(spec.success_policy.as_ref()),
            replace_terminating,
        }
    }
}
