//! Verbs, name patterns and grants: what a caller may do to which queue.

use serde::Deserialize;
use std::fmt;

/// What a call does to a queue; each RPC needs exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Enqueue, EnqueueStream, SealQueue.
    Produce,
    /// Lease, Work, Renew, Complete, Fail, Release.
    Consume,
    /// GetQueue, ListQueues, Watch, ListDead.
    Read,
    /// CreateQueue, UpdateQueue, DeleteQueue, PurgeQueue, RequeueDead.
    Admin,
}

impl Verb {
    /// The name used in grants files and refusals.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Produce => "produce",
            Verb::Consume => "consume",
            Verb::Read => "read",
            Verb::Admin => "admin",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A verb in a grants file: one verb or `*` (all four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum VerbOrAll {
    One(Verb),
    All(AllVerbs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum AllVerbs {
    #[serde(rename = "*")]
    All,
}

/// A name pattern: `*` matches any run of characters (`job-*`, `*`,
/// `*-batch`); everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(p: impl Into<String>) -> Self {
        Pattern(p.into())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*`-only glob matching, iterative (no recursion, linear back-tracking).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Verbs on queues matching any of the patterns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    verbs: Vec<VerbOrAll>,
    queues: Vec<Pattern>,
}

impl Grant {
    /// A grant of `verbs` on `queues` (tests, embedding).
    pub fn new(verbs: &[Verb], queues: &[&str]) -> Self {
        Grant {
            verbs: verbs.iter().map(|v| VerbOrAll::One(*v)).collect(),
            queues: queues.iter().map(|q| Pattern::new(*q)).collect(),
        }
    }

    /// Whether it allows `verb` on `queue`.
    pub fn allows(&self, verb: Verb, queue: &str) -> bool {
        self.verbs.iter().any(|v| match v {
            VerbOrAll::All(AllVerbs::All) => true,
            VerbOrAll::One(one) => *one == verb,
        }) && self.queues.iter().any(|p| p.matches(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_stars() {
        for (p, yes, no) in [
            ("*", vec!["a", "job-1", ""], vec![]),
            (
                "job-*",
                vec!["job-", "job-1", "job-a-b"],
                vec!["job", "xjob-1"],
            ),
            ("*-batch", vec!["a-batch", "-batch"], vec!["a-batchx"]),
            ("a*b*c", vec!["abc", "axxbyyc"], vec!["acb", "ab"]),
            ("exact", vec!["exact"], vec!["exact1", "exac"]),
        ] {
            let p = Pattern::new(p);
            for y in yes {
                assert!(p.matches(y), "{p:?} {y}");
            }
            for n in no {
                assert!(!p.matches(n), "{p:?} {n}");
            }
        }
    }

    #[test]
    fn grants_allow_their_verbs_on_their_queues() {
        let g: Grant =
            serde_saphyr::from_str("verbs: [produce, read]\nqueues: [\"job-*\"]").expect("yaml");
        assert!(g.allows(Verb::Produce, "job-1"));
        assert!(g.allows(Verb::Read, "job-1"));
        assert!(!g.allows(Verb::Consume, "job-1"));
        assert!(!g.allows(Verb::Produce, "other"));
        let all: Grant = serde_saphyr::from_str("verbs: [\"*\"]\nqueues: [\"*\"]").expect("yaml");
        assert!(all.allows(Verb::Admin, "x"));
        assert!(serde_saphyr::from_str::<Grant>("verbs: [write]\nqueues: [\"*\"]").is_err());
    }
}
