//! How a client proves who it is and whom it trusts: [`ConnectOptions`] (CA
//! bundle, bearer-token file, client certificate for mutual TLS), read from
//! flags or the environment (`WQ_CA_FILE`, `WQ_TOKEN_FILE`,
//! `WQ_CLIENT_CERT`, `WQ_CLIENT_KEY`).
//!
//! The token is sent as `authorization: Bearer <token>` on every gRPC call.
//! It is read when the client connects and again whenever the file changes
//! (looked at no more than once a second), so a projected ServiceAccount
//! token that the kubelet rotates is picked up without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Where Kubernetes mounts the projected ServiceAccount token that
/// `job-runner` (and `deploy/`) give work-queue pods. Used as the token file
/// of a `grpcs://` URL when no other is given and the file exists.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/workq/token";

/// How often, at most, the token file is looked at for a change.
const TOKEN_RECHECK: Duration = Duration::from_secs(1);

/// What a connection needs beyond its URL: whom to trust and what credential
/// to present. All empty (the default) is a plain `grpc://` connection with
/// no credential, the local quick start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// PEM bundle of the CA(s) that sign the server's certificate
    /// (`grpcs://`); without it, the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token (a Secret's token or a projected
    /// ServiceAccount token); re-read when it changes. Without it, a
    /// `grpcs://` URL uses [`DEFAULT_TOKEN_FILE`] when that exists.
    pub token_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with [`client_key`](Self::client_key)).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of [`client_cert`](Self::client_cert).
    pub client_key: Option<PathBuf>,
}

impl ConnectOptions {
    /// The options the environment gives: `WQ_CA_FILE`, `WQ_TOKEN_FILE`,
    /// `WQ_CLIENT_CERT`, `WQ_CLIENT_KEY` (an empty value counts as unset).
    pub fn from_env() -> ConnectOptions {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ConnectOptions {
            ca_file: var("WQ_CA_FILE"),
            token_file: var("WQ_TOKEN_FILE"),
            client_cert: var("WQ_CLIENT_CERT"),
            client_key: var("WQ_CLIENT_KEY"),
        }
    }

    /// The token file to use for a connection (`tls`: the URL is
    /// `grpcs://`): the one given, else [`DEFAULT_TOKEN_FILE`] for TLS when
    /// it exists.
    pub fn effective_token_file(&self, tls: bool) -> Option<PathBuf> {
        self.token_file.clone().or_else(|| {
            let default = Path::new(DEFAULT_TOKEN_FILE);
            (tls && default.is_file()).then(|| default.to_path_buf())
        })
    }
}

/// Reads a credential file, naming it in the error.
pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Credentials {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A bearer token read from a file, re-read when the file changes.
#[derive(Debug)]
pub(crate) struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
}

#[derive(Debug)]
struct TokenState {
    /// `Bearer <token>`, ready for the metadata.
    header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    modified: Option<SystemTime>,
    checked: std::time::Instant,
}

impl TokenFile {
    /// Reads the token at `path` now: a missing, empty or non-ASCII token is
    /// an error naming the file.
    pub(crate) fn open(path: &Path) -> Result<Arc<TokenFile>> {
        let (header, modified) = Self::load(path)?;
        Ok(Arc::new(TokenFile {
            path: path.to_path_buf(),
            state: Mutex::new(TokenState {
                header,
                modified,
                checked: std::time::Instant::now(),
            }),
        }))
    }

    fn load(
        path: &Path,
    ) -> Result<(
        tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        Option<SystemTime>,
    )> {
        let bad = |reason: String| Error::Credentials {
            what: "token",
            path: path.display().to_string(),
            reason,
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let bytes = read_file("token", path)?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad("the file is empty".into()));
        }
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| bad("the token holds characters a header cannot carry".into()))?;
        Ok((header, modified))
    }

    /// The `authorization` value to send, re-reading the file when it
    /// changed since it was last read (looked at once a second at most). A
    /// file that cannot be read now keeps the last good token.
    fn header(&self) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= TOKEN_RECHECK {
            state.checked = std::time::Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                match Self::load(&self.path) {
                    Ok((header, modified)) => {
                        state.header = header;
                        state.modified = modified;
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the last token"),
                }
            }
        }
        state.header.clone()
    }
}

/// The interceptor that puts the bearer token on every call (nothing when
/// the connection has no token).
#[derive(Debug, Clone, Default)]
pub(crate) struct Bearer(pub(crate) Option<Arc<TokenFile>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.header());
        }
        Ok(req)
    }
}
