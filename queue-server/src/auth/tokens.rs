//! The grants file: who (a bearer token, ServiceAccounts, client
//! certificates) may do what to which queues. YAML, a list of entries:
//!
//! ```yaml
//! - name: producer                 # shown in logs and refusals
//!   token_sha256: 9f86d0…          # or `token: <the token>`; only the hash is kept
//!   grants:
//!     - verbs: [produce, read]     # produce | consume | read | admin | "*"
//!       queues: ["job-*"]          # name patterns, `*` matches any run
//! - name: job-workers
//!   serviceaccounts:               # Kubernetes ServiceAccount tokens (JWT)
//!     - {namespace: jobs, name: "*"}
//!   grants:
//!     - verbs: [consume]
//!       queues: ["job-*"]
//! - name: ops
//!   certificates: ["ops-*"]        # client certificate subject CNs (mTLS)
//!   grants:
//!     - verbs: ["*"]
//!       queues: ["*"]
//! ```

use super::grants::{Grant, Pattern};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a grants file was refused.
#[derive(Debug, thiserror::Error)]
#[error("grants file: {0}")]
pub struct GrantsError(pub String);

/// A named set of grants, as one entry of the file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The entry's name.
    pub name: String,
    /// What it may do.
    pub grants: Vec<Grant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    serviceaccounts: Vec<ServiceAccounts>,
    #[serde(default)]
    certificates: Vec<Pattern>,
    #[serde(default)]
    grants: Vec<Grant>,
}

/// ServiceAccounts by namespace and name patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAccounts {
    namespace: Pattern,
    name: Pattern,
}

/// A parsed grants file. Bearer tokens are kept only as SHA-256 hashes.
#[derive(Debug, Default)]
pub struct GrantsFile {
    tokens: HashMap<[u8; 32], Arc<Principal>>,
    serviceaccounts: Vec<(ServiceAccounts, Arc<Principal>)>,
    certificates: Vec<(Pattern, Arc<Principal>)>,
}

/// SHA-256 of a bearer token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl GrantsFile {
    /// Parses the YAML text of a grants file.
    pub fn parse(text: &str) -> Result<Self, GrantsError> {
        let entries: Vec<Entry> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_saphyr::from_str(text).map_err(|e| GrantsError(e.to_string()))?
        };
        let mut file = GrantsFile::default();
        for (i, e) in entries.into_iter().enumerate() {
            let at = format!("entry {i} ({:?})", e.name);
            let principal = Arc::new(Principal {
                name: e.name,
                grants: e.grants,
            });
            let hash = match (e.token, e.token_sha256) {
                (Some(_), Some(_)) => {
                    return Err(GrantsError(format!(
                        "{at}: give token or token_sha256, not both"
                    )));
                }
                (Some(t), None) if t.trim().is_empty() => {
                    return Err(GrantsError(format!("{at}: token is empty")));
                }
                (Some(t), None) => Some(token_hash(t.trim())),
                (None, Some(h)) => Some(parse_hex32(&h).ok_or_else(|| {
                    GrantsError(format!(
                        "{at}: token_sha256 is not 64 hex digits (sha256sum of the token)"
                    ))
                })?),
                (None, None) => None,
            };
            if hash.is_none() && e.serviceaccounts.is_empty() && e.certificates.is_empty() {
                return Err(GrantsError(format!(
                    "{at}: names no credential: give token, token_sha256, serviceaccounts or \
                     certificates"
                )));
            }
            if let Some(h) = hash
                && file.tokens.insert(h, principal.clone()).is_some()
            {
                return Err(GrantsError(format!("{at}: the same token is given twice")));
            }
            for sa in e.serviceaccounts {
                file.serviceaccounts.push((sa, principal.clone()));
            }
            for c in e.certificates {
                file.certificates.push((c, principal.clone()));
            }
        }
        Ok(file)
    }

    /// The entry of a bearer token.
    pub fn token(&self, token: &str) -> Option<Arc<Principal>> {
        self.tokens.get(&token_hash(token)).cloned()
    }

    /// The entry of a bearer token, by the token's SHA-256.
    pub fn token_by_hash(&self, hash: &[u8; 32]) -> Option<Arc<Principal>> {
        self.tokens.get(hash).cloned()
    }

    /// Every entry that names ServiceAccount `namespace`/`name`.
    pub fn serviceaccount(&self, namespace: &str, name: &str) -> Vec<Arc<Principal>> {
        self.serviceaccounts
            .iter()
            .filter(|(sa, _)| sa.namespace.matches(namespace) && sa.name.matches(name))
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Every entry that names a client certificate with subject CN `cn`.
    pub fn certificate(&self, cn: &str) -> Vec<Arc<Principal>> {
        self.certificates
            .iter()
            .filter(|(c, _)| c.matches(cn))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verb;

    #[test]
    fn a_file_keeps_hashes_and_finds_entries() {
        let hash: String = token_hash("s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let f = GrantsFile::parse(&format!(
            "- name: a\n  token: plain\n  grants: [{{verbs: [produce], queues: [\"job-*\"]}}]\n\
             - name: b\n  token_sha256: {hash}\n\
             - name: c\n  serviceaccounts: [{{namespace: jobs, name: \"*\"}}]\n\
             - name: d\n  certificates: [\"ops-*\"]\n"
        ))
        .expect("parse");
        let a = f.token("plain").expect("a");
        assert!(a.grants[0].allows(Verb::Produce, "job-1"));
        assert_eq!(f.token("s3cret").expect("b").name, "b");
        assert!(f.token("other").is_none());
        assert_eq!(f.serviceaccount("jobs", "w").len(), 1);
        assert!(f.serviceaccount("other", "w").is_empty());
        assert_eq!(f.certificate("ops-1").len(), 1);
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry() {
        for (text, why) in [
            ("- name: a\n", "names no credential"),
            ("- name: a\n  token: x\n  token_sha256: y\n", "not both"),
            ("- name: a\n  token_sha256: xyz\n", "64 hex"),
            ("- name: a\n  token: x\n- name: b\n  token: x\n", "twice"),
            (
                "- name: a\n  token: x\n  grants: [{verbs: [fly], queues: []}]\n",
                "",
            ),
            ("- name: a\n  tokn: x\n", ""),
        ] {
            let err = GrantsFile::parse(text).expect_err(text);
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }
}
