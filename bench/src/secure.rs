//! `workq-bench secure`: what TLS and authentication cost in throughput.
//!
//! The same unary workload against four queue-servers started side by side
//! (memory store unless `--store`): plaintext without authentication, TLS
//! (`--tls-cert`, a certificate made here with rcgen), a bearer token
//! (`--auth-tokens-file`, the token on every call), both, and TLS with a
//! Kubernetes ServiceAccount token (`tls+jwt`: an ES256 JWT verified
//! against `--auth-jwks-file` on every call). Each round
//! runs every configuration in turn; medians are reported, with each
//! configuration's cost against plaintext. Unary calls are the worst case
//! for authentication (it runs per call; a stream authenticates once).

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use workq_proto::v1 as pb;

/// `workq-bench secure`'s flags.
#[derive(Debug, clap::Args)]
pub struct SecureArgs {
    /// Configurations to compare, comma separated: plain, tls, token,
    /// tls+token, tls+jwt.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,tls,token,tls+token,tls+jwt"
    )]
    configs: Vec<String>,
    /// Items per measurement.
    #[arg(long, default_value_t = 200_000)]
    items: u64,
    /// Items per Enqueue and per Lease.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Payload bytes per item.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Concurrent producers, and consumers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The server's store.
    #[arg(long, default_value = "memory")]
    store: String,
}

/// One configuration: whether it uses TLS and a token, and whether the
/// token is a ServiceAccount JWT.
#[derive(Debug, Clone, Copy)]
struct Config {
    tls: bool,
    token: bool,
    jwt: bool,
}

impl Config {
    fn parse(s: &str) -> Result<Config> {
        Ok(match s {
            "plain" => Config {
                tls: false,
                token: false,
                jwt: false,
            },
            "tls" => Config {
                tls: true,
                token: false,
                jwt: false,
            },
            "token" => Config {
                tls: false,
                token: true,
                jwt: false,
            },
            "tls+token" => Config {
                tls: true,
                token: true,
                jwt: false,
            },
            "tls+jwt" => Config {
                tls: true,
                token: true,
                jwt: true,
            },
            _ => bail!("unknown configuration {s:?}: use plain, tls, token, tls+token or tls+jwt"),
        })
    }
}

const TOKEN: &str = "bench-token";

/// Adds the bearer token when there is one.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = pb::queue_service_client::QueueServiceClient<InterceptedService<Channel, Bearer>>;

/// A queue-server in one configuration.
struct Server {
    child: Child,
    name: String,
    addr: String,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificate (for localhost) and key, and the CA that signed it, PEM;
/// a ServiceAccount signing key's JWKS and a token it signed.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    jwks: String,
    jwt: String,
}

const ISSUER: &str = "https://kubernetes.default.svc";

/// A P-256 key's JWKS and a ServiceAccount token (jobs/bench, audience
/// workq, an hour) signed with it.
fn serviceaccount() -> Result<(String, String)> {
    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    }]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("bench".into());
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": ["workq"], "exp": now + 3600, "iat": now, "nbf": now,
        "sub": "system:serviceaccount:jobs:bench",
        "kubernetes.io": {"namespace": "jobs", "serviceaccount": {"name": "bench", "uid": "u"}},
    });
    let jwt = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
    )?;
    Ok((jwks.to_string(), jwt))
}

fn pki() -> Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    let (jwks, jwt) = serviceaccount()?;
    Ok(Pki {
        ca: ca_pem,
        cert: cert.pem(),
        key: key.serialize_pem(),
        jwks,
        jwt,
    })
}

fn start(bin: &Path, name: &str, config: Config, store: &str, pki: &Pki) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--store", store])
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    if config.tls {
        std::fs::write(dir.path().join("tls.crt"), &pki.cert)?;
        std::fs::write(dir.path().join("tls.key"), &pki.key)?;
        cmd.arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"));
    }
    if config.token {
        let grants = dir.path().join("grants.yaml");
        std::fs::write(
            &grants,
            format!(
                "- name: bench\n  token: {TOKEN}\n  serviceaccounts: [{{namespace: jobs, name: bench}}]\n  \
                 grants: [{{verbs: [\"*\"], queues: [\"*\"]}}]\n"
            ),
        )?;
        cmd.arg("--auth-tokens-file").arg(grants);
        if config.jwt {
            std::fs::write(dir.path().join("jwks.json"), &pki.jwks)?;
            cmd.arg("--auth-jwks-file")
                .arg(dir.path().join("jwks.json"))
                .args(["--auth-issuer", ISSUER]);
        }
    }
    cmd.env("RUST_LOG", "warn");
    let (child, addr) = crate::server::spawn_listening(&mut cmd, bin)?;
    Ok(Server {
        child,
        name: name.to_string(),
        addr,
        config,
        _dir: dir,
    })
}

async fn client(s: &Server, pki: &Pki) -> Result<Client> {
    let ca = pki.ca.as_str();
    let port = s.addr.rsplit(':').next().unwrap_or_default();
    let channel = if s.config.tls {
        Endpoint::from_shared(format!("https://localhost:{port}"))?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )?
            .tcp_nodelay(true)
            .connect()
            .await?
    } else {
        Endpoint::from_shared(format!("http://{}", s.addr))?
            .tcp_nodelay(true)
            .connect()
            .await?
    };
    let bearer = if s.config.jwt {
        Some(format!("Bearer {}", pki.jwt).parse()?)
    } else if s.config.token {
        Some(format!("Bearer {TOKEN}").parse()?)
    } else {
        None
    };
    Ok(
        pb::queue_service_client::QueueServiceClient::with_interceptor(channel, Bearer(bearer))
            .max_decoding_message_size(64 << 20),
    )
}

/// Enqueue then lease+complete `items` on a new queue: items/s of each.
async fn measure(a: &SecureArgs, s: &Server, pki: &Pki, round: usize) -> Result<(f64, f64)> {
    let queue = format!("secure-{round}");
    let mut clients = Vec::new();
    for _ in 0..a.clients.max(1) {
        clients.push(client(s, pki).await?);
    }
    clients[0]
        .create_queue(pb::CreateQueueRequest {
            name: queue.clone(),
            settings: None,
        })
        .await?;
    let calls = a.items.div_ceil(a.batch as u64);
    let per = calls.div_ceil(clients.len() as u64);
    let payload = vec![7u8; a.payload];
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients.clone() {
        let (queue, payload, batch) = (queue.clone(), payload.clone(), a.batch);
        tasks.spawn(async move {
            for _ in 0..per {
                let items = (0..batch)
                    .map(|_| pb::NewItem {
                        payload: payload.clone().into(),
                        ..Default::default()
                    })
                    .collect();
                c.enqueue(pb::EnqueueRequest {
                    queue: queue.clone(),
                    items,
                    ..Default::default()
                })
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let enqueued = per * clients.len() as u64 * a.batch as u64;
    let enqueue = enqueued as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let (queue, batch) = (queue.clone(), a.batch);
        tasks.spawn(async move {
            let mut held = Vec::new();
            let mut taken = 0u64;
            loop {
                let l = c
                    .lease(pb::LeaseRequest {
                        queue: queue.clone(),
                        max_items: i32::try_from(batch).unwrap_or(i32::MAX),
                        lease: Some(workq_proto::time::duration(Duration::from_secs(60))),
                        wait: None,
                        complete_tokens: std::mem::take(&mut held),
                        max_bytes: 0,
                    })
                    .await?
                    .into_inner();
                if l.items.is_empty() {
                    return anyhow::Ok(taken);
                }
                taken += l.items.len() as u64;
                held = l.items.into_iter().map(|i| i.lease_token).collect();
            }
        });
    }
    let mut taken = 0;
    while let Some(r) = tasks.join_next().await {
        taken += r??;
    }
    if taken != enqueued {
        bail!("{}: leased {taken} of {enqueued}", s.name);
    }
    let consume = taken as f64 / t.elapsed().as_secs_f64();
    Ok((enqueue, consume))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `workq-bench secure` against `bin`.
pub async fn secure(a: &SecureArgs, bin: &Path) -> Result<()> {
    let pki = pki()?;
    let mut servers = Vec::new();
    for name in &a.configs {
        servers.push(start(bin, name, Config::parse(name)?, &a.store, &pki)?);
    }
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); servers.len()];
    let n = servers.len();
    for round in 0..a.rounds {
        eprintln!("round {}/{}", round + 1, a.rounds);
        // Each round starts one configuration later: none always runs first
        // or last (the machine's load drifts within a round).
        for k in 0..n {
            let i = (round + k) % n;
            let s = &servers[i];
            let (e, c) = measure(a, s, &pki, round)
                .await
                .with_context(|| format!("{} round {round}", s.name))?;
            eprintln!(
                "  {:<10} enqueue {e:>10.0} items/s   lease+complete {c:>10.0} items/s",
                s.name
            );
            results[i].0.push(e);
            results[i].1.push(c);
        }
    }
    println!(
        "{} items of {} B, batch {}, {} producers then {} consumers, {} store, {} rounds\n\
         (items/s: medians over rounds; cost: 1 - the median over rounds of the ratio to the \
         first configuration in the same round)\n",
        a.items, a.payload, a.batch, a.clients, a.clients, a.store, a.rounds
    );
    println!("| configuration | enqueue items/s | cost | lease+complete items/s | cost |");
    println!("|---|---:|---:|---:|---:|");
    let (base_e, base_c) = results[0].clone();
    for (s, (e, c)) in servers.iter().zip(results.iter()) {
        let mut re: Vec<f64> = e.iter().zip(&base_e).map(|(x, b)| x / b).collect();
        let mut rc: Vec<f64> = c.iter().zip(&base_c).map(|(x, b)| x / b).collect();
        let (mut e, mut c) = (e.clone(), c.clone());
        println!(
            "| {} | {:.0} | {:+.1}% | {:.0} | {:+.1}% |",
            s.name,
            median(&mut e),
            (1.0 - median(&mut re)) * 100.0,
            median(&mut c),
            (1.0 - median(&mut rc)) * 100.0
        );
    }
    Ok(())
}
