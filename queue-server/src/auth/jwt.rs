//! Kubernetes ServiceAccount tokens, verified offline as JWTs against the
//! cluster's signing keys (a JWKS document, e.g. the API server's
//! `/openid/v1/jwks` saved to a file or mounted from a ConfigMap).
//!
//! Checked: the signature (RS256 or ES256, by a key of the set, chosen by
//! `kid`), the issuer, the audience (`workq` by default, so a token minted
//! for another audience — the API server's own — is refused), and the
//! expiry. The identity is `system:serviceaccount:<namespace>:<name>`, from
//! the `kubernetes.io` claim or, failing that, `sub`.
//!
//! A token that verified is remembered (by its SHA-256, with its expiry) so
//! that a worker's next calls with the same token cost a hash, not a
//! signature check: an ES256 or RS256 verification on every call cost a
//! third of the throughput (docs/BENCHMARKS.md). The memory belongs to this
//! key set: new keys start with none. Refusals are not remembered.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a JWKS file was refused.
#[derive(Debug, thiserror::Error)]
#[error("JWKS file: {0}")]
pub struct JwksError(pub String);

/// Verified tokens remembered at most; when full, the memory starts over.
const REMEMBERED: usize = 4096;

/// Signing keys from a JWKS document.
pub struct Jwks {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    /// Tokens that verified: SHA-256 of (token, audience, issuer) → whose,
    /// and until when (its `exp`, seconds since the Unix epoch).
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (ServiceAccount, u64)>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .finish()
    }
}

/// A verified ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    /// Required by the validation (`exp`), so always there.
    #[serde(default)]
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: NameClaim,
}

#[derive(Debug, Deserialize)]
struct NameClaim {
    name: String,
}

impl Jwks {
    /// Parses a JWKS document; RSA and EC P-256 keys are kept, others are
    /// skipped.
    pub fn parse(text: &str) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| JwksError(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                JwksError(format!(
                    "key {:?}: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("")
                ))
            })?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err(JwksError("no RSA or EC P-256 key in it".into()));
        }
        Ok(Jwks {
            keys,
            verified: std::sync::Mutex::default(),
        })
    }

    /// Whether it holds the key `token`'s header names (by algorithm and
    /// `kid`); false for a token whose header does not decode.
    pub fn knows(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| self.key(&h).is_some())
    }

    fn key(
        &self,
        header: &jsonwebtoken::Header,
    ) -> Option<&(Option<String>, Algorithm, DecodingKey)> {
        self.keys.iter().find(|(kid, alg, _)| {
            *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
        })
    }

    /// Verifies `token` and says whose it is, or why it was refused.
    pub fn verify(
        &self,
        token: &str,
        issuer: Option<&str>,
        audience: &str,
    ) -> Result<ServiceAccount, String> {
        let id = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [token, audience, issuer.unwrap_or_default()] {
                ctx.update(part.as_bytes());
                ctx.update(&[0]);
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(ctx.finish().as_ref());
            id
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        match verified.get(&id) {
            Some((who, exp)) if now < *exp => return Ok(who.clone()),
            Some(_) => {
                verified.remove(&id);
            }
            None => {}
        }
        drop(verified);
        let (who, exp) = self.verify_signed(token, issuer, audience)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert(id, (who.clone(), exp));
        Ok(who)
    }

    /// [`Jwks::verify`] without the memory: the signature and claims
    /// checked; whose it is and its expiry.
    fn verify_signed(
        &self,
        token: &str,
        issuer: Option<&str>,
        audience: &str,
    ) -> Result<(ServiceAccount, u64), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("not a valid JWT: {e}"))?;
        let (_, alg, key) = self.key(&header).ok_or_else(|| {
            format!(
                "signed by a key ({:?}, kid {:?}) not in the server's JWKS",
                header.alg,
                header.kid.as_deref().unwrap_or("none")
            )
        })?;
        let mut v = Validation::new(*alg);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "aud", "iss"]);
        v.leeway = 30;
        if let Some(iss) = issuer {
            v.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::InvalidAudience => {
                    format!("the token's audience is not {audience:?}")
                }
                ErrorKind::InvalidIssuer => {
                    format!("the token's issuer is not {:?}", issuer.unwrap_or_default())
                }
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
                _ => format!("the token was refused: {e}"),
            }
        })?;
        let c = data.claims;
        let exp = c.exp;
        if let Some(k) = c.kubernetes {
            return Ok((
                ServiceAccount {
                    namespace: k.namespace,
                    name: k.serviceaccount.name,
                },
                exp,
            ));
        }
        let sub = c.sub.unwrap_or_default();
        let mut parts = sub.split(':');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("system"), Some("serviceaccount"), Some(ns), Some(name), None)
                if !ns.is_empty() && !name.is_empty() =>
            {
                Ok((
                    ServiceAccount {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                    },
                    exp,
                ))
            }
            _ => Err(format!(
                "the token's subject {sub:?} is not a ServiceAccount \
                 (system:serviceaccount:<namespace>:<name>)"
            )),
        }
    }
}
