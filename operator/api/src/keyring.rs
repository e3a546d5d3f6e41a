//! `KeyRing`: certificates, SSH host keys and trust anchors, kept by the operator's small CA.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Key material for gateway listeners: a TLS certificate (issued by the operator, signed by an
/// existing CA, or passed on from an existing `kubernetes.io/tls` Secret such as one that
/// cert-manager maintains), SSH host keys generated once and kept stable, and trusted CAs.
/// The operator keeps the material in the Secret named in `status.secretName` and renews the
/// certificate at `status.renewalTime`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "KeyRing",
    namespaced,
    status = "KeyRingStatus",
    shortname = "kr",
    category = "portcullis",
    doc = "Certificates, SSH host keys and trusted CAs for gateway listeners, with automatic renewal.",
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuer.type"),
    printcolumn(name = "Not-After", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Renewal", type_ = "string", json_path = ".status.renewalTime"),
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
#[x_kube(validation = Rule::new("!has(self.renewBefore) || !has(self.duration) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration"))]
#[x_kube(validation = Rule::new("self.issuer.type != 'tlsSecret' || (!has(self.duration) && !has(self.renewBefore) && (!has(self.dnsNames) || size(self.dnsNames) == 0) && (!has(self.ipAddresses) || size(self.ipAddresses) == 0))").message("duration, renewBefore, dnsNames and ipAddresses do not apply to a tlsSecret key ring: its certificate is passed on as issued (set them at its issuer)"))]
#[x_kube(validation = Rule::new("!has(self.auditKeyRotation) || self.auditSigningKey").message("auditKeyRotation needs auditSigningKey: true"))]
#[serde(rename_all = "camelCase")]
pub struct KeyRingSpec {
    /// Where the TLS certificate comes from.
    pub issuer: Issuer,
    /// DNS names the certificate carries (subjectAltName). Refused for `tlsSecret`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub dns_names: Vec<String>,
    /// IP addresses the certificate carries (subjectAltName). Refused for `tlsSecret`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("ipAddresses must be IP addresses"))]
    pub ip_addresses: Vec<String>,
    /// The certificate's lifetime as a duration such as `2160h` (the default, 90 days) or `45m`.
    /// At least one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("duration must be a duration of at least 1m, such as 2160h"))]
    pub duration: Option<String>,
    /// How long before expiry the certificate is renewed. Defaults to a third of `duration`,
    /// as in cert-manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s')").message("renewBefore must be a duration of at least 10s, such as 720h"))]
    pub renew_before: Option<String>,
    /// Generate SSH host keys (ed25519 and ECDSA P-256) once and keep them stable.
    #[serde(default = "yes")]
    pub ssh_host_keys: bool,
    /// Make this key ring the audit signing authority of the gateways that name it in
    /// `spec.audit.signingKeyRing`: the operator generates an Ed25519 key for each such
    /// gateway, keeps the private half only in that gateway's config Secret, and publishes
    /// every public half, with its key id, in this key ring's `status.auditKeys`.
    #[serde(default)]
    pub audit_signing_key: bool,
    /// Replace each gateway's audit signing key when it is this old, as a duration such as
    /// `720h`. At least one hour. Unset, keys are replaced only by hand (remove
    /// `audit-signing.pem` from the gateway's config Secret). Needs `auditSigningKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("auditKeyRotation must be a duration of at least 1h, such as 720h"))]
    pub audit_key_rotation: Option<String>,
    /// CAs that verify client certificates on FTPS listeners (PEM, `ca.crt` by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub client_cas: Vec<SecretKeyRef>,
    /// CAs that verify FTPS backends' certificates (PEM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backend_cas: Vec<SecretKeyRef>,
    /// What happens to the key ring's Secrets (`<name>-keyring` with the SSH host keys, and
    /// `<name>-ca` with a `selfSigned` key ring's CA) when the KeyRing is deleted. `Retain`
    /// (the default) keeps them: partners pin the host keys and trust the CA, and a KeyRing
    /// made again under the same name takes them up. `Delete` lets Kubernetes remove them with
    /// the KeyRing (owner references).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// What happens to a key ring's Secrets when the KeyRing is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep them.
    #[default]
    Retain,
    /// Remove them with the KeyRing.
    Delete,
}

fn yes() -> bool {
    true
}

/// The certificate issuer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.type == 'selfSigned' || has(self.secretName)").message("issuer types tlsSecret and ca need secretName"))]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    /// `selfSigned`: the operator keeps its own CA for this key ring in a Secret and issues the
    /// leaf from it. `ca`: the leaf is signed by the CA in `secretName` (keys `tls.crt` and
    /// `tls.key`). `tlsSecret`: the certificate in the `kubernetes.io/tls` Secret `secretName`
    /// (for example one cert-manager maintains) is watched and passed on as is.
    #[serde(rename = "type")]
    pub type_: IssuerType,
    /// The Secret for the `ca` and `tlsSecret` issuers, in the key ring's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// How a key ring gets its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IssuerType {
    /// An operator-kept CA per key ring.
    SelfSigned,
    /// An existing CA Secret signs the leaf.
    Ca,
    /// An existing `kubernetes.io/tls` Secret is passed on.
    TlsSecret,
}

/// A key in a Secret of the same namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the Secret.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// What the key ring currently holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRingStatus {
    /// `Ready` (the material is usable) and `Issuing` (a certificate is being issued).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret the operator keeps the material in (`tls.crt`, `tls.key`, `ca.crt`, SSH host keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the current certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator will renew it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// SHA-256 fingerprint of the current leaf certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_fingerprint: Option<String>,
    /// SHA-256 fingerprint of the issuing CA certificate (hex), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// OpenSSH fingerprints (`SHA256:...`) of the SSH host keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_key_fingerprints: Vec<String>,
    /// The audit signing keys of the gateways that name this key ring in
    /// `spec.audit.signingKeyRing`, for `portcullis-gateway audit verify --key`: each
    /// gateway's current key first, then keys that were replaced (`retiredAt`), newest first,
    /// at most 32 of those. A gateway's key stays listed after the gateway is gone, so its trail
    /// stays verifiable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_keys: Vec<PublishedAuditKey>,
}

/// The public half of one gateway's audit signing key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedAuditKey {
    /// The TransferGateway that signs (or signed) with it.
    pub gateway: String,
    /// The id its checkpoints name (`keyId`): the first 8 bytes of the SHA-256 of the raw
    /// public key, hex.
    pub key_id: String,
    /// Its public half (PEM `PUBLIC KEY`).
    pub public_key: String,
    /// When the operator made it (RFC 3339).
    pub created_at: String,
    /// When it was replaced, or its gateway stopped naming this key ring (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

/// The public half of an audit signing key, as a gateway's status lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditKey {
    /// The id its checkpoints name (`keyId`).
    pub key_id: String,
    /// Its public half (PEM `PUBLIC KEY`).
    pub public_key: String,
    /// When the operator made it (RFC 3339).
    pub created_at: String,
    /// When it was replaced (RFC 3339); absent for the key in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}
