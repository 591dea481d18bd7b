//! What the API server (and the local runner) would refuse in a Job or
//! CronJob, as a table mirroring `pkg/apis/batch/validation/validation.go`
//! rule by rule: each [`Rule`] names the field it checks, where it comes
//! from, and writes Kubernetes' own message (`Required value`, `Invalid
//! value`, `Unsupported value`, `Duplicate value`, `Too many`, `Too long`).
//!
//! # Layout
//!
//! - this module: the table's types, [`job`] and [`cron_job`], the Job,
//!   job-template and CronJob rules ([`JOB_RULES`], [`TEMPLATE_RULES`],
//!   [`CRON_JOB_RULES`]).
//! - `job_spec`: `validateJobSpec`'s rules ([`JOB_SPEC_RULES`]), shared by
//!   Jobs and CronJobs' job templates.
//! - `policies`: the pod failure and success policies' rules
//!   ([`POLICY_RULES`]).
//! - `local`: the pod template's few `ValidatePodSpec` rules the runner
//!   checks ([`POD_SPEC_RULES`]) and what `--local` cannot do
//!   ([`LOCAL_RULES`]).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

mod job_spec;
mod local;
mod policies;

pub use job_spec::JOB_SPEC_RULES;
pub use local::{LOCAL_RULES, POD_SPEC_RULES};
pub use policies::POLICY_RULES;

/// Label and annotation keys the Job controller sets.
pub mod keys {
    /// The completion-index annotation (and label) of an Indexed Job's pods.
    pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
    /// The job-name label (legacy and prefixed forms).
    pub const JOB_NAME: &str = "job-name";
    /// The prefixed job-name label.
    pub const BATCH_JOB_NAME: &str = "batch.kubernetes.io/job-name";
    /// The controller-uid label (legacy form).
    pub const CONTROLLER_UID: &str = "controller-uid";
    /// The prefixed controller-uid label.
    pub const BATCH_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
}

/// The `managedBy` value of Jobs the built-in Job controller runs.
pub const JOB_CONTROLLER: &str = "kubernetes.io/job-controller";

/// What is being validated, for a rule.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The Job's metadata (a Job), or the CronJob's (a CronJob).
    pub meta: &'a ObjectMeta,
    /// The Job spec: the Job's, or the CronJob's `jobTemplate.spec`.
    pub spec: &'a JobSpec,
    /// The CronJob, when validating one.
    pub cron: Option<&'a CronJob>,
    /// Where `spec` is: `spec` or `spec.jobTemplate.spec`.
    pub prefix: &'a str,
}

impl Ctx<'_> {
    /// `field` under the Job spec's path.
    pub fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }
}

/// One problem, as the API server's `field.Error` renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `Invalid value: VALUE: DETAIL` (the value left out when `None`).
    Invalid(String, Option<String>, String),
    /// `Required value[: DETAIL]`.
    Required(String, String),
    /// `Unsupported value: VALUE: supported values: "A", "B"`.
    NotSupported(String, String, &'static [&'static str]),
    /// `Duplicate value: VALUE`.
    Duplicate(String, String),
    /// `Too many: N: must have at most MAX items`.
    TooMany(String, usize, usize),
    /// `Too long: may not be more than MAX bytes`.
    TooLong(String, usize),
    /// `Not found: VALUE`.
    NotFound(String, String),
    /// The runner's own refusal (not the API server's), in plain words.
    Local(String, String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Invalid(p, Some(v), d) => write!(f, "{p}: Invalid value: {v}: {d}"),
            Problem::Invalid(p, None, d) => write!(f, "{p}: Invalid value: {d}"),
            Problem::Required(p, d) if d.is_empty() => write!(f, "{p}: Required value"),
            Problem::Required(p, d) => write!(f, "{p}: Required value: {d}"),
            Problem::NotSupported(p, v, ok) => {
                let ok: Vec<String> = ok.iter().map(|s| format!("{s:?}")).collect();
                write!(
                    f,
                    "{p}: Unsupported value: {v}: supported values: {}",
                    ok.join(", ")
                )
            }
            Problem::Duplicate(p, v) => write!(f, "{p}: Duplicate value: {v}"),
            Problem::TooMany(p, n, max) => {
                write!(f, "{p}: Too many: {n}: must have at most {max} items")
            }
            Problem::TooLong(p, max) => {
                write!(f, "{p}: Too long: may not be more than {max} bytes")
            }
            Problem::NotFound(p, v) => write!(f, "{p}: Not found: {v}"),
            Problem::Local(p, d) => write!(f, "{p}: {d}"),
        }
    }
}

/// One rule of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// A unique name: the field and what is checked.
    pub id: &'static str,
    /// The function of `validation.go` (or core validation) it mirrors;
    /// `local` for the runner's own refusals.
    pub source: &'static str,
    /// The check: every problem it finds.
    pub check: fn(&Ctx<'_>) -> Vec<Problem>,
}

/// A `ValidateNonnegativeField` check of an optional number.
pub(crate) fn nonnegative(path: String, value: Option<i64>) -> Vec<Problem> {
    match value {
        Some(v) if v < 0 => vec![Problem::Invalid(
            path,
            Some(v.to_string()),
            "must be greater than or equal to 0".into(),
        )],
        _ => Vec::new(),
    }
}

/// Whether `s` is a DNS-1123 label (`IsDNS1123Label`).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `s` is a DNS-1123 subdomain (`IsDNS1123Subdomain`).
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_name(path: &str, name: &str) -> Vec<Problem> {
    if is_dns_subdomain(name) {
        return Vec::new();
    }
    vec![Problem::Invalid(
        path.into(),
        Some(format!("{name:?}")),
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into(),
    )]
}

/// Whether `selector` selects `labels` (`LabelSelectorAsSelector` then
/// `Matches`): every matchLabel and matchExpression holds.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expr
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The uid the API server would give; unknown before creation.
const UID: &str = "<uid>";

/// The template's labels and the selector after the API server's defaulting
/// (`generateSelector` unless `manualSelector`).
fn defaulted(ctx: &Ctx<'_>) -> (BTreeMap<String, String>, Option<LabelSelector>) {
    let mut labels = ctx
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut selector = ctx.spec.selector.clone();
    if ctx.spec.manual_selector != Some(true) {
        let name = ctx.meta.name.clone().unwrap_or_default();
        for (k, v) in [
            (keys::JOB_NAME, name.as_str()),
            (keys::BATCH_JOB_NAME, name.as_str()),
            (keys::CONTROLLER_UID, UID),
            (keys::BATCH_CONTROLLER_UID, UID),
        ] {
            labels.entry(k.into()).or_insert_with(|| v.into());
        }
        let s = selector.get_or_insert_with(LabelSelector::default);
        s.match_labels
            .get_or_insert_with(BTreeMap::new)
            .entry(keys::BATCH_CONTROLLER_UID.into())
            .or_insert_with(|| UID.into());
    }
    (labels, selector)
}

/// `ValidateJob`'s own rules (beyond the spec's): the name, the generated
/// selector, the selector against the template's labels, and the Indexed
/// pods' hostnames.
pub const JOB_RULES: &[Rule] = &[
    Rule {
        id: "metadata.name.required",
        source: "ValidateObjectMeta",
        check: |c| match (&c.meta.name, &c.meta.generate_name) {
            (None, None) => vec![Problem::Required(
                "metadata.name".into(),
                "name or generateName is required".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "metadata.name.dnsSubdomain",
        source: "ValidateObjectMeta (ValidateReplicationControllerName)",
        check: |c| match (&c.meta.name, &c.meta.generate_name) {
            (Some(name), _) => check_name("metadata.name", name),
            (None, Some(prefix)) => check_name("metadata.generateName", &format!("{prefix}x")),
            (None, None) => Vec::new(),
        },
    },
    Rule {
        id: "metadata.name.indexedHostname",
        source: "ValidateJob",
        check: |c| {
            let (Some(name), Some("Indexed"), Some(n)) = (
                &c.meta.name,
                c.spec.completion_mode.as_deref(),
                c.spec.completions,
            ) else {
                return Vec::new();
            };
            let host = format!("{name}-{}", i64::from(n) - 1);
            if n <= 0 || is_dns_label(&host) {
                return Vec::new();
            }
            vec![Problem::Invalid(
                "metadata.name".into(),
                Some(format!("{name:?}")),
                format!("will not able to create pod with invalid DNS label: {host}"),
            )]
        },
    },
    Rule {
        id: "selector.required",
        source: "ValidateJobSpec",
        check: |c| {
            let (_, selector) = defaulted(c);
            match selector {
                None => vec![Problem::Required(c.at("selector"), String::new())],
                Some(_) => Vec::new(),
            }
        },
    },
    Rule {
        id: "selector.notAutoGenerated",
        source: "validateGeneratedSelector",
        check: |c| {
            if c.spec.manual_selector == Some(true) {
                return Vec::new();
            }
            let (_, Some(selector)) = defaulted(c) else {
                return Vec::new();
            };
            let name = c.meta.name.clone().unwrap_or_default();
            let expected: BTreeMap<String, String> = [
                (keys::CONTROLLER_UID, UID),
                (keys::JOB_NAME, name.as_str()),
                (keys::BATCH_CONTROLLER_UID, UID),
                (keys::BATCH_JOB_NAME, name.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            if selector_matches(&selector, &expected) {
                return Vec::new();
            }
            vec![Problem::Invalid(
                "spec.selector".into(),
                Some(json(&selector)),
                "`selector` not auto-generated".into(),
            )]
        },
    },
    Rule {
        id: "selector.matchesTemplateLabels",
        source: "ValidateJobSpec",
        check: |c| {
            let (labels, Some(selector)) = defaulted(c) else {
                return Vec::new();
            };
            if selector_matches(&selector, &labels) {
                return Vec::new();
            }
            vec![Problem::Invalid(
                c.at("template.metadata.labels"),
                Some(json(&labels)),
                "`selector` does not match template `labels`".into(),
            )]
        },
    },
];

/// `ValidateJobTemplateSpec`'s own rules: a CronJob's Jobs always get a
/// generated selector.
pub const TEMPLATE_RULES: &[Rule] = &[
    Rule {
        id: "jobTemplate.spec.selector.autoGenerated",
        source: "ValidateJobTemplateSpec",
        check: |c| match &c.spec.selector {
            Some(s) => vec![Problem::Invalid(
                c.at("selector"),
                Some(json(s)),
                "`selector` will be auto-generated".into(),
            )],
            None => Vec::new(),
        },
    },
    Rule {
        id: "jobTemplate.spec.manualSelector.unsupported",
        source: "ValidateJobTemplateSpec",
        check: |c| match c.spec.manual_selector {
            Some(true) => vec![Problem::NotSupported(
                c.at("manualSelector"),
                "true".into(),
                &["nil", "false"],
            )],
            _ => Vec::new(),
        },
    },
];

fn cron_spec<'a>(c: &Ctx<'a>) -> Option<&'a k8s_openapi::api::batch::v1::CronJobSpec> {
    c.cron.and_then(|cj| cj.spec.as_ref())
}

/// `ValidateCronJobCreate` and `validateCronJobSpec`.
pub const CRON_JOB_RULES: &[Rule] = &[
    Rule {
        id: "cron.metadata.name",
        source: "ValidateObjectMeta (ValidateReplicationControllerName)",
        check: |c| match &c.meta.name {
            Some(name) => check_name("metadata.name", name),
            None => vec![Problem::Required("metadata.name".into(), String::new())],
        },
    },
    Rule {
        id: "cron.metadata.name.maxLength52",
        source: "ValidateCronJobCreate",
        check: |c| match &c.meta.name {
            Some(name) if name.len() > 52 => vec![Problem::Invalid(
                "metadata.name".into(),
                Some(format!("{name:?}")),
                "must be no more than 52 characters".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "cron.schedule",
        source: "validateCronJobSpec (validateScheduleFormat)",
        check: |c| match cron_spec(c) {
            Some(s) if s.schedule.is_empty() => {
                vec![Problem::Required("spec.schedule".into(), String::new())]
            }
            Some(s) => match crate::cron::Schedule::parse(&s.schedule, Some("UTC")) {
                Ok(_) => Vec::new(),
                Err(e) => vec![Problem::Local(
                    "spec.schedule".into(),
                    e.trim_start_matches("spec.schedule: ").to_string(),
                )],
            },
            None => Vec::new(),
        },
    },
    Rule {
        id: "cron.timeZone",
        source: "validateTimeZone",
        check: |c| {
            let Some(tz) = cron_spec(c).and_then(|s| s.time_zone.as_deref()) else {
                return Vec::new();
            };
            let detail = if tz.is_empty() {
                "timeZone must be nil or non-empty string".to_string()
            } else if tz.eq_ignore_ascii_case("Local") {
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                    .to_string()
            } else if jiff::tz::TimeZone::get(tz).is_err() {
                format!("unknown time zone {tz}")
            } else {
                return Vec::new();
            };
            vec![Problem::Invalid(
                "spec.timeZone".into(),
                Some(format!("{tz:?}")),
                detail,
            )]
        },
    },
    Rule {
        id: "cron.startingDeadlineSeconds.nonnegative",
        source: "validateCronJobSpec",
        check: |c| {
            nonnegative(
                "spec.startingDeadlineSeconds".into(),
                cron_spec(c).and_then(|s| s.starting_deadline_seconds),
            )
        },
    },
    Rule {
        id: "cron.concurrencyPolicy",
        source: "validateConcurrencyPolicy",
        check: |c| match cron_spec(c).and_then(|s| s.concurrency_policy.as_deref()) {
            // batch/v1 defaults an empty policy to Allow (SetDefaults_CronJob).
            None | Some("" | "Allow" | "Forbid" | "Replace") => Vec::new(),
            Some(other) => vec![Problem::NotSupported(
                "spec.concurrencyPolicy".into(),
                format!("{other:?}"),
                &["Allow", "Forbid", "Replace"],
            )],
        },
    },
    Rule {
        id: "cron.successfulJobsHistoryLimit.nonnegative",
        source: "validateCronJobSpec",
        check: |c| {
            nonnegative(
                "spec.successfulJobsHistoryLimit".into(),
                cron_spec(c)
                    .and_then(|s| s.successful_jobs_history_limit)
                    .map(i64::from),
            )
        },
    },
    Rule {
        id: "cron.failedJobsHistoryLimit.nonnegative",
        source: "validateCronJobSpec",
        check: |c| {
            nonnegative(
                "spec.failedJobsHistoryLimit".into(),
                cron_spec(c)
                    .and_then(|s| s.failed_jobs_history_limit)
                    .map(i64::from),
            )
        },
    },
];

fn run(rules: &[&[Rule]], ctx: &Ctx<'_>) -> Vec<String> {
    rules
        .iter()
        .flat_map(|t| t.iter())
        .flat_map(|r| (r.check)(ctx))
        .map(|p| p.to_string())
        .collect()
}

/// Checks a Job; an empty list means it can run. Each line starts with the
/// field's path, in the API server's words.
pub fn job(job: &Job) -> Vec<String> {
    let Some(spec) = &job.spec else {
        let mut out = run(&[&JOB_RULES[..2]], &ctx(&job.metadata, &JobSpec::default()));
        out.push("spec: Required value".into());
        return out;
    };
    run(
        &[
            JOB_RULES,
            JOB_SPEC_RULES,
            POLICY_RULES,
            POD_SPEC_RULES,
            LOCAL_RULES,
        ],
        &ctx(&job.metadata, spec),
    )
}

fn ctx<'a>(meta: &'a ObjectMeta, spec: &'a JobSpec) -> Ctx<'a> {
    Ctx {
        meta,
        spec,
        cron: None,
        prefix: "spec",
    }
}

/// Checks a CronJob; an empty list means it can run.
pub fn cron_job(cron: &CronJob) -> Vec<String> {
    let empty = JobSpec::default();
    let Some(spec) = &cron.spec else {
        let c = Ctx {
            cron: Some(cron),
            ..ctx(&cron.metadata, &empty)
        };
        let mut out = run(&[&CRON_JOB_RULES[..2]], &c);
        out.push("spec: Required value".into());
        return out;
    };
    let job_spec = spec.job_template.spec.as_ref();
    let c = Ctx {
        meta: &cron.metadata,
        spec: job_spec.unwrap_or(&empty),
        cron: Some(cron),
        prefix: "spec.jobTemplate.spec",
    };
    if job_spec.is_none() {
        let mut out = run(&[CRON_JOB_RULES], &c);
        out.push("spec.jobTemplate.spec: Required value".into());
        return out;
    }
    run(
        &[
            CRON_JOB_RULES,
            TEMPLATE_RULES,
            JOB_SPEC_RULES,
            POLICY_RULES,
            POD_SPEC_RULES,
            LOCAL_RULES,
        ],
        &c,
    )
}

/// Every rule of the table, for listing and tests.
pub fn all_rules() -> impl Iterator<Item = &'static Rule> {
    [
        JOB_RULES,
        TEMPLATE_RULES,
        CRON_JOB_RULES,
        JOB_SPEC_RULES,
        POLICY_RULES,
        POD_SPEC_RULES,
        LOCAL_RULES,
    ]
    .into_iter()
    .flatten()
}

/// Field paths of pod fields the runner can give to a container through the
/// downward API (`env[].valueFrom.fieldRef`, `downwardAPI` volumes).
pub fn supported_field_path(path: &str) -> bool {
    matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "metadata.labels"
            | "metadata.annotations"
            | "spec.nodeName"
            | "spec.serviceAccountName"
            | "status.podIP"
            | "status.hostIP"
            | "status.podIPs"
    ) || (path.starts_with("metadata.labels['") && path.ends_with("']"))
        || (path.starts_with("metadata.annotations['") && path.ends_with("']"))
}

#[cfg(test)]
mod tests;
