//! `validatePodFailurePolicy` and `validateSuccessPolicy`, rule by rule.

use super::job_spec::{MAX_POD_FAILURE_POLICY_RULES, indexed, int};
use super::{Ctx, Problem, Rule, nonnegative};

const MAX_EXIT_CODE_VALUES: usize = 255;
const MAX_POD_CONDITION_PATTERNS: usize = 20;
const MAX_SUCCEEDED_INDEXES: usize = 64 * 1024;
const MAX_SUCCESS_POLICY_RULES: usize = 20;

/// Each pod failure policy rule with its path.
fn pfp_rules<'a>(
    c: &'a Ctx<'a>,
) -> impl Iterator<
    Item = (
        String,
        &'a k8s_openapi::api::batch::v1::PodFailurePolicyRule,
    ),
> {
    c.spec
        .pod_failure_policy
        .iter()
        .flat_map(|p| p.rules.iter().enumerate())
        .map(|(i, r)| (c.at(&format!("podFailurePolicy.rules[{i}]")), r))
}

/// Each success policy rule with its path, when Indexed with completions.
fn sp_rules<'a>(
    c: &'a Ctx<'a>,
) -> impl Iterator<
    Item = (
        String,
        &'a k8s_openapi::api::batch::v1::SuccessPolicyRule,
        i32,
    ),
> {
    let completions = c.spec.completions.filter(|_| indexed(c.spec));
    c.spec
        .success_policy
        .iter()
        .filter(move |_| completions.is_some())
        .flat_map(|p| p.rules.iter().enumerate())
        .map(move |(i, r)| {
            (
                c.at(&format!("successPolicy.rules[{i}]")),
                r,
                completions.unwrap_or(0),
            )
        })
}

/// `validateIndexesFormat`: the number of indexes in `s` (intervals
/// `1,3-5`), each below `completions`, in increasing order.
pub fn indexes_format(s: &str, completions: i32) -> Result<i32, String> {
    if s.is_empty() {
        return Ok(0);
    }
    let parse = |part: &str| -> Result<i64, String> {
        let x: i64 = part
            .parse()
            .map_err(|_| format!("cannot convert string to integer for index: {part:?}"))?;
        if x >= i64::from(completions) {
            return Err(format!("too large index: {part:?}"));
        }
        Ok(x)
    };
    let mut last: Option<i64> = None;
    let mut total = 0i64;
    for interval in s.split(',') {
        let limits: Vec<&str> = interval.split('-').collect();
        if limits.len() > 2 {
            return Err(format!(
                "the fragment {interval:?} violates the requirement that an index interval can have at most two parts separated by '-'"
            ));
        }
        let x = parse(limits[0])?;
        let y = match limits.get(1) {
            Some(part) => {
                let y = parse(part)?;
                if x >= y {
                    return Err(format!("non-increasing order, previous: {x}, current: {y}"));
                }
                y
            }
            None => x,
        };
        if let Some(prev) = last
            && prev >= x
        {
            return Err(format!(
                "non-increasing order, previous: {prev}, current: {x}"
            ));
        }
        total += y - x + 1;
        last = Some(y);
    }
    Ok(i32::try_from(total).unwrap_or(i32::MAX))
}

fn qualified_name_ok(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(super::is_dns_subdomain)
}

/// The pod failure policy's and success policy's rules (`validateJobSpec`
/// calls them for `podFailurePolicy` and `successPolicy`).
pub const POLICY_RULES: &[Rule] = &[
    Rule {
        id: "podFailurePolicy.rules.max",
        source: "validatePodFailurePolicy",
        check: |c| match &c.spec.pod_failure_policy {
            Some(p) if p.rules.len() > MAX_POD_FAILURE_POLICY_RULES => vec![Problem::TooMany(
                c.at("podFailurePolicy.rules"),
                p.rules.len(),
                MAX_POD_FAILURE_POLICY_RULES,
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "podFailurePolicy.rules.action",
        source: "validatePodFailurePolicyRule",
        check: |c| {
            const ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];
            pfp_rules(c)
                .filter_map(|(rp, r)| match r.action.as_str() {
                    "" => Some(Problem::Required(
                        format!("{rp}.action"),
                        "valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]".into(),
                    )),
                    "FailIndex" if c.spec.backoff_limit_per_index.is_none() => {
                        Some(Problem::Invalid(
                            format!("{rp}.action"),
                            Some("\"FailIndex\"".into()),
                            "requires the backoffLimitPerIndex to be set".into(),
                        ))
                    }
                    a if ACTIONS.contains(&a) => None,
                    other => Some(Problem::NotSupported(
                        format!("{rp}.action"),
                        format!("{other:?}"),
                        ACTIONS,
                    )),
                })
                .collect()
        },
    },
    Rule {
        id: "podFailurePolicy.rules.onExitCodes.operator",
        source: "validatePodFailurePolicyRuleOnExitCodes",
        check: |c| {
            pfp_rules(c)
                .filter_map(|(rp, r)| {
                    let op = r.on_exit_codes.as_ref()?.operator.as_str();
                    let path = format!("{rp}.onExitCodes.operator");
                    match op {
                        "In" | "NotIn" => None,
                        "" => Some(Problem::Required(
                            path,
                            "valid values: [\"In\" \"NotIn\"]".into(),
                        )),
                        other => Some(Problem::NotSupported(
                            path,
                            format!("{other:?}"),
                            &["In", "NotIn"],
                        )),
                    }
                })
                .collect()
        },
    },
    Rule {
        id: "podFailurePolicy.rules.onExitCodes.containerName",
        source: "validatePodFailurePolicyRuleOnExitCodes",
        check: |c| {
            let pod = c.spec.template.spec.as_ref();
            let names: Vec<&str> = pod
                .iter()
                .flat_map(|p| {
                    p.containers
                        .iter()
                        .chain(p.init_containers.iter().flatten())
                })
                .map(|c| c.name.as_str())
                .collect();
            pfp_rules(c)
                .filter_map(|(rp, r)| {
                    let name = r.on_exit_codes.as_ref()?.container_name.as_deref()?;
                    (!names.contains(&name)).then(|| {
                        Problem::Invalid(
                            format!("{rp}.onExitCodes.containerName"),
                            Some(format!("{name:?}")),
                            "must be one of the container or initContainer names in the pod template".into(),
                        )
                    })
                })
                .collect()
        },
    },
    Rule {
        id: "podFailurePolicy.rules.onExitCodes.values",
        source: "validatePodFailurePolicyRuleOnExitCodes",
        check: |c| {
            let mut out = Vec::new();
            for (rp, r) in pfp_rules(c) {
                let Some(codes) = &r.on_exit_codes else {
                    continue;
                };
                let vp = format!("{rp}.onExitCodes.values");
                let values = &codes.values;
                if values.is_empty() {
                    out.push(Problem::Invalid(
                        vp.clone(),
                        Some("[]".into()),
                        "at least one value is required".into(),
                    ));
                } else if values.len() > MAX_EXIT_CODE_VALUES {
                    out.push(Problem::TooMany(
                        vp.clone(),
                        values.len(),
                        MAX_EXIT_CODE_VALUES,
                    ));
                }
                let mut seen = Vec::new();
                for (j, v) in values.iter().enumerate() {
                    if codes.operator == "In" && *v == 0 {
                        out.push(Problem::Invalid(
                            format!("{vp}[{j}]"),
                            int(*v),
                            "must not be 0 for the In operator".into(),
                        ));
                    }
                    if seen.contains(v) {
                        out.push(Problem::Duplicate(format!("{vp}[{j}]"), v.to_string()));
                    } else {
                        seen.push(*v);
                    }
                }
                if values.windows(2).any(|w| w[0] > w[1]) {
                    out.push(Problem::Invalid(
                        vp,
                        serde_json::to_string(values).ok(),
                        "must be ordered".into(),
                    ));
                }
            }
            out
        },
    },
    Rule {
        id: "podFailurePolicy.rules.onPodConditions",
        source: "validatePodFailurePolicyRuleOnPodConditions",
        check: |c| {
            let mut out = Vec::new();
            for (rp, r) in pfp_rules(c) {
                let conds = r.on_pod_conditions.as_deref().unwrap_or(&[]);
                let cp = format!("{rp}.onPodConditions");
                if conds.len() > MAX_POD_CONDITION_PATTERNS {
                    out.push(Problem::TooMany(
                        cp.clone(),
                        conds.len(),
                        MAX_POD_CONDITION_PATTERNS,
                    ));
                }
                for (j, p) in conds.iter().enumerate() {
                    if !qualified_name_ok(&p.type_) {
                        out.push(Problem::Invalid(
                            format!("{cp}[{j}].type"),
                            Some(format!("{:?}", p.type_)),
                            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into(),
                        ));
                    }
                    // batch/v1 defaults an unset status to "True" before
                    // validation (SetDefaults_Job), so only a wrong one fails.
                    if let Some(other) = p
                        .status
                        .as_deref()
                        .filter(|s| !matches!(*s, "" | "True" | "False" | "Unknown"))
                    {
                        out.push(Problem::NotSupported(
                            format!("{cp}[{j}].status"),
                            format!("{other:?}"),
                            &["False", "True", "Unknown"],
                        ));
                    }
                }
            }
            out
        },
    },
    Rule {
        id: "podFailurePolicy.rules.oneOfRequirements",
        source: "validatePodFailurePolicyRule",
        check: |c| {
            pfp_rules(c)
                .filter_map(|(rp, r)| {
                    let conds = r.on_pod_conditions.as_ref().is_some_and(|v| !v.is_empty());
                    match (r.on_exit_codes.is_some(), conds) {
                        (true, true) => Some(Problem::Invalid(
                            rp,
                            None,
                            "specifying both OnExitCodes and OnPodConditions is not supported"
                                .into(),
                        )),
                        (false, false) => Some(Problem::Invalid(
                            rp,
                            None,
                            "specifying one of OnExitCodes and OnPodConditions is required".into(),
                        )),
                        _ => None,
                    }
                })
                .collect()
        },
    },
    Rule {
        id: "successPolicy.requiresIndexed",
        source: "validateJobSpec",
        check: |c| match &c.spec.success_policy {
            Some(p) if !indexed(c.spec) => vec![Problem::Invalid(
                c.at("successPolicy"),
                serde_json::to_string(p).ok(),
                "requires indexed completion mode".into(),
            )],
            _ => Vec::new(),
        },
    },
    Rule {
        id: "successPolicy.rules.count",
        source: "validateSuccessPolicy",
        check: |c| match &c.spec.success_policy {
            Some(p) if indexed(c.spec) && p.rules.is_empty() => vec![Problem::Required(
                c.at("successPolicy.rules"),
                "at least one rules must be specified when the successPolicy is specified".into(),
            )],
            Some(p) if indexed(c.spec) && p.rules.len() > MAX_SUCCESS_POLICY_RULES => {
                vec![Problem::TooMany(
                    c.at("successPolicy.rules"),
                    p.rules.len(),
                    MAX_SUCCESS_POLICY_RULES,
                )]
            }
            _ => Vec::new(),
        },
    },
    Rule {
        id: "successPolicy.rules.oneOf",
        source: "validateSuccessPolicyRule",
        check: |c| {
            sp_rules(c)
                .filter(|(_, r, _)| r.succeeded_count.is_none() && r.succeeded_indexes.is_none())
                .map(|(rp, _, _)| {
                    Problem::Required(
                        rp,
                        "at least one of succeededCount or succeededIndexes must be specified"
                            .into(),
                    )
                })
                .collect()
        },
    },
    Rule {
        id: "successPolicy.rules.succeededIndexes",
        source: "validateSuccessPolicyRule (validateIndexesFormat)",
        check: |c| {
            let mut out = Vec::new();
            for (rp, r, completions) in sp_rules(c) {
                let Some(ix) = r.succeeded_indexes.as_deref() else {
                    continue;
                };
                let path = format!("{rp}.succeededIndexes");
                if ix.len() > MAX_SUCCEEDED_INDEXES {
                    out.push(Problem::TooLong(path.clone(), MAX_SUCCEEDED_INDEXES));
                }
                if let Err(e) = indexes_format(ix, completions) {
                    out.push(Problem::Invalid(
                        path,
                        Some(format!("{ix:?}")),
                        format!("error parsing succeededIndexes: {e}"),
                    ));
                }
            }
            out
        },
    },
    Rule {
        id: "successPolicy.rules.succeededCount",
        source: "validateSuccessPolicyRule",
        check: |c| {
            let mut out = Vec::new();
            for (rp, r, completions) in sp_rules(c) {
                let Some(n) = r.succeeded_count else {
                    continue;
                };
                let path = format!("{rp}.succeededCount");
                out.extend(nonnegative(path.clone(), Some(i64::from(n))));
                if n > completions {
                    out.push(Problem::Invalid(
                        path.clone(),
                        int(n),
                        format!(
                            "must be less than or equal to {completions} (the number of specified completions)"
                        ),
                    ));
                }
                if let Some(ix) = r.succeeded_indexes.as_deref() {
                    let total = indexes_format(ix, completions).unwrap_or(0);
                    if n > total {
                        out.push(Problem::Invalid(
                            path,
                            int(n),
                            format!(
                                "must be less than or equal to {total} (the number of indexes in the specified succeededIndexes field)"
                            ),
                        ));
                    }
                }
            }
            out
        },
    },
];
