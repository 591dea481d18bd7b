//! The cluster's ServiceAccount signing keys fetched over HTTPS: the API
//! server's `/openid/v1/jwks` (or any JWKS URL), with the pod's own
//! ServiceAccount token and CA when running in a cluster.
//!
//! The document is fetched at start, again every
//! [`JwksSource::refresh`], and again soon after a token arrives signed by a
//! key it does not hold (the cluster rotated its keys; at most once per
//! [`JwksSource::min_refetch`]). A fetch that fails keeps the keys in force.
//!
//! Plain `http://` is accepted only to a loopback address (tests, a local
//! proxy): keys fetched over an unauthenticated channel could be anyone's.

use super::jwt::Jwks;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The keyword of `--auth-jwks-url` for the API server of the cluster the
/// server runs in.
pub const IN_CLUSTER: &str = "in-cluster";

/// The API server's JWKS, as seen from a pod.
pub const IN_CLUSTER_URL: &str = "https://kubernetes.default.svc/openid/v1/jwks";
/// A pod's ServiceAccount token (mounted by Kubernetes).
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster's CA bundle, as mounted in a pod.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;
/// A fetch that takes longer fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the JWKS is fetched from, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// `https://…` (or `http://` to a loopback address).
    pub url: String,
    /// CA certificates (PEM) the server's certificate must chain to; `None`:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A bearer token sent with each fetch (read at each fetch): the pod's
    /// ServiceAccount token in a cluster.
    pub token_file: Option<PathBuf>,
    /// How often the keys are fetched again.
    pub refresh: Duration,
    /// Least time between two fetches caused by an unknown key.
    pub min_refetch: Duration,
}

/// The default of [`JwksSource::refresh`].
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The default of [`JwksSource::min_refetch`].
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(10);

impl JwksSource {
    /// The source `--auth-jwks-url` names: [`IN_CLUSTER`] is the cluster's
    /// API server with the pod's token and CA; a URL is taken as it is.
    pub fn from_flag(url: &str) -> Self {
        if url == IN_CLUSTER {
            JwksSource {
                url: IN_CLUSTER_URL.to_string(),
                ca_file: Some(PathBuf::from(IN_CLUSTER_CA)),
                token_file: Some(PathBuf::from(IN_CLUSTER_TOKEN)),
                refresh: DEFAULT_REFRESH,
                min_refetch: DEFAULT_MIN_REFETCH,
            }
        } else {
            JwksSource {
                url: url.to_string(),
                ca_file: None,
                token_file: None,
                refresh: DEFAULT_REFRESH,
                min_refetch: DEFAULT_MIN_REFETCH,
            }
        }
    }
}

/// Why a fetch of the JWKS failed.
#[derive(Debug, thiserror::Error)]
#[error("fetching the JWKS from {url}: {why}")]
pub struct FetchError {
    /// The URL.
    pub url: String,
    /// Why.
    pub why: String,
}

/// Where to connect, parsed from the URL.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    path_and_query: String,
}

fn target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); give https://HOST[:PORT]/PATH"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with https://".into()),
    };
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !tls {
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(
                "http:// is accepted only to a loopback address; use https:// (keys fetched \
                 in plaintext could be anyone's)"
                    .into(),
            );
        }
    }
    Ok(Target {
        tls,
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        path_and_query: uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        host,
    })
}

/// Anything a request can be sent over.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl JwksSource {
    /// Fetches and parses the document once.
    pub async fn fetch(&self) -> Result<Jwks, FetchError> {
        let err = |why: String| FetchError {
            url: self.url.clone(),
            why,
        };
        let text = tokio::time::timeout(TIMEOUT, self.get())
            .await
            .map_err(|_| err(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(err)?;
        Jwks::parse(&text).map_err(|e| FetchError {
            url: self.url.clone(),
            why: e.to_string(),
        })
    }

    async fn get(&self) -> Result<String, String> {
        let t = target(&self.url)?;
        let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", t.host, t.port))?;
        let stream: Box<dyn Stream> = if t.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(crate::tls::client_roots(self.ca_file.as_deref())?)
                .with_no_client_auth();
            let name = ServerName::try_from(t.host.clone())
                .map_err(|e| format!("{:?} is not a host name: {e}", t.host))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let mut req = http::Request::get(t.path_and_query.as_str())
            .header(http::header::HOST, &t.host)
            .header(http::header::ACCEPT, "application/json");
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        conn.abort();
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let head: String = text.chars().take(200).collect();
            return Err(format!("answered {status}: {head}"));
        }
        Ok(text.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(target("https://kubernetes.default.svc/openid/v1/jwks").is_ok());
        let t = target("http://127.0.0.1:8080/keys?x=1").expect("loopback");
        assert_eq!((t.port, t.path_and_query.as_str()), (8080, "/keys?x=1"));
        assert!(target("http://[::1]/k").is_ok());
        let e = target("http://example.com/jwks").err().unwrap_or_default();
        assert!(e.contains("loopback"), "{e}");
        assert!(target("ftp://x/").is_err());
        assert_eq!(
            JwksSource::from_flag(IN_CLUSTER).token_file,
            Some(PathBuf::from(IN_CLUSTER_TOKEN))
        );
    }
}
