//! `TransferUser` and `TransferRole`: who may log in, and what each role may do where.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use portcullis_config::{AuthChain, AuthMethod, Verb};

use crate::{CommonStatus, SecretKeyRef};

/// A person or system that logs in to the gateway. Credentials come from Secrets (an argon2id
/// or bcrypt password hash, a TOTP seed) or are public (SSH public keys); nothing secret is
/// written into the custom resource.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TransferUser",
    namespaced,
    status = "CommonStatus",
    shortname = "tu",
    category = "portcullis",
    doc = "A user who may log in to the gateways of this namespace.",
    printcolumn(name = "Roles", type_ = "string", json_path = ".spec.roles"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
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
#[x_kube(validation = Rule::new("has(self.passwordHash) || (has(self.publicKeys) && size(self.publicKeys) > 0) || (has(self.certificateNames) && size(self.certificateNames) > 0)").message("a user needs a passwordHash Secret, a public key or a certificate name"))]
#[serde(rename_all = "camelCase")]
pub struct TransferUserSpec {
    /// The login name. Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9._@-]+$"))]
    pub username: Option<String>,
    /// The Secret key holding an argon2id (`$argon2id$...`) or bcrypt hash of the password.
    /// `portcullis-gateway hash-password` makes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<SecretKeyRef>,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 16384)))]
    pub public_keys: Vec<String>,
    /// The Secret key holding a base32 TOTP seed for the `keyboard-interactive` second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<SecretKeyRef>,
    /// FTPS client certificate identities that stand for this user (method `certificate`):
    /// matched against the verified certificate's subject CN, DNS and e-mail SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub certificate_names: Vec<String>,
    /// OpenSSH-style method chains, any one of which admits the user, e.g.
    /// `["publickey", "password,keyboard-interactive"]` or, for FTPS, `["certificate,password"]`.
    /// Defaults to each configured method alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub auth_methods: Vec<AuthChain>,
    /// NetworkZones the user may connect from; empty means whatever the listener admits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub zones: Vec<String>,
    /// TransferRoles granted to the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub roles: Vec<String>,
    /// A disabled user cannot log in; running sessions end at the next config reload.
    #[serde(default)]
    pub disabled: bool,
    /// When the account stops admitting logins (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("expiresAt must be an RFC 3339 time such as 2027-01-31T00:00:00Z"))]
    pub expires_at: Option<String>,
}

/// What a role allows: virtual paths mounted onto endpoints, each with verbs. Anything not
/// granted is denied.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TransferRole",
    namespaced,
    status = "CommonStatus",
    shortname = "trole",
    category = "portcullis",
    doc = "A set of mounts (virtual path → endpoint path) with the verbs allowed on each.",
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
#[serde(rename_all = "camelCase")]
pub struct TransferRoleSpec {
    /// The mounts. Virtual paths must be distinct.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.path == m.path))").message("mount paths must be unique"))]
    pub mounts: Vec<MountSpec>,
}

/// A virtual path that maps onto a directory of an endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.siteCommands) || size(self.siteCommands) == 0 || self.verbs.exists(v, v == 'site')").message("siteCommands need the verb site"))]
pub struct MountSpec {
    /// The absolute virtual path users see, such as `/inbound`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^/"))]
    pub path: String,
    /// The TransferEndpoint this mount forwards to.
    #[schemars(length(min = 1, max = 253))]
    pub endpoint: String,
    /// The directory on the endpoint that `path` maps to.
    #[serde(default = "root")]
    #[schemars(length(min = 1, max = 512))]
    pub backend_path: String,
    /// The operations allowed under `path`.
    #[schemars(length(min = 1, max = 9))]
    pub verbs: Vec<Verb>,
    /// With the verb `site`: the FTP `SITE` subcommands (first word, such as `FILETYPE=JES`)
    /// that may be sent to an FTPS endpoint from inside the mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 64), regex(pattern = r"^\S+$"))
    )]
    pub site_commands: Vec<String>,
    /// Permission bits (three octal digits, such as `"027"`) that no mode a client sets here
    /// may carry: on MKDIR, SETSTAT and `SITE CHMOD`. Setuid, setgid and sticky are never
    /// honoured. Where several roles of a user mount the same path, their umasks add up.
    #[serde(default = "umask")]
    #[schemars(regex(pattern = r"^0?[0-7]{3}$"))]
    pub umask: String,
    /// The largest a file under `path` may become, in bytes: a write or a size change past
    /// it is refused (FTP `552`). Where several roles of a user mount the same path, the
    /// smallest applies. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_file_bytes: Option<i64>,
}

fn umask() -> String {
    "022".to_owned()
}

fn root() -> String {
    "/".to_owned()
}
