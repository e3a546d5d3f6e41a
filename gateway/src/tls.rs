//! TLS key material from key rings: the certificate chain and key a TLS front end presents,
//! checked at load (the key must match the leaf), with the identity used in audit records.

use std::sync::Arc;

use portcullis_config::KeyRingFiles;
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use sha2::{Digest, Sha256};

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
