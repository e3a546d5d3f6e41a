//! What a backend's TLS handshake showed, for its `backendConnected` record: the version, the
//! cipher suite and the certificate that the endpoint's CAs verified. Nothing here decides
//! anything: the WebPKI verifier and rustls's own suites do, and are only watched.

use std::{
    cell::RefCell,
    fmt::Write as _,
    sync::{Arc, LazyLock},
};

use rustls::{
    CipherSuiteCommon, ConnectionTrafficSecrets, SupportedCipherSuite, Tls12CipherSuite,
    Tls13CipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{
        CryptoProvider,
        cipher::{
            AeadKey, Iv, KeyBlockShape, MessageDecrypter, MessageEncrypter, Tls12AeadAlgorithm,
            Tls13AeadAlgorithm, UnsupportedOperationError,
        },
    },
    pki_types::CertificateDer,
};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Seen {
    /// `TLSv1_3` and the leaf's SHA-256, once the server's signature over the handshake checked.
    cert: Option<(&'static str, String)>,
    /// The suite whose keys were made.
    suite: Option<&'static str>,
}

tokio::task_local! {
    /// What the handshakes of the task inside [`witness`] showed.
    static SEEN: RefCell<Seen>;
}

/// Runs `f` (a backend connection) and returns, with its output, what its TLS handshake showed:
/// `TLSv1_3 TLS13_AES_256_GCM_SHA384 cert-sha256:HEX` (the version by the signature the server
/// made, the suite whose keys were made, and the leaf that the trusted CAs verified). `None`
/// when no full handshake was verified (plaintext, resumed).
pub async fn witness<T>(f: impl Future<Output = T>) -> (T, Option<String>) {
    SEEN.scope(RefCell::new(Seen::default()), async {
        let out = f.await;
        let seen = SEEN.with(|s| s.take());
        (
            out,
            seen.cert
                .map(|(version, cert)| channel(version, seen.suite, &cert)),
        )
    })
    .await
}

fn channel(version: &str, suite: Option<&str>, cert: &str) -> String {
    let mut s = version.to_owned();
    if let Some(suite) = suite {
        let _ = write!(s, " {suite}");
    }
    let _ = write!(s, " cert-sha256:{cert}");
    s
}

/// The aws-lc-rs provider whose suites note, for [`witness`], which of them made keys.
pub(super) fn witnessing_provider() -> CryptoProvider {
    static SUITES: LazyLock<Vec<SupportedCipherSuite>> = LazyLock::new(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .into_iter()
            .map(noting)
            .collect()
    });
    CryptoProvider {
        cipher_suites: SUITES.clone(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// `suite`, the same in all but that building its record keys notes its name. The records
/// themselves are encrypted by the inner algorithm's own encrypters, untouched. Made once per
/// suite for the life of the process (rustls names suites by `&'static`).
fn noting(suite: SupportedCipherSuite) -> SupportedCipherSuite {
    let name: &'static str = format!("{:?}", suite.suite()).leak();
    let common = |c: &CipherSuiteCommon| CipherSuiteCommon {
        suite: c.suite,
        hash_provider: c.hash_provider,
        confidentiality_limit: c.confidentiality_limit,
    };
    match suite {
        SupportedCipherSuite::Tls13(s) => {
            SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                common: common(&s.common),
                hkdf_provider: s.hkdf_provider,
                aead_alg: Box::leak(Box::new(Noting {
                    inner: s.aead_alg,
                    name,
                })),
                quic: s.quic,
            })))
        }
        SupportedCipherSuite::Tls12(s) => {
            SupportedCipherSuite::Tls12(Box::leak(Box::new(Tls12CipherSuite {
                common: common(&s.common),
                prf_provider: s.prf_provider,
                kx: s.kx,
                sign: s.sign,
                aead_alg: Box::leak(Box::new(Noting {
                    inner: s.aead_alg,
                    name,
                })),
            })))
        }
    }
}

struct Noting<A: ?Sized + 'static> {
    inner: &'static A,
    name: &'static str,
}

impl<A: ?Sized> Noting<A> {
    fn note(&self) {
        let _ = SEEN.try_with(|s| s.borrow_mut().suite = Some(self.name));
    }
}

impl Tls13AeadAlgorithm for Noting<dyn Tls13AeadAlgorithm> {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        self.note();
        self.inner.encrypter(key, iv)
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        self.note();
        self.inner.decrypter(key, iv)
    }

    fn key_len(&self) -> usize {
        self.inner.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.inner.extract_keys(key, iv)
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

impl Tls12AeadAlgorithm for Noting<dyn Tls12AeadAlgorithm> {
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        self.note();
        self.inner.encrypter(key, iv, extra)
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        self.note();
        self.inner.decrypter(key, iv)
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        self.inner.key_block_shape()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        self.inner.extract_keys(key, iv, explicit)
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// The WebPKI verifier, noting for [`witness`] what it verified. It decides nothing itself.
#[derive(Debug)]
pub(super) struct Witnessed(pub(super) Arc<rustls::client::WebPkiServerVerifier>);

impl Witnessed {
    fn note(&self, version: &'static str, cert: &CertificateDer<'_>) {
        let cert = hex::encode(Sha256::digest(cert));
        let _ = SEEN.try_with(|s| s.borrow_mut().cert = Some((version, cert)));
    }
}

impl ServerCertVerifier for Witnessed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let ok = self.0.verify_tls12_signature(message, cert, dss)?;
        self.note("TLSv1_2", cert);
        Ok(ok)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let ok = self.0.verify_tls13_signature(message, cert, dss)?;
        self.note("TLSv1_3", cert);
        Ok(ok)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
