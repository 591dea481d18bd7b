//! TLS to the database, set the way every PostgreSQL client is: libpq's
//! `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, in the URL's query
//! (`postgres://…/db?sslmode=verify-full&sslrootcert=/ca.crt`) or in the
//! environment (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`; the
//! URL wins). rustls with the ring provider does the TLS
//! (`tokio-postgres-rustls`, which also gives SCRAM channel binding).
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` (ours when unset) | no | — |
//! | `prefer` | when the server offers it | no |
//! | `require` | yes | no (as libpq, unless `sslrootcert` is given: then as `verify-ca`) |
//! | `verify-ca` | yes | chains to the roots |
//! | `verify-full` | yes | chains to the roots and names the host |
//!
//! The roots are `sslrootcert`'s PEM file, or the system's store when it is
//! unset or `system`. Unset, libpq prefers TLS without checking anything;
//! we do not negotiate it at all, because TLS that checks nothing stops no
//! one who can intercept: across a network use `verify-full`.

use super::PgError;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values this store accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it; nothing checked.
    Prefer,
    /// TLS; nothing checked.
    Require,
    /// TLS; the certificate chains to the roots.
    VerifyCa,
    /// TLS; the certificate chains to the roots and names the host.
    VerifyFull,
}

impl DbSslMode {
    fn parse(s: &str) -> Result<Self, PgError> {
        Ok(match s {
            "disable" => DbSslMode::Disable,
            "prefer" => DbSslMode::Prefer,
            "require" => DbSslMode::Require,
            "verify-ca" => DbSslMode::VerifyCa,
            "verify-full" => DbSslMode::VerifyFull,
            other => {
                return Err(PgError::Url(format!(
                    "sslmode={other} is not supported; use disable, prefer, require, verify-ca \
                     or verify-full"
                )));
            }
        })
    }
}

/// The TLS part of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTls {
    /// How TLS is used.
    pub mode: DbSslMode,
    /// Roots to check the server with (PEM); `None`: the system's.
    pub root_cert: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for servers that
    /// authenticate clients by certificate.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The libpq keys this module takes out of a URL's query.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS settings out of `url` (its query, then the environment
/// through `env`), returning the URL without them (tokio-postgres does not
/// know `sslrootcert`, `sslcert`, `sslkey`, nor `verify-*`).
pub fn split_url(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, DbTls), PgError> {
    let mut found: [Option<String>; 4] = Default::default();
    let rest = match url.split_once('?') {
        Some((base, query)) if url.contains("://") => {
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match KEYS.iter().position(|key| *key == k) {
                    Some(i) => {
                        let v = percent_encoding::percent_decode_str(v)
                            .decode_utf8()
                            .map_err(|e| PgError::Url(format!("{k}: {e}")))?;
                        found[i] = Some(v.into_owned());
                    }
                    None => kept.push(pair),
                }
            }
            if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        _ if !url.contains("://") => {
            // The key=value form: `host=… sslmode=verify-full …` (values
            // with spaces in quotes are left to tokio-postgres).
            let mut kept = Vec::new();
            for word in url.split_whitespace() {
                let (k, v) = word.split_once('=').unwrap_or((word, ""));
                match KEYS.iter().position(|key| *key == k) {
                    Some(i) => found[i] = Some(v.trim_matches('\'').to_string()),
                    None => kept.push(word),
                }
            }
            kept.join(" ")
        }
        _ => url.to_string(),
    };
    let [mode, root, cert, key] = found;
    let env_var = |v: Option<String>, name: &str| v.or_else(|| env(name).filter(|s| !s.is_empty()));
    let mode = env_var(mode, "PGSSLMODE");
    let root_cert = env_var(root, "PGSSLROOTCERT");
    let cert = env_var(cert, "PGSSLCERT");
    let key = env_var(key, "PGSSLKEY");
    let mut mode = match mode {
        Some(m) => DbSslMode::parse(&m)?,
        None => DbSslMode::Disable,
    };
    // libpq: `require` with a root certificate file checks the chain.
    if mode == DbSslMode::Require && root_cert.as_deref().is_some_and(|r| r != "system") {
        mode = DbSslMode::VerifyCa;
    }
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => {
            return Err(PgError::Url(
                "sslcert and sslkey go together: give both (or PGSSLCERT and PGSSLKEY)".into(),
            ));
        }
    };
    Ok((
        rest,
        DbTls {
            mode,
            root_cert: root_cert.filter(|r| r != "system").map(PathBuf::from),
            client_cert,
        },
    ))
}

impl DbTls {
    /// tokio-postgres's mode for this one (the checks are the connector's).
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            DbSslMode::Disable => SslMode::Disable,
            DbSslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    /// The connector every connection of the store uses.
    pub fn connector(&self) -> Result<MakeRustlsConnect, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls_err = |e: rustls::Error| PgError::Tls(e.to_string());
        let webpki = match self.mode {
            DbSslMode::Disable | DbSslMode::Prefer | DbSslMode::Require => None,
            DbSslMode::VerifyCa | DbSslMode::VerifyFull => {
                let roots = crate::tls::client_roots(self.root_cert.as_deref())
                    .map_err(|e| PgError::Tls(format!("sslrootcert: {e}")))?;
                Some(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| PgError::Tls(e.to_string()))?,
                )
            }
        };
        let verifier = Arc::new(Verifier {
            provider: provider.clone(),
            webpki,
            any_name: self.mode == DbSslMode::VerifyCa,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let file = |p: &PathBuf, e: &dyn std::fmt::Display| {
                    PgError::Tls(format!("{}: {e}", p.display()))
                };
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file(cert, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file(cert, &e))?;
                let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, &e))?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| file(key, &e))?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// How much of the server's certificate is checked: nothing (`prefer`,
/// `require`, as libpq), the chain (`verify-ca`), or the chain and the name
/// (`verify-full`, `webpki` alone). The handshake's signatures always are.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    /// The chain's check; `None`: none.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether a certificate not naming the host passes (`verify-ca`).
    any_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.any_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn libpq_keys_leave_the_url_and_the_rest_stays() {
        let (url, tls) = split_url(
            "postgres://u@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fca.crt",
            none,
        )
        .expect("parses");
        assert_eq!(url, "postgres://u@h:5432/db?application_name=x");
        assert_eq!(tls.mode, DbSslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/ca.crt")));
        let (url, tls) = split_url("host=h dbname=db sslmode=require", none).expect("parses");
        assert_eq!(url, "host=h dbname=db");
        assert_eq!(tls.mode, DbSslMode::Require);
    }

    #[test]
    fn unset_is_disable_and_the_environment_fills_in() {
        let (url, tls) = split_url("postgres://u@h/db", none).expect("parses");
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgres://u@h/db", DbSslMode::Disable)
        );
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGSSLROOTCERT" => Some("/env.crt".to_string()),
            _ => None,
        };
        let (_, tls) = split_url("postgres://u@h/db?sslmode=verify-full", env).expect("parses");
        assert_eq!(tls.mode, DbSslMode::VerifyFull, "the URL wins");
        assert_eq!(tls.root_cert, Some(PathBuf::from("/env.crt")));
    }

    #[test]
    fn require_with_a_root_file_checks_the_chain_as_libpq_does() {
        let (_, tls) =
            split_url("postgres://h/db?sslmode=require&sslrootcert=/r.crt", none).expect("parses");
        assert_eq!(tls.mode, DbSslMode::VerifyCa);
        let (_, tls) =
            split_url("postgres://h/db?sslmode=require&sslrootcert=system", none).expect("parses");
        assert_eq!((tls.mode, tls.root_cert), (DbSslMode::Require, None));
    }

    #[test]
    fn bad_settings_are_one_error_naming_the_fix() {
        let e = split_url("postgres://h/db?sslmode=allow", none).expect_err("refused");
        assert!(e.to_string().contains("verify-full"), "{e}");
        let e = split_url("postgres://h/db?sslcert=/c.pem", none).expect_err("refused");
        assert!(e.to_string().contains("sslkey"), "{e}");
    }
}
