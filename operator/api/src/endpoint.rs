//! `TransferEndpoint`: a backend file server that mounts forward to.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[serde(rename_all = "camelCase")]
pub struct TransferEndpointSpec {
    /// The protocol spoken to the backend: `sftp`, or `ftps` (explicit FTPS, TLS required).
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
    /// Seconds to wait for each address to connect and finish the handshake.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub connect_timeout_seconds: u32,
}

fn default_connect_timeout() -> u32 {
    10
}

/// The backend protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointProtocol {
    /// SFTP over SSH.
    Sftp,
    /// Explicit FTPS (`AUTH TLS`), with TLS on the control and data channels.
    Ftps,
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
    /// The key holding an OpenSSH private key (SFTP). Used when present in the Secret.
    #[serde(default = "default_private_key_key")]
    pub private_key_key: String,
    /// The key holding a password, used when the Secret has no private key.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_private_key_key() -> String {
    "ssh-privatekey".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}
