//! The pure half of the key ring CA: make a CA, issue a leaf, read a certificate, make SSH host
//! keys, and decide when to renew. No client, no clock of its own (callers pass `now`).

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, ssh_key::LineEnding};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The lifetime of an operator CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A leaf's lifetime when the key ring does not say (90 days, as cert-manager).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("not a PEM X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("SSH key generation failed: {0}")]
    Ssh(String),
}

/// PEM certificate and PEM private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a key ring's leaf says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
}

pub fn new_ca(common_name: &str, now: OffsetDateTime) -> Result<Pair, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Portcullis");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + CA_LIFETIME;
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving (and client) certificate for `dns`/`ips`, signed by `ca`, valid from
/// `now` for `lifetime`.
pub fn issue_leaf(
    ca: &Pair,
    common_name: &str,
    dns: &[String],
    ips: &[String],
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<Pair, CaError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = dns
        .iter()
        .map(|d| d.clone().try_into().map(SanType::DnsName))
        .collect::<Result<_, _>>()?;
    for ip in ips {
        if let Ok(a) = ip.parse::<IpAddr>() {
            params.subject_alt_names.push(SanType::IpAddress(a));
        }
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::seconds(30);
    params.not_after = now + lifetime;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the first certificate of a PEM bundle.
pub fn facts(pem: &str) -> Result<CertFacts, CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let cert = p
        .parse_x509()
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                        _ => continue,
                    };
                    ip_addresses.push(ip.to_string());
                }
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: hex::encode(Sha256::digest(&p.contents)),
        dns_names,
        ip_addresses,
    })
}

/// Checks that a PEM certificate and private key parse and belong together.
pub fn check_pair(pair: &Pair) -> Result<(), CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes())
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let cert = p
        .parse_x509()
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    let key = KeyPair::from_pem(&pair.key_pem)?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::KeyMismatch);
    }
    Ok(())
}

/// When to renew: `renew_before` ahead of notAfter, or a third of the lifetime by default.
pub fn renewal_time(facts: &CertFacts, renew_before: Option<Duration>) -> i64 {
    let lifetime = facts.not_after - facts.not_before;
    let before = renew_before.map_or(lifetime / 3, |d| d.as_secs() as i64);
    facts.not_after - before
}

/// Parses a duration exactly as Go's `time.ParseDuration` does, which is what the CRD's CEL
/// `duration()` rules accept: decimal numbers with an optional fraction, each with a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `2160h`, `1.5h` or `1h30m`. Negative
/// durations are refused (no key ring duration can be one).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = |r: &str| r.bytes().take_while(u8::is_ascii_digit).count();
        let (int, r) = rest.split_at(digits(rest));
        let (frac, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(digits(r)),
            None => ("", r),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let (unit, r) = r.split_at(
            r.find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(r.len()),
        );
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut nanos = whole.checked_mul(scale)?;
        let mut place = scale;
        for d in frac.bytes() {
            place /= 10;
            nanos += u128::from(d - b'0') * place;
        }
        total = total.checked_add(nanos)?;
        rest = r;
    }
    // Go's limit: an int64 of nanoseconds.
    (total <= i64::MAX as u128).then(|| Duration::from_nanos(total as u64))
}

/// A new OpenSSH private key: ed25519 or ECDSA P-256.
pub fn new_host_key(ecdsa: bool) -> Result<String, CaError> {
    let alg = if ecdsa {
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        }
    } else {
        Algorithm::Ed25519
    };
    let key = PrivateKey::random(&mut rand::rng(), alg).map_err(|e| CaError::Ssh(e.to_string()))?;
    key.to_openssh(LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| CaError::Ssh(e.to_string()))
}

/// `SHA256:...` of an OpenSSH private key's public half.
pub fn host_key_fingerprint(private_pem: &str) -> Option<String> {
    let key = russh::keys::decode_secret_key(private_pem, None).ok()?;
    Some(key.public_key().fingerprint(HashAlg::Sha256).to_string())
}

/// A new Ed25519 audit signing key, PKCS#8 PEM (what `audit.signingKeyFile` reads).
pub fn new_audit_signing_key() -> Result<String, CaError> {
    Ok(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?.serialize_pem())
}

/// An audit signing key's public half (PEM `PUBLIC KEY`) and key id (the first 8 bytes of the
/// SHA-256 of the raw public key, hex, as the gateway's checkpoints name it); `None` if it is
/// not an Ed25519 private key.
pub fn audit_key_facts(private_pem: &str) -> Option<(String, String)> {
    let pair = rcgen::KeyPair::from_pem(private_pem).ok()?;
    if !pair.is_compatible(&rcgen::PKCS_ED25519) {
        return None;
    }
    let id = hex::encode(&Sha256::digest(pair.public_key_raw())[..8]);
    Some((pair.public_key_pem(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_signing_key_is_ed25519_and_its_id_is_stable() {
        let pem = new_audit_signing_key().unwrap();
        let (public, id) = audit_key_facts(&pem).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
        assert_eq!(id.len(), 16);
        assert_eq!(audit_key_facts(&pem).unwrap().1, id);
        assert_ne!(
            audit_key_facts(&new_audit_signing_key().unwrap())
                .unwrap()
                .1,
            id
        );
        let ecdsa = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(audit_key_facts(&ecdsa), None);
        assert_eq!(audit_key_facts("not a key"), None);
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(
            parse_duration("2160h"),
            Some(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
        // What CEL's duration() accepts, this accepts with the same value.
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration(".5h"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1.h"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("2h45m30.5s"),
            Some(Duration::from_millis(9_930_500))
        );
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3us"), Some(Duration::from_nanos(3000)));
        assert_eq!(parse_duration("3\u{b5}s"), Some(Duration::from_nanos(3000)));
        assert_eq!(parse_duration("+90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        // And what it refuses, this refuses.
        for bad in ["1.5", ".h", "-1h", "1h-5m", "1 h", "h", "1hh", "3000000h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_leaf_carries_its_names_and_lifetime_and_chains_to_the_ca() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca("test ca", now).unwrap();
        let leaf = issue_leaf(
            &ca,
            "gw",
            &["ftps.example.com".into()],
            &["192.0.2.7".into()],
            now,
            Duration::from_secs(3600),
        )
        .unwrap();
        let f = facts(&leaf.cert_pem).unwrap();
        assert_eq!(f.dns_names, ["ftps.example.com"]);
        assert_eq!(f.ip_addresses, ["192.0.2.7"]);
        assert_eq!(f.not_after - f.not_before, 3600 + 30);
        // Default renewal: a third of the lifetime before expiry.
        assert_eq!(renewal_time(&f, None), f.not_after - (3600 + 30) / 3);
        assert_eq!(
            renewal_time(&f, Some(Duration::from_secs(60))),
            f.not_after - 60
        );
        // The leaf verifies against the CA (rustls's verifier, the gateway's TLS stack).
        use rustls::{
            client::danger::ServerCertVerifier,
            pki_types::{CertificateDer, pem::PemObject},
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            rustls::crypto::aws_lc_rs::default_provider().into(),
        )
        .build()
        .unwrap();
        let leaf_der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf_der,
                &[],
                &"ftps.example.com".try_into().unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn a_key_from_another_pair_is_refused() {
        let now = OffsetDateTime::now_utc();
        let a = new_ca("a", now).unwrap();
        let b = new_ca("b", now).unwrap();
        check_pair(&a).unwrap();
        let mixed = Pair {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem,
        };
        assert!(matches!(check_pair(&mixed), Err(CaError::KeyMismatch)));
    }

    #[test]
    fn host_keys_are_openssh_and_fingerprint() {
        for ecdsa in [false, true] {
            let k = new_host_key(ecdsa).unwrap();
            assert!(k.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
            assert!(host_key_fingerprint(&k).unwrap().starts_with("SHA256:"));
        }
    }
}
