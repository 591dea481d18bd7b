//! TLS for the gRPC port (rustls, ring provider): the certificate and key
//! are PEM files re-read when they change (cert-manager rotates them), and
//! with a client CA every client must present a certificate it signed
//! (mutual TLS); the certificate's subject CN is the identity `cert:<CN>`.

use crate::auth::PeerCertificate;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where the server's certificate, key and (for mutual TLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (PEM); `None`: no
    /// client certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in it"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, der, &provider).map_err(|e| file_err(key, e))?;
    Ok(Arc::new(certified))
}

fn mtimes(paths: &[&Path]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// How often, at most, the files are checked on a handshake.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Serves the certificate in the files, re-read when their modification
/// time or size changes (checked at most every half second, on a
/// handshake). A file that fails to load keeps the certificate in force.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    key: Arc<CertifiedKey>,
    stamp: Vec<Option<SystemTime>>,
    checked: Instant,
}

impl ReloadingCert {
    /// Loads the files (an error if they do not load now).
    pub fn open(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let stamp = mtimes(&[cert, key]);
        Ok(ReloadingCert {
            key: key.to_path_buf(),
            cert: cert.to_path_buf(),
            state: Mutex::new(State {
                key: load_key(cert, key)?,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut s = self.state.lock().ok()?;
        if s.checked.elapsed() >= CHECK_EVERY {
            s.checked = Instant::now();
            let stamp = mtimes(&[&self.cert, &self.key]);
            if stamp != s.stamp {
                match load_key(&self.cert, &self.key) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        s.key = k;
                        s.stamp = stamp;
                    }
                    // Half-written during a rotation: tried again next time.
                    Err(e) => tracing::error!("TLS certificate not reloaded, keeping the old: {e}"),
                }
            }
        }
        Some(s.key.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The rustls server configuration of `tls`, offering `alpn`.
pub fn server_config(
    tls: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca, e))? {
                roots
                    .add(c.map_err(|e| file_err(ca, e))?)
                    .map_err(|e| file_err(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(ReloadingCert::open(&tls.cert, &tls.key)?));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The identity of a verified client certificate: its subject CN.
pub fn peer_identity(conn: &rustls::ServerConnection) -> PeerCertificate {
    PeerCertificate(
        conn.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| subject_cn(c.as_ref())),
    )
}

/// One DER element: (tag, contents, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len0, mut b) = b.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The subject CN of a DER X.509 certificate.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, cert, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert)?;
    // [0] version (optional), serial, signature, issuer, validity, subject.
    let (tag, _, rest) = der(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (_, mut subject, _) = der(tbs)?;
    while !subject.is_empty() {
        let (_, mut set, rest) = der(subject)?;
        subject = rest;
        while !set.is_empty() {
            let (_, atv, rest) = der(set)?;
            set = rest;
            let (_, oid, value) = der(atv)?;
            if oid == CN {
                let (_, v, _) = der(value)?;
                return String::from_utf8(v.to_vec()).ok();
            }
        }
    }
    None
}

/// Roots for a client of ours to check a server with: the CA file's
/// certificates (PEM), or the system's store when there is none.
pub(crate) fn client_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let why = |e: &dyn std::fmt::Display| format!("the CA file {}: {e}", path.display());
            for c in CertificateDer::pem_file_iter(path).map_err(|e| why(&e))? {
                roots.add(c.map_err(|e| why(&e))?).map_err(|e| why(&e))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the server with (give a CA file)".into());
    }
    Ok(roots)
}
