//! Who may do what to which queue: authentication of each call and its
//! authorization per queue (issue 13). Off unless a grants file or a JWKS is
//! configured ([`AuthConfig`]).
//!
//! - [`tokens`]: the grants file (bearer tokens kept as SHA-256 hashes,
//!   ServiceAccounts, client certificates, each with grants);
//! - [`jwt`]: Kubernetes ServiceAccount tokens verified offline (JWKS);
//! - [`jwks_fetch`]: that JWKS fetched from the API server and refreshed;
//! - [`grants`]: verbs and queue name patterns.
//!
//! Applied in one place: the service's interceptor ([`crate::server`])
//! authenticates each call of `workq.v1.QueueService` and puts its
//! [`Caller`] in the request; each method of [`crate::grpc`] then checks the
//! one verb it needs on the queue it names ([`allow`]). Health and
//! reflection are other services and stay open.
//!
//! Files are re-read every [`AuthConfig::reload_interval`]; a changed file
//! that does not parse keeps the configuration in force, and the error is
//! logged.

pub mod grants;
pub mod jwks_fetch;
pub mod jwt;
mod recheck;
pub mod tokens;

pub use grants::{Grant, Pattern, Verb};
use jwks_fetch::JwksSource;
use jwt::Jwks;
pub use recheck::Recheck;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokens::{GrantsFile, Principal};
use tonic::{Code, Status};
use workq_proto::errors::Rejection;
use workq_proto::v1::ErrorReason;

/// The default audience ServiceAccount tokens must carry.
pub const DEFAULT_AUDIENCE: &str = "workq";

/// How authentication is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The grants file (YAML, see [`tokens`]): bearer tokens, and the grants
    /// of ServiceAccounts and client certificates.
    pub tokens_file: Option<PathBuf>,
    /// The cluster's ServiceAccount signing keys (a JWKS document).
    pub jwks_file: Option<PathBuf>,
    /// The cluster's ServiceAccount signing keys fetched from a URL (the API
    /// server's `/openid/v1/jwks`) and refreshed; used when there is no
    /// [`AuthConfig::jwks_file`].
    pub jwks_url: Option<JwksSource>,
    /// The issuer ServiceAccount tokens must name (`iss`); `None`: any.
    pub issuer: Option<String>,
    /// The audience ServiceAccount tokens must carry (`aud`).
    pub audience: String,
    /// `/metrics` requires a credential too.
    pub metrics_auth: bool,
    /// Client certificates are verified (mutual TLS): a certificate's subject
    /// CN is an identity, `cert:<CN>`.
    pub client_certificates: bool,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            tokens_file: None,
            jwks_file: None,
            jwks_url: None,
            issuer: None,
            audience: DEFAULT_AUDIENCE.to_string(),
            metrics_auth: false,
            client_certificates: false,
            reload_interval: Duration::from_secs(2),
        }
    }
}

impl AuthConfig {
    /// Whether any credential is configured, i.e. authentication is on.
    pub fn enabled(&self) -> bool {
        self.tokens_file.is_some() || self.serviceaccounts() || self.client_certificates
    }

    /// Whether ServiceAccount tokens are accepted (a JWKS file or URL).
    pub fn serviceaccounts(&self) -> bool {
        self.jwks_file.is_some() || self.jwks_url.is_some()
    }
}

/// Why authentication could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The grants file does not parse.
    #[error("{path}: {source}")]
    Grants {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: tokens::GrantsError,
    },
    /// The JWKS file does not parse.
    #[error("{path}: {source}")]
    Jwks {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: jwt::JwksError,
    },
}

/// What the files said, swapped whole on reload.
#[derive(Debug, Default)]
struct Loaded {
    grants: GrantsFile,
    jwks: Option<Jwks>,
}

/// The identity of a verified client certificate (mutual TLS): its subject
/// CN. The accept loop puts it in each request's
/// [`crate::server::ConnInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub Option<String>);

/// The authenticated caller of one call, with what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `token:<entry name>`, `system:serviceaccount:<ns>:<name>` or
    /// `cert:<CN>`.
    pub identity: String,
    principals: Vec<Arc<Principal>>,
    /// What it proved, to find its grants again after a reload.
    credential: Credential,
}

/// The credential a caller proved, kept to look its grants up again when
/// the grants file changes ([`Recheck`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// A bearer token of the grants file, by its SHA-256.
    Token([u8; 32]),
    /// A verified ServiceAccount token.
    ServiceAccount { namespace: String, name: String },
    /// A verified client certificate, by its subject CN.
    Certificate(String),
}

impl Caller {
    /// Whether it may do `verb` to `queue`.
    pub fn may(&self, verb: Verb, queue: &str) -> bool {
        self.principals
            .iter()
            .any(|p| p.grants.iter().any(|g| g.allows(verb, queue)))
    }

    /// OK if it may do `verb` to `queue`, else PERMISSION_DENIED naming
    /// verb, queue and identity.
    pub fn check(&self, verb: Verb, queue: &str) -> Result<(), Status> {
        if self.may(verb, queue) {
            return Ok(());
        }
        Err(Rejection::new(
            Code::PermissionDenied,
            ErrorReason::PermissionDenied,
            format!(
                "{} may not {verb} queue {queue:?}: no grant of {verb} on a pattern matching \
                 it; add one to the grants file",
                self.identity
            ),
        )
        .meta("verb", verb)
        .meta("queue", queue)
        .meta("identity", &self.identity)
        .to_status())
    }
}

/// OK if the request's caller may do `verb` to `queue` (or authentication
/// is off: no [`Caller`] in the request).
pub fn allow<T>(req: &tonic::Request<T>, verb: Verb, queue: &str) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(c) => c.check(verb, queue),
        None => Ok(()),
    }
}

/// The caller of a request, kept past `into_inner` (streams check at their
/// first message): `None` when authentication is off.
#[derive(Debug, Clone)]
pub struct Grantee(pub Option<Caller>);

impl Grantee {
    /// The caller of `req`.
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        Grantee(req.extensions().get::<Caller>().cloned())
    }

    /// Whether it may do `verb` to `queue` (always, with authentication off).
    pub fn may(&self, verb: Verb, queue: &str) -> bool {
        self.0.as_ref().is_none_or(|c| c.may(verb, queue))
    }

    /// OK if it may do `verb` to `queue`, else PERMISSION_DENIED.
    pub fn check(&self, verb: Verb, queue: &str) -> Result<(), Status> {
        match &self.0 {
            Some(c) => c.check(verb, queue),
            None => Ok(()),
        }
    }
}

/// The JWKS fetched from [`AuthConfig::jwks_url`], or why there is none.
#[derive(Debug, Default)]
struct Fetched {
    jwks: Option<Arc<Jwks>>,
    error: Option<String>,
}

/// Authentication and authorization as configured; cheap to share.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    loaded: RwLock<Arc<Loaded>>,
    fetched: RwLock<Fetched>,
    /// Counts reloads of the files, for streams that re-check their grants.
    reloads: tokio::sync::watch::Sender<u64>,
    /// Asks the fetching task for the JWKS again (a token's key is unknown).
    refetch: Arc<tokio::sync::Notify>,
}

fn read(path: &PathBuf) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.clone(),
        source,
    })
}

impl Auth {
    /// Reads the configured files; `None` if authentication is off. Call
    /// [`Auth::watch`] to follow changes.
    pub fn open(config: AuthConfig) -> Result<Option<Arc<Auth>>, AuthError> {
        if !config.enabled() {
            return Ok(None);
        }
        let loaded = Self::load(&config)?;
        Ok(Some(Arc::new(Auth {
            config,
            loaded: RwLock::new(Arc::new(loaded)),
            fetched: RwLock::new(Fetched::default()),
            reloads: tokio::sync::watch::Sender::new(0),
            refetch: Arc::new(tokio::sync::Notify::new()),
        })))
    }

    fn load(config: &AuthConfig) -> Result<Loaded, AuthError> {
        let grants = match &config.tokens_file {
            Some(p) => GrantsFile::parse(&read(p)?).map_err(|source| AuthError::Grants {
                path: p.clone(),
                source,
            })?,
            None => GrantsFile::default(),
        };
        let jwks = match &config.jwks_file {
            Some(p) => Some(Jwks::parse(&read(p)?).map_err(|source| AuthError::Jwks {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        Ok(Loaded { grants, jwks })
    }

    /// Re-reads the files every [`AuthConfig::reload_interval`] while
    /// `self` lives; a change that does not load is logged and ignored.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.config.reload_interval;
        let files: Vec<PathBuf> = [&self.config.tokens_file, &self.config.jwks_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let snapshot = move || -> Vec<Option<Vec<u8>>> {
            files.iter().map(|p| std::fs::read(p).ok()).collect()
        };
        let mut last = snapshot();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(auth) = weak.upgrade() else { return };
                let now = snapshot();
                if now == last {
                    continue;
                }
                last = now;
                match Self::load(&auth.config) {
                    Ok(loaded) => {
                        tracing::info!("authentication files changed: reloaded");
                        if let Ok(mut l) = auth.loaded.write() {
                            *l = Arc::new(loaded);
                        }
                        auth.reloads.send_modify(|n| *n += 1);
                    }
                    Err(e) => tracing::error!(
                        "authentication files changed but do not load, keeping the previous \
                         configuration: {e}"
                    ),
                }
            }
        });
    }

    /// With [`AuthConfig::jwks_url`]: fetches the JWKS once (a failure is
    /// logged, and refusals say it), then keeps it fresh in a task while
    /// `self` lives: every [`JwksSource::refresh`], and when a token names a
    /// key it does not hold (at most every [`JwksSource::min_refetch`]).
    pub async fn fetch_jwks(self: &Arc<Self>) {
        let Some(source) = self.config.jwks_url.clone() else {
            return;
        };
        self.fetch_once(&source).await;
        let weak = Arc::downgrade(self);
        let refetch = self.refetch.clone();
        tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                let wait = match weak.upgrade() {
                    Some(auth) if auth.fetched_jwks().is_some() => source.refresh,
                    Some(_) => source.min_refetch,
                    None => return,
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = refetch.notified() => {
                        tokio::time::sleep_until(last + source.min_refetch).await;
                    }
                }
                last = tokio::time::Instant::now();
                let Some(auth) = weak.upgrade() else { return };
                auth.fetch_once(&source).await;
            }
        });
    }

    async fn fetch_once(&self, source: &JwksSource) {
        let got = source.fetch().await;
        let Ok(mut f) = self.fetched.write() else {
            return;
        };
        match got {
            Ok(jwks) => {
                tracing::debug!(url = %source.url, ?jwks, "JWKS fetched");
                f.jwks = Some(Arc::new(jwks));
                f.error = None;
            }
            Err(e) => {
                tracing::error!("{e}; keeping the keys fetched before, if any");
                f.error = Some(e.to_string());
            }
        }
    }

    fn fetched_jwks(&self) -> Option<Arc<Jwks>> {
        self.fetched.read().ok().and_then(|f| f.jwks.clone())
    }

    fn fetch_error(&self) -> String {
        self.fetched
            .read()
            .ok()
            .and_then(|f| f.error.clone())
            .unwrap_or_else(|| "not fetched yet".into())
    }

    fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether `/metrics` requires a credential.
    pub fn metrics_auth(&self) -> bool {
        self.config.metrics_auth
    }

    /// The credentials accepted, for refusals.
    fn expected(&self) -> String {
        let mut kinds = Vec::new();
        if self.config.tokens_file.is_some() {
            kinds.push("bearer token");
        }
        if self.config.serviceaccounts() {
            kinds.push("kubernetes serviceaccount token");
        }
        if self.config.client_certificates {
            kinds.push("client certificate");
        }
        kinds.join(", ")
    }

    fn unauthenticated(&self, why: &str) -> Status {
        let expected = self.expected();
        let mut how = Vec::new();
        if self.config.tokens_file.is_some() {
            how.push("a bearer token from the grants file".to_string());
        }
        if self.config.serviceaccounts() {
            how.push(format!(
                "a Kubernetes ServiceAccount token with audience {:?}",
                self.config.audience
            ));
        }
        let mut msg = format!("unauthenticated: {why}; this server expects ");
        if !how.is_empty() {
            msg.push_str(&format!(
                "`authorization: Bearer <token>` with {}",
                how.join(" or ")
            ));
        }
        if self.config.client_certificates {
            msg.push_str(if how.is_empty() { "" } else { ", or " });
            msg.push_str("a client certificate signed by its client CA");
        }
        Rejection::new(Code::Unauthenticated, ErrorReason::Unauthenticated, msg)
            .meta("expected", expected)
            .to_status()
    }

    /// The caller of a call with `metadata`, over a connection with `peer`'s
    /// certificate, or UNAUTHENTICATED saying which credential is expected.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<&PeerCertificate>,
    ) -> Result<Caller, Status> {
        let loaded = self.current();
        if let Some(value) = authorization {
            let value = std::str::from_utf8(value)
                .map_err(|_| self.unauthenticated("the authorization header is not text"))?;
            let token = match value.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                _ => {
                    return Err(
                        self.unauthenticated("the authorization header is not `Bearer <token>`")
                    );
                }
            };
            if let Some(p) = loaded.grants.token(token) {
                return Ok(Caller {
                    identity: format!("token:{}", p.name),
                    principals: vec![p],
                    credential: Credential::Token(tokens::token_hash(token)),
                });
            }
            if self.config.serviceaccounts() && token.split('.').count() == 3 {
                // The file's keys, else the fetched ones.
                let fetched;
                let jwks = match &loaded.jwks {
                    Some(file) => file,
                    None => {
                        fetched = self.fetched_jwks().ok_or_else(|| {
                            self.unauthenticated(&format!(
                                "the ServiceAccount signing keys are not available: {}",
                                self.fetch_error()
                            ))
                        })?;
                        if !fetched.knows(token) {
                            // Rotated keys: fetched again soon; a retry passes.
                            self.refetch.notify_one();
                        }
                        &*fetched
                    }
                };
                let sa = jwks
                    .verify(token, self.config.issuer.as_deref(), &self.config.audience)
                    .map_err(|why| {
                        self.unauthenticated(&format!("the ServiceAccount token: {why}"))
                    })?;
                return Ok(Caller {
                    identity: format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                    principals: loaded.grants.serviceaccount(&sa.namespace, &sa.name),
                    credential: Credential::ServiceAccount {
                        namespace: sa.namespace,
                        name: sa.name,
                    },
                });
            }
            return Err(self.unauthenticated("the bearer token is not one this server knows"));
        }
        if self.config.client_certificates
            && let Some(PeerCertificate(Some(cn))) = peer
        {
            return Ok(Caller {
                identity: format!("cert:{cn}"),
                principals: loaded.grants.certificate(cn),
                credential: Credential::Certificate(cn.clone()),
            });
        }
        Err(self.unauthenticated("the call carries no credential"))
    }

    /// [`Auth::authenticate`] of a gRPC request.
    pub fn authenticate_request<T>(&self, req: &tonic::Request<T>) -> Result<Caller, Status> {
        self.authenticate(
            req.metadata().get("authorization").map(|v| v.as_bytes()),
            req.extensions()
                .get::<crate::server::ConnInfo>()
                .map(|c| &c.peer),
        )
    }
}
