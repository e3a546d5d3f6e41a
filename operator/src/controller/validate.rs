//! Step 2 (pure): check a gateway's references and compile its namespace into the config
//! bundle, or say precisely what is wrong. Nothing here touches the client.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use portcullis_api::{
    AuditKey, EndpointProtocol, KeyRing, TransferGateway, TransferRole, TransferUser,
};
use portcullis_config as config;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;

use super::build;
use crate::shared::dereference::{SecretLookup, World};
use crate::shared::keyring_secret::keys as kr_keys;

/// Why a gateway (or a policy object) is not usable. The variant name is the status reason,
/// the Event reason and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    ZoneNotFound,
    EndpointNotFound,
    RoleNotFound,
    KeyRingNotFound,
    KeyRingNotReady,
    SecretNotFound,
    SecretKeyMissing,
    InvalidCredential,
    InvalidPublicKey,
    InvalidConfig,
    ImageNotAllowed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ZoneNotFound => "ZoneNotFound",
            Reason::EndpointNotFound => "EndpointNotFound",
            Reason::RoleNotFound => "RoleNotFound",
            Reason::KeyRingNotFound => "KeyRingNotFound",
            Reason::KeyRingNotReady => "KeyRingNotReady",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyMissing => "SecretKeyMissing",
            Reason::InvalidCredential => "InvalidCredential",
            Reason::InvalidPublicKey => "InvalidPublicKey",
            Reason::InvalidConfig => "InvalidConfig",
            Reason::ImageNotAllowed => "ImageNotAllowed",
        }
    }
}

/// Which gateway images the operator deploys: its own default always; any other only when the
/// installer allowed it (`--allowed-gateway-image`, the chart's `gateway.allowedImages`), since
/// whoever may set a gateway's image runs code in the DMZ with its Secrets. An entry is an
/// exact image reference, or a prefix ending in `*` (`registry.example/portcullis/*`).
pub fn image_problem(image: &str, allowed: &[String]) -> Option<Problem> {
    let ok = image == portcullis_api::default_image()
        || allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == a,
        });
    (!ok).then(|| {
        Problem::new(
            Reason::ImageNotAllowed,
            format!(
                "image {image} is not the operator's default ({}) and the operator was not installed to allow it (chart value gateway.allowedImages, flag --allowed-gateway-image)",
                portcullis_api::default_image()
            ),
        )
    })
}

/// The defender's settings, sharing bans through the `<name>-peers` headless Service. The
/// peers' key is made once and then read back from the config Secret, so that it (and the
/// bundle hash) stays the same from one reconcile to the next.
fn defender_settings(
    gw: &TransferGateway,
    world: &World,
    files: &mut BTreeMap<String, Vec<u8>>,
    problems: &mut Vec<Problem>,
) -> config::DefenderSettings {
    let d = &gw.spec.defender;
    let defaults = config::DefenderSettings::default();
    for z in &d.safe_zones {
        if !world.zones.contains_key(z) {
            problems.push(Problem::new(
                Reason::ZoneNotFound,
                format!("defender.safeZones names zone {z}, which does not exist"),
            ));
        }
    }
    let key = world
        .secret_value(&build::config_secret_name(gw), DEFENDER_KEY)
        .ok()
        .filter(|k| k.len() >= 32)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 32]>()).into_bytes());
    files.insert(DEFENDER_KEY.to_owned(), key);
    let pick = |v: Option<i32>, d: u64| v.map_or(d, |v| v.max(1) as u64);
    config::DefenderSettings {
        enabled: d.enabled.unwrap_or(true),
        threshold: d.threshold.map_or(defaults.threshold, |v| v.max(1) as u32),
        user_threshold: d
            .user_threshold
            .map_or(defaults.user_threshold, |v| v.max(1) as u32),
        observation_seconds: pick(d.observation_seconds, defaults.observation_seconds),
        ban_seconds: pick(d.ban_seconds, defaults.ban_seconds),
        max_ban_seconds: pick(d.max_ban_seconds, defaults.max_ban_seconds),
        safe_zones: d.safe_zones.clone(),
        peers: Some(config::DefenderPeers {
            listen: format!("0.0.0.0:{}", build::DEFENDER_PORT),
            addresses: vec![format!(
                "{}.{}.svc:{}",
                build::peers_service_name(gw),
                gw.namespace().unwrap_or_default(),
                build::DEFENDER_PORT
            )],
            key_file: DEFENDER_KEY.to_owned(),
        }),
    }
}

/// The config Secret's key holding the replicas' shared defender key.
const DEFENDER_KEY: &str = "defender.key";

/// One thing wrong, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Where the gateway container mounts the bundle Secret.
pub const CONFIG_MOUNT: &str = "/etc/portcullis/config";

/// A compiled gateway: the config and the files of the bundle Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub config: config::GatewayConfig,
    /// Secret keys → contents; `config.yaml` among them. Paths in the config are relative.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The identity of what the gateway runs (`portcullis_config::material_hash`): the gateway
    /// reports the same hash for the config it serves.
    pub hash: String,
    /// Changes only when a change needs a pod restart (listeners, admin port).
    pub restart_hash: String,
    /// Zone name → CIDRs, for the NetworkPolicy and the Service.
    pub zone_cidrs: BTreeMap<String, Vec<String>>,
    /// Egress targets: (CIDR, first port, last port).
    pub egress: BTreeSet<(String, i32, i32)>,
    /// The earliest notAfter of the certificates the gateway presents.
    pub certificate_not_after: Option<String>,
    /// The public facts of the gateway's audit signing key, when it has one.
    pub audit_key: Option<AuditKey>,
}

/// Egress targets: (CIDR, first port, last port).
pub type Egress = BTreeSet<(String, i32, i32)>;

/// One concern's share of a compiled gateway: its part of the config, and what is wrong. The
/// files it adds to the bundle go into the `files` its caller passes.
pub struct Part<T> {
    pub part: T,
    pub problems: Vec<Problem>,
}

/// The listeners, and the zones they admit that exist.
pub fn listeners(
    gw: &TransferGateway,
    world: &World,
) -> Part<(Vec<config::Listener>, BTreeSet<String>)> {
    let mut problems = Vec::new();
    let mut listeners = Vec::new();
    let mut zone_names = BTreeSet::new();
    for l in &gw.spec.listeners {
        for z in &l.zones {
            if world.zones.contains_key(z) {
                zone_names.insert(z.clone());
            } else {
                problems.push(Problem::new(
                    Reason::ZoneNotFound,
                    format!("listener {} admits zone {z}, which does not exist", l.name),
                ));
            }
        }
        if let Some(k) = &l.key_ring {
            check_key_ring(world, k, &format!("listener {}", l.name), &mut problems);
        }
        listeners.push(config::Listener {
            name: l.name.clone(),
            address: format!("0.0.0.0:{}", l.port),
            zones: l.zones.clone(),
            ..listener_ftps(l)
        });
    }
    Part {
        part: (listeners, zone_names),
        problems,
    }
}

/// What the gateway takes from key rings: its SSH host key files, each used ring's TLS files,
/// and the earliest notAfter of the certificates among them.
pub struct KeyRingParts {
    pub host_key_files: Vec<String>,
    pub key_rings: Vec<config::KeyRingFiles>,
    pub not_after: Option<String>,
}

/// The key rings the gateway uses: its listeners', its `hostKeyRing`, and those of the FTPS
/// endpoints any role of the namespace mounts.
pub fn key_rings(
    gw: &TransferGateway,
    world: &World,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Part<KeyRingParts> {
    let spec = &gw.spec;
    let mut problems = Vec::new();
    let mut host_key_files = Vec::new();
    let mut key_ring_files = Vec::new();
    let mut not_after: Option<String> = None;
    let mut used_rings: BTreeSet<&str> = spec
        .listeners
        .iter()
        .filter_map(|l| l.key_ring.as_deref())
        .collect();
    for role in world.roles.values() {
        for m in &role.spec.mounts {
            if let Some(ring) = world
                .endpoints
                .get(&m.endpoint)
                .and_then(|e| e.spec.ftps.as_ref())
                .and_then(|f| f.key_ring.as_deref())
            {
                used_rings.insert(ring);
            }
        }
    }
    if let Some(k) = &spec.host_key_ring {
        used_rings.insert(k);
        if let Some(kr) = check_key_ring(world, k, "hostKeyRing", &mut problems)
            && !kr.spec.ssh_host_keys
        {
            problems.push(Problem::new(
                Reason::KeyRingNotReady,
                format!("hostKeyRing {k} has sshHostKeys: false, so it holds no SSH host keys"),
            ));
        }
    }
    for ring in used_rings {
        let Some(kr) = world.key_rings.get(ring) else {
            continue;
        };
        let Some(secret) = kr.status.as_ref().and_then(|s| s.secret_name.as_deref()) else {
            continue;
        };
        let mut take = |key: &str, file: String| -> bool {
            match world.secret_value(secret, key) {
                Ok(v) => {
                    files.insert(file, v.to_vec());
                    true
                }
                Err(_) => false,
            }
        };
        if spec.host_key_ring.as_deref() == Some(ring) && kr.spec.ssh_host_keys {
            for (key, file) in [
                (kr_keys::SSH_ED25519, "hostkey-ed25519"),
                (kr_keys::SSH_ECDSA, "hostkey-ecdsa-p256"),
            ] {
                if take(key, file.to_owned()) {
                    host_key_files.push(file.to_owned());
                } else {
                    problems.push(Problem::new(
                        Reason::KeyRingNotReady,
                        format!("key ring {ring} has no {key} in Secret {secret} yet"),
                    ));
                }
            }
        }
        let crt = format!("keyring-{ring}.crt");
        let key = format!("keyring-{ring}.key");
        if take("tls.crt", crt.clone()) && take("tls.key", key.clone()) {
            let client_ca = take(kr_keys::CLIENT_CAS, format!("keyring-{ring}-client-ca.crt"))
                .then(|| format!("keyring-{ring}-client-ca.crt"));
            let backend_ca = take(
                kr_keys::BACKEND_CAS,
                format!("keyring-{ring}-backend-ca.crt"),
            )
            .then(|| format!("keyring-{ring}-backend-ca.crt"));
            key_ring_files.push(config::KeyRingFiles {
                name: ring.to_owned(),
                certificate_file: crt,
                private_key_file: key,
                client_ca_file: client_ca,
                backend_ca_file: backend_ca,
            });
            if let Some(t) = kr.status.as_ref().and_then(|s| s.not_after.clone())
                && not_after.as_ref().is_none_or(|n| t < *n)
            {
                not_after = Some(t);
            }
        }
    }
    Part {
        part: KeyRingParts {
            host_key_files,
            key_rings: key_ring_files,
            not_after,
        },
        problems,
    }
}

/// The roles (all of the namespace's, so that a broken one is reported even before a user
/// names it), and the endpoints they mount.
pub fn roles(world: &World) -> Part<(Vec<config::Role>, BTreeSet<String>)> {
    let mut problems = Vec::new();
    let mut roles = Vec::new();
    let mut endpoint_names = BTreeSet::new();
    for (name, role) in &world.roles {
        problems.extend(role_problems(name, role, world));
        roles.push(config::Role {
            name: name.clone(),
            mounts: role
                .spec
                .mounts
                .iter()
                .map(|m| {
                    endpoint_names.insert(m.endpoint.clone());
                    config::Mount {
                        path: m.path.clone(),
                        endpoint: m.endpoint.clone(),
                        backend_path: m.backend_path.clone(),
                        verbs: m.verbs.iter().copied().collect(),
                        site_commands: m.site_commands.clone(),
                        umask: m.umask.clone(),
                        // The schema keeps it at 1 or more; below that it fails closed.
                        max_file_bytes: m.max_file_bytes.map(|n| n.max(1) as u64),
                    }
                })
                .collect(),
        });
    }
    Part {
        part: (roles, endpoint_names),
        problems,
    }
}

/// The endpoints named `names` (those the roles mount), with their credentials into `files`,
/// and the egress they need.
pub fn endpoints(
    names: &BTreeSet<String>,
    world: &World,
    key_rings: &[config::KeyRingFiles],
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Part<(Vec<config::Endpoint>, Egress)> {
    let mut problems = Vec::new();
    let mut endpoints = Vec::new();
    let mut egress = BTreeSet::new();
    for name in names {
        let Some(ep) = world.endpoints.get(name) else {
            continue;
        };
        let e = &ep.spec;
        if let Some(f) = e
            .ftps
            .as_ref()
            .filter(|_| e.protocol == EndpointProtocol::Ftps)
        {
            match ftps_endpoint(name, ep, f, world, key_rings, files) {
                Ok(backend) => {
                    for a in &e.addresses {
                        let (min, max) = f
                            .data_ports
                            .as_ref()
                            .map_or((1024, 65535), |p| (i32::from(p.min), i32::from(p.max)));
                        for cidr in egress_cidrs(&a.host, &a.egress_cidrs) {
                            egress.insert((cidr.clone(), a.port, a.port));
                            egress.insert((cidr, min, max));
                        }
                    }
                    endpoints.push(config::Endpoint {
                        name: name.clone(),
                        upload_mode: e.upload_mode,
                        backend,
                    });
                }
                Err(p) => problems.extend(p),
            }
            continue;
        }
        let (private_key_file, password_file) = match endpoint_credential(name, ep, world, files) {
            Ok(c) => c,
            Err(p) => {
                problems.push(p);
                (None, None)
            }
        };
        for a in &e.addresses {
            for cidr in egress_cidrs(&a.host, &a.egress_cidrs) {
                egress.insert((cidr, a.port, a.port));
            }
        }
        endpoints.push(config::Endpoint {
            name: name.clone(),
            upload_mode: e.upload_mode,
            backend: config::EndpointBackend::Sftp(config::SftpEndpoint {
                addresses: e
                    .addresses
                    .iter()
                    .map(|a| host_port(&a.host, a.port))
                    .collect(),
                host_keys: e.host_keys.clone(),
                username: e.username.clone(),
                private_key_file,
                password_file,
                connect_timeout_seconds: u64::from(e.connect_timeout_seconds),
                io_timeout_seconds: u64::from(e.io_timeout_seconds),
            }),
        });
    }
    Part {
        part: (endpoints, egress),
        problems,
    }
}

/// The users, with their TOTP seeds into `files`; a user naming no zones gets the listeners'.
pub fn users(
    world: &World,
    listener_zones: &[String],
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Part<Vec<config::User>> {
    let mut problems = Vec::new();
    let mut users = Vec::new();
    for (name, user) in &world.users {
        problems.extend(user_problems(name, user, world));
        let u = &user.spec;
        let login = u.username.clone().unwrap_or_else(|| name.clone());
        let password_hash = u.password_hash.as_ref().and_then(|r| {
            world
                .secret_value(&r.name, &r.key)
                .ok()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        });
        let totp_secret_file = u.totp_secret.as_ref().and_then(|r| {
            let v = world.secret_value(&r.name, &r.key).ok()?;
            let file = format!("user-{name}.totp");
            files.insert(file.clone(), v.to_vec());
            Some(file)
        });
        users.push(config::User {
            name: login,
            password_hash,
            public_keys: u.public_keys.clone(),
            totp_secret_file,
            certificate_names: u.certificate_names.clone(),
            auth_methods: u.auth_methods.clone(),
            zones: if u.zones.is_empty() {
                listener_zones.to_vec()
            } else {
                u.zones.clone()
            },
            roles: u.roles.clone(),
            disabled: u.disabled,
            expires_at: u.expires_at.clone(),
        });
    }
    Part {
        part: users,
        problems,
    }
}

/// Compiles gateway `gw` from its namespace, concern by concern (listeners, key rings, roles,
/// endpoints, users, zones, defender, limits, audit). Every problem is reported, not just the
/// first.
pub fn compile(gw: &TransferGateway, world: &World) -> Result<Bundle, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut files = BTreeMap::new();
    let spec = &gw.spec;
    let mut take = |p: &mut Vec<Problem>| problems.append(p);

    let Part {
        part: (listeners, zone_names),
        problems: mut p,
    } = self::listeners(gw, world);
    take(&mut p);
    let Part {
        part: rings,
        problems: mut p,
    } = key_rings(gw, world, &mut files);
    take(&mut p);
    let Part {
        part: (roles, endpoint_names),
        problems: mut p,
    } = self::roles(world);
    take(&mut p);
    let Part {
        part: (endpoints, mut egress),
        problems: mut p,
    } = self::endpoints(&endpoint_names, world, &rings.key_rings, &mut files);
    take(&mut p);
    let listener_zones: Vec<String> = zone_names.iter().cloned().collect();
    let Part {
        part: users,
        problems: mut p,
    } = self::users(world, &listener_zones, &mut files);
    take(&mut p);
    let KeyRingParts {
        host_key_files,
        key_rings: key_ring_files,
        not_after,
    } = rings;
    let mut audit_key = None;

    let zones: Vec<config::Zone> = world
        .zones
        .iter()
        .map(|(name, z)| config::Zone {
            name: name.clone(),
            cidrs: z.spec.cidrs.clone(),
        })
        .collect();
    let zone_cidrs = zone_names
        .iter()
        .filter_map(|z| Some((z.clone(), world.zones.get(z)?.spec.cidrs.clone())))
        .collect();

    let defender = defender_settings(gw, world, &mut files, &mut problems);

    let defaults = config::Limits::default();
    let lim = &spec.limits;
    let pick = |v: Option<i32>, d: usize| v.map_or(d, |v| v as usize);
    let pick64 = |v: Option<i32>, d: u64| v.map_or(d, |v| v as u64);
    let config = config::GatewayConfig {
        listeners,
        zones,
        endpoints,
        users,
        roles,
        ssh: config::SshSettings {
            host_key_files,
            algorithms: config::Algorithms::default(),
        },
        key_rings: key_ring_files,
        limits: config::Limits {
            max_sessions: pick(lim.max_sessions, defaults.max_sessions),
            max_sessions_per_ip: pick(lim.max_sessions_per_ip, defaults.max_sessions_per_ip),
            max_unauthenticated_per_ip: pick(
                lim.max_unauthenticated_per_ip,
                defaults.max_unauthenticated_per_ip,
            ),
            max_backend_connections_per_session: pick(
                lim.max_backend_connections_per_session,
                defaults.max_backend_connections_per_session,
            ),
            login_grace_seconds: pick64(lim.login_grace_seconds, defaults.login_grace_seconds),
            idle_timeout_seconds: pick64(lim.idle_timeout_seconds, defaults.idle_timeout_seconds),
            max_auth_attempts: pick(lim.max_auth_attempts, defaults.max_auth_attempts),
            max_in_flight_requests: defaults.max_in_flight_requests,
            auth_failure_delay_millis: pick64(
                lim.auth_failure_delay_millis,
                defaults.auth_failure_delay_millis,
            ),
        },
        audit: audit_settings(
            gw,
            world,
            &mut files,
            &mut egress,
            &mut audit_key,
            &mut problems,
        ),
        defender,
        admin: Some(config::AdminSettings {
            address: format!("0.0.0.0:{}", spec.admin_port),
        }),
        shutdown_grace_seconds: spec.shutdown_grace_seconds.max(0) as u64,
    };

    if problems.is_empty() {
        // The contract's own checks catch what the CRD schema cannot (e.g. auth method chains).
        if let Err(errs) = config::validate(&config) {
            problems.extend(
                errs.into_iter()
                    .map(|e| Problem::new(Reason::InvalidConfig, format!("compiled config: {e}"))),
            );
        }
    }
    if !problems.is_empty() {
        problems.sort();
        problems.dedup();
        return Err(problems);
    }

    let yaml = serde_yaml_ng::to_string(&config).expect("the config serializes");
    // The hash the gateway computes over what it reads from the mounted Secret.
    let hash = portcullis_config::material_hash(&yaml, &config, |f| files.get(f).cloned());
    files.insert("config.yaml".to_owned(), yaml.into_bytes());
    // What a running gateway cannot take on by reloading: listeners, the admin port, and the
    // audit writer (its settings and signing key).
    let signing_key = files
        .get(AUDIT_SIGNING_KEY)
        .map(|k| hex::encode(Sha256::digest(k)));
    let restart = serde_json::to_vec(&(
        &config.listeners,
        &config.admin,
        config.audit.sinks(),
        signing_key,
    ))
    .expect("serializes");
    Ok(Bundle {
        hash,
        restart_hash: hex::encode(&Sha256::digest(&restart)[..8]),
        config,
        files,
        zone_cidrs,
        egress,
        certificate_not_after: not_after,
        audit_key,
    })
}

/// Where the pod mounts its audit `emptyDir`, and the trail's active file in it.
pub const AUDIT_MOUNT: &str = "/var/log/portcullis";
pub const AUDIT_FILE: &str = "/var/log/portcullis/audit.jsonl";
/// The bundle file holding the gateway's audit signing key.
const AUDIT_SIGNING_KEY: &str = "audit-signing.pem";
/// The bundle file holding the CA that verifies the audit collector.
const AUDIT_COLLECTOR_CA: &str = "audit-collector-ca.crt";

/// The gateway's own audit signing key (PKCS#8 PEM) and its public facts. It is made once and
/// then read back from the gateway's config Secret, the only place its private half is kept;
/// a new one replaces it when the Secret lost it, or when it is older than the key ring's
/// `auditKeyRotation`. Its age is the `createdAt` the gateway's status gives the same key id;
/// a key the status does not know counts from now.
fn audit_signing_key(
    gw: &TransferGateway,
    kr: &KeyRing,
    world: &World,
) -> Result<(String, AuditKey), crate::shared::ca::CaError> {
    use crate::shared::ca;
    let lifetime = kr
        .spec
        .audit_key_rotation
        .as_deref()
        .and_then(ca::parse_duration)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let known = |id: &str| {
        gw.status
            .iter()
            .flat_map(|s| &s.audit_keys)
            .find(|k| k.key_id == id && k.retired_at.is_none())
            .and_then(|k| time::OffsetDateTime::parse(&k.created_at, &Rfc3339).ok())
            .map(time::OffsetDateTime::unix_timestamp)
    };
    let kept = world
        .secret_value(&build::config_secret_name(gw), AUDIT_SIGNING_KEY)
        .ok()
        .and_then(|pem| std::str::from_utf8(pem).ok())
        .and_then(|pem| {
            let (public, id) = ca::audit_key_facts(pem)?;
            let created = known(&id).unwrap_or(world.now);
            Some((pem.to_owned(), public, id, created))
        })
        .filter(|(.., created)| lifetime.is_none_or(|l| world.now < created.saturating_add(l)));
    let (pem, public_key, key_id, created) = match kept {
        Some(k) => k,
        None => {
            let pem = ca::new_audit_signing_key()?;
            let (public, id) = ca::audit_key_facts(&pem).expect("a key just made has facts");
            (pem, public, id, world.now)
        }
    };
    let key = AuditKey {
        key_id,
        public_key,
        created_at: crate::shared::keyring_secret::rfc3339(created),
        retired_at: None,
    };
    Ok((pem, key))
}

/// The gateway's audit settings: sinks, the file sink's rotation and spool, and the gateway's
/// own signing key when `spec.audit.signingKeyRing` names a signing authority (into the bundle;
/// its public facts into `audit_key`).
fn audit_settings(
    gw: &TransferGateway,
    world: &World,
    files: &mut BTreeMap<String, Vec<u8>>,
    egress: &mut BTreeSet<(String, i32, i32)>,
    audit_key: &mut Option<AuditKey>,
    problems: &mut Vec<Problem>,
) -> config::AuditSettings {
    let collector = gw.spec.audit.collector.as_ref().and_then(|c| {
        let Some(url) = config::HttpsUrl::parse(&c.url) else {
            problems.push(Problem::new(
                Reason::InvalidConfig,
                format!(
                    "audit.collector.url {:?} is not https://HOST[:PORT]/PATH",
                    c.url
                ),
            ));
            return None;
        };
        for cidr in egress_cidrs(&url.host, &c.egress_cidrs) {
            egress.insert((cidr, i32::from(url.port), i32::from(url.port)));
        }
        match world.secret_value(&c.ca.name, &c.ca.key) {
            Ok(pem) => {
                files.insert(AUDIT_COLLECTOR_CA.to_owned(), pem.to_vec());
            }
            Err(e) => {
                problems.push(secret_problem(
                    "audit.collector.ca",
                    &c.ca.name,
                    &c.ca.key,
                    e,
                ));
                return None;
            }
        }
        Some(config::AuditCollector {
            url: c.url.clone(),
            ca_file: AUDIT_COLLECTOR_CA.to_owned(),
            client_certificate_file: None,
            client_key_file: None,
            batch_records: c.batch_records.map(|n| n.max(1) as u32),
            // The pod's host name: its name, unique among the gateway's pods.
            source: None,
        })
    });
    let a = &gw.spec.audit;
    let defaults = config::AuditSettings::default();
    let signing_key_file = a.signing_key_ring.as_ref().and_then(|ring| {
        let kr = check_key_ring(world, ring, "audit.signingKeyRing", problems)?;
        if !kr.spec.audit_signing_key {
            problems.push(Problem::new(
                Reason::KeyRingNotReady,
                format!(
                    "audit.signingKeyRing {ring} is not an audit signing authority: set auditSigningKey: true on it"
                ),
            ));
            return None;
        }
        match audit_signing_key(gw, kr, world) {
            Ok((pem, key)) => {
                files.insert(AUDIT_SIGNING_KEY.to_owned(), pem.into_bytes());
                *audit_key = Some(key);
                Some(AUDIT_SIGNING_KEY.to_owned())
            }
            Err(e) => {
                problems.push(Problem::new(
                    Reason::KeyRingNotReady,
                    format!("could not make an audit signing key: {e}"),
                ));
                None
            }
        }
    });
    let f = a.file.as_ref();
    let u64_of = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    config::AuditSettings {
        stdout: a.stdout.unwrap_or(true),
        file: f.map(|_| AUDIT_FILE.to_owned()),
        data_ops: a.data_ops,
        signing_key_file,
        checkpoint_seconds: a
            .checkpoint_seconds
            .map_or(defaults.checkpoint_seconds, |s| s.max(1) as u64),
        fsync: f.and_then(|f| f.fsync).unwrap_or_default(),
        rotate_bytes: u64_of(f.and_then(|f| f.rotate_bytes)),
        rotate_seconds: u64_of(f.and_then(|f| f.rotate_seconds)),
        max_bytes: u64_of(f.and_then(|f| f.max_bytes)),
        when_full: f.and_then(|f| f.when_full),
        fail_closed: f.and_then(|f| f.fail_closed),
        collector,
    }
}

fn check_key_ring<'w>(
    world: &'w World,
    name: &str,
    who: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'w KeyRing> {
    let Some(kr) = world.key_rings.get(name) else {
        problems.push(Problem::new(
            Reason::KeyRingNotFound,
            format!("{who} names key ring {name}, which does not exist"),
        ));
        return None;
    };
    if !crate::shared::status::is_ready(kr.status.as_ref().map(|s| s.conditions.as_slice())) {
        let why = crate::shared::status::ready_message(
            kr.status.as_ref().map(|s| s.conditions.as_slice()),
        )
        .unwrap_or_else(|| "it has not been issued yet".to_owned());
        problems.push(Problem::new(
            Reason::KeyRingNotReady,
            format!("{who} names key ring {name}, which is not ready: {why}"),
        ));
        return None;
    }
    Some(kr)
}

/// A role's own broken references.
pub fn role_problems(name: &str, role: &TransferRole, world: &World) -> Vec<Problem> {
    role.spec
        .mounts
        .iter()
        .filter(|m| !world.endpoints.contains_key(&m.endpoint))
        .map(|m| {
            Problem::new(
                Reason::EndpointNotFound,
                format!(
                    "role {name} names endpoint {}, which does not exist",
                    m.endpoint
                ),
            )
        })
        .collect()
}

/// A user's own broken references and credentials.
pub fn user_problems(name: &str, user: &TransferUser, world: &World) -> Vec<Problem> {
    let mut out = Vec::new();
    let u = &user.spec;
    for r in &u.roles {
        if !world.roles.contains_key(r) {
            out.push(Problem::new(
                Reason::RoleNotFound,
                format!("user {name} names role {r}, which does not exist"),
            ));
        }
    }
    for z in &u.zones {
        if !world.zones.contains_key(z) {
            out.push(Problem::new(
                Reason::ZoneNotFound,
                format!("user {name} names zone {z}, which does not exist"),
            ));
        }
    }
    if let Some(r) = &u.password_hash {
        match world.secret_value(&r.name, &r.key) {
            Ok(v) => {
                let v = String::from_utf8_lossy(v);
                let v = v.trim();
                if !(v.starts_with("$argon2id$")
                    || v.starts_with("$2b$")
                    || v.starts_with("$2y$")
                    || v.starts_with("$2a$"))
                {
                    out.push(Problem::new(
                        Reason::InvalidCredential,
                        format!("user {name}: key {} of Secret {} is not an argon2id or bcrypt hash (make one with `portcullis-gateway hash-password`)", r.key, r.name),
                    ));
                }
            }
            Err(e) => out.push(secret_problem(&format!("user {name}"), &r.name, &r.key, e)),
        }
    }
    if let Some(r) = &u.totp_secret
        && let Err(e) = world.secret_value(&r.name, &r.key)
    {
        out.push(secret_problem(&format!("user {name}"), &r.name, &r.key, e));
    }
    if u.totp_secret.is_some() && !config::asks_for_code(&u.auth_methods) {
        out.push(Problem::new(
            Reason::InvalidConfig,
            format!("user {name} has a totpSecret but no authMethods chain asks for keyboard-interactive; the code would never be asked for"),
        ));
    }
    for (i, k) in u.public_keys.iter().enumerate() {
        if let Err(e) = russh::keys::PublicKey::from_openssh(k) {
            out.push(Problem::new(
                Reason::InvalidPublicKey,
                format!("user {name}: publicKeys[{i}] is not an OpenSSH public key: {e}"),
            ));
        }
    }
    out
}

/// Why a valid user can never log in over FTPS, if so: FTPS offers only `password` and
/// `certificate`, so a chain that needs a public key or a one-time code (a `totpSecret` is
/// always asked for) cannot be completed there. The gateway refuses such logins; the status
/// says so ahead of time.
pub fn ftps_refusal(u: &portcullis_api::TransferUserSpec) -> Option<String> {
    use portcullis_api::{AuthChain, AuthMethod};
    let chains = AuthChain::effective(
        &u.auth_methods,
        u.password_hash.is_some(),
        !u.public_keys.is_empty(),
        !u.certificate_names.is_empty(),
        u.totp_secret.is_some(),
    );
    let ftps_can = chains.iter().any(|c| {
        c.0.iter()
            .all(|m| matches!(m, AuthMethod::Password | AuthMethod::Certificate))
    });
    (!ftps_can).then(|| {
        "FTPS logins are refused: no authentication chain can be completed over FTPS, which offers only password and certificate (a one-time code or a public key cannot be given there); use SFTP".to_owned()
    })
}

/// An endpoint's own problems (its credential Secret and host keys).
pub fn endpoint_problems(
    name: &str,
    ep: &portcullis_api::TransferEndpoint,
    world: &World,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(p) = endpoint_credential(name, ep, world, &mut BTreeMap::new()) {
        out.push(p);
    }
    for (i, k) in ep.spec.host_keys.iter().enumerate() {
        if let Err(e) = russh::keys::PublicKey::from_openssh(k) {
            out.push(Problem::new(
                Reason::InvalidPublicKey,
                format!("endpoint {name}: hostKeys[{i}] is not an OpenSSH public key: {e}"),
            ));
        }
    }
    out
}

type CredentialFiles = (Option<String>, Option<String>);

fn endpoint_credential(
    name: &str,
    ep: &portcullis_api::TransferEndpoint,
    world: &World,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<CredentialFiles, Problem> {
    let c = &ep.spec.credentials;
    let who = format!("endpoint {name}");
    match world.secret_value(&c.secret_name, c.private_key_key()) {
        Ok(k) => {
            if russh::keys::decode_secret_key(&String::from_utf8_lossy(k), None).is_err() {
                return Err(Problem::new(
                    Reason::InvalidCredential,
                    format!(
                        "{who}: key {} of Secret {} is not an unencrypted OpenSSH private key",
                        c.private_key_key(),
                        c.secret_name
                    ),
                ));
            }
            let file = format!("endpoint-{name}.key");
            files.insert(file.clone(), k.to_vec());
            Ok((Some(file), None))
        }
        Err(SecretLookup::NoSecret) => Err(secret_problem(
            &who,
            &c.secret_name,
            c.private_key_key(),
            SecretLookup::NoSecret,
        )),
        Err(SecretLookup::NoKey) => match world.secret_value(&c.secret_name, &c.password_key) {
            Ok(p) => {
                let file = format!("endpoint-{name}.password");
                files.insert(file.clone(), p.to_vec());
                Ok((None, Some(file)))
            }
            Err(_) => Err(Problem::new(
                Reason::SecretKeyMissing,
                format!(
                    "{who}: Secret {} has neither {} nor {}",
                    c.secret_name,
                    c.private_key_key(),
                    c.password_key
                ),
            )),
        },
    }
}

fn secret_problem(who: &str, secret: &str, key: &str, e: SecretLookup) -> Problem {
    match e {
        SecretLookup::NoSecret => Problem::new(
            Reason::SecretNotFound,
            format!("{who} names Secret {secret}, which does not exist"),
        ),
        SecretLookup::NoKey => Problem::new(
            Reason::SecretKeyMissing,
            format!("{who}: Secret {secret} has no key {key}"),
        ),
    }
}

/// The FTPS fields of a listener (none for SFTP): the CRD's types are the config's, so this
/// only fills in the defaults of fields left out.
fn listener_ftps(l: &portcullis_api::ListenerSpec) -> config::Listener {
    let ftps = l.protocol.is_ftps();
    let t = l.tls.clone().unwrap_or_default();
    config::Listener {
        name: String::new(),
        protocol: l.protocol,
        address: String::new(),
        zones: Vec::new(),
        tls: ftps.then(|| config::ListenerTls {
            key_ring: l.key_ring.clone().unwrap_or_default(),
            min_version: t.min_version.unwrap_or_default(),
            cipher_suites: t.cipher_suites.clone(),
            client_certificates: t.client_certificates.unwrap_or_default(),
        }),
        passive_ports: l.passive_ports.filter(|_| ftps),
        advertised_address: l.advertised_address.clone().filter(|_| ftps),
        active_mode: l.active_mode.unwrap_or_default(),
        data_timeout_seconds: 30,
    }
}

/// An FTPS endpoint: its password into the bundle, and its key ring's backend CAs (and,
/// when asked, its certificate as the client certificate).
fn ftps_endpoint(
    name: &str,
    ep: &portcullis_api::TransferEndpoint,
    f: &portcullis_api::FtpsEndpointSpec,
    world: &World,
    key_rings: &[config::KeyRingFiles],
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<config::EndpointBackend, Vec<Problem>> {
    let e = &ep.spec;
    let who = format!("endpoint {name}");
    let mut problems = Vec::new();
    let c = &e.credentials;
    let password_file = match world.secret_value(&c.secret_name, &c.password_key) {
        Ok(p) => {
            let file = format!("endpoint-{name}.password");
            files.insert(file.clone(), p.to_vec());
            Some(file)
        }
        Err(why) => {
            problems.push(secret_problem(&who, &c.secret_name, &c.password_key, why));
            None
        }
    };
    let mut ca_file = None;
    let (mut cert, mut key) = (None, None);
    if let Some(ring) = &f.key_ring {
        let at = format!("{who} (ftps.keyRing)");
        if check_key_ring(world, ring, &at, &mut problems).is_some() {
            match key_rings.iter().find(|k| &k.name == ring) {
                Some(k) if k.backend_ca_file.is_some() => {
                    ca_file = k.backend_ca_file.clone();
                    if f.client_certificate {
                        cert = Some(k.certificate_file.clone());
                        key = Some(k.private_key_file.clone());
                    }
                }
                Some(_) => problems.push(Problem::new(
                    Reason::KeyRingNotReady,
                    format!("{at}: key ring {ring} lists no backendCas to trust the backend with"),
                )),
                None => problems.push(Problem::new(
                    Reason::KeyRingNotReady,
                    format!("{at}: key ring {ring} holds no certificate yet"),
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(config::EndpointBackend::Ftps(config::FtpsEndpoint {
        addresses: e
            .addresses
            .iter()
            .map(|a| host_port(&a.host, a.port))
            .collect(),
        security: f.security,
        ca_file,
        server_name: f.server_name.clone(),
        client_certificate_file: cert,
        client_key_file: key,
        username: e.username.clone(),
        password_file: password_file.unwrap_or_default(),
        allow_plaintext: f.allow_plaintext,
        connect_timeout_seconds: u64::from(e.connect_timeout_seconds),
        io_timeout_seconds: u64::from(e.io_timeout_seconds),
    }))
}

/// The CIDRs a backend address allows egress to: the host itself when it is an IP address,
/// else the declared `egressCidrs`.
fn egress_cidrs(host: &str, declared: &[String]) -> Vec<String> {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => vec![format!("{a}/32")],
        Ok(std::net::IpAddr::V6(a)) => vec![format!("{a}/128")],
        Err(_) => declared.to_vec(),
    }
}

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::{SFTP_GATEWAY, gateway, secret, world};

    /// Each concern alone, from the fixture namespace: its part and its problems.
    #[test]
    fn each_concern_compiles_its_part_and_reports_its_problems() {
        let w = world();
        let gw = gateway(
            "  hostKeyRing: keys\n  listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [lan, dmz]}]\n",
        );
        let l = listeners(&gw, &w);
        assert_eq!(l.part.0.len(), 1);
        assert_eq!(l.part.1, BTreeSet::from(["lan".to_owned()]));
        assert_eq!(l.problems.len(), 1);
        assert_eq!(l.problems[0].reason, Reason::ZoneNotFound);

        let mut files = BTreeMap::new();
        let k = key_rings(&gw, &w, &mut files);
        assert!(k.problems.is_empty(), "{:?}", k.problems);
        assert_eq!(
            k.part.host_key_files,
            ["hostkey-ed25519", "hostkey-ecdsa-p256"]
        );
        assert!(files.contains_key("hostkey-ed25519"));

        let r = roles(&w);
        assert_eq!(r.part.1, BTreeSet::from(["backend".to_owned()]));
        assert!(r.problems.is_empty());

        let e = endpoints(&r.part.1, &w, &k.part.key_rings, &mut files);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(e.part.0[0].name, "backend");
        assert!(
            e.part.1.contains(&("10.9.0.5/32".to_owned(), 22, 22)),
            "{:?}",
            e.part.1
        );
        assert!(files.contains_key("endpoint-backend.key"));

        let u = users(&w, &["lan".to_owned()], &mut files);
        assert!(u.problems.is_empty(), "{:?}", u.problems);
        assert_eq!(
            u.part[0].zones,
            ["lan"],
            "a user naming no zones gets the listeners'"
        );

        // A role naming a missing endpoint: the roles part says so, and mounts it anyway so
        // that the compiled whole is refused.
        let mut broken = w.clone();
        broken.endpoints.clear();
        let r = roles(&broken);
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].reason, Reason::EndpointNotFound);
        assert!(
            endpoints(&r.part.1, &broken, &[], &mut BTreeMap::new())
                .part
                .0
                .is_empty()
        );
    }

    #[test]
    fn only_the_default_image_or_an_allowed_one_is_deployed() {
        let default = portcullis_api::default_image();
        let allowed = vec![
            "registry.example/portcullis/*".to_owned(),
            "mirror.example/gw:1.2.3".to_owned(),
        ];
        for (image, ok) in [
            (default.as_str(), true),
            ("registry.example/portcullis/portcullis-gateway:0.1.0", true),
            ("registry.example/portcullis/anything@sha256:00", true),
            ("mirror.example/gw:1.2.3", true),
            ("mirror.example/gw:1.2.4", false),
            ("registry.example/portcullis", false),
            ("registry.example/portcullisx/gw:1", false),
            ("evil.example/gw:latest", false),
        ] {
            assert_eq!(image_problem(image, &allowed).is_none(), ok, "{image}");
            if image != default {
                assert!(
                    image_problem(image, &[]).is_some(),
                    "{image} with nothing allowed"
                );
            }
        }
        let p = image_problem("evil.example/gw:latest", &[]).unwrap();
        assert_eq!(p.reason, Reason::ImageNotAllowed);
        assert!(p.message.contains("gateway.allowedImages"), "{}", p.message);
    }

    #[test]
    fn ftps_listeners_and_endpoints_compile_into_the_bundle() {
        let mut w = world();
        // The key ring also trusts backends; a vsftpd-style endpoint mounted with SITE.
        let keys = w.secrets.get_mut("keys-keyring").unwrap();
        let ca = keys.data.as_ref().unwrap()["ca.crt"].clone();
        keys.data
            .as_mut()
            .unwrap()
            .insert("backend-cas.crt".into(), ca);
        w.endpoints.insert("mf".into(), serde_yaml_ng::from_str(
            "apiVersion: portcullis.dev/v1alpha1\nkind: TransferEndpoint\nmetadata: {name: mf}\nspec: {protocol: ftps, addresses: [{host: 10.7.0.9, port: 21}], username: batch, credentials: {secretName: mf-creds}, ftps: {keyRing: keys, clientCertificate: true, dataPorts: {min: 40000, max: 40099}}}",
        ).unwrap());
        w.secrets
            .extend([secret("mf-creds", &[("password", b"s3cret")])]);
        w.roles.insert("jes".into(), serde_yaml_ng::from_str(
            "apiVersion: portcullis.dev/v1alpha1\nkind: TransferRole\nmetadata: {name: jes}\nspec: {mounts: [{path: /mf, endpoint: mf, verbs: [list, read, site], siteCommands: [FILETYPE=JES]}]}",
        ).unwrap());
        let gw = gateway(
            "  hostKeyRing: keys\n  listeners:\n  - {name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30009}, advertisedAddress: 203.0.113.7, tls: {minVersion: '1.3', clientCertificates: optional}, activeMode: {enabled: true, noRedirect: false}}\n  - {name: implicit, protocol: ftpsImplicit, port: 990, zones: [lan], keyRing: keys, passivePorts: {min: 30010, max: 30019}}\n",
        );
        let b = compile(&gw, &w).unwrap();
        let l = &b.config.listeners[0];
        assert_eq!(l.protocol, config::Protocol::Ftps);
        let tls = l.tls.as_ref().unwrap();
        assert_eq!(tls.key_ring, "keys");
        assert_eq!(tls.min_version, config::TlsVersion::Tls13);
        assert_eq!(
            tls.client_certificates,
            config::ClientCertificates::Optional
        );
        assert_eq!(
            l.passive_ports,
            Some(config::PortRange {
                min: 30000,
                max: 30009
            })
        );
        assert_eq!(l.advertised_address.as_deref(), Some("203.0.113.7"));
        assert!(l.active_mode.enabled && l.active_mode.no_low_ports && !l.active_mode.no_redirect);
        assert_eq!(
            b.config.listeners[1].protocol,
            config::Protocol::FtpsImplicit
        );
        let mf = b.config.endpoints.iter().find(|e| e.name == "mf").unwrap();
        let config::EndpointBackend::Ftps(f) = &mf.backend else {
            panic!("mf is not an FTPS endpoint: {mf:?}");
        };
        assert_eq!(f.addresses, ["10.7.0.9:21"]);
        assert_eq!(f.security, config::FtpSecurity::Explicit);
        assert_eq!(f.ca_file.as_deref(), Some("keyring-keys-backend-ca.crt"));
        assert_eq!(
            f.client_certificate_file.as_deref(),
            Some("keyring-keys.crt")
        );
        assert_eq!(b.files[&f.password_file], b"s3cret");
        let jes = b.config.roles.iter().find(|r| r.name == "jes").unwrap();
        assert_eq!(jes.mounts[0].site_commands, ["FILETYPE=JES"]);
        // Egress: the control port and the backend's data ports.
        assert!(b.egress.contains(&("10.7.0.9/32".to_owned(), 21, 21)));
        assert!(b.egress.contains(&("10.7.0.9/32".to_owned(), 40000, 40099)));
        // The gateway's own checks accept what the operator made.
        assert_eq!(config::validate(&b.config), Ok(()));
    }

    #[test]
    fn an_ftps_endpoint_without_backend_cas_is_refused_with_the_reason() {
        let mut w = world();
        w.endpoints.insert("mf".into(), serde_yaml_ng::from_str(
            "apiVersion: portcullis.dev/v1alpha1\nkind: TransferEndpoint\nmetadata: {name: mf}\nspec: {protocol: ftps, addresses: [{host: 10.7.0.9, port: 21}], username: batch, credentials: {secretName: nope}, ftps: {keyRing: keys}}",
        ).unwrap());
        w.roles.insert("jes".into(), serde_yaml_ng::from_str(
            "apiVersion: portcullis.dev/v1alpha1\nkind: TransferRole\nmetadata: {name: jes}\nspec: {mounts: [{path: /mf, endpoint: mf, verbs: [read]}]}",
        ).unwrap());
        let messages: Vec<String> = compile(&gateway(SFTP_GATEWAY), &w)
            .unwrap_err()
            .into_iter()
            .map(|p| p.message)
            .collect();
        assert!(
            messages.iter().any(|m| m.contains("Secret nope")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m == "endpoint mf (ftps.keyRing): key ring keys lists no backendCas to trust the backend with"),
            "{messages:?}"
        );
    }

    #[test]
    fn the_defender_shares_bans_through_the_peers_service_under_a_stable_key() {
        let mut w = world();
        let gw = gateway(SFTP_GATEWAY);
        let first = compile(&gw, &w).expect("compiles");
        let d = &first.config.defender;
        assert!(d.enabled);
        let peers = d.peers.as_ref().unwrap();
        assert_eq!(peers.listen, "0.0.0.0:7946");
        assert_eq!(
            peers.addresses,
            [format!(
                "{}-peers.{}.svc:7946",
                gw.name_any(),
                gw.namespace().unwrap_or_default()
            )]
        );
        assert_eq!(first.files["defender.key"].len(), 64);
        // Once the config Secret holds a key, it is kept: the bundle does not churn.
        let (name, secret) = super::super::fixtures::secret(
            &build::config_secret_name(&gw),
            &[("defender.key", &first.files["defender.key"])],
        );
        w.secrets.insert(name, secret);
        let again = compile(&gw, &w).unwrap();
        assert_eq!(again.files["defender.key"], first.files["defender.key"]);
        assert_eq!(again.hash, first.hash);
        // A safe zone that does not exist is refused with the reason.
        let mut bad = gw.clone();
        bad.spec.defender.safe_zones = vec!["nowhere".into()];
        let problems = compile(&bad, &w).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.reason == Reason::ZoneNotFound && p.message.contains("nowhere")),
            "{problems:?}"
        );
    }

    /// `w` with gateway `gw`'s config Secret as applying bundle `b` left it.
    fn as_applied(mut w: World, gw: &TransferGateway, b: &Bundle) -> World {
        let files: Vec<(&str, &[u8])> = b.files.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        let (n, s) = secret(&build::config_secret_name(gw), &files);
        w.secrets.insert(n, s);
        w
    }

    #[test]
    fn a_gateways_audit_key_is_kept_made_again_when_lost_and_rotated_by_age() {
        let day = 86_400;
        let mut w = world();
        let kr = w.key_rings.get_mut("keys").unwrap();
        kr.spec.audit_signing_key = true;
        kr.spec.audit_key_rotation = Some("720h".into());
        w.now = 100 * day;
        let mut gw = gateway(&format!(
            "{SFTP_GATEWAY}  audit: {{signingKeyRing: keys}}\n"
        ));
        let first = compile(&gw, &w).unwrap();
        let k1 = first.audit_key.clone().unwrap();
        assert_eq!(
            k1.created_at,
            crate::shared::keyring_secret::rfc3339(100 * day)
        );
        // Not yet applied: every compile would make another, so nothing is kept by chance.
        let w = as_applied(w, &gw, &first);
        gw.status = Some(portcullis_api::TransferGatewayStatus {
            audit_keys: vec![k1.clone()],
            ..Default::default()
        });
        // Kept while younger than auditKeyRotation, by the date the status gives it.
        let mut later = w.clone();
        later.now = 129 * day;
        let kept = compile(&gw, &later).unwrap();
        assert_eq!(kept.audit_key.as_ref(), Some(&k1));
        assert_eq!(
            kept.files[AUDIT_SIGNING_KEY],
            first.files[AUDIT_SIGNING_KEY]
        );
        assert_eq!(kept.hash, first.hash);
        // Replaced at 30 days.
        later.now = 130 * day;
        let rotated = compile(&gw, &later).unwrap();
        let k2 = rotated.audit_key.unwrap();
        assert_ne!(k2.key_id, k1.key_id);
        assert_eq!(
            k2.created_at,
            crate::shared::keyring_secret::rfc3339(130 * day)
        );
        assert_ne!(rotated.restart_hash, first.restart_hash);
        // Without auditKeyRotation, a key is never too old.
        let mut forever = later.clone();
        forever
            .key_rings
            .get_mut("keys")
            .unwrap()
            .spec
            .audit_key_rotation = None;
        forever.now = 1000 * day;
        assert_eq!(compile(&gw, &forever).unwrap().audit_key, Some(k1.clone()));
        // Lost from the config Secret (the way to rotate by hand): a new one.
        let mut lost = w.clone();
        lost.secrets.remove(&build::config_secret_name(&gw));
        assert_ne!(
            compile(&gw, &lost).unwrap().audit_key.unwrap().key_id,
            k1.key_id
        );
        // A key the status does not know (its status was lost) counts from now.
        gw.status = None;
        let unknown = compile(&gw, &later).unwrap().audit_key.unwrap();
        assert_eq!(
            (unknown.key_id, unknown.created_at),
            (k1.key_id, crate::shared::keyring_secret::rfc3339(130 * day))
        );
    }

    #[test]
    fn the_audit_file_sink_and_signing_key_ring_compile_into_the_pod() {
        let audited = format!(
            "{SFTP_GATEWAY}  audit: {{signingKeyRing: keys, checkpointSeconds: 5, stdout: false, file: {{rotateBytes: 1048576, maxBytes: 8388608, whenFull: deleteOldest, failClosed: true, fsync: record}}, collector: {{url: 'https://10.3.0.7:8443/ingest', ca: {{name: collector-ca}}, batchRecords: 100}}}}\n"
        );
        // The key ring is not a signing authority: named, and nothing compiles.
        let mut w = world();
        let problems = compile(&gateway(&audited), &w).unwrap_err();
        assert!(
            problems.iter().any(|p| p.reason == Reason::KeyRingNotReady
                && p.message.contains("set auditSigningKey: true")),
            "{problems:?}"
        );
        w.key_rings.get_mut("keys").unwrap().spec.audit_signing_key = true;
        let problems = compile(&gateway(&audited), &w).unwrap_err();
        assert!(
            problems
                .iter()
                .all(|p| p.reason == Reason::SecretNotFound
                    && p.message.contains("audit.collector.ca")),
            "{problems:?}"
        );
        let (n, ca) = secret(
            "collector-ca",
            &[("ca.crt", b"-----BEGIN CERTIFICATE-----\n")],
        );
        w.secrets.insert(n, ca);
        let plain = compile(&gateway(SFTP_GATEWAY), &w).unwrap();
        let b = compile(&gateway(&audited), &w).unwrap();
        config::validate(&b.config).expect("the contract's own checks pass");
        // The gateway's own key, made for it: the key ring's Secret holds none.
        let key = std::str::from_utf8(&b.files[AUDIT_SIGNING_KEY]).unwrap();
        let (public, id) = crate::shared::ca::audit_key_facts(key).unwrap();
        let published = b.audit_key.as_ref().unwrap();
        assert_eq!((&published.public_key, &published.key_id), (&public, &id));
        assert!(
            w.secrets["keys-keyring"]
                .data
                .as_ref()
                .unwrap()
                .values()
                .all(|v| v.0 != key.as_bytes())
        );
        let a = &b.config.audit;
        assert_eq!(a.file.as_deref(), Some(AUDIT_FILE));
        assert!(!a.stdout);
        assert_eq!(a.signing_key_file.as_deref(), Some(AUDIT_SIGNING_KEY));
        assert_eq!(a.checkpoint_seconds, 5);
        assert_eq!(a.fsync, config::AuditFsync::Record);
        assert_eq!(
            (
                a.rotate_bytes(),
                a.max_bytes(),
                a.when_full(),
                a.fail_closed()
            ),
            (1 << 20, 8 << 20, config::AuditWhenFull::DeleteOldest, true)
        );
        let c = a.collector.as_ref().unwrap();
        assert_eq!(
            (
                c.url.as_str(),
                c.ca_file.as_str(),
                c.batch_records,
                c.source.as_deref()
            ),
            (
                "https://10.3.0.7:8443/ingest",
                AUDIT_COLLECTOR_CA,
                Some(100),
                None
            )
        );
        assert_eq!(
            b.files[AUDIT_COLLECTOR_CA],
            b"-----BEGIN CERTIFICATE-----\n"
        );
        assert!(b.egress.contains(&("10.3.0.7/32".to_owned(), 8443, 8443)));
        // The running gateway cannot take an audit change on by reloading: the pods restart.
        assert_ne!(b.restart_hash, plain.restart_hash);
        let pod = build::pod_spec(&gateway(&audited), &b);
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "audit")
            .unwrap();
        assert_eq!(
            volume.empty_dir.unwrap().size_limit.unwrap().0,
            ((8u64 << 20) + (1 << 20) + (16 << 20)).to_string()
        );
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "audit")
            .cloned()
            .unwrap();
        assert_eq!(mount.mount_path, AUDIT_MOUNT);
        assert_eq!(mount.read_only, None);
        // Without the file sink, no volume.
        let plain_pod = build::pod_spec(&gateway(SFTP_GATEWAY), &plain);
        assert!(plain_pod.volumes.unwrap().iter().all(|v| v.name != "audit"));
    }

    #[test]
    fn a_complete_namespace_compiles_into_a_valid_bundle() {
        let w = world();
        let b = compile(&gateway(SFTP_GATEWAY), &w).expect("compiles");
        config::validate(&b.config).expect("the contract's own checks pass");
        let keys: Vec<&str> = b.files.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "config.yaml",
                "defender.key",
                "endpoint-backend.key",
                "hostkey-ecdsa-p256",
                "hostkey-ed25519",
                "keyring-keys-client-ca.crt",
                "keyring-keys.crt",
                "keyring-keys.key"
            ]
        );
        // Trusted client CAs pass into the bundle with the certificate.
        let kr = &b.config.key_rings[0];
        assert_eq!(
            kr.client_ca_file.as_deref(),
            Some("keyring-keys-client-ca.crt")
        );
        assert_eq!(kr.backend_ca_file, None);
        let c = &b.config;
        assert_eq!(c.listeners[0].address, "0.0.0.0:2222");
        assert_eq!(
            c.ssh.host_key_files,
            ["hostkey-ed25519", "hostkey-ecdsa-p256"]
        );
        let u = &c.users[0];
        assert_eq!(u.name, "alice");
        assert!(
            u.password_hash
                .as_deref()
                .unwrap()
                .starts_with("$argon2id$")
        );
        // A user without zones gets the zones the listeners admit.
        assert_eq!(u.zones, ["lan"]);
        let config::EndpointBackend::Sftp(e) = &c.endpoints[0].backend else {
            panic!("an sftp endpoint")
        };
        assert_eq!(e.addresses, ["10.9.0.5:22", "sftp.example:2022"]);
        assert_eq!(e.private_key_file.as_deref(), Some("endpoint-backend.key"));
        // Egress: the IP itself, and the declared CIDRs for the DNS name.
        let egress: Vec<_> = b.egress.iter().cloned().collect();
        assert_eq!(
            egress,
            [
                ("10.8.0.0/24".to_owned(), 2022, 2022),
                ("10.9.0.5/32".to_owned(), 22, 22)
            ]
        );
        assert_eq!(
            b.certificate_not_after.as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        // The bundle round-trips through the gateway's parser.
        let text = String::from_utf8(b.files["config.yaml"].clone()).unwrap();
        assert_eq!(config::GatewayConfig::parse(&text).unwrap(), b.config);
    }

    #[test]
    fn every_broken_reference_is_named() {
        let mut w = world();
        w.roles.get_mut("ops").unwrap().spec.mounts[0].endpoint = "mainframe".into();
        w.users
            .get_mut("alice")
            .unwrap()
            .spec
            .roles
            .push("auditors".into());
        w.secrets.remove("alice-pw");
        let gw = gateway(
            "  hostKeyRing: missing\n  listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [lan, dmz]}]\n",
        );
        let problems = compile(&gw, &w).unwrap_err();
        let got: Vec<(Reason, &str)> = problems
            .iter()
            .map(|p| (p.reason, p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    Reason::ZoneNotFound,
                    "listener sftp admits zone dmz, which does not exist"
                ),
                (
                    Reason::EndpointNotFound,
                    "role ops names endpoint mainframe, which does not exist"
                ),
                (
                    Reason::RoleNotFound,
                    "user alice names role auditors, which does not exist"
                ),
                (
                    Reason::KeyRingNotFound,
                    "hostKeyRing names key ring missing, which does not exist"
                ),
                (
                    Reason::SecretNotFound,
                    "user alice names Secret alice-pw, which does not exist"
                ),
            ]
        );
    }

    #[test]
    fn unusable_key_rings_credentials_and_protocols_are_refused() {
        let mut w = world();
        w.key_rings.get_mut("keys").unwrap().status = None;
        w.secrets.insert(
            "backend-creds".into(),
            crate::controller::fixtures::secret("backend-creds", &[("other", b"x")]).1,
        );
        w.secrets.insert(
            "alice-pw".into(),
            crate::controller::fixtures::secret("alice-pw", &[("hash", b"hunter2")]).1,
        );
        let gw = gateway(
            "  hostKeyRing: keys\n  listeners: [{name: ftps, protocol: ftps, port: 21, zones: [lan], keyRing: keys}]\n",
        );
        let reasons: Vec<Reason> = compile(&gw, &w)
            .unwrap_err()
            .iter()
            .map(|p| p.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                Reason::KeyRingNotReady,
                Reason::KeyRingNotReady,
                Reason::SecretKeyMissing,
                Reason::InvalidCredential,
            ]
        );
    }

    #[test]
    fn the_restart_hash_moves_only_with_listeners() {
        let w = world();
        let base = compile(&gateway(SFTP_GATEWAY), &w).unwrap();
        let mut w2 = world();
        w2.roles.get_mut("ops").unwrap().spec.mounts[0]
            .verbs
            .push(portcullis_api::Verb::Read);
        let role_change = compile(&gateway(SFTP_GATEWAY), &w2).unwrap();
        assert_ne!(base.files["config.yaml"], role_change.files["config.yaml"]);
        assert_ne!(base.hash, role_change.hash);
        // New random key material in world() changes the hash, but never the restart hash.
        assert_eq!(base.restart_hash, role_change.restart_hash);
        let moved = compile(&gateway(&SFTP_GATEWAY.replace("2222", "2223")), &w).unwrap();
        assert_ne!(base.restart_hash, moved.restart_hash);
    }

    #[test]
    fn the_status_says_when_a_user_cannot_log_in_over_ftps() {
        let user = |yaml: &str| -> portcullis_api::TransferUserSpec {
            serde_yaml_ng::from_str(yaml).unwrap()
        };
        let base = "zones: [z]\nroles: [r]\n";
        let pw = "passwordHash: {name: s, key: k}\n";
        let totp = "totpSecret: {name: s, key: t}\n";
        let key = "publicKeys: [\"ssh-ed25519 AAAA x\"]\n";
        assert_eq!(ftps_refusal(&user(&format!("{base}{pw}"))), None);
        assert_eq!(ftps_refusal(&user(&format!("{base}{pw}{key}"))), None);
        // A TOTP secret is always asked for, and FTPS cannot ask.
        assert!(ftps_refusal(&user(&format!("{base}{pw}{totp}"))).is_some());
        assert!(ftps_refusal(&user(&format!("{base}{key}"))).is_some());
        // An explicit chain without the code is the administrator's choice.
        let chains = "authMethods: [\"password,keyboard-interactive\", password]\n";
        assert_eq!(
            ftps_refusal(&user(&format!("{base}{pw}{totp}{chains}"))),
            None
        );
    }
}
