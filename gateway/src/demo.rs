//! `portcullis-gateway demo`: the embedded default. SFTP on 127.0.0.1:2222, user `demo` with
//! password `demo`, one mount `/files` on a local directory with every verb, audit as JSON lines
//! on stdout. The host key is made once and kept in the state directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use portcullis_config::Verb;
use russh::keys::{Algorithm, HashAlg, PrivateKey, ssh_key::LineEnding};

use crate::auth;

pub const ADDRESS: &str = "127.0.0.1:2222";
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

    let verbs: Vec<&str> = Verb::ALL.iter().map(|v| v.as_str()).collect();
    let config = format!(
        r#"# Written by `portcullis-gateway demo`; edits are picked up live (hot reload).
listeners:
  - {{ name: sftp, protocol: sftp, address: "{ADDRESS}", zones: [loopback] }}
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
audit: {{ stdout: true }}
shutdownGraceSeconds: 10
"#,
        files = files.display(),
        hash = auth::hash_password("demo"),
        verbs = verbs.join(", "),
        key = key_path.display(),
    );
    let config_path = state.join("demo-config.yaml");
    std::fs::write(&config_path, config)?;

    eprintln!(
        "Portcullis demo gateway\n\
         \x20 files (mounted at /files): {files}\n\
         \x20 state (host key, config):  {state}\n\
         \x20 host key: {fp}\n\
         \x20 connect:  sftp -P 2222 demo@127.0.0.1   (password: demo)\n\
         \x20 admin:    http://{ADMIN}/metrics\n\
         \x20 audit records follow on stdout as JSON lines; Ctrl-C stops.",
        files = files.display(),
        state = state.display(),
        fp = key.public_key().fingerprint(HashAlg::Sha256),
    );
    Ok(config_path)
}
