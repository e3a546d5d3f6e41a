//! The operator→gateway contract: the config bundle's serde types and a `validate()` that
//! reports every error at once, each with the path of the field at fault.
//!
//! The operator writes this bundle into a Secret; the gateway reads it from a file. Both sides
//! depend on this crate and nothing else of each other, so it stays serde-only: no I/O beyond
//! reading the file, no key parsing (the gateway checks key material when it compiles the
//! bundle, and reports those errors in the same [`ConfigError`] shape).

use std::{collections::BTreeSet, fmt, path::Path};

use serde::{Deserialize, Serialize};

mod auth;
mod identity;
mod slice;
mod validate;

pub use auth::{AUTH_CHAIN_PATTERN, AuthChain, AuthMethod};
pub use identity::material_hash;
pub use slice::PassiveSlice;
pub use validate::{asks_for_code, parse_cidr, parse_umask, validate};

/// The whole gateway config bundle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway accepts connections.
    pub listeners: Vec<Listener>,
    /// Named sets of CIDRs that listeners and users refer to.
    #[serde(default)]
    pub zones: Vec<Zone>,
    /// Backends that mounts forward to.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Who may log in.
    #[serde(default)]
    pub users: Vec<User>,
    /// What users may do, as mounts with verbs.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// SSH host keys and algorithm policy.
    #[serde(default)]
    pub ssh: SshSettings,
    /// TLS key material by key ring name: certificates that listeners present, and trusted CAs.
    #[serde(default)]
    pub key_rings: Vec<KeyRingFiles>,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Where audit records go.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Brute-force defence: scores, bans and their sharing between replicas.
    #[serde(default)]
    pub defender: DefenderSettings,
    /// The admin HTTP port (`/healthz`, `/readyz`, `/metrics`); none when absent.
    #[serde(default)]
    pub admin: Option<AdminSettings>,
    /// Seconds that running transfers get to finish after SIGTERM.
    #[serde(default = "defaults::shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

/// A listening socket and the protocol it speaks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in audit records and metrics.
    pub name: String,
    pub protocol: Protocol,
    /// `IP:port` to bind, e.g. `0.0.0.0:2222`.
    pub address: String,
    /// Zones whose peers may connect; anyone else is closed before the banner.
    pub zones: Vec<String>,
    /// FTPS listeners: the TLS policy (required for FTPS, refused for SFTP).
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// FTPS listeners: the ports passive data connections are offered on (required for FTPS).
    #[serde(default)]
    pub passive_ports: Option<PortRange>,
    /// FTPS listeners: the IPv4 address `PASV` advertises (for NAT and load balancers);
    /// the control connection's local address when absent.
    #[serde(default)]
    pub advertised_address: Option<String>,
    /// FTPS listeners: active mode (`PORT`/`EPRT`); off unless enabled.
    #[serde(default)]
    pub active_mode: ActiveMode,
    /// FTPS listeners: seconds to wait for a data connection and its TLS handshake, and the
    /// longest a data connection may stall (no byte sent or taken) before its transfer fails.
    #[serde(default = "defaults::data_timeout_seconds")]
    pub data_timeout_seconds: u64,
}

/// The wire protocols the gateway terminates.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// SFTP over SSH.
    #[serde(rename = "sftp")]
    Sftp,
    /// Explicit FTPS: cleartext greeting, then `AUTH TLS` before anything else.
    #[serde(rename = "ftps")]
    Ftps,
    /// Implicit FTPS: TLS from the first byte.
    #[serde(rename = "ftpsImplicit")]
    FtpsImplicit,
}

impl Protocol {
    pub fn is_ftps(self) -> bool {
        matches!(self, Protocol::Ftps | Protocol::FtpsImplicit)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Sftp => "sftp",
            Protocol::Ftps => "ftps",
            Protocol::FtpsImplicit => "ftpsImplicit",
        })
    }
}

/// A TLS cipher suite, by rustls's name: one of the gateway's TLS provider's (aws-lc-rs)
/// default set, TLS 1.3 first.
// The gateway's tests keep `CipherSuite::ALL` equal to the provider's list.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(non_camel_case_types)]
pub enum CipherSuite {
    TLS13_AES_256_GCM_SHA384,
    TLS13_AES_128_GCM_SHA256,
    TLS13_CHACHA20_POLY1305_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

impl CipherSuite {
    /// Every suite, in the provider's order.
    pub const ALL: [CipherSuite; 9] = [
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    /// rustls's name for the suite, which is also its name in config.
    pub fn as_str(self) -> &'static str {
        match self {
            CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS13_AES_256_GCM_SHA384",
            CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS13_AES_128_GCM_SHA256",
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS13_CHACHA20_POLY1305_SHA256",
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            }
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            }
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
            }
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            }
            CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            }
        }
    }

    pub fn is_tls13(self) -> bool {
        self.as_str().starts_with("TLS13_")
    }
}

/// A TLS front end's policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// The key ring whose certificate the listener presents (hot-swapped on renewal) and whose
    /// client CAs verify client certificates.
    pub key_ring: String,
    /// The lowest TLS version accepted; TLS 1.3 is always preferred.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Cipher suites allowed; empty means all of them.
    #[serde(default)]
    pub cipher_suites: Vec<CipherSuite>,
    /// Whether clients present a certificate.
    #[serde(default)]
    pub client_certificates: ClientCertificates,
}

/// The lowest TLS version a listener accepts; TLS 1.3 is always offered and preferred.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificates on a TLS listener, verified against the key ring's client CAs.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; a presented certificate must verify.
    Optional,
    /// The handshake fails without a verified certificate.
    Required,
}

/// An inclusive port range (FTP data ports: 1024 and up, at most 256 of them).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.min <= self.max", "message": "min must not exceed max"},
        {"rule": "self.max - self.min < 256", "message": "a port range holds at most 256 ports"}
    ]))
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    /// The first port.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "i32", range(min = 1024, max = 65535))
    )]
    pub min: u16,
    /// The last port.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "i32", range(min = 1024, max = 65535))
    )]
    pub max: u16,
}

/// Active-mode FTP, with z/OS `FTP.DATA` semantics.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveMode {
    /// Accept `PORT`/`EPRT` at all.
    #[serde(default)]
    pub enabled: bool,
    /// `NOLOWPORTS`: refuse targets below port 1024.
    #[serde(default = "defaults::yes")]
    pub no_low_ports: bool,
    /// `NOREDIRECT`: refuse targets other than the client's own address.
    #[serde(default = "defaults::yes")]
    pub no_redirect: bool,
}

impl Default for ActiveMode {
    fn default() -> Self {
        ActiveMode {
            enabled: false,
            no_low_ports: true,
            no_redirect: true,
        }
    }
}

/// A named set of networks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    /// CIDRs such as `10.0.0.0/8` or `2001:db8::/32`; a bare address means a single host.
    pub cidrs: Vec<String>,
}

/// A backend that mounts forward to. (No `deny_unknown_fields` here: serde cannot combine it
/// with `flatten`; the backend structs deny unknown fields instead.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub name: String,
    /// How uploads land on this endpoint; `atomic` unless set.
    #[serde(default)]
    pub upload_mode: UploadMode,
    #[serde(flatten)]
    pub backend: EndpointBackend,
}

/// How an upload that replaces a file's content lands on the endpoint.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UploadMode {
    /// Written under a temporary name beside the target and renamed over it only when the
    /// transfer closed cleanly; a failed or abandoned upload removes the temporary file, so
    /// readers never see a partial file under the real name. Resumed and appending uploads
    /// (`REST`+`STOR`, `APPE`, SFTP opens without `TRUNCATE`) write in place, since they
    /// build on what is there.
    #[default]
    Atomic,
    /// Written in place under the real name from the first byte.
    Direct,
}

/// The kind of backend, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EndpointBackend {
    /// A backend SFTP server, reached over SSH with a pinned host key.
    Sftp(SftpEndpoint),
    /// A backend FTP server over TLS, with a pinned CA.
    Ftps(FtpsEndpoint),
    /// A directory on the gateway's own file system. For demos and tests: not for a DMZ.
    Local(LocalEndpoint),
}

/// How the gateway protects its connection to an FTP backend.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FtpSecurity {
    /// `AUTH TLS` on the control connection, `PBSZ 0`/`PROT P` for data.
    #[default]
    #[serde(rename = "explicit")]
    Explicit,
    /// TLS from the first byte.
    #[serde(rename = "implicit")]
    Implicit,
    /// No TLS at all. Refused unless `allowPlaintext` is set, and audited at start.
    #[serde(rename = "plaintext")]
    Plaintext,
}

/// How to reach and log in to a backend FTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FtpsEndpoint {
    /// `host:port` addresses, tried in order (failover).
    pub addresses: Vec<String>,
    #[serde(default)]
    pub security: FtpSecurity,
    /// PEM file of the CA (or the server's own certificate) that the backend's certificate
    /// must chain to. Required unless `security` is `plaintext`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The name checked against the backend's certificate; the address's host when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM) to present to the backend.
    #[serde(default)]
    pub client_certificate_file: Option<String>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<String>,
    /// The account on the backend.
    pub username: String,
    /// Path of a file holding the backend account's password (never inline).
    pub password_file: String,
    /// Explicit consent to a cleartext backend (`security: plaintext`).
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Seconds to wait for TCP connect, TLS and login, per address.
    #[serde(default = "defaults::connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Seconds one backend step may take once connected (a request and its answer, a chunk of
    /// a transfer, the final confirmation) before the operation fails and the client is told.
    /// A stalled backend ends in a reported failure, never a hung client.
    #[serde(default = "defaults::io_timeout_seconds")]
    pub io_timeout_seconds: u64,
}

/// How to reach and log in to a backend SFTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SftpEndpoint {
    /// `host:port` addresses, tried in order: the first that answers and proves a pinned host
    /// key wins (failover).
    pub addresses: Vec<String>,
    /// Pinned host public keys in OpenSSH format (`ssh-ed25519 AAAA…`). Anything else is
    /// refused. Several keys allow a rotation.
    pub host_keys: Vec<String>,
    /// The account on the backend.
    pub username: String,
    /// Path of an OpenSSH private key file for the backend account.
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// Path of a file holding the backend account's password (never inline).
    #[serde(default)]
    pub password_file: Option<String>,
    /// Seconds to wait for TCP connect plus SSH handshake, per address.
    #[serde(default = "defaults::connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Seconds one backend step may take once connected (a request and its answer, a chunk of
    /// a transfer, the final confirmation) before the operation fails and the client is told.
    /// A stalled backend ends in a reported failure, never a hung client.
    #[serde(default = "defaults::io_timeout_seconds")]
    pub io_timeout_seconds: u64,
}

/// A local directory backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalEndpoint {
    /// The directory that backend paths are relative to.
    pub root: String,
}

/// A user who may log in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A PHC string: `$argon2id$…` (preferred) or bcrypt `$2b$…`.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`).
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Path of a file holding the base32 TOTP secret, for keyboard-interactive.
    #[serde(default)]
    pub totp_secret_file: Option<String>,
    /// TLS client certificate identities that stand for this user (method `certificate`):
    /// matched against the verified certificate's subject CN, DNS and e-mail SANs.
    #[serde(default)]
    pub certificate_names: Vec<String>,
    /// Accepted method chains, as in OpenSSH's `AuthenticationMethods`: each entry is a
    /// comma-separated list that must all succeed, e.g. `publickey,password`. When empty, each
    /// single method the user has a credential for is accepted on its own
    /// ([`AuthChain::defaults`]).
    #[serde(default)]
    pub auth_methods: Vec<AuthChain>,
    /// Zones the user may log in from.
    pub zones: Vec<String>,
    /// Roles granted to the user.
    pub roles: Vec<String>,
    /// A disabled user is refused at login.
    #[serde(default)]
    pub disabled: bool,
    /// RFC 3339 instant after which the account is refused.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A set of mounts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Role {
    pub name: String,
    pub mounts: Vec<Mount>,
}

/// A subtree of an endpoint shown at `path` in the user's virtual tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    /// Absolute virtual path, e.g. `/inbound`.
    pub path: String,
    /// Name of the endpoint.
    pub endpoint: String,
    /// Absolute path on the endpoint that the mount path maps to.
    #[serde(default = "defaults::backend_path")]
    pub backend_path: String,
    /// What the mount allows. Anything not listed is denied.
    pub verbs: BTreeSet<Verb>,
    /// With the verb `site`: the `SITE` subcommands (first word, case-insensitive, e.g.
    /// `FILETYPE=JES`) that may be sent to the endpoint from inside the mount.
    #[serde(default)]
    pub site_commands: Vec<String>,
    /// Permission bits (octal, e.g. `"027"`) that no mode a client sets here may carry: on
    /// MKDIR, SETSTAT and `SITE CHMOD`. Setuid, setgid and sticky are never honoured anyway.
    /// When several of a user's roles mount the same path, their umasks add up.
    #[serde(default = "defaults::umask")]
    pub umask: String,
    /// The largest a file under the mount may become, in bytes: a write or a size change
    /// past it is refused (FTP `552`). When several of a user's roles mount the same path,
    /// the smallest applies. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
}

/// An operation class that a mount can allow.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// List directories and read attributes.
    List,
    /// Download file contents.
    Read,
    /// Create, overwrite or append to files.
    Write,
    /// Remove files.
    Delete,
    /// Create directories.
    Mkdir,
    /// Remove directories.
    Rmdir,
    /// Rename or move within the mount's endpoint.
    Rename,
    /// Change attributes: mode (SFTP SETSTAT, FTP `SITE CHMOD`) and times (SETSTAT, `MFMT`).
    Setattr,
    /// Send allow-listed FTP `SITE` subcommands to the endpoint.
    Site,
    /// Make hard links (`hardlink@openssh.com`); needed on both names, which must be on one
    /// endpoint.
    Link,
}

impl Verb {
    pub const ALL: [Verb; 10] = [
        Verb::List,
        Verb::Read,
        Verb::Write,
        Verb::Delete,
        Verb::Mkdir,
        Verb::Rmdir,
        Verb::Rename,
        Verb::Setattr,
        Verb::Site,
        Verb::Link,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::List => "list",
            Verb::Read => "read",
            Verb::Write => "write",
            Verb::Delete => "delete",
            Verb::Mkdir => "mkdir",
            Verb::Rmdir => "rmdir",
            Verb::Rename => "rename",
            Verb::Setattr => "setattr",
            Verb::Site => "site",
            Verb::Link => "link",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key ring's TLS material, as PEM files. Relative paths are relative to the config file's
/// directory, so a bundle works wherever its Secret is mounted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRingFiles {
    pub name: String,
    /// The certificate chain, leaf first.
    pub certificate_file: String,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1).
    pub private_key_file: String,
    /// CAs that verify client certificates.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// CAs that verify TLS backends.
    #[serde(default)]
    pub backend_ca_file: Option<String>,
}

/// SSH host keys and algorithm policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshSettings {
    /// Paths of OpenSSH private host key files.
    #[serde(default)]
    pub host_key_files: Vec<String>,
    /// Algorithm allow-lists; each defaults to a modern-only set.
    #[serde(default)]
    pub algorithms: Algorithms,
}

/// Algorithm allow-lists, in preference order. An empty list means the modern default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Algorithms {
    #[serde(default)]
    pub kex: Vec<String>,
    #[serde(default)]
    pub ciphers: Vec<String>,
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub host_key_algorithms: Vec<String>,
}

/// Connection limits and timeouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: usize,
    #[serde(default = "defaults::max_sessions_per_ip")]
    pub max_sessions_per_ip: usize,
    /// Connections from one address not yet logged in (a part of `maxSessionsPerIp`), so that
    /// idle sockets cannot take all of an address's places.
    #[serde(default = "defaults::max_unauthenticated_per_ip")]
    pub max_unauthenticated_per_ip: usize,
    /// Seconds from TCP accept to a completed login.
    #[serde(default = "defaults::login_grace_seconds")]
    pub login_grace_seconds: u64,
    /// Seconds without traffic before a session is closed.
    #[serde(default = "defaults::idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Failed authentication attempts before the connection is closed.
    #[serde(default = "defaults::max_auth_attempts")]
    pub max_auth_attempts: usize,
    /// SFTP requests one session may have in flight at once.
    #[serde(default = "defaults::max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Files one session may have open at once on one FTPS endpoint: each is a backend
    /// connection of its own (the session's one metadata connection comes on top), and an
    /// FTP server limits connections per client address, which is the gateway's for all.
    #[serde(default = "defaults::max_backend_connections_per_session")]
    pub max_backend_connections_per_session: usize,
    /// Milliseconds every failed password or verification code takes at least, for known and
    /// unknown users alike (longer when a configured hash is slower to check).
    #[serde(default = "defaults::auth_failure_delay_millis")]
    pub auth_failure_delay_millis: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: defaults::max_sessions(),
            max_sessions_per_ip: defaults::max_sessions_per_ip(),
            max_unauthenticated_per_ip: defaults::max_unauthenticated_per_ip(),
            max_backend_connections_per_session: defaults::max_backend_connections_per_session(),
            login_grace_seconds: defaults::login_grace_seconds(),
            idle_timeout_seconds: defaults::idle_timeout_seconds(),
            max_auth_attempts: defaults::max_auth_attempts(),
            max_in_flight_requests: defaults::max_in_flight_requests(),
            auth_failure_delay_millis: defaults::auth_failure_delay_millis(),
        }
    }
}

/// The defender scores failed logins per source address (IPv6 by /64) and per user name; a
/// score that reaches its threshold within `observationSeconds` bans the address (every
/// connection closed before the banner) or locks the user (password and code logins refused
/// from outside the safe zones). A repeated ban lasts twice as long as the one before, up to
/// `maxBanSeconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefenderSettings {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Points a source address may collect before it is banned: 1 per failed login, 2 for an
    /// unknown user name, 5 for a connection closed for abuse before a login.
    #[serde(default = "defaults::defender_threshold")]
    pub threshold: u32,
    /// Points a user name may collect (1 per failed login, from any address) before it is locked.
    #[serde(default = "defaults::defender_user_threshold")]
    pub user_threshold: u32,
    /// The window points are counted in.
    #[serde(default = "defaults::defender_observation_seconds")]
    pub observation_seconds: u64,
    /// The first ban's length.
    #[serde(default = "defaults::defender_ban_seconds")]
    pub ban_seconds: u64,
    /// The longest ban; also how long a past ban counts towards the next one's length.
    #[serde(default = "defaults::defender_max_ban_seconds")]
    pub max_ban_seconds: u64,
    /// Zones whose addresses are never scored or banned, and from which a locked user may
    /// still log in.
    #[serde(default)]
    pub safe_zones: Vec<String>,
    /// Other gateway replicas to share bans with, over authenticated UDP.
    #[serde(default)]
    pub peers: Option<DefenderPeers>,
}

impl Default for DefenderSettings {
    fn default() -> Self {
        DefenderSettings {
            enabled: true,
            threshold: defaults::defender_threshold(),
            user_threshold: defaults::defender_user_threshold(),
            observation_seconds: defaults::defender_observation_seconds(),
            ban_seconds: defaults::defender_ban_seconds(),
            max_ban_seconds: defaults::defender_max_ban_seconds(),
            safe_zones: Vec::new(),
            peers: None,
        }
    }
}

/// Ban sharing: each ban is sent at once, and every active ban again every few seconds, to
/// every address the peer names resolve to (a headless Service's name resolves to every pod).
/// Datagrams carry an HMAC-SHA256 under a key all replicas share; others are dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefenderPeers {
    /// `IP:port` to receive on (UDP).
    pub listen: String,
    /// `host:port` names of the replicas, resolved on every round.
    pub addresses: Vec<String>,
    /// A file holding the shared key (at least 32 bytes).
    pub key_file: String,
}

/// Where audit records go. At least one sink must be on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSettings {
    /// JSON lines on standard output.
    #[serde(default = "defaults::yes")]
    pub stdout: bool,
    /// JSON lines appended to this file.
    #[serde(default)]
    pub file: Option<String>,
    /// Whether each READ/WRITE request gets its own record (`each`), or only the transfer
    /// start/end records count them (`summary`, the default).
    #[serde(default)]
    pub data_ops: DataOpsAudit,
    /// An Ed25519 private key (PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`). With
    /// it the trail carries signed checkpoints, each naming the key's id, that
    /// `portcullis-gateway audit verify --key` checks against the public key.
    #[serde(default)]
    pub signing_key_file: Option<String>,
    /// Seconds between signed checkpoints while records are written (one is also written at
    /// shutdown).
    #[serde(default = "defaults::checkpoint_seconds")]
    pub checkpoint_seconds: u64,
    /// When the file sink forces records to disk.
    #[serde(default)]
    pub fsync: AuditFsync,
    /// The file sink starts a new file when the active one reaches this size (default
    /// 64 MiB). The full one is renamed `STEM-SEQ.EXT` after its first record's seq, never
    /// over an existing file.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    /// ... or when its first record is this old (default 86400: daily).
    #[serde(default)]
    pub rotate_seconds: Option<u64>,
    /// The spool: the most the active and rotated files may hold together (default 1 GiB).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// What happens when the spool is full (default `refuse`).
    #[serde(default)]
    pub when_full: Option<AuditWhenFull>,
    /// Ships the file sink's records to a collector over HTTPS, at least once; shipped
    /// rotated files are deleted, so the file sink is the spool.
    #[serde(default)]
    pub collector: Option<AuditCollector>,
    /// When a record cannot be made durable (a write or sync error), new logins and new
    /// transfers are refused until it can (default true). Running transfers go on; their
    /// records wait in memory and are written, in order, once the disk takes them.
    #[serde(default)]
    pub fail_closed: Option<bool>,
}

/// An HTTPS collector: the file sink's lines are POSTed in order, byte for byte, as NDJSON
/// batches (`Content-Type: application/x-ndjson`), each with the header `Portcullis-Source`.
/// A 2xx answer moves the shipped position on; anything else, or no answer, sends the same
/// batch again after a backoff. A collector deduplicates by (`Portcullis-Source`, `seq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditCollector {
    /// `https://HOST[:PORT]/PATH` (cleartext `http` is refused).
    pub url: String,
    /// The CA certificates (PEM) that verify the collector.
    pub ca_file: String,
    /// A client certificate and key (PEM) for a collector that asks for one.
    #[serde(default)]
    pub client_certificate_file: Option<String>,
    #[serde(default)]
    pub client_key_file: Option<String>,
    /// Records per POST (default 500, 1-10000).
    #[serde(default)]
    pub batch_records: Option<u32>,
    /// Names this trail to the collector (default: the host name, a pod's name).
    #[serde(default)]
    pub source: Option<String>,
}

/// An `https://HOST[:PORT]/PATH` URL, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsUrl {
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `HOST[:PORT]` as written, for the `Host` header.
    pub authority: String,
    /// `/` when the URL has none.
    pub path: String,
}

impl HttpsUrl {
    /// `None` unless `url` is `https://HOST[:PORT][/PATH]` (cleartext `http` never passes).
    pub fn parse(url: &str) -> Option<HttpsUrl> {
        let rest = url.strip_prefix("https://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            // A colon inside an unbracketed IPv6 address is not a port.
            Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
                (h, p.parse::<u16>().ok()?)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
            return None;
        }
        Some(HttpsUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What the file sink does when its spool (`maxBytes`) is full.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuditWhenFull {
    /// New logins and new transfers are refused until files are taken away (shipped and
    /// deleted); running sessions go on and are recorded.
    #[default]
    Refuse,
    /// The oldest rotated files are deleted, and the deletion is recorded in the trail.
    DeleteOldest,
}

/// When the audit file is forced to disk (`fsync`). A record that reports an outcome to a
/// client (a login, a request's result, a denial, a transfer's end) is written, and with
/// `batch` or `record` made durable, before the client is told.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// After each batch the writer takes from its queue: concurrent sessions share one sync.
    #[default]
    Batch,
    /// After every record.
    Record,
    /// Never: the operating system writes back when it will (a crash can lose records).
    None,
}

impl AuditSettings {
    /// The settings the audit writer was started with, as a reload compares them: everything
    /// but `dataOps`, which the sessions read.
    pub fn sinks(&self) -> AuditSettings {
        AuditSettings {
            data_ops: DataOpsAudit::default(),
            ..self.clone()
        }
    }

    pub fn rotate_bytes(&self) -> u64 {
        self.rotate_bytes.unwrap_or(64 << 20)
    }

    pub fn rotate_seconds(&self) -> u64 {
        self.rotate_seconds.unwrap_or(86_400)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(1 << 30)
    }

    pub fn when_full(&self) -> AuditWhenFull {
        self.when_full.unwrap_or_default()
    }

    pub fn fail_closed(&self) -> bool {
        self.fail_closed.unwrap_or(true)
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            stdout: true,
            file: None,
            data_ops: DataOpsAudit::default(),
            signing_key_file: None,
            checkpoint_seconds: defaults::checkpoint_seconds(),
            fsync: AuditFsync::default(),
            rotate_bytes: None,
            rotate_seconds: None,
            max_bytes: None,
            when_full: None,
            fail_closed: None,
            collector: None,
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataOpsAudit {
    #[default]
    Summary,
    Each,
}

/// The admin HTTP port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminSettings {
    /// `IP:port` to bind.
    pub address: String,
}

mod defaults {
    pub fn shutdown_grace_seconds() -> u64 {
        30
    }
    pub fn connect_timeout_seconds() -> u64 {
        10
    }
    pub fn io_timeout_seconds() -> u64 {
        60
    }
    pub fn checkpoint_seconds() -> u64 {
        60
    }
    pub fn data_timeout_seconds() -> u64 {
        30
    }
    pub fn umask() -> String {
        "022".to_owned()
    }
    pub fn backend_path() -> String {
        "/".to_owned()
    }
    pub fn max_sessions() -> usize {
        1000
    }
    pub fn max_sessions_per_ip() -> usize {
        50
    }
    pub fn max_backend_connections_per_session() -> usize {
        4
    }
    pub fn max_unauthenticated_per_ip() -> usize {
        32
    }
    pub fn login_grace_seconds() -> u64 {
        30
    }
    pub fn idle_timeout_seconds() -> u64 {
        900
    }
    pub fn max_auth_attempts() -> usize {
        4
    }
    pub fn max_in_flight_requests() -> usize {
        64
    }
    pub fn auth_failure_delay_millis() -> u64 {
        1000
    }
    pub fn defender_threshold() -> u32 {
        10
    }
    pub fn defender_user_threshold() -> u32 {
        30
    }
    pub fn defender_observation_seconds() -> u64 {
        300
    }
    pub fn defender_ban_seconds() -> u64 {
        900
    }
    pub fn defender_max_ban_seconds() -> u64 {
        86_400
    }
    pub fn yes() -> bool {
        true
    }
}

/// One thing wrong with a config, with the path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `users[2].roles[0]`.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found in a config, in document order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Parses YAML or JSON (JSON is read by the YAML parser as the subset it is). A syntax or
    /// type error is reported with the path where parsing stopped.
    pub fn parse(text: &str) -> Result<GatewayConfig, ConfigErrors> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let path = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".to_owned());
            ConfigErrors(vec![ConfigError::new(path, e.to_string())])
        })
    }

    /// Every file the config names (key material, CAs, secrets), in a fixed order. The gateway
    /// resolves them against the config's directory; the identity below hashes them.
    pub fn named_files_mut(&mut self) -> Vec<&mut String> {
        let mut files: Vec<&mut String> = self.ssh.host_key_files.iter_mut().collect();
        for e in &mut self.endpoints {
            match &mut e.backend {
                EndpointBackend::Sftp(s) => {
                    files.extend(s.private_key_file.iter_mut().chain(&mut s.password_file))
                }
                EndpointBackend::Ftps(f) => {
                    files.push(&mut f.password_file);
                    files.extend(
                        f.ca_file
                            .iter_mut()
                            .chain(&mut f.client_certificate_file)
                            .chain(&mut f.client_key_file),
                    );
                }
                EndpointBackend::Local(_) => {}
            }
        }
        files.extend(
            self.users
                .iter_mut()
                .filter_map(|u| u.totp_secret_file.as_mut()),
        );
        files.extend(self.defender.peers.iter_mut().map(|p| &mut p.key_file));
        files.extend(self.audit.signing_key_file.iter_mut());
        if let Some(c) = &mut self.audit.collector {
            files.extend(
                std::iter::once(&mut c.ca_file)
                    .chain(&mut c.client_certificate_file)
                    .chain(&mut c.client_key_file),
            );
        }
        for k in &mut self.key_rings {
            files.extend([&mut k.certificate_file, &mut k.private_key_file]);
            files.extend(k.client_ca_file.iter_mut().chain(&mut k.backend_ca_file));
        }
        files
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<(GatewayConfig, String), ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                path.display().to_string(),
                format!("cannot read: {e}"),
            )])
        })?;
        let config = GatewayConfig::parse(&text)?;
        validate(&config).map_err(ConfigErrors)?;
        Ok((config, text))
    }
}
