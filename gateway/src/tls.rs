//! TLS key material from key rings: the certificate chain and key a TLS front end presents,
//! checked at load (the key must match the leaf), with the identity used in audit records.

use std::{fmt, sync::Arc};

use portcullis_config::KeyRingFiles;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use sha2::{Digest, Sha256};

mod witness;

pub use witness::witness;

/// One key ring's loaded certificate.
pub struct KeyRingCert {
    pub certified: Arc<CertifiedKey>,
    /// SHA-256 of the leaf certificate (DER), hex.
    pub sha256: String,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    /// CAs that verify client certificates.
    pub client_cas: Vec<CertificateDer<'static>>,
    /// CAs that verify TLS backends.
    pub backend_cas: Vec<CertificateDer<'static>>,
}

pub fn load_key_ring(k: &KeyRingFiles) -> Result<KeyRingCert, String> {
    let chain = load_certs(&k.certificate_file)?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no certificate", k.certificate_file));
    };
    let key = PrivateKeyDer::from_pem_file(&k.private_key_file)
        .map_err(|e| format!("{}: no usable private key: {e}", k.private_key_file))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| format!("{}: {e}", k.private_key_file))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", k.certificate_file))?;
    let not_after = parsed.validity().not_after.timestamp();
    let cas = |f: &Option<String>| f.as_deref().map(load_certs).transpose();
    Ok(KeyRingCert {
        sha256: hex::encode(Sha256::digest(leaf.as_ref())),
        not_after,
        certified: Arc::new(certified),
        client_cas: cas(&k.client_ca_file)?.unwrap_or_default(),
        backend_cas: cas(&k.backend_ca_file)?.unwrap_or_default(),
    })
}

fn load_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{file}: {e}"))
}

/// Picks the certificate for each new TLS handshake from whatever the runtime holds *now*, so
/// a renewed key ring is served on the next connection while open ones keep theirs.
pub struct LiveCert {
    current: Box<dyn Fn() -> Option<Arc<CertifiedKey>> + Send + Sync>,
}

impl LiveCert {
    /// `current` looks the key ring up in the runtime in force, e.g.
    /// `move || shared.runtime.load().certificates.get(&name).map(|c| c.certified.clone())`.
    pub fn new(current: impl Fn() -> Option<Arc<CertifiedKey>> + Send + Sync + 'static) -> Self {
        LiveCert {
            current: Box::new(current),
        }
    }
}

impl fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiveCert")
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None fails the handshake: without a usable certificate there is no service.
        (self.current)()
    }
}

/// A TLS server config on aws-lc-rs: TLS 1.3 preferred, TLS 1.2 allowed only when
/// `allow_tls12`, certificates from `certs`.
pub fn server_config(
    certs: LiveCert,
    allow_tls12: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    Ok(Arc::new(config))
}

/// The identities a client certificate asserts: subject CNs, DNS and e-mail SANs. Only called
/// on certificates the verifier accepted.
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) | GeneralName::RFC822Name(d) => names.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    names
}

/// A TLS client config toward a backend: only `ca_file`'s certificates are trusted (a CA, or
/// the server's own self-signed certificate), with an optional client certificate.
pub fn backend_client_config(
    ca_file: &str,
    client_cert: Option<&str>,
    client_key: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = load_certs(ca_file)?;
    if cas.is_empty() {
        return Err(format!("{ca_file}: no certificate"));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| format!("{ca_file}: unusable CA: {e}"))?;
    }
    let provider = Arc::new(witness::witnessing_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("{ca_file}: {e}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(witness::Witnessed(verifier)));
    let config = match (client_cert, client_key) {
        (Some(c), Some(k)) => {
            let chain = load_certs(c)?;
            let key = PrivateKeyDer::from_pem_file(k)
                .map_err(|e| format!("{k}: no usable private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{c}: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use arc_swap::ArcSwapOption;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};

    use super::*;

    fn issue(
        ca: &rcgen::Issuer<'_, rcgen::KeyPair>,
    ) -> (Arc<CertifiedKey>, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["gw.test".to_owned()]).unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        let der = cert.der().clone();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let ck = CertifiedKey::from_der(vec![der.clone()], key_der, &provider).unwrap();
        (Arc::new(ck), der)
    }

    /// A full in-memory handshake; returns the certificate the server presented.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
    ) -> CertificateDer<'static> {
        try_handshake(server, client).unwrap()
    }

    fn try_handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
    ) -> Result<CertificateDer<'static>, rustls::Error> {
        let mut c = ClientConnection::new(client.clone(), "gw.test".try_into().unwrap())?;
        let mut s = ServerConnection::new(server.clone())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut back = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut back).unwrap();
            }
            c.read_tls(&mut back.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!c.is_handshaking());
        Ok(c.peer_certificates().unwrap()[0].clone().into_owned())
    }

    fn new_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, rcgen::Certificate) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        (rcgen::Issuer::new(ca_params, ca_key), ca_cert)
    }

    #[test]
    fn the_cipher_suites_a_config_may_name_are_the_providers() {
        let names: Vec<String> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        let ours: Vec<&str> = portcullis_config::CipherSuite::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(names, ours);
        // The config's spelling is the enum's serde name, and that is rustls's name too.
        for c in portcullis_config::CipherSuite::ALL {
            let spelled = serde_json::to_value(c).unwrap();
            assert_eq!(spelled, c.as_str());
        }
    }

    #[tokio::test]
    async fn a_backend_handshake_is_witnessed_with_its_version_suite_and_verified_certificate() {
        let (ca, ca_cert) = new_ca();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let client = backend_client_config(ca_file.to_str().unwrap(), None, None).unwrap();
        let (served, served_der) = issue(&ca);
        let cert_hash = hex::encode(Sha256::digest(&served_der));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        for (version, suite, name) in [
            (
                &rustls::version::TLS13,
                rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                "TLSv1_3 TLS13_CHACHA20_POLY1305_SHA256",
            ),
            (
                &rustls::version::TLS12,
                rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ),
        ] {
            // The server picks the one suite it has; the record must name that one.
            let server = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::CryptoProvider {
                    cipher_suites: vec![suite],
                    ..(*provider).clone()
                },
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LiveCert::new({
                let served = served.clone();
                move || Some(served.clone())
            })));
            let server = Arc::new(server);
            let (got, seen) = witness(async { handshake(&server, &client) }).await;
            assert_eq!(got, served_der);
            assert_eq!(seen, Some(format!("{name} cert-sha256:{cert_hash}")));
        }
        // Outside a witnessed task nothing is noted, and nothing fails.
        let server = server_config(LiveCert::new(move || Some(served.clone())), false).unwrap();
        assert_eq!(handshake(&server, &client), served_der);
        // A handshake that fails verification (an unknown CA) is not witnessed.
        let (other, _) = new_ca();
        let (stranger, _) = issue(&other);
        let server = server_config(LiveCert::new(move || Some(stranger.clone())), false).unwrap();
        let (failed, seen) = witness(async { try_handshake(&server, &client) }).await;
        assert!(failed.is_err() && seen.is_none(), "{seen:?}");
    }

    #[test]
    fn a_renewed_certificate_is_served_on_the_next_handshake() {
        let (ca, ca_cert) = new_ca();
        let (first, first_der) = issue(&ca);
        let (second, second_der) = issue(&ca);

        let live = Arc::new(ArcSwapOption::from(Some(first)));
        let reader = live.clone();
        let server = server_config(LiveCert::new(move || reader.load_full()), true).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        // A new client: a full handshake each time (a resumed session would not be shown a
        // certificate at all).
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);

        assert_eq!(handshake(&server, &client), first_der);
        live.store(Some(second));
        assert_eq!(handshake(&server, &client), second_der);
    }
}
