//! `successPolicy` (Indexed Jobs): rules that declare a Job succeeded before
//! every index has, as `pkg/controller/job/success_policy.go` evaluates them.
//!
//! A rule matches when
//! - only `succeededIndexes` is set: every index of that set has succeeded;
//! - only `succeededCount` is set: at least that many indexes have succeeded;
//! - both: at least `succeededCount` indexes of the set have succeeded.
//!
//! The first matching rule wins; the Job gets `SuccessCriteriaMet` with
//! reason `SuccessPolicy` and message `Matched rules at index N`, its
//! remaining pods are terminated, and `Complete` follows once they are gone.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::SuccessPolicy;

/// The condition reason a matched success policy writes.
pub const REASON: &str = "SuccessPolicy";

/// One `successPolicy` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessRule {
    /// `succeededIndexes`, parsed (`0-2,4` → {0, 1, 2, 4}).
    pub indexes: Option<BTreeSet<u32>>,
    /// `succeededCount`.
    pub count: Option<u32>,
}

impl SuccessRule {
    /// Whether the rule matches these succeeded indexes.
    pub fn matches(&self, succeeded: &BTreeSet<u32>) -> bool {
        match (&self.indexes, self.count) {
            (Some(set), None) => !set.is_empty() && set.is_subset(succeeded),
            (Some(set), Some(n)) => set.intersection(succeeded).count() >= n as usize,
            (None, Some(n)) => succeeded.len() >= n as usize,
            (None, None) => false,
        }
    }
}

/// Reads a Job's `successPolicy` (validated by the API server's rules).
pub fn rules(policy: Option<&SuccessPolicy>) -> Vec<SuccessRule> {
    policy
        .iter()
        .flat_map(|p| p.rules.iter())
        .map(|r| SuccessRule {
            indexes: r.succeeded_indexes.as_deref().map(parse_ranges),
            count: r.succeeded_count.and_then(|n| u32::try_from(n).ok()),
        })
        .collect()
}

/// The index of the first rule matching `succeeded`, if any.
pub fn first_match(rules: &[SuccessRule], succeeded: &BTreeSet<u32>) -> Option<usize> {
    rules.iter().position(|r| r.matches(succeeded))
}

/// The condition message for rule `i`.
pub fn message(i: usize) -> String {
    format!("Matched rules at index {i}")
}

/// Parses an index list as Kubernetes writes it (`0-2,4`); parts that are not
/// indexes or ranges are skipped (validation refuses them beforehand).
pub fn parse_ranges(s: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse::<u32>() {
                    out.insert(i);
                }
            }
        }
    }
    out
}
