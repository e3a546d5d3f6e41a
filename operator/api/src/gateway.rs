//! `TransferGateway`: the listeners, replicas and pod settings of one gateway deployment.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
pub use portcullis_config::{
    ActiveMode, AuditFsync, AuditWhenFull, CipherSuite, ClientCertificates, DataOpsAudit,
    PortRange, Protocol, TlsVersion,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A gateway deployment. The operator compiles it with the endpoints, zones, key rings, users
/// and roles of its namespace into a config bundle, and runs it as a hardened Deployment with a
/// Service, a NetworkPolicy, a PodDisruptionBudget and a ServiceAccount.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "TransferGateway",
    namespaced,
    status = "TransferGatewayStatus",
    shortname = "tgw",
    category = "portcullis",
    doc = "An FTPS/SFTP gateway deployment and its listeners.",
    // The operator names objects after the gateway: `NAME-rK` (a replica's Deployment) and
    // `NAME-peers` (the defender's Service). A gateway named so would own objects of another.
    validation = Rule::new("!self.metadata.name.matches('-r[0-9]+$')").message("a gateway's name must not end in -r followed by digits: NAME-rK names gateway NAME's replica Deployments"),
    validation = Rule::new("!self.metadata.name.endsWith('-peers')").message("a gateway's name must not end in -peers: NAME-peers names gateway NAME's peer Service"),
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
    printcolumn(name = "Replicas", type_ = "string", json_path = ".status.replicas"),
    printcolumn(name = "Listeners", type_ = "string", json_path = ".status.listeners"),
    printcolumn(
        name = "Cert-Expiry",
        type_ = "string",
        json_path = ".status.certificateNotAfter"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.name == l.name))").message("listener names must be unique"))]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))").message("listener ports must be unique"))]
#[x_kube(validation = Rule::new("self.listeners.all(l, l.port != self.adminPort)").message("a listener port must differ from adminPort"))]
#[x_kube(validation = Rule::new("self.listeners.all(l, self.listeners.all(m, !has(m.passivePorts) || l.port < m.passivePorts.min || l.port > m.passivePorts.max))").message("a listener port must not fall inside a passive port range"))]
#[x_kube(validation = Rule::new("!has(self.service) || !has(self.service.type) || self.service.type != 'NodePort' || self.listeners.all(l, !has(l.passivePorts) || (l.passivePorts.min >= 30000 && l.passivePorts.max <= 32767))").message("with service type NodePort each passive port is exposed as the node port of the same number (PASV names it), so passivePorts must lie in the node port range 30000-32767"))]
#[x_kube(validation = Rule::new("!has(self.replicas) || self.listeners.all(l, !has(l.passivePorts) || l.passivePorts.max - l.passivePorts.min + 1 >= self.replicas)").message("each replica offers its own slice of every passive range, so a passive range needs at least as many ports as there are replicas"))]
#[x_kube(validation = Rule::new("!self.listeners.exists(l, l.protocol == 'sftp') || has(self.hostKeyRing)").message("SFTP listeners need hostKeyRing, the KeyRing holding the SSH host keys"))]
#[serde(rename_all = "camelCase")]
pub struct TransferGatewaySpec {
    /// Where the gateway accepts connections.
    #[schemars(length(min = 1, max = 16))]
    pub listeners: Vec<ListenerSpec>,
    /// The KeyRing whose SSH host keys the SFTP listeners present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host_key_ring: Option<String>,
    /// Gateway pods. With more than one and an FTPS listener, FTPS data connections must reach
    /// the pod that holds the control connection, and Service session affinity (kept per
    /// port) cannot do that: each replica then runs as a Deployment of its own
    /// (`NAME-r0`, `NAME-r1`, ...) offering a disjoint slice of every passive range, and the
    /// Service routes each passive port to the replica that offers it. The Service still pins
    /// a client's control connections to one pod (`sessionAffinity: ClientIP`).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    /// The gateway container image.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Secrets for pulling `image` from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Where the gateway pods may run: a DMZ node pool, its taints, spread and priority.
    #[serde(default)]
    pub placement: PlacementSpec,
    /// The port of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`), used by the probes.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: i32,
    /// Container resources. Defaults: requests 100m CPU and 128Mi memory, limit 1Gi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How the Service is exposed.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Connection limits and timeouts; unset fields take the gateway's defaults.
    #[serde(default)]
    pub limits: GatewayLimits,
    /// Audit settings.
    #[serde(default)]
    pub audit: AuditSpec,
    /// Brute-force defence; on by default. Bans are shared between the replicas.
    #[serde(default)]
    pub defender: DefenderSpec,
    /// Where the gateway pods may send DNS queries: the NetworkPolicy's only egress besides
    /// the endpoints and the other replicas.
    #[serde(default)]
    pub dns: DnsEgressSpec,
    /// Seconds that running transfers get to finish when a pod stops.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub shutdown_grace_seconds: i32,
}

fn default_replicas() -> i32 {
    2
}

/// The image the operator deploys when `image` is not set.
pub fn default_image() -> String {
    concat!(
        "ghcr.io/portcullis-dev/portcullis-gateway:",
        env!("CARGO_PKG_VERSION")
    )
    .to_owned()
}

fn default_admin_port() -> i32 {
    9922
}

fn default_grace() -> i32 {
    30
}

/// A listening port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.protocol == 'sftp' || has(self.keyRing)").message("an FTPS listener needs keyRing, the KeyRing holding its certificate"))]
#[x_kube(validation = Rule::new("self.protocol != 'sftp' || !has(self.passivePorts)").message("passivePorts applies to FTPS listeners only"))]
#[x_kube(validation = Rule::new("self.protocol == 'sftp' || has(self.passivePorts)").message("an FTPS listener needs passivePorts"))]
#[x_kube(validation = Rule::new("self.protocol != 'sftp' || (!has(self.tls) && !has(self.activeMode))").message("tls and activeMode apply to FTPS listeners only"))]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// A unique name (a DNS label), used for the Service port, audit records and metrics.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// `sftp`, `ftps` (explicit, `AUTH TLS` on the control port) or `ftpsImplicit` (TLS from
    /// the first byte).
    pub protocol: Protocol,
    /// The TCP port, on the pod and on the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// NetworkZones whose peers may connect. Everyone else is refused: before the banner by
    /// the gateway, and at the network by the NetworkPolicy.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    pub zones: Vec<String>,
    /// The KeyRing whose certificate an FTPS listener presents. Required for FTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key_ring: Option<String>,
    /// FTPS passive data ports; the Service exposes every port of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_ports: Option<PortRange>,
    /// The IPv4 address advertised in passive replies (for NAT and LoadBalancer setups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4").message("advertisedAddress must be an IPv4 address (PASV carries IPv4 only)"))]
    pub advertised_address: Option<String>,
    /// FTPS TLS policy: minimum version, cipher suites, client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
    /// FTPS active mode (`PORT`/`EPRT`); off unless enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mode: Option<ActiveMode>,
}

/// A TLS listener's policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.cipherSuites) || self.cipherSuites.exists(s, s.startsWith('TLS13_'))").message("cipherSuites must name at least one TLS 1.3 suite (TLS13_...): TLS 1.3 is always offered"))]
#[serde(rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// The lowest TLS version accepted, `1.2` (the default) or `1.3`; 1.3 is always preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<TlsVersion>,
    /// Cipher suites allowed (e.g. `TLS13_AES_256_GCM_SHA384`), from the gateway's set: the
    /// TLS 1.3 suites `TLS13_AES_256_GCM_SHA384`, `TLS13_AES_128_GCM_SHA256`,
    /// `TLS13_CHACHA20_POLY1305_SHA256`, and the TLS 1.2 suites
    /// `TLS_ECDHE_{ECDSA,RSA}_WITH_{AES_256_GCM_SHA384,AES_128_GCM_SHA256,CHACHA20_POLY1305_SHA256}`.
    /// Empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cipher_suites: Vec<CipherSuite>,
    /// `none` (the default), `optional` or `required`: client certificates, verified against
    /// the key ring's `clientCas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertificates>,
}

/// The Service in front of the gateway pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`. A LoadBalancer admits only the
    /// listeners' zones (`loadBalancerSourceRanges`). With `NodePort`, each FTPS passive port
    /// is the node port of the same number, since `PASV` names the pod's port; the passive
    /// ranges must then lie in the node port range (30000-32767). The listeners get node
    /// ports that Kubernetes picks (see the Service).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations for the Service, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The Service type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// A cluster-internal address.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

/// Connection limits; unset fields take the gateway's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayLimits {
    /// Connections per pod, counted from accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_sessions: Option<i32>,
    /// Connections per client IP per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_sessions_per_ip: Option<i32>,
    /// Connections per client IP per pod not yet logged in (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_unauthenticated_per_ip: Option<i32>,
    /// Files one session may have open at once on one FTPS endpoint, each a backend
    /// connection of its own (default 4; the session's metadata connection comes on top).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_backend_connections_per_session: Option<i32>,
    /// Seconds a client has to log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600))]
    pub login_grace_seconds: Option<i32>,
    /// Seconds of inactivity after which a session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: Option<i32>,
    /// Failed authentication attempts before the connection closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_auth_attempts: Option<i32>,
    /// Milliseconds every failed password or verification code takes at least, for known and
    /// unknown users alike (default 1000; longer when a configured hash is slower to check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub auth_failure_delay_millis: Option<i32>,
}

/// The defender: failed logins score points against their source address (1 each, 2 for an
/// unknown user name; IPv6 by /64) and against the user name (1 per wrong password or code).
/// A score that reaches its threshold within `observationSeconds` bans the address (closed
/// before the banner) or locks the user's password and code logins, for `banSeconds`, twice as
/// long each repeat up to `maxBanSeconds`. Every replica applies a ban within seconds (the
/// pods tell each other over authenticated UDP through the `<name>-peers` headless Service;
/// no Kubernetes API access is needed). Unset fields take the gateway's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefenderSpec {
    /// Off only when set to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Points before an address is banned (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub threshold: Option<i32>,
    /// Points before a user is locked (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub user_threshold: Option<i32>,
    /// The window points count in (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub observation_seconds: Option<i32>,
    /// The first ban's length (default 900).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub ban_seconds: Option<i32>,
    /// The longest ban (default 86400); at least `banSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub max_ban_seconds: Option<i32>,
    /// NetworkZones never banned, from which a locked user may still log in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safe_zones: Vec<String>,
}

/// Where the gateway pods run. Each field goes to the pod spec as it is; `affinity` replaces
/// the default (replicas preferred on different nodes) only in the parts it sets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Node labels the pods' nodes must carry, e.g. `{node-pool: dmz}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate, e.g. a DMZ pool's `dedicated=dmz:NoSchedule`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity. Without `podAntiAffinity`, replicas prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How replicas spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
}

/// The DNS servers the gateway pods may query (UDP and TCP 53). By default the cluster DNS:
/// pods labelled `k8s-app: kube-dns` in the namespace `kube-system`. Name the DNS pods of
/// another distribution with the two selectors, a node-local cache or external resolvers with
/// `cidrs`, or turn DNS off where every endpoint is named by address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled || !has(self.cidrs) || size(self.cidrs) == 0").message("cidrs apply only while DNS egress is enabled"))]
pub struct DnsEgressSpec {
    /// DNS egress at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Labels of the namespace the DNS pods run in.
    #[serde(default = "default_dns_namespace")]
    #[schemars(length(min = 1, max = 16))]
    pub namespace_labels: BTreeMap<String, String>,
    /// Labels of the DNS pods.
    #[serde(default = "default_dns_pods")]
    #[schemars(length(min = 1, max = 16))]
    pub pod_labels: BTreeMap<String, String>,
    /// Resolver addresses outside the pod network (a node-local cache such as
    /// 169.254.20.10/32, or resolvers in the DMZ), in addition to the DNS pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 169.254.20.10/32"))]
    pub cidrs: Vec<String>,
}

impl Default for DnsEgressSpec {
    fn default() -> Self {
        DnsEgressSpec {
            enabled: true,
            namespace_labels: default_dns_namespace(),
            pod_labels: default_dns_pods(),
            cidrs: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_dns_namespace() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        "kube-system".to_owned(),
    )])
}

fn default_dns_pods() -> BTreeMap<String, String> {
    BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])
}

/// Audit settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.stdout) || self.stdout || has(self.file)").message("at least one audit sink is required: stdout, or file"))]
#[x_kube(validation = Rule::new("!has(self.collector) || has(self.file)").message("a collector ships the file sink: set file too"))]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// `summary` (default): transfers are recorded at start and end. `each`: every read and
    /// write request gets its own record too.
    #[serde(default)]
    pub data_ops: DataOpsAudit,
    /// JSON lines on the container's standard output, for cluster logging (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<bool>,
    /// The file sink: a chained trail in an `emptyDir` volume of the pod, rotated, and the
    /// spool a log agent ships from. Without it, nothing outlives the container but stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AuditFileSpec>,
    /// A KeyRing with `auditSigningKey: true`: its key signs checkpoints of the trail (every
    /// `checkpointSeconds`, at rotation and shutdown, and after every transfer), and its status
    /// publishes the public key that `portcullis-gateway audit verify --key` checks them with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub signing_key_ring: Option<String>,
    /// Seconds between signed checkpoints while records are written (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub checkpoint_seconds: Option<i32>,
    /// An HTTPS collector the pod ships its audit file to, at least once: NDJSON batches,
    /// deduplicated by the collector on (`Portcullis-Source`, the pod's name, and `seq`).
    /// Shipped rotated files are deleted from the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<AuditCollectorSpec>,
}

/// Where the audit file is shipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("self.url.startsWith('https://')").message("the collector url must be https:// (records never go in cleartext)"))]
#[serde(rename_all = "camelCase")]
pub struct AuditCollectorSpec {
    /// `https://HOST[:PORT]/PATH`.
    #[schemars(length(min = 9, max = 2048))]
    pub url: String,
    /// The CA certificate(s) that verify the collector (PEM; key `ca.crt` by default).
    pub ca: crate::SecretKeyRef,
    /// For a collector named by DNS: the CIDRs its addresses lie in, which the NetworkPolicy
    /// lets the pods reach on its port (an IP address needs none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("egressCidrs must be CIDRs such as 10.0.0.0/24"))]
    pub egress_cidrs: Vec<String>,
    /// Records per POST (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_records: Option<i32>,
}

/// The audit file sink in the pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.maxBytes) || self.maxBytes >= 2 * (has(self.rotateBytes) ? self.rotateBytes : 67108864)").message("maxBytes must be at least twice rotateBytes (default 64 MiB)"))]
#[serde(rename_all = "camelCase")]
pub struct AuditFileSpec {
    /// Rotate the active file at this size (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096))]
    pub rotate_bytes: Option<i64>,
    /// ... or once its first record is this old, in seconds (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub rotate_seconds: Option<i64>,
    /// The spool: the active and rotated files together (default 1 GiB). The `emptyDir`'s
    /// size limit is this plus one file and 16 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8192))]
    pub max_bytes: Option<i64>,
    /// `refuse` (default): new logins and transfers are refused while the spool is full.
    /// `deleteOldest`: the oldest rotated files are deleted, and that is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_full: Option<AuditWhenFull>,
    /// Refuse new logins and transfers (and report not ready) while a record cannot be
    /// written (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_closed: Option<bool>,
    /// `batch` (default), `record` or `none`: when the file is forced to disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<AuditFsync>,
}

/// What the operator observed and built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferGatewayStatus {
    /// `Ready`: the config compiled and every reference resolved. The reason names what is
    /// broken, e.g. `EndpointNotFound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` that the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready pods out of desired, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// The listeners, e.g. `sftp:2222,ftps:21`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<String>,
    /// The earliest expiry of the certificates the listeners present (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// The identity of the config bundle the operator wrote: SHA-256 over the config and every
    /// file it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// `configHash` once every ready pod confirms, on its admin port, that it serves that
    /// config; absent while any pod serves another, refused it, or does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_config_hash: Option<String>,
    /// With `spec.audit.signingKeyRing`: the public half of the key this gateway signs its
    /// audit checkpoints with (first, no `retiredAt`), then the keys it signed with before,
    /// newest first, at most 10. The private half is only in the gateway's config Secret; the
    /// key ring's `status.auditKeys` publishes the same keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_keys: Vec<crate::AuditKey>,
}
