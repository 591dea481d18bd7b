//! `validateJobSpec`'s rules, in `validation.go`'s order, shared by Jobs and
//! CronJobs' job templates (the pod failure and success policies' rules are
//! in `policies`).

use k8s_openapi::api::batch::v1::JobSpec;

use super::{Problem, Rule, nonnegative};

const MAX_PARALLELISM_INDEXED: i32 = 100_000;
const MAX_FAILED_INDEXES: i32 = 100_000;
const COMPLETIONS_SOFT_LIMIT: i32 = 100_000;
const HIGH_COMPLETIONS_LIMIT: i32 = 10_000;
pub(super) const MAX_POD_FAILURE_POLICY_RULES: usize = 20;
const MAX_MANAGED_BY: usize = 63;

pub(super) fn indexed(s: &JobSpec) -> bool {
    s.completion_mode.as_deref() == Some("Indexed")
}

fn non_indexed(s: &JobSpec) -> bool {
    matches!(s.completion_mode.as_deref(), None | Some("NonIndexed"))
}

pub(super) fn int(v: i32) -> Option<String> {
    Some(v.to_string())
}

/// `validateJobSpec`, rule by rule.
pub const JOB_SPEC_RULES: &[Rule] = &[
    Rule {
        id: "parallelism.nonnegative",
        source: "validateJobSpec",
        check: |c| nonnegative(c.at("parallelism"), c.spec.parallelism.map(i64::from)),
    },
    Rule {
        id: "completions.nonnegative",
        source: "validateJobSpec",
        check: |c| nonnegative(c.at("completions"), c.spec.completions.map(i64::from)),
    },
    Rule {
        id: "activeDeadlineSeconds.nonnegative",
        source: "validateJobSpec",
        check: |c| {
            nonnegative(
                c.at("activeDeadlineSeconds"),
                c.spec.active_deadline_seconds,
            )
        },
    },
    Rule {
        id: "backoffLimit.nonnegative",
        source: "validateJobSpec",
        check: |c| nonnegative(c.at("backoffLimit"), c.spec.backoff_limit.map(i64::from)),
    },
    Rule {
        id: "ttlSecondsAfterFinished.nonnegative",
        source: "validateJobSpec",
        check: |c| {
            nonnegative(
                c.at("ttlSecondsAfterFinished"),
                c.spec.ttl_seconds_after_finished.map(i64::from),
            )
        },
    },
    Rule {
        id: "backoffLimitPerIndex.nonnegative",
        source: "validateJobSpec",
        check: |c| {
            nonnegative(
                c.at("backoffLimitPerIndex"),
                c.spec.backoff_limit_per_index.map(i64::from),
            )
        },
    },
    Rule {
        id: "maxFailedIndexes.nonnegative",
        source: "validateJobSpec",
        check: |c| {
            nonnegative(
                c.at("maxFailedIndexes"),
                c.spec.max_failed_indexes.map(i64::from),
            )
        },
    },
    Rule {
        id: "maxFailedIndexes.needsBackoffLimitPerIndex",
        source: "validateJobSpec",
        check: |c| match (c.spec.max_failed_indexes, c.spec.backoff_limit_per_index) {
            (Some(_), None) => vec![Problem::Required(
                c.at("backoffLimitPerIndex"),
                "when maxFailedIndexes is specified".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "managedBy.domainPrefixedPath",
        source: "validateJobSpec (IsDomainPrefixedPath)",
        check: |c| {
            let Some(m) = c.spec.managed_by.as_deref() else {
                return Vec::new();
            };
            match m.split_once('/') {
                Some((host, path)) if !host.is_empty() && !path.is_empty() => {
                    if super::is_dns_subdomain(host) {
                        Vec::new()
                    } else {
                        vec![Problem::Invalid(
                            c.at("managedBy"),
                            Some(format!("{host:?}")),
                            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into(),
                        )]
                    }
                }
                _ => vec![Problem::Invalid(
                    c.at("managedBy"),
                    Some(format!("{m:?}")),
                    "must be a domain-prefixed path (such as \"acme.io/foo\")".into(),
                )],
            }
        },
    },
    Rule {
        id: "managedBy.maxLength",
        source: "validateJobSpec",
        check: |c| match c.spec.managed_by.as_deref() {
            Some(m) if m.len() > MAX_MANAGED_BY => {
                vec![Problem::TooLong(c.at("managedBy"), MAX_MANAGED_BY)]
            }
            _ => Vec::new(),
        },
    },
    Rule {
        id: "completionMode.supported",
        source: "validateJobSpec",
        check: |c| match c.spec.completion_mode.as_deref() {
            None | Some("NonIndexed" | "Indexed") => Vec::new(),
            Some(other) => vec![Problem::NotSupported(
                c.at("completionMode"),
                format!("{other:?}"),
                &["NonIndexed", "Indexed"],
            )],
        },
    },
    Rule {
        id: "completions.requiredWhenIndexed",
        source: "validateJobSpec",
        check: |c| match (indexed(c.spec), c.spec.completions) {
            (true, None) => vec![Problem::Required(
                c.at("completions"),
                "when completion mode is Indexed".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "parallelism.maxWhenIndexed",
        source: "validateJobSpec",
        check: |c| match c.spec.parallelism {
            Some(p) if indexed(c.spec) && p > MAX_PARALLELISM_INDEXED => vec![Problem::Invalid(
                c.at("parallelism"),
                int(p),
                format!(
                    "must be less than or equal to {MAX_PARALLELISM_INDEXED} when completion mode is Indexed"
                ),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "maxFailedIndexes.atMostCompletions",
        source: "validateJobSpec",
        check: |c| match (c.spec.max_failed_indexes, c.spec.completions) {
            (Some(m), Some(n)) if indexed(c.spec) && m > n => vec![Problem::Invalid(
                c.at("maxFailedIndexes"),
                int(m),
                "must be less than or equal to completions".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "maxFailedIndexes.max",
        source: "validateJobSpec",
        check: |c| match c.spec.max_failed_indexes {
            Some(m) if indexed(c.spec) && m > MAX_FAILED_INDEXES => vec![Problem::Invalid(
                c.at("maxFailedIndexes"),
                int(m),
                format!("must be less than or equal to {MAX_FAILED_INDEXES}"),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "highCompletions.backoffLimitPerIndex",
        source: "validateJobSpec",
        check: |c| {
            let s = c.spec;
            let high = indexed(s)
                && s.completions.is_some_and(|n| n > COMPLETIONS_SOFT_LIMIT)
                && s.backoff_limit_per_index.is_some();
            if !high {
                return Vec::new();
            }
            let why = format!(
                "when completions are above {COMPLETIONS_SOFT_LIMIT} and used with backoff limit per index"
            );
            let mut out = Vec::new();
            if s.max_failed_indexes.is_none() {
                out.push(Problem::Required(
                    c.at("maxFailedIndexes"),
                    format!("must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}"),
                ));
            }
            if let Some(p) = s.parallelism.filter(|p| *p > HIGH_COMPLETIONS_LIMIT) {
                out.push(Problem::Invalid(
                    c.at("parallelism"),
                    int(p),
                    format!("must be less than or equal to {HIGH_COMPLETIONS_LIMIT} {why}"),
                ));
            }
            if let Some(m) = s.max_failed_indexes.filter(|m| *m > HIGH_COMPLETIONS_LIMIT) {
                out.push(Problem::Invalid(
                    c.at("maxFailedIndexes"),
                    int(m),
                    format!("must be less than or equal to {HIGH_COMPLETIONS_LIMIT} {why}"),
                ));
            }
            out
        },
    },
    Rule {
        id: "perIndexFields.requireIndexed",
        source: "validateJobSpec",
        check: |c| {
            if !non_indexed(c.spec) {
                return Vec::new();
            }
            [
                ("backoffLimitPerIndex", c.spec.backoff_limit_per_index),
                ("maxFailedIndexes", c.spec.max_failed_indexes),
            ]
            .into_iter()
            .filter_map(|(f, v)| {
                v.map(|v| {
                    Problem::Invalid(c.at(f), int(v), "requires indexed completion mode".into())
                })
            })
            .collect()
        },
    },
    Rule {
        id: "podReplacementPolicy.supported",
        source: "validatePodReplacementPolicy",
        check: |c| {
            let Some(v) = c.spec.pod_replacement_policy.as_deref() else {
                return Vec::new();
            };
            let path = c.at("podReplacementPolicy");
            if c.spec.pod_failure_policy.is_some() {
                if v != "Failed" {
                    return vec![Problem::NotSupported(path, format!("{v:?}"), &["Failed"])];
                }
            } else if !matches!(v, "Failed" | "TerminatingOrFailed") {
                return vec![Problem::NotSupported(
                    path,
                    format!("{v:?}"),
                    &["Failed", "TerminatingOrFailed"],
                )];
            }
            Vec::new()
        },
    },
    Rule {
        id: "template.spec.restartPolicy",
        source: "validateJobSpec",
        check: |c| {
            let restart = c
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|p| p.restart_policy.as_deref());
            let path = c.at("template.spec.restartPolicy");
            match restart {
                None | Some("" | "Always") => vec![Problem::Required(
                    path,
                    "valid values: \"OnFailure\", \"Never\"".into(),
                )],
                Some("Never") => Vec::new(),
                Some("OnFailure") if c.spec.pod_failure_policy.is_some() => {
                    vec![Problem::Invalid(
                        path,
                        Some("\"OnFailure\"".into()),
                        "only \"Never\" is supported when podFailurePolicy is specified".into(),
                    )]
                }
                Some("OnFailure") => Vec::new(),
                Some(other) => vec![Problem::NotSupported(
                    path,
                    format!("{other:?}"),
                    &["OnFailure", "Never"],
                )],
            }
        },
    },
];
