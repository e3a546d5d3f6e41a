//! The compiled config: a [`Runtime`] holds everything a connection needs, with key material
//! parsed and secrets loaded. It is swapped whole on reload, so a session sees one consistent
//! snapshot per operation; [`compile`] reports every error at once, in the config's own paths.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    str::FromStr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use portcullis_config::{
    ConfigError, EndpointBackend, GatewayConfig, PassiveSlice, UploadMode, validate,
};
use russh::{
    MethodKind, MethodSet, SshId, cipher, kex,
    keys::{Algorithm, PrivateKey, PublicKey},
    mac,
    server::Config as SshConfig,
};
use sha2::{Digest, Sha256};

use crate::{
    audit::AlgorithmInfo,
    auth::{self, Chains, Totp},
    backends::{
        ftps::FtpsSpec,
        local::LocalBackend,
        sftp::{Credential, SftpSpec},
    },
    policy::Tree,
    tls,
};

pub struct Runtime {
    pub config: GatewayConfig,
    /// SHA-256 of the config text, hex.
    pub hash: String,
    zones: Zones,
    pub users: HashMap<String, Arc<UserEntry>>,
    pub endpoints: HashMap<String, Arc<EndpointSpec>>,
    pub ssh: Arc<SshConfig>,
    pub algorithms: AlgorithmInfo,
    /// TLS material by key ring name, for the TLS front ends.
    pub certificates: HashMap<String, Arc<tls::KeyRingCert>>,
    /// What a failed secret check costs, the same for every user.
    pub failure: FailureCost,
    /// The key defender datagrams between replicas are authenticated with.
    pub defender_key: Option<Arc<[u8]>>,
    /// The key audit checkpoints are signed with.
    pub audit_signer: Option<Arc<crate::audit::chain::Signer>>,
    /// This replica's share of the passive ports (`run --passive-slice`), applied to
    /// `config`'s listeners; kept for reloads.
    pub passive_slice: Option<PassiveSlice>,
}

/// Keeps refusals from telling who exists or how their password is hashed: an unknown user's
/// password is checked against `dummy`, a hash of the dearest class configured, and every
/// failure is held to `floor` (or a multiple of it).
pub struct FailureCost {
    pub dummy: Arc<String>,
    pub floor: Duration,
}

pub struct UserEntry {
    pub name: String,
    pub password_hash: Option<String>,
    pub public_keys: Vec<PublicKey>,
    pub totp: Option<Totp>,
    pub chains: Chains,
    /// TLS client certificate identities that stand for this user.
    pub certificate_names: Vec<String>,
    pub zones: Vec<String>,
    pub tree: Tree,
    pub disabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

impl UserEntry {
    /// Why this account may not log in now, if it may not.
    pub fn refusal(&self, now: DateTime<Utc>) -> Option<&'static str> {
        account_refusal(self.disabled, self.expires_at, now)
    }
}

/// Why an account that is `disabled` or expires at `expires_at` may not log in at `now`.
pub fn account_refusal(
    disabled: bool,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<&'static str> {
    if disabled {
        Some("account disabled")
    } else if expires_at.is_some_and(|t| t <= now) {
        Some("account expired")
    } else {
        None
    }
}

pub struct EndpointSpec {
    pub backend: BackendSpec,
    pub upload_mode: UploadMode,
}

pub enum BackendSpec {
    Local(Arc<LocalBackend>),
    Sftp(Arc<SftpSpec>),
    Ftps(Arc<FtpsSpec>),
}

impl Runtime {
    /// The certificates in force, by key ring name, for audit records.
    pub fn certificate_info(&self) -> Vec<crate::audit::CertificateInfo> {
        let mut out: Vec<_> = self
            .certificates
            .iter()
            .map(|(name, c)| crate::audit::CertificateInfo {
                key_ring: name.clone(),
                sha256: c.sha256.clone(),
                not_after: c.not_after,
            })
            .collect();
        out.sort_by(|a, b| a.key_ring.cmp(&b.key_ring));
        out
    }

    /// Endpoints configured without TLS (each with its explicit `allowPlaintext`), for the
    /// audit records of a start or reload.
    pub fn plaintext_endpoints(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| matches!(&e.backend, BackendSpec::Ftps(f) if f.tls.is_none()))
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        out
    }

    /// The first of `names` (in order) whose CIDRs contain `ip`.
    pub fn zone_of<'a>(&self, ip: IpAddr, names: &'a [String]) -> Option<&'a str> {
        self.zones.zone_of(ip, names)
    }
}

/// The zones' CIDRs by name: which zone a peer is in.
#[derive(Clone, Debug, Default)]
pub struct Zones(HashMap<String, Vec<IpNet>>);

impl Zones {
    pub fn new(zones: &[portcullis_config::Zone]) -> Zones {
        Zones(
            zones
                .iter()
                .map(|z| {
                    let cidrs = z
                        .cidrs
                        .iter()
                        .filter_map(|c| portcullis_config::parse_cidr(c))
                        .collect();
                    (z.name.clone(), cidrs)
                })
                .collect(),
        )
    }

    /// The first of `names` (in order) whose CIDRs contain `ip` (an IPv4-mapped IPv6 address
    /// as its IPv4 address).
    pub fn zone_of<'a>(&self, ip: IpAddr, names: &'a [String]) -> Option<&'a str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        names
            .iter()
            .find(|n| {
                self.0
                    .get(n.as_str())
                    .is_some_and(|c| c.iter().any(|c| c.contains(&ip)))
            })
            .map(String::as_str)
    }
}

/// Modern-only defaults: no SHA-1, no CBC, no `ssh-rsa`.
const DEFAULT_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
];
const DEFAULT_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
const DEFAULT_MACS: &[&str] = &[
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
];
const DEFAULT_HOST_KEY_ALGS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "rsa-sha2-512",
    "rsa-sha2-256",
];

/// Algorithm names a config may not turn on, whatever it says.
fn is_weak(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "ssh-rsa"
        || n == "ssh-dss"
        || n == "none"
        || n.contains("cbc")
        || n.contains("3des")
        || n.contains("arcfour")
        || n.ends_with("-sha1")
        || n.contains("sha1-")
        || n == "hmac-sha1"
        || n.contains("hmac-md5")
}

static SERVER_ID: LazyLock<String> =
    LazyLock::new(|| format!("SSH-2.0-Portcullis_{}", env!("CARGO_PKG_VERSION")));

/// Compiles a config text into a runtime. `validate` runs first; then key material and
/// referenced files are loaded, and their errors join the same list.
///
/// Relative file paths in the config are relative to `base`, the config file's directory, so a
/// bundle works wherever its Secret is mounted.
///
/// With `passive_slice`, every FTPS listener offers only that replica's share of its passive
/// range (see [`PassiveSlice`]).
pub fn compile(
    text: &str,
    base: &Path,
    passive_slice: Option<PassiveSlice>,
) -> Result<Runtime, Vec<ConfigError>> {
    let mut config = GatewayConfig::parse(text).map_err(|e| e.0)?;
    validate(&config)?;
    if let Some(slice) = passive_slice {
        config
            .slice_passive(slice)
            .map_err(|m| vec![ConfigError::new(format!("--passive-slice {slice}"), m)])?;
    }
    // Hash before loading: if a file is swapped while we load, the next poll sees a hash that
    // differs from ours and loads again, instead of taking the new files as already loaded.
    let hash = material_hash(text, &config, base);
    resolve_paths(&mut config, base);
    let mut errs = Vec::new();
    let mut err = |path: String, msg: String| errs.push(ConfigError::new(path, msg));

    let zones = Zones::new(&config.zones);

    let mut endpoints = HashMap::new();
    for (i, e) in config.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        let spec = match &e.backend {
            EndpointBackend::Local(l) => match LocalBackend::new(Path::new(&l.root)) {
                Ok(b) => BackendSpec::Local(Arc::new(b)),
                Err(e) => {
                    err(format!("{at}.root"), e.to_string());
                    continue;
                }
            },
            EndpointBackend::Ftps(f) => {
                let password = match std::fs::read_to_string(&f.password_file) {
                    Ok(p) => p.trim_end_matches(['\r', '\n']).to_owned(),
                    Err(e) => {
                        err(
                            format!("{at}.passwordFile"),
                            format!("cannot read {}: {e}", f.password_file),
                        );
                        continue;
                    }
                };
                let tls = match &f.ca_file {
                    None => None,
                    Some(ca) => match tls::backend_client_config(
                        ca,
                        f.client_certificate_file.as_deref(),
                        f.client_key_file.as_deref(),
                    ) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            err(format!("{at}.caFile"), e);
                            continue;
                        }
                    },
                };
                BackendSpec::Ftps(Arc::new(FtpsSpec {
                    name: e.name.clone(),
                    addresses: f.addresses.clone(),
                    security: f.security,
                    tls,
                    server_name: f.server_name.clone(),
                    username: f.username.clone(),
                    password,
                    connect_timeout: Duration::from_secs(f.connect_timeout_seconds),
                    io_timeout: Duration::from_secs(f.io_timeout_seconds),
                    max_files: config.limits.max_backend_connections_per_session,
                }))
            }
            EndpointBackend::Sftp(s) => {
                let mut host_keys = Vec::new();
                for (j, k) in s.host_keys.iter().enumerate() {
                    match PublicKey::from_openssh(k.trim()) {
                        Ok(k) => host_keys.push(k),
                        Err(e) => err(
                            format!("{at}.hostKeys[{j}]"),
                            format!("not an OpenSSH public key: {e}"),
                        ),
                    }
                }
                let credential = if let Some(f) = &s.private_key_file {
                    match russh::keys::load_secret_key(f, None) {
                        Ok(k) => Credential::Key(Arc::new(k)),
                        Err(e) => {
                            err(
                                format!("{at}.privateKeyFile"),
                                format!("cannot load {f}: {e}"),
                            );
                            continue;
                        }
                    }
                } else if let Some(f) = &s.password_file {
                    match std::fs::read_to_string(f) {
                        Ok(p) => Credential::Password(p.trim_end_matches(['\r', '\n']).to_owned()),
                        Err(e) => {
                            err(
                                format!("{at}.passwordFile"),
                                format!("cannot read {f}: {e}"),
                            );
                            continue;
                        }
                    }
                } else {
                    continue;
                };
                BackendSpec::Sftp(Arc::new(SftpSpec {
                    name: e.name.clone(),
                    addresses: s.addresses.clone(),
                    host_keys,
                    username: s.username.clone(),
                    credential,
                    connect_timeout: Duration::from_secs(s.connect_timeout_seconds),
                    io_timeout: Duration::from_secs(s.io_timeout_seconds),
                }))
            }
        };
        endpoints.insert(
            e.name.clone(),
            Arc::new(EndpointSpec {
                backend: spec,
                upload_mode: e.upload_mode,
            }),
        );
    }

    let mut users = HashMap::new();
    for (i, u) in config.users.iter().enumerate() {
        let at = format!("users[{i}]");
        if let Some(h) = &u.password_hash
            && !(h.starts_with("$argon2") && argon2::PasswordHash::new(h).is_ok()
                || h.starts_with("$2") && h.len() == 60)
        {
            err(
                format!("{at}.passwordHash"),
                "not an argon2 or bcrypt PHC string (use `portcullis-gateway hash-password`)"
                    .into(),
            );
        }
        let mut public_keys = Vec::new();
        for (j, k) in u.public_keys.iter().enumerate() {
            match PublicKey::from_openssh(k.trim()) {
                Ok(k) => public_keys.push(k),
                Err(e) => err(
                    format!("{at}.publicKeys[{j}]"),
                    format!("not an OpenSSH public key: {e}"),
                ),
            }
        }
        let totp = match &u.totp_secret_file {
            None => None,
            Some(f) => match std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {f}: {e}"))
                .and_then(|s| Totp::from_base32(&s))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    err(format!("{at}.totpSecretFile"), e);
                    None
                }
            },
        };
        users.insert(
            u.name.clone(),
            Arc::new(UserEntry {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                chains: Chains::new(
                    &u.auth_methods,
                    u.password_hash.is_some(),
                    !public_keys.is_empty(),
                    !u.certificate_names.is_empty(),
                    totp.is_some(),
                ),
                certificate_names: u.certificate_names.clone(),
                public_keys,
                totp,
                zones: u.zones.clone(),
                tree: Tree::build(&u.roles, &config.roles),
                disabled: u.disabled,
                expires_at: u
                    .expires_at
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            }),
        );
    }

    let mut certificates = HashMap::new();
    for (i, k) in config.key_rings.iter().enumerate() {
        match tls::load_key_ring(k) {
            Ok(c) => {
                certificates.insert(k.name.clone(), Arc::new(c));
            }
            Err(e) => err(format!("keyRings[{i}]"), e),
        }
    }

    let mut keys = Vec::new();
    // Only SFTP needs host keys: an FTPS-only gateway has none to present (the operator
    // writes none without a hostKeyRing).
    let sftp = config
        .listeners
        .iter()
        .any(|l| l.protocol == portcullis_config::Protocol::Sftp);
    if sftp && config.ssh.host_key_files.is_empty() {
        err(
            "ssh.hostKeyFiles".into(),
            "at least one host key is required for an SFTP listener".into(),
        );
    }
    for (i, f) in config.ssh.host_key_files.iter().enumerate() {
        match russh::keys::load_secret_key(f, None) {
            Ok(k) => keys.push(k),
            Err(e) => err(
                format!("ssh.hostKeyFiles[{i}]"),
                format!("cannot load {f}: {e}"),
            ),
        }
    }
    let algs = &config.ssh.algorithms;
    let pick = |list: &[String], default: &[&str]| -> Vec<String> {
        if list.is_empty() {
            default.iter().map(|s| (*s).to_owned()).collect()
        } else {
            list.to_vec()
        }
    };
    let info = AlgorithmInfo {
        kex: pick(&algs.kex, DEFAULT_KEX),
        ciphers: pick(&algs.ciphers, DEFAULT_CIPHERS),
        macs: pick(&algs.macs, DEFAULT_MACS),
        host_keys: pick(&algs.host_key_algorithms, DEFAULT_HOST_KEY_ALGS),
    };
    let mut names = |field: &str, list: &[String], parse: &dyn Fn(&str) -> bool| {
        for (i, n) in list.iter().enumerate() {
            if is_weak(n) {
                err(
                    format!("ssh.algorithms.{field}[{i}]"),
                    format!("{n} is weak and refused"),
                );
            } else if !parse(n) {
                err(
                    format!("ssh.algorithms.{field}[{i}]"),
                    format!("unknown algorithm {n}"),
                );
            }
        }
    };
    names("kex", &info.kex, &|n| kex::Name::try_from(n).is_ok());
    names("ciphers", &info.ciphers, &|n| {
        cipher::Name::try_from(n).is_ok()
    });
    names("macs", &info.macs, &|n| mac::Name::try_from(n).is_ok());
    names("hostKeyAlgorithms", &info.host_keys, &|n| {
        Algorithm::from_str(n).is_ok()
    });

    let defender_key = match &config.defender.peers {
        None => None,
        Some(p) => match std::fs::read(&p.key_file) {
            Ok(k) if k.trim_ascii().len() >= 32 => Some(Arc::from(k.trim_ascii())),
            Ok(_) => {
                err(
                    "defender.peers.keyFile".into(),
                    format!("{} holds fewer than 32 bytes", p.key_file),
                );
                None
            }
            Err(e) => {
                err(
                    "defender.peers.keyFile".into(),
                    format!("cannot read {}: {e}", p.key_file),
                );
                None
            }
        },
    };

    let audit_signer = config.audit.signing_key_file.as_ref().and_then(|f| {
        crate::audit::chain::Signer::from_pem_file(Path::new(f))
            .map(Arc::new)
            .map_err(|e| err("audit.signingKeyFile".into(), e))
            .ok()
    });

    if !errs.is_empty() {
        return Err(errs);
    }

    let mut kex_names: Vec<kex::Name> = info
        .kex
        .iter()
        .filter_map(|n| kex::Name::try_from(n.as_str()).ok())
        .collect();
    // Strict key exchange (the Terrapin fix) and extension negotiation are always on.
    kex_names.push(kex::EXTENSION_SUPPORT_AS_SERVER);
    kex_names.push(kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER);
    let limits = &config.limits;
    let ssh = SshConfig {
        server_id: SshId::Standard(SERVER_ID.as_str().into()),
        methods: MethodSet::from(
            &[
                MethodKind::PublicKey,
                MethodKind::Password,
                MethodKind::KeyboardInteractive,
            ][..],
        ),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: keys.into_iter().collect::<Vec<PrivateKey>>(),
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        preferred: russh::Preferred {
            kex: kex_names.into(),
            key: info
                .host_keys
                .iter()
                .filter_map(|n| Algorithm::from_str(n).ok())
                .collect::<Vec<_>>()
                .into(),
            cipher: info
                .ciphers
                .iter()
                .filter_map(|n| cipher::Name::try_from(n.as_str()).ok())
                .collect::<Vec<_>>()
                .into(),
            mac: info
                .macs
                .iter()
                .filter_map(|n| mac::Name::try_from(n.as_str()).ok())
                .collect::<Vec<_>>()
                .into(),
            // Never `zlib`: it would inflate what unauthenticated peers send. The delayed
            // `zlib@openssh.com` starts only after a successful login, as OpenSSH's default.
            compression: (&[russh::compression::NONE, russh::compression::ZLIB_LEGACY][..]).into(),
            ..Default::default()
        },
        max_auth_attempts: limits.max_auth_attempts,
        inactivity_timeout: Some(Duration::from_secs(limits.idle_timeout_seconds)),
        nodelay: true,
        ..Default::default()
    };

    let failure = failure_cost(&config);
    Ok(Runtime {
        hash,
        config,
        passive_slice,
        zones,
        users,
        endpoints,
        ssh: Arc::new(ssh),
        algorithms: info,
        certificates,
        failure,
        defender_key,
        audit_signer,
    })
}

/// Calibrates each password cost class in the config (once per process) and the default one.
fn failure_cost(config: &GatewayConfig) -> FailureCost {
    let classes: Vec<auth::Calibration> = std::iter::once(auth::DUMMY_HASH.as_str())
        .chain(
            config
                .users
                .iter()
                .filter_map(|u| u.password_hash.as_deref()),
        )
        .filter_map(auth::calibrate)
        .collect();
    let dearest = classes
        .iter()
        .max_by_key(|c| c.took)
        .map(|c| c.dummy.clone())
        .unwrap_or_else(|| Arc::new(auth::DUMMY_HASH.clone()));
    FailureCost {
        dummy: dearest,
        floor: auth::failure_floor(
            Duration::from_millis(config.limits.auth_failure_delay_millis),
            &classes,
        ),
    }
}

/// The material hash (see [`portcullis_config::material_hash`]) of a config text, with the
/// files it names read relative to `base`; of the text alone when it does not parse (compiling
/// will say why).
pub fn hash_on_disk(text: &str, base: &Path) -> String {
    match GatewayConfig::parse(text) {
        Ok(config) => material_hash(text, &config, base),
        Err(_) => hex::encode(Sha256::digest(text.as_bytes())),
    }
}

fn material_hash(text: &str, config: &GatewayConfig, base: &Path) -> String {
    portcullis_config::material_hash(text, config, |f| std::fs::read(base.join(f)).ok())
}

/// Makes every relative file path in `config` relative to `base`.
fn resolve_paths(config: &mut GatewayConfig, base: &Path) {
    for f in config.named_files_mut() {
        if Path::new(f.as_str()).is_relative() {
            *f = base.join(&*f).to_string_lossy().into_owned();
        }
    }
}
