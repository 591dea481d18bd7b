//! `podFailurePolicy`: its rules, and which rule a failed pod matches — in
//! order, with the message Kubernetes writes for a match.

use super::PodResult;

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
    pub(super) fn parse(s: &str) -> Self {
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

/// The first rule matching a failed pod, with the message Kubernetes gives
/// for it: `(rule index, action, message)`. `ns` is the Job's namespace.
pub fn first_match(
    rules: &[Rule],
    ns: &str,
    pod: &PodResult,
) -> Option<(usize, RuleAction, String)> {
    for (i, rule) in rules.iter().enumerate() {
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
