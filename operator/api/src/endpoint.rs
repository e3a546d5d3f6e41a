//! `TransferEndpoint`: a backend file server that mounts forward to.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use portcullis_config::{FtpSecurity, UploadMode};

use crate::CommonStatus;

/// A backend SFTP or FTPS server. The gateway reaches it over an encrypted channel only, proves
/// its identity (pinned SSH host keys), and logs in with credentials from a Secret.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TransferEndpoint",
    namespaced,
    status = "CommonStatus",
    shortname = "tep",
    category = "portcullis",
    doc = "A backend SFTP or FTPS server that role mounts forward files to.",
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.protocol != 'sftp' || size(self.hostKeys) > 0").message("an SFTP endpoint needs at least one pinned host key in hostKeys"))]
#[x_kube(validation = Rule::new("self.protocol != 'ftps' || has(self.ftps)").message("an FTPS endpoint needs ftps (the key ring trusting its certificate)"))]
#[x_kube(validation = Rule::new("self.protocol != 'sftp' || !has(self.ftps)").message("ftps applies to FTPS endpoints only"))]
#[x_kube(validation = Rule::new("self.protocol != 'ftps' || !has(self.hostKeys) || size(self.hostKeys) == 0").message("hostKeys apply to SFTP endpoints only; an FTPS endpoint's certificate is verified through ftps.keyRing"))]
#[x_kube(validation = Rule::new("self.protocol != 'ftps' || !has(self.credentials.privateKeyKey)").message("credentials.privateKeyKey applies to SFTP endpoints only; an FTPS endpoint logs in with passwordKey (and ftps.clientCertificate)"))]
#[serde(rename_all = "camelCase")]
pub struct TransferEndpointSpec {
    /// The protocol spoken to the backend: `sftp`, or `ftps` (see `ftps`).
    pub protocol: EndpointProtocol,
    /// Where the backend listens, tried in order: the first that answers and proves its
    /// identity wins (failover).
    #[schemars(length(min = 1, max = 8))]
    pub addresses: Vec<EndpointAddress>,
    /// Pinned SSH host public keys in OpenSSH format (`ssh-ed25519 AAAA...`). A backend that
    /// presents any other key is refused. List two keys during a host key rotation.
    #[serde(default)]
    #[schemars(length(max = 8), inner(length(max = 2048)))]
    pub host_keys: Vec<String>,
    /// The account the gateway logs in as on the backend.
    #[schemars(length(min = 1, max = 128))]
    pub username: String,
    /// The Secret holding the backend credential (a private key or a password). The operator
    /// copies it into the gateway's config Secret; it never appears in a custom resource.
    pub credentials: CredentialsRef,
    /// FTPS settings: how TLS is started and which key ring's CAs the backend must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps: Option<FtpsEndpointSpec>,
    /// Seconds to wait for each address to connect and finish the handshake.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
    /// Seconds one backend step may take once connected (a request and its answer, a chunk of
    /// a transfer, the final confirmation) before the operation fails and the client is told.
    /// A stalled backend ends in a reported failure, never a hung client.
    #[serde(default = "default_io_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub io_timeout_seconds: u32,
    /// How uploads land: `atomic` (the default) writes a new file under a hidden temporary
    /// name beside the target and renames it into place only when the transfer completed, so
    /// a failed upload never looks like a whole file; `direct` writes under the real name
    /// from the first byte. Resumed and appending uploads always write in place.
    #[serde(default)]
    pub upload_mode: UploadMode,
}

fn default_connect_timeout() -> u32 {
    10
}

fn default_io_timeout() -> u32 {
    60
}

/// The backend protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointProtocol {
    /// SFTP over SSH.
    Sftp,
    /// FTP with TLS on the control and data channels (`ftps.security`).
    Ftps,
}

/// How the gateway reaches an FTPS backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.security) && self.security == 'plaintext' ? (has(self.allowPlaintext) && self.allowPlaintext) : has(self.keyRing)").message("a TLS backend needs keyRing (its backendCas are trusted); plaintext needs allowPlaintext: true"))]
#[serde(rename_all = "camelCase")]
pub struct FtpsEndpointSpec {
    /// `explicit` (`AUTH TLS`, the default), `implicit` (TLS from the first byte) or
    /// `plaintext` (refused unless `allowPlaintext`; audited at start).
    #[serde(default)]
    pub security: FtpSecurity,
    /// The KeyRing whose `backendCas` the backend's certificate must chain to. Its own
    /// certificate is presented as the client certificate when `clientCertificate` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key_ring: Option<String>,
    /// Present the key ring's certificate to the backend.
    #[serde(default)]
    pub client_certificate: bool,
    /// The name checked against the backend's certificate; the address's host by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// Explicit consent to a cleartext FTP backend.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// The backend's passive data ports, for the NetworkPolicy egress rule; without it the
    /// gateway may reach the backend on any port from 1024 up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_ports: Option<crate::PortRange>,
}

/// One backend address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    /// A DNS name or an IP address. NetworkPolicy egress can be pinned only to IP addresses;
    /// for a DNS name, list the addresses it resolves to in `egressCidrs`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Networks that `host` resolves to, for the gateway's NetworkPolicy egress rule when
    /// `host` is a DNS name. Ignored for an IP address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("egressCidrs must be CIDRs such as 10.0.0.0/24"))]
    pub egress_cidrs: Vec<String>,
}

/// Where a backend credential lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// The Secret's name, in the endpoint's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// SFTP endpoints: the key holding an OpenSSH private key (`ssh-privatekey` when unset).
    /// Used when present in the Secret. Refused on FTPS endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_key: Option<String>,
    /// The key holding a password, used when the Secret has no private key.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

impl CredentialsRef {
    /// The Secret key an SFTP endpoint's private key is read from.
    pub fn private_key_key(&self) -> &str {
        self.private_key_key.as_deref().unwrap_or("ssh-privatekey")
    }
}

fn default_password_key() -> String {
    "password".to_owned()
}
