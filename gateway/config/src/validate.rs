//! Semantic checks of a parsed config: references resolve, names are unique, values make sense.
//! Every error is collected; nothing stops at the first.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::{
    AuthChain, AuthMethod, ConfigError, EndpointBackend, FtpSecurity, GatewayConfig, Verb,
};

/// Whether a user with a TOTP secret is asked for a code under these `authMethods`: always when
/// none are set (each method is then followed by one), else when some chain names
/// `keyboard-interactive`. A secret never asked for would be a second factor silently skipped.
pub fn asks_for_code(auth_methods: &[AuthChain]) -> bool {
    auth_methods.is_empty()
        || auth_methods
            .iter()
            .any(|c| c.contains(AuthMethod::KeyboardInteractive))
}

/// Checks a parsed config and returns every error found, in document order.
pub fn validate(config: &GatewayConfig) -> Result<(), Vec<ConfigError>> {
    let mut errs = Errors::default();

    let zones = unique_names(&mut errs, "zones", config.zones.iter().map(|z| &z.name));
    let endpoints = unique_names(
        &mut errs,
        "endpoints",
        config.endpoints.iter().map(|e| &e.name),
    );
    let roles = unique_names(&mut errs, "roles", config.roles.iter().map(|r| &r.name));
    let key_rings = unique_names(
        &mut errs,
        "keyRings",
        config.key_rings.iter().map(|k| &k.name),
    );

    if config.listeners.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    unique_names(
        &mut errs,
        "listeners",
        config.listeners.iter().map(|l| &l.name),
    );
    let mut bound = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        match l.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(other) = bound.insert(addr, i) {
                    errs.push(
                        format!("{at}.address"),
                        format!("{addr} is already bound by listeners[{other}]"),
                    );
                }
            }
            Err(_) => errs.push(
                format!("{at}.address"),
                format!("{:?} is not IP:port", l.address),
            ),
        }
        if l.zones.is_empty() {
            errs.push(
                format!("{at}.zones"),
                "a listener must admit at least one zone (nobody could connect)",
            );
        }
        check_refs(&mut errs, &format!("{at}.zones"), &l.zones, &zones, "zone");
        check_ftps_listener(&mut errs, &at, l, &key_rings);
    }

    for (i, z) in config.zones.iter().enumerate() {
        let at = format!("zones[{i}].cidrs");
        if z.cidrs.is_empty() {
            errs.push(&at, "a zone needs at least one CIDR");
        }
        for (j, c) in z.cidrs.iter().enumerate() {
            if parse_cidr(c).is_none() {
                errs.push(
                    format!("{at}[{j}]"),
                    format!("{c:?} is not a CIDR or IP address"),
                );
            }
        }
    }

    for (i, e) in config.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        match &e.backend {
            EndpointBackend::Sftp(s) => {
                check_addresses(&mut errs, &at, &s.addresses);
                if s.host_keys.is_empty() {
                    errs.push(
                        format!("{at}.hostKeys"),
                        "at least one pinned host key is required; unpinned backends are refused",
                    );
                }
                if s.username.is_empty() {
                    errs.push(format!("{at}.username"), "must not be empty");
                }
                match (&s.private_key_file, &s.password_file) {
                    (None, None) => {
                        errs.push(&at, "one of privateKeyFile or passwordFile is required")
                    }
                    (Some(_), Some(_)) => {
                        errs.push(&at, "set only one of privateKeyFile and passwordFile")
                    }
                    _ => {}
                }
                if s.connect_timeout_seconds == 0 {
                    errs.push(format!("{at}.connectTimeoutSeconds"), "must be at least 1");
                }
                if s.io_timeout_seconds == 0 {
                    errs.push(format!("{at}.ioTimeoutSeconds"), "must be at least 1");
                }
            }
            EndpointBackend::Ftps(f) => {
                check_addresses(&mut errs, &at, &f.addresses);
                match f.security {
                    FtpSecurity::Plaintext if !f.allow_plaintext => errs.push(
                        format!("{at}.security"),
                        "a plaintext FTP backend needs allowPlaintext: true",
                    ),
                    FtpSecurity::Plaintext => {}
                    _ if f.ca_file.is_none() => errs.push(
                        format!("{at}.caFile"),
                        "a CA (or the pinned server certificate) is required for a TLS backend",
                    ),
                    _ => {}
                }
                if f.client_certificate_file.is_some() != f.client_key_file.is_some() {
                    errs.push(&at, "clientCertificateFile and clientKeyFile go together");
                }
                if f.username.is_empty() {
                    errs.push(format!("{at}.username"), "must not be empty");
                }
                if f.connect_timeout_seconds == 0 {
                    errs.push(format!("{at}.connectTimeoutSeconds"), "must be at least 1");
                }
                if f.io_timeout_seconds == 0 {
                    errs.push(format!("{at}.ioTimeoutSeconds"), "must be at least 1");
                }
            }
            EndpointBackend::Local(l) => {
                if !l.root.starts_with('/') {
                    errs.push(format!("{at}.root"), "must be an absolute path");
                }
            }
        }
    }

    for (i, r) in config.roles.iter().enumerate() {
        let mut seen = HashSet::new();
        for (j, m) in r.mounts.iter().enumerate() {
            let at = format!("roles[{i}].mounts[{j}]");
            if let Err(why) = check_mount_path(&m.path) {
                errs.push(format!("{at}.path"), why);
            } else if !seen.insert(m.path.as_str()) {
                errs.push(
                    format!("{at}.path"),
                    format!("{} is mounted twice in this role", m.path),
                );
            }
            if !m.backend_path.starts_with('/') || m.backend_path.contains('\0') {
                errs.push(format!("{at}.backendPath"), "must be an absolute path");
            }
            if !endpoints.contains(m.endpoint.as_str()) {
                errs.push(
                    format!("{at}.endpoint"),
                    format!(
                        "role {} names endpoint {}, which does not exist",
                        r.name, m.endpoint
                    ),
                );
            }
            if m.verbs.is_empty() {
                errs.push(
                    format!("{at}.verbs"),
                    "a mount must allow at least one verb",
                );
            }
            if !m.site_commands.is_empty() && !m.verbs.contains(&Verb::Site) {
                errs.push(
                    format!("{at}.siteCommands"),
                    "siteCommands need the verb site",
                );
            }
            if parse_umask(&m.umask).is_none() {
                errs.push(
                    format!("{at}.umask"),
                    format!(
                        "{:?} is not an octal umask of three digits, such as \"027\"",
                        m.umask
                    ),
                );
            }
            if m.max_file_bytes == Some(0) {
                errs.push(format!("{at}.maxFileBytes"), "must be at least 1");
            }
            for (k, c) in m.site_commands.iter().enumerate() {
                if c.is_empty() || c.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    errs.push(
                        format!("{at}.siteCommands[{k}]"),
                        "one subcommand word, without spaces",
                    );
                }
            }
        }
    }

    unique_names(&mut errs, "users", config.users.iter().map(|u| &u.name));
    for (i, u) in config.users.iter().enumerate() {
        let at = format!("users[{i}]");
        if u.name.is_empty() || u.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(
                format!("{at}.name"),
                "must be non-empty, without spaces or control characters",
            );
        }
        if u.zones.is_empty() {
            errs.push(
                format!("{at}.zones"),
                "a user must be allowed at least one zone",
            );
        }
        check_refs(&mut errs, &format!("{at}.zones"), &u.zones, &zones, "zone");
        check_refs(&mut errs, &format!("{at}.roles"), &u.roles, &roles, "role");
        if let Some(exp) = &u.expires_at
            && chrono::DateTime::parse_from_rfc3339(exp).is_err()
        {
            errs.push(
                format!("{at}.expiresAt"),
                format!("{exp:?} is not an RFC 3339 time"),
            );
        }
        let has = |m: AuthMethod| match m {
            AuthMethod::Password => u.password_hash.is_some(),
            AuthMethod::PublicKey => !u.public_keys.is_empty(),
            AuthMethod::KeyboardInteractive => u.totp_secret_file.is_some(),
            AuthMethod::Certificate => !u.certificate_names.is_empty(),
        };
        if u.auth_methods.is_empty()
            && !has(AuthMethod::Password)
            && !has(AuthMethod::PublicKey)
            && !has(AuthMethod::Certificate)
        {
            errs.push(
                &at,
                "the user has no credential: set passwordHash, publicKeys or certificateNames",
            );
        }
        if has(AuthMethod::KeyboardInteractive) && !asks_for_code(&u.auth_methods) {
            errs.push(
                format!("{at}.authMethods"),
                "the user has a TOTP secret but no chain asks for keyboard-interactive; \
                 add it to every chain (e.g. \"password,keyboard-interactive\"), or remove the secret",
            );
        }
        for (j, chain) in u.auth_methods.iter().enumerate() {
            let cat = format!("{at}.authMethods[{j}]");
            let methods = &chain.0;
            let mut seen = HashSet::new();
            for &m in methods {
                if !has(m) {
                    errs.push(
                        &cat,
                        format!("method {m} needs a credential the user lacks"),
                    );
                }
                if !seen.insert(m) {
                    errs.push(&cat, format!("method {m} appears twice"));
                }
            }
            if methods[..] == [AuthMethod::KeyboardInteractive] {
                errs.push(
                    &cat,
                    "a one-time code alone is not enough; chain it after publickey or password",
                );
            }
        }
        // Mounts from several roles must not contradict each other.
        let mut mounts: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::new();
        for role in config.roles.iter().filter(|r| u.roles.contains(&r.name)) {
            for m in &role.mounts {
                let this = (
                    m.endpoint.as_str(),
                    m.backend_path.as_str(),
                    role.name.as_str(),
                );
                match mounts.get(m.path.as_str()) {
                    Some(prev) if (prev.0, prev.1) != (this.0, this.1) => errs.push(
                        format!("{at}.roles"),
                        format!(
                            "roles {} and {} both mount {} but on different targets",
                            prev.2, this.2, m.path
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        mounts.insert(&m.path, this);
                    }
                }
            }
        }
        let paths: Vec<&str> = mounts.keys().copied().collect();
        for a in &paths {
            for b in &paths {
                if a != b && b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/') {
                    errs.push(
                        format!("{at}.roles"),
                        format!(
                            "mount {b} is nested inside mount {a}; nested mounts are not allowed"
                        ),
                    );
                }
            }
        }
    }

    let l = &config.limits;
    for (name, v) in [
        ("maxSessions", l.max_sessions as u64),
        ("maxSessionsPerIp", l.max_sessions_per_ip as u64),
        (
            "maxUnauthenticatedPerIp",
            l.max_unauthenticated_per_ip as u64,
        ),
        ("loginGraceSeconds", l.login_grace_seconds),
        ("idleTimeoutSeconds", l.idle_timeout_seconds),
        ("maxAuthAttempts", l.max_auth_attempts as u64),
        ("maxInFlightRequests", l.max_in_flight_requests as u64),
        (
            "maxBackendConnectionsPerSession",
            l.max_backend_connections_per_session as u64,
        ),
    ] {
        if v == 0 {
            errs.push(format!("limits.{name}"), "must be at least 1");
        }
    }
    let d = &config.defender;
    for (name, v) in [
        ("threshold", u64::from(d.threshold)),
        ("userThreshold", u64::from(d.user_threshold)),
        ("observationSeconds", d.observation_seconds),
        ("banSeconds", d.ban_seconds),
    ] {
        if v == 0 {
            errs.push(format!("defender.{name}"), "must be at least 1");
        }
    }
    if d.max_ban_seconds < d.ban_seconds {
        errs.push("defender.maxBanSeconds", "must be at least banSeconds");
    }
    for (i, z) in d.safe_zones.iter().enumerate() {
        if !config.zones.iter().any(|k| &k.name == z) {
            errs.push(
                format!("defender.safeZones[{i}]"),
                format!("zone {z:?} is not defined"),
            );
        }
    }
    if let Some(p) = &d.peers {
        if p.listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push("defender.peers.listen", "not an IP:port");
        }
        if p.addresses.is_empty() {
            errs.push("defender.peers.addresses", "name at least one peer");
        }
        for (i, a) in p.addresses.iter().enumerate() {
            if a.rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
            {
                errs.push(format!("defender.peers.addresses[{i}]"), "not a host:port");
            }
        }
    }
    if l.auth_failure_delay_millis > 10_000 {
        errs.push("limits.authFailureDelayMillis", "must be at most 10000");
    }
    if l.max_in_flight_requests > 1024 {
        errs.push("limits.maxInFlightRequests", "must be at most 1024");
    }
    if !config.audit.stdout && config.audit.file.is_none() {
        errs.push(
            "audit",
            "at least one audit sink is required (stdout or file)",
        );
    }
    if config.audit.checkpoint_seconds == 0 || config.audit.checkpoint_seconds > 86_400 {
        errs.push("audit.checkpointSeconds", "must be between 1 and 86400");
    }
    let a = &config.audit;
    if a.file.is_none() {
        for (set, field) in [
            (a.rotate_bytes.is_some(), "audit.rotateBytes"),
            (a.rotate_seconds.is_some(), "audit.rotateSeconds"),
            (a.max_bytes.is_some(), "audit.maxBytes"),
            (a.when_full.is_some(), "audit.whenFull"),
            (a.fail_closed.is_some(), "audit.failClosed"),
            (a.collector.is_some(), "audit.collector"),
        ] {
            if set {
                errs.push(
                    field,
                    "applies to the file sink only: set audit.file, or remove it",
                );
            }
        }
    }
    if a.rotate_bytes() < 4096 {
        errs.push("audit.rotateBytes", "must be at least 4096");
    }
    if a.rotate_seconds() == 0 || a.rotate_seconds() > 31_536_000 {
        errs.push("audit.rotateSeconds", "must be between 1 and 31536000");
    }
    if let Some(c) = &a.collector {
        match c.url.strip_prefix("https://") {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
            _ => errs.push(
                "audit.collector.url",
                format!(
                    "{:?} is not https://HOST[:PORT]/PATH (records never go in cleartext)",
                    c.url
                ),
            ),
        }
        if c.batch_records.is_some_and(|n| n == 0 || n > 10_000) {
            errs.push(
                "audit.collector.batchRecords",
                "must be between 1 and 10000",
            );
        }
        if c.client_certificate_file.is_some() != c.client_key_file.is_some() {
            errs.push(
                "audit.collector",
                "clientCertificateFile and clientKeyFile go together",
            );
        }
    }
    if a.max_bytes() < 2 * a.rotate_bytes() {
        errs.push(
            "audit.maxBytes",
            format!(
                "must be at least twice rotateBytes ({}), so a full file can rotate",
                a.rotate_bytes()
            ),
        );
    }
    if let Some(admin) = &config.admin
        && admin.address.parse::<SocketAddr>().is_err()
    {
        errs.push(
            "admin.address",
            format!("{:?} is not IP:port", admin.address),
        );
    }

    errs.finish()
}

/// A backend's `host:port` list: at least one, each well-formed.
fn check_addresses(errs: &mut Errors, at: &str, addresses: &[String]) {
    if addresses.is_empty() {
        errs.push(
            format!("{at}.addresses"),
            "at least one address is required",
        );
    }
    for (j, a) in addresses.iter().enumerate() {
        if !is_host_port(a) {
            errs.push(
                format!("{at}.addresses[{j}]"),
                format!("{a:?} is not host:port"),
            );
        }
    }
}

/// The FTPS-only listener fields: required for FTPS, refused elsewhere.
/// A listener's `cipherSuites` hold at least one TLS 1.3 suite, since TLS 1.3 is always on.
/// (Names the gateway lacks do not parse: a typo cannot leave a listener with fewer suites
/// than asked for.)
fn check_cipher_suites(errs: &mut Errors, at: &str, suites: &[crate::CipherSuite]) {
    if !suites.is_empty() && !suites.iter().any(|s| s.is_tls13()) {
        errs.push(
            format!("{at}.tls.cipherSuites"),
            "name at least one TLS 1.3 suite (TLS13_...): TLS 1.3 is always offered",
        );
    }
}

fn check_ftps_listener(
    errs: &mut Errors,
    at: &str,
    l: &crate::Listener,
    key_rings: &HashSet<&str>,
) {
    if !l.protocol.is_ftps() {
        if l.tls.is_some() || l.passive_ports.is_some() || l.advertised_address.is_some() {
            errs.push(
                at,
                "tls, passivePorts and advertisedAddress apply to FTPS listeners only",
            );
        }
        return;
    }
    match &l.tls {
        None => errs.push(format!("{at}.tls"), "an FTPS listener needs tls.keyRing"),
        Some(t) => {
            if !key_rings.contains(t.key_ring.as_str()) {
                errs.push(
                    format!("{at}.tls.keyRing"),
                    format!("key ring {} does not exist", t.key_ring),
                );
            }
            check_cipher_suites(errs, at, &t.cipher_suites);
        }
    }
    match l.passive_ports {
        None => errs.push(
            format!("{at}.passivePorts"),
            "an FTPS listener needs a passive port range",
        ),
        Some(r) if r.min > r.max || r.min < 1024 => errs.push(
            format!("{at}.passivePorts"),
            "min must be at least 1024 and at most max",
        ),
        Some(_) => {}
    }
    if let Some(a) = &l.advertised_address
        && a.parse::<std::net::Ipv4Addr>().is_err()
    {
        errs.push(
            format!("{at}.advertisedAddress"),
            format!("{a:?} is not an IPv4 address (PASV can only carry IPv4)"),
        );
    }
    if l.data_timeout_seconds == 0 {
        errs.push(format!("{at}.dataTimeoutSeconds"), "must be at least 1");
    }
}

/// Parses `10.0.0.0/8` or a bare address (a single host).
/// A mount's umask: three octal digits (a fourth, leading `0`, is allowed), at most `777`.
pub fn parse_umask(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(s);
    if digits.len() != 3 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

pub fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A mount path is absolute, normalized and not the root.
fn check_mount_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must be absolute"));
    }
    if p == "/" {
        return Err("a mount cannot be the root: the root lists the mounts".to_owned());
    }
    if p.ends_with('/') || p.contains('\0') {
        return Err(format!("{p:?} must not end in / or contain NUL"));
    }
    if p[1..]
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("{p:?} must be normalized (no //, . or ..)"));
    }
    Ok(())
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn unique_names<'a>(
    errs: &mut Errors,
    list: &str,
    names: impl Iterator<Item = &'a String>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            errs.push(format!("{list}[{i}].name"), "must not be empty");
        } else if !seen.insert(n.as_str()) {
            errs.push(format!("{list}[{i}].name"), format!("duplicate name {n:?}"));
        }
    }
    seen
}

fn check_refs(errs: &mut Errors, at: &str, refs: &[String], known: &HashSet<&str>, kind: &str) {
    for (j, r) in refs.iter().enumerate() {
        if !known.contains(r.as_str()) {
            errs.push(format!("{at}[{j}]"), format!("{kind} {r} does not exist"));
        }
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(path, message));
    }

    fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - { name: sftp, protocol: sftp, address: "127.0.0.1:2222", zones: [lo] }
zones:
  - { name: lo, cidrs: ["127.0.0.0/8", "::1"] }
endpoints:
  - { name: files, type: local, root: /srv/files }
  - name: mainframe
    type: sftp
    addresses: ["10.0.0.5:22", "10.0.0.6:22"]
    hostKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3Cz8X6Yq3dCF2b9pZ1a1fKq2Hh2jQb5o1q8VbJZt3s"]
    username: gw
    privateKeyFile: /keys/id
users:
  - name: alice
    passwordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$YWJj"
    zones: [lo]
    roles: [ops]
roles:
  - name: ops
    mounts:
      - { path: /files, endpoint: files, verbs: [list, read, write] }
      - { path: /mf/out, endpoint: mainframe, backendPath: /out, verbs: [read] }
"#;

    fn paths(text: &str) -> Vec<String> {
        let cfg = GatewayConfig::parse(text).expect("parses");
        match validate(&cfg) {
            Ok(()) => vec![],
            Err(errs) => errs.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn ftps_settings_are_checked_with_their_paths() {
        let text = r#"
listeners:
  - { name: a, protocol: ftps, address: "0.0.0.0:21", zones: [z] }
  - name: b
    protocol: ftpsImplicit
    address: "0.0.0.0:990"
    zones: [z]
    tls: { keyRing: nope, minVersion: "1.3", clientCertificates: required }
    passivePorts: { min: 900, max: 950 }
    advertisedAddress: "2001:db8::1"
  - { name: c, protocol: sftp, address: "0.0.0.0:22", zones: [z], passivePorts: { min: 30000, max: 30001 } }
zones: [{ name: z, cidrs: [10.0.0.0/8] }]
endpoints:
  - { name: plain, type: ftps, addresses: ["mf:21"], security: plaintext, username: u, passwordFile: p }
  - { name: tls, type: ftps, addresses: [], username: u, passwordFile: p, clientKeyFile: k }
roles:
  - name: r
    mounts: [{ path: /m, endpoint: tls, verbs: [read], siteCommands: [CHMOD] }]
users:
  - { name: carol, certificateNames: [carol], authMethods: [certificate], zones: [z], roles: [r] }
"#;
        assert_eq!(
            paths(text),
            [
                "listeners[0].tls",
                "listeners[0].passivePorts",
                "listeners[1].tls.keyRing",
                "listeners[1].passivePorts",
                "listeners[1].advertisedAddress",
                "listeners[2]",
                "endpoints[0].security",
                "endpoints[1].addresses",
                "endpoints[1].caFile",
                "endpoints[1]",
                "roles[0].mounts[0].siteCommands",
            ]
        );
    }

    #[test]
    fn cipher_suites_are_names_the_gateway_has_with_one_for_tls13() {
        let with = |suites: &str| {
            paths(&format!(
                r#"
listeners:
  - name: f
    protocol: ftps
    address: "0.0.0.0:21"
    zones: [z]
    tls: {{ keyRing: k, cipherSuites: {suites} }}
    passivePorts: {{ min: 30000, max: 30009 }}
zones: [{{ name: z, cidrs: [10.0.0.0/8] }}]
keyRings: [{{ name: k, certificateFile: c, privateKeyFile: k }}]
"#
            ))
        };
        assert_eq!(with("[]"), Vec::<String>::new());
        assert_eq!(
            with("[TLS13_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]"),
            Vec::<String>::new()
        );
        // A typo, a lower-case name, and a suite rustls does not have: none parses, and the
        // error names the suites there are.
        for bad in [
            "TLS13_AES_256_GCM_SHA38",
            "tls13_aes_128_gcm_sha256",
            "TLS_RSA_WITH_AES_128_CBC_SHA",
        ] {
            let text = format!(
                "listeners: [{{ name: f, protocol: ftps, address: \"0.0.0.0:21\", zones: [z], \
                 tls: {{ keyRing: k, cipherSuites: [TLS13_AES_256_GCM_SHA384, {bad}] }} }}]"
            );
            let e = GatewayConfig::parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("unknown variant `{bad}`"))
                    && e.contains("TLS13_CHACHA20_POLY1305_SHA256"),
                "{e}"
            );
        }
        // TLS 1.2 suites alone would leave TLS 1.3 (always on) with none.
        assert_eq!(
            with("[TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]"),
            ["listeners[0].tls.cipherSuites"]
        );
    }

    #[test]
    fn a_totp_secret_no_chain_asks_for_is_refused() {
        let with = |methods: &str| {
            GOOD.replace(
                "    roles: [ops]",
                &format!(
                    "    roles: [ops]\n    totpSecretFile: /etc/totp\n    authMethods: {methods}"
                ),
            )
        };
        assert_eq!(paths(&with("[]")), Vec::<String>::new());
        assert_eq!(
            paths(&with("[\"password,keyboard-interactive\"]")),
            Vec::<String>::new()
        );
        assert_eq!(paths(&with("[password]")), ["users[0].authMethods"]);
        assert!(asks_for_code(&[]));
        let chains =
            |cs: &[&str]| -> Vec<AuthChain> { cs.iter().map(|c| c.parse().unwrap()).collect() };
        assert!(!asks_for_code(&chains(&["password", "publickey"])));
        assert!(asks_for_code(&chains(&[
            "password",
            "publickey, keyboard-interactive"
        ])));
    }

    #[test]
    fn audit_file_settings_need_the_file_sink_and_sane_sizes() {
        let with = |audit: &str| paths(&format!("{GOOD}audit: {audit}\n"));
        assert_eq!(
            with(
                "{ file: /a/audit.jsonl, rotateBytes: 65536, maxBytes: 262144, whenFull: deleteOldest, failClosed: false }"
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            with("{ rotateBytes: 65536, failClosed: true }"),
            ["audit.rotateBytes", "audit.failClosed"]
        );
        assert_eq!(
            with("{ file: /a, rotateBytes: 100, rotateSeconds: 0 }"),
            ["audit.rotateBytes", "audit.rotateSeconds"]
        );
        assert_eq!(
            with("{ file: /a, rotateBytes: 65536, maxBytes: 65537 }"),
            ["audit.maxBytes"]
        );
        assert!(
            GatewayConfig::parse(&format!("{GOOD}audit: {{ file: /a, whenFull: drop }}\n"))
                .is_err()
        );
        assert_eq!(
            with("{ collector: { url: 'https://c:1/', caFile: /ca } }"),
            ["audit.collector"]
        );
        assert_eq!(
            with(
                "{ file: /a, collector: { url: 'http://c/in', caFile: /ca, batchRecords: 0, clientKeyFile: /k } }"
            ),
            [
                "audit.collector.url",
                "audit.collector.batchRecords",
                "audit.collector"
            ]
        );
        assert_eq!(
            with("{ file: /a, collector: { url: 'https://c.example:8443/in', caFile: /ca } }"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn https_urls_are_taken_apart() {
        let u = crate::HttpsUrl::parse("https://c.example:8443/v1/in").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path.as_str()
            ),
            ("c.example", 8443, "c.example:8443", "/v1/in")
        );
        let u = crate::HttpsUrl::parse("https://c.example").unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/"));
        let u = crate::HttpsUrl::parse("https://[2001:db8::1]:9000/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 9000));
        for bad in [
            "http://c/",
            "https://",
            "https://c:port/",
            "https://u@c/",
            "ftp://c/",
        ] {
            assert_eq!(crate::HttpsUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn good_config_is_valid() {
        assert_eq!(paths(GOOD), Vec::<String>::new());
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = r#"
listeners:
  - { name: a, protocol: sftp, address: "127.0.0.1:99999", zones: [nowhere] }
  - { name: a, protocol: sftp, address: "127.0.0.1:22", zones: [] }
zones:
  - { name: lo, cidrs: ["127.0.0.0/33", "not-an-ip"] }
endpoints:
  - { name: e, type: sftp, addresses: ["nohostport"], hostKeys: [], username: "" }
users:
  - { name: bob, zones: [], roles: [ghost] }
  - name: carol
    passwordHash: x
    authMethods: ["keyboard-interactive", "password,password", "certificate"]
    zones: [lo]
    roles: []
roles:
  - name: r
    mounts:
      - { path: "/a/../b", endpoint: missing, backendPath: rel, verbs: [] }
      - { path: "/", endpoint: e, verbs: [read] }
limits: { maxSessions: 0 }
audit: { stdout: false }
admin: { address: nope }
"#;
        let got = paths(bad);
        let want = [
            "listeners[1].name",
            "listeners[0].address",
            "listeners[0].zones[0]",
            "listeners[1].zones",
            "zones[0].cidrs[0]",
            "zones[0].cidrs[1]",
            "endpoints[0].addresses[0]",
            "endpoints[0].hostKeys",
            "endpoints[0].username",
            "endpoints[0]",
            "roles[0].mounts[0].path",
            "roles[0].mounts[0].backendPath",
            "roles[0].mounts[0].endpoint",
            "roles[0].mounts[0].verbs",
            "roles[0].mounts[1].path",
            "users[0].zones",
            "users[0].roles[0]",
            "users[0]",
            "users[1].authMethods[0]",
            "users[1].authMethods[0]",
            "users[1].authMethods[1]",
            "users[1].authMethods[2]",
            "limits.maxSessions",
            "audit",
            "admin.address",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn conflicting_and_nested_mounts_across_roles_are_refused() {
        let text = GOOD.replace(
            "roles:\n  - name: ops",
            "roles:\n  - name: more\n    mounts:\n      - { path: /files, endpoint: mainframe, verbs: [read] }\n      - { path: /files/sub, endpoint: files, verbs: [read] }\n  - name: ops",
        )
        .replace("roles: [ops]", "roles: [ops, more]");
        let cfg = GatewayConfig::parse(&text).unwrap();
        let errs = validate(&cfg).unwrap_err();
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.contains("both mount /files but on different targets")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("nested inside mount /files")),
            "{msgs:?}"
        );
    }

    #[test]
    fn unknown_fields_and_protocols_are_refused_at_parse() {
        assert!(GatewayConfig::parse("listeners: []\nlisteners2: []").is_err());
        assert!(
            GatewayConfig::parse(
                "listeners: [{name: a, protocol: telnet, address: '1.2.3.4:1', zones: []}]"
            )
            .is_err()
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let cfg = GatewayConfig::parse(include_str!("../../../docs/gateway-config.example.yaml"))
            .unwrap();
        assert_eq!(validate(&cfg), Ok(()));
    }

    #[test]
    fn unknown_endpoint_fields_are_refused() {
        let text = GOOD.replace(
            "privateKeyFile: /keys/id",
            "privateKeyFile: /keys/id\n    pasword: oops",
        );
        assert!(GatewayConfig::parse(&text).is_err());
    }

    #[test]
    fn json_is_accepted() {
        let cfg = GatewayConfig::parse(
            r#"{"listeners":[{"name":"s","protocol":"sftp","address":"127.0.0.1:1","zones":["z"]}],
                "zones":[{"name":"z","cidrs":["127.0.0.1"]}]}"#,
        )
        .unwrap();
        assert_eq!(validate(&cfg), Ok(()));
    }
}
