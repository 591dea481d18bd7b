//! Keys and certificates made for a test: ServiceAccount token signers (a
//! JWK and ES256 tokens) and CAs with leaf certificates (rcgen).

#![allow(dead_code)]

use base64::Engine as _;

/// A ServiceAccount token signer: its key and its public JWK.
pub struct Signer {
    pub kid: String,
    pub key: jsonwebtoken::EncodingKey,
    pub jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A new P-256 signer with key id `kid`.
pub fn signer(kid: &str) -> Signer {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("pair");
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65);
    Signer {
        kid: kid.into(),
        key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }),
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A ServiceAccount token of `sa` (namespace, name) signed by `s`.
pub fn sa_token(s: &Signer, iss: &str, aud: &str, exp: u64, sa: (&str, &str)) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(s.kid.clone());
    let claims = serde_json::json!({
        "iss": iss, "aud": [aud], "exp": exp, "iat": now(), "nbf": now(),
        "sub": format!("system:serviceaccount:{}:{}", sa.0, sa.1),
        "kubernetes.io": {"namespace": sa.0, "serviceaccount": {"name": sa.1, "uid": "u"}},
    });
    jsonwebtoken::encode(&header, &claims, &s.key).expect("sign")
}

/// A CA: its certificate (PEM) and what signs with it.
pub struct Ca {
    pub pem: String,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A new self-signed CA named `name`.
pub fn ca(name: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let pem = p.self_signed(&key).expect("ca").pem();
    Ca {
        pem,
        issuer: rcgen::Issuer::new(p, key),
    }
}

/// A certificate and key (PEM) signed by `ca`, for a server on localhost or
/// a client named `cn`.
pub fn leaf(ca: &Ca, cn: &str, client: bool) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate().expect("key");
    let sans = if client {
        vec![]
    } else {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    };
    let mut p = CertificateParams::new(sans).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// A rustls client configuration trusting `ca_pem` (no client certificate).
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}
