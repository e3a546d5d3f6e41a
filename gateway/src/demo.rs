//! `portcullis-gateway demo`: the embedded default. SFTP on 127.0.0.1:2222, explicit FTPS on
//! 127.0.0.1:2121 and implicit FTPS on 127.0.0.1:2990 (passive ports 30000-30099), user `demo`
//! with password `demo`, one mount `/files` on a local directory with every verb, audit as JSON
//! lines on stdout and chained, checkpointed and signed in `DIR/audit/`. The host key, a demo CA
//! with its server certificate, and the audit signing key are made once and kept in the state
//! directory; the signing key's public half is `DIR/audit-signing.pub`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::Verb;
use russh::keys::{Algorithm, HashAlg, PrivateKey, ssh_key::LineEnding};

use crate::auth;

pub const ADDRESS: &str = "127.0.0.1:2222";
pub const FTPS: &str = "127.0.0.1:2121";
pub const FTPS_IMPLICIT: &str = "127.0.0.1:2990";
pub const ADMIN: &str = "127.0.0.1:9922";

/// Lays out `dir` (a fresh temporary directory when `None`) and returns the config file path.
/// `dir/files` backs the `/files` mount; `dir/state` holds the host key and the config, out of
/// reach of the mount.
pub fn prepare(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("portcullis-demo-")
            .tempdir()?
            .keep(),
    };
    let files = dir.join("files");
    let state = dir.join("state");
    std::fs::create_dir_all(&files)?;
    std::fs::create_dir_all(&state)?;
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;

    let key_path = state.join("ssh_host_ed25519_key");
    let key = if key_path.exists() {
        russh::keys::load_secret_key(&key_path, None).context("loading the demo host key")?
    } else {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
        key.write_openssh_file(&key_path, LineEnding::LF)?;
        key
    };

    let tls = state.join("tls");
    let (ca_pem, cert_pem, key_pem) = (
        tls.join("ca.pem"),
        tls.join("server.pem"),
        tls.join("server-key.pem"),
    );
    if !(ca_pem.exists() && cert_pem.exists() && key_pem.exists()) {
        std::fs::create_dir_all(&tls)?;
        let (ca, cert, key) = demo_certificates().context("making the demo certificates")?;
        std::fs::write(&ca_pem, ca)?;
        std::fs::write(&cert_pem, cert)?;
        std::fs::write(&key_pem, key)?;
        std::fs::set_permissions(
            &key_pem,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }

    let audit_dir = dir.join("audit");
    std::fs::create_dir_all(&audit_dir)?;
    let signing_key = state.join("audit-signing.pem");
    let public_key = dir.join("audit-signing.pub");
    if !signing_key.exists() {
        crate::audit::chain::write_key_pair(&signing_key, &public_key)?;
    } else if !public_key.exists() {
        let private = std::fs::read_to_string(&signing_key)?;
        std::fs::write(
            &public_key,
            crate::audit::chain::public_key_pem(&private).map_err(anyhow::Error::msg)?,
        )?;
    }

    let verbs: Vec<&str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
    let config = format!(
        r#"# Written by `portcullis-gateway demo`; edits are picked up live (hot reload).
listeners:
  - {{ name: sftp, protocol: sftp, address: "{ADDRESS}", zones: [loopback] }}
  - name: ftps
    protocol: ftps
    address: "{FTPS}"
    zones: [loopback]
    tls: {{ keyRing: demo }}
    passivePorts: {{ min: 30000, max: 30099 }}
  - name: ftps-implicit
    protocol: ftpsImplicit
    address: "{FTPS_IMPLICIT}"
    zones: [loopback]
    tls: {{ keyRing: demo }}
    passivePorts: {{ min: 30000, max: 30099 }}
keyRings:
  - {{ name: demo, certificateFile: "{cert}", privateKeyFile: "{key_file}" }}
zones:
  - {{ name: loopback, cidrs: ["127.0.0.0/8", "::1/128"] }}
endpoints:
  - {{ name: demo-files, type: local, root: "{files}" }}
users:
  - name: demo
    passwordHash: "{hash}"
    zones: [loopback]
    roles: [demo]
roles:
  - name: demo
    mounts:
      - {{ path: /files, endpoint: demo-files, verbs: [{verbs}] }}
ssh:
  hostKeyFiles: ["{key}"]
admin: {{ address: "{ADMIN}" }}
audit: {{ stdout: true, file: "{audit_file}", signingKeyFile: "{signing_key}" }}
shutdownGraceSeconds: 10
"#,
        files = files.display(),
        hash = auth::hash_password("demo"),
        verbs = verbs.join(", "),
        key = key_path.display(),
        cert = cert_pem.display(),
        key_file = key_pem.display(),
        audit_file = audit_dir.join("audit.jsonl").display(),
        signing_key = signing_key.display(),
    );
    let config_path = state.join("demo-config.yaml");
    std::fs::write(&config_path, config)?;

    eprintln!(
        "Portcullis demo gateway\n\
         \x20 files (mounted at /files): {files}\n\
         \x20 state (host key, config):  {state}\n\
         \x20 host key: {fp}\n\
         \x20 connect:  sftp -P 2222 demo@127.0.0.1   (password: demo)\n\
         \x20 FTPS:     curl --ssl-reqd --cacert {ca} ftp://demo:demo@localhost:2121/files/\n\
         \x20           curl --cacert {ca} ftps://demo:demo@localhost:2990/files/  (implicit)\n\
         \x20 demo CA:  {ca}\n\
         \x20 admin:    http://{ADMIN}/metrics\n\
         \x20 audit:    {audit}/ (chained, with signed checkpoints)\n\
         \x20 verify:   portcullis-gateway audit verify --key {pubkey} {audit}\n\
         \x20 audit records also follow on stdout as JSON lines; Ctrl-C stops.",
        files = files.display(),
        state = state.display(),
        fp = key.public_key().fingerprint(HashAlg::Sha256),
        ca = ca_pem.display(),
        audit = audit_dir.display(),
        pubkey = dir.join("audit-signing.pub").display(),
    );
    Ok(config_path)
}

/// A demo CA and a server certificate it signs for `localhost` and 127.0.0.1: PEM of the CA
/// certificate, the server certificate, and the server key. The CA key is not kept.
fn demo_certificates() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Portcullis demo CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    leaf.distinguished_name = dn;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}
