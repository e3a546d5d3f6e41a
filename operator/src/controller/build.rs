//! Step 3 (pure): the Kubernetes objects a gateway runs as. Labels and owner references come
//! from [`meta`], never copied into each builder.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
            HTTPGetAction, Lifecycle, LifecycleHandler, PodAffinityTerm, PodAntiAffinity,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
            ServicePort, ServiceSpec, SleepAction, Sysctl, Volume, VolumeMount,
            WeightedPodAffinityTerm,
        },
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
            NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use portcullis_api::{ServiceType, TransferGateway};
use portcullis_config::PassiveSlice;

use super::validate::{AUDIT_MOUNT, Bundle, CONFIG_MOUNT};

/// The annotation whose change restarts the pods: only listener and admin changes need that;
/// everything else the gateway hot-reloads from the mounted Secret.
pub const RESTART_ANNOTATION: &str = "portcullis.dev/config-hash";
/// The hash of every file of the bundle, on its Secret: which bundle a pod should be running.
pub const BUNDLE_HASH_ANNOTATION: &str = "portcullis.dev/bundle-hash";
pub use crate::shared::{MANAGED_BY, config_secret_name};
/// The non-root user the gateway runs as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// How long a terminating pod keeps serving before SIGTERM (a `preStop` sleep): long enough
/// for kube-proxy, and a cloud load balancer's health check, to stop sending it new
/// connections. Without it a client was refused while the endpoint was still listed.
pub const PRE_STOP_SECONDS: i64 = 5;

/// The label naming which replica (of a gateway with passive slices) a pod is.
pub const REPLICA_LABEL: &str = "portcullis.dev/replica";

/// Every object a gateway owns.
pub struct Objects {
    pub service_account: ServiceAccount,
    pub secret: Secret,
    /// One, or with passive slices ([`passive_slices`]) one per replica.
    pub deployments: Vec<Deployment>,
    pub service: Service,
    /// Headless: resolves to every pod, for the defender's ban sharing.
    pub peers_service: Service,
    pub network_policy: NetworkPolicy,
    pub pdb: PodDisruptionBudget,
}

/// The pod spec of the (first) Deployment `objects` builds (for tests).
#[cfg(test)]
pub fn pod_spec(gw: &TransferGateway, bundle: &Bundle) -> k8s_openapi::api::core::v1::PodSpec {
    deployments(gw, bundle)
        .swap_remove(0)
        .spec
        .and_then(|s| s.template.spec)
        .expect("a Deployment has a pod spec")
}

/// Which namespaces' pods may reach a gateway's admin port (`/metrics`, and `/config`, which the
/// operator reads): the operator's own and the installer's metrics namespaces
/// (`--metrics-namespace`). Empty: only the node (the kubelet's probes).
pub fn objects(gw: &TransferGateway, bundle: &Bundle, admin_from: &[String]) -> Objects {
    Objects {
        service_account: service_account(gw),
        secret: secret(gw, bundle),
        deployments: deployments(gw, bundle),
        service: service(gw, bundle),
        peers_service: peers_service(gw),
        network_policy: network_policy(gw, bundle, admin_from),
        pdb: pdb(gw),
    }
}

/// The selector labels of a gateway's pods.
pub fn selector(gw: &TransferGateway) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "portcullis-gateway".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), gw.name_any()),
    ])
}

/// The recommended labels plus the selector.
pub fn labels(gw: &TransferGateway) -> BTreeMap<String, String> {
    let mut l = selector(gw);
    l.insert("app.kubernetes.io/component".into(), "gateway".into());
    l.insert("app.kubernetes.io/part-of".into(), "portcullis".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    l
}

/// Metadata for an object named `suffix`-ed after the gateway, owned by it.
pub fn meta(gw: &TransferGateway, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: gw.namespace(),
        labels: Some(labels(gw)),
        owner_references: gw.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The UDP port the replicas share defender bans on.
pub const DEFENDER_PORT: i32 = 7946;

pub fn peers_service_name(gw: &TransferGateway) -> String {
    format!("{}-peers", gw.name_any())
}

/// A headless Service whose name resolves to every gateway pod, ready or not (a pod still
/// starting should hear of bans too).
fn peers_service(gw: &TransferGateway) -> Service {
    Service {
        metadata: meta(gw, peers_service_name(gw)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(gw)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("defender".into()),
                port: DEFENDER_PORT,
                target_port: Some(IntOrString::Int(DEFENDER_PORT)),
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The audit file sink's `emptyDir`, sized for the spool plus one file and 16 MiB, so that the
/// gateway's own `maxBytes` acts (refusing, or deleting the oldest) before the kubelet evicts
/// the pod.
fn audit_volume(bundle: &Bundle) -> Option<Volume> {
    let a = &bundle.config.audit;
    a.file.as_ref()?;
    let limit = a.max_bytes() + a.rotate_bytes() + (16 << 20);
    Some(Volume {
        name: "audit".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn service_account_name(gw: &TransferGateway) -> String {
    format!("{}-gateway", gw.name_any())
}

fn service_account(gw: &TransferGateway) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(gw, service_account_name(gw)),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

fn secret(gw: &TransferGateway, bundle: &Bundle) -> Secret {
    let mut metadata = meta(gw, config_secret_name(gw));
    metadata.annotations = Some(BTreeMap::from([(
        BUNDLE_HASH_ANNOTATION.to_owned(),
        bundle.hash.clone(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(
            bundle
                .files
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn container_ports(gw: &TransferGateway, slice: Option<PassiveSlice>) -> Vec<ContainerPort> {
    let mut ports: Vec<ContainerPort> = gw
        .spec
        .listeners
        .iter()
        .map(|l| ContainerPort {
            name: Some(l.name.clone()),
            container_port: l.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some("admin".into()),
        container_port: gw.spec.admin_port,
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    ports.push(ContainerPort {
        name: Some("defender".into()),
        container_port: DEFENDER_PORT,
        protocol: Some("UDP".into()),
        ..Default::default()
    });
    match slice {
        None => ports.extend(passive_ports(gw).into_iter().map(|p| ContainerPort {
            container_port: p,
            protocol: Some("TCP".into()),
            ..Default::default()
        })),
        // Named: the Service targets each passive port by this name, which only the pods of
        // the replica offering it carry.
        Some(slice) => ports.extend(slice_ports(gw, slice).into_iter().map(|p| ContainerPort {
            name: Some(passive_port_name(p)),
            container_port: p,
            protocol: Some("TCP".into()),
            ..Default::default()
        })),
    }
    ports
}

/// Every FTPS passive port of every listener.
fn passive_ports(gw: &TransferGateway) -> BTreeSet<i32> {
    gw.spec
        .listeners
        .iter()
        .filter_map(|l| l.passive_ports.as_ref())
        .flat_map(|r| i32::from(r.min)..=i32::from(r.max))
        .collect()
}

/// How many replicas share the passive ports: `Some(replicas)` when FTPS runs on more than
/// one. Behind a Service, `ClientIP` affinity is kept per Service port (kube-proxy keys it by
/// port and endpoint), so it cannot bring a data connection to the pod holding its control
/// connection. Each replica then offers a disjoint slice of every passive range
/// ([`PassiveSlice`]), runs as a Deployment of its own, and names its passive ports so that
/// the Service routes each one to that replica alone.
pub fn passive_slices(gw: &TransferGateway) -> Option<u16> {
    (gw.spec.replicas > 1 && !passive_ports(gw).is_empty())
        .then(|| u16::try_from(gw.spec.replicas).ok())
        .flatten()
}

/// The name a passive port has in the pod of the replica that offers it.
fn passive_port_name(port: i32) -> String {
    format!("pasv-{port}")
}

/// The passive ports `slice` offers, of every listener.
fn slice_ports(gw: &TransferGateway, slice: PassiveSlice) -> BTreeSet<i32> {
    gw.spec
        .listeners
        .iter()
        .filter_map(|l| l.passive_ports)
        .filter_map(|r| r.slice(slice))
        .flat_map(|r| i32::from(r.min)..=i32::from(r.max))
        .collect()
}

/// One Deployment a gateway runs as.
pub struct Shape {
    pub name: String,
    pub replicas: i32,
    /// With passive slices, the one its replica offers.
    pub slice: Option<PassiveSlice>,
}

/// The Deployments a gateway runs as: one with every replica, or with passive slices one per
/// replica (`NAME-rK`, one pod each). Needs no bundle, so the status step reads the rollout
/// by it even when the config does not compile.
pub fn shape(gw: &TransferGateway) -> Vec<Shape> {
    match passive_slices(gw) {
        None => vec![Shape {
            name: gw.name_any(),
            replicas: gw.spec.replicas,
            slice: None,
        }],
        Some(count) => (0..count)
            .map(|index| Shape {
                name: format!("{}-r{index}", gw.name_any()),
                replicas: 1,
                slice: Some(PassiveSlice { index, count }),
            })
            .collect(),
    }
}

/// The Deployments, as [`shape`] says.
pub fn deployments(gw: &TransferGateway, bundle: &Bundle) -> Vec<Deployment> {
    shape(gw)
        .into_iter()
        .map(|s| deployment(gw, bundle, s))
        .collect()
}

fn probe(path: &str, port: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn deployment(gw: &TransferGateway, bundle: &Bundle, shape: Shape) -> Deployment {
    let spec = &gw.spec;
    let slice = shape.slice;
    let mut args = vec!["run".to_owned(), "--config".into(), CONFIG_MOUNT.into()];
    let mut pod_selector = selector(gw);
    if let Some(slice) = slice {
        args.extend(["--passive-slice".into(), slice.to_string()]);
        pod_selector.insert(REPLICA_LABEL.into(), slice.index.to_string());
    }
    let resources = spec
        .resources
        .clone()
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("128Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
            ..Default::default()
        });
    let privileged_port = spec.listeners.iter().any(|l| l.port < 1024) || spec.admin_port < 1024;
    let container = Container {
        name: "gateway".into(),
        image: Some(spec.image.clone()),
        command: Some(vec!["portcullis-gateway".into()]),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "RUST_LOG".into(),
            value: Some("info".into()),
            ..Default::default()
        }]),
        ports: Some(container_ports(gw, slice)),
        resources: Some(resources),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        liveness_probe: Some(probe("/healthz", spec.admin_port, 10)),
        readiness_probe: Some(probe("/readyz", spec.admin_port, 5)),
        volume_mounts: Some(
            std::iter::once(VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            })
            .chain(spec.audit.file.is_some().then(|| VolumeMount {
                name: "audit".into(),
                mount_path: AUDIT_MOUNT.into(),
                ..Default::default()
            }))
            .collect(),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pod_labels = labels(gw);
    pod_labels.remove("app.kubernetes.io/version");
    pod_labels.extend(pod_selector.clone());
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([(
                RESTART_ANNOTATION.to_owned(),
                bundle.restart_hash.clone(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(service_account_name(gw)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // The preStop sleep, the gateway's drain, and 5 s to exit.
            termination_grace_period_seconds: Some(
                PRE_STOP_SECONDS + i64::from(spec.shutdown_grace_seconds) + 5,
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                // Ports below 1024 without NET_BIND_SERVICE: a namespaced, safe sysctl.
                sysctls: privileged_port.then(|| {
                    vec![Sysctl {
                        name: "net.ipv4.ip_unprivileged_port_start".into(),
                        value: "0".into(),
                    }]
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(
                std::iter::once(Volume {
                    name: "config".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(config_secret_name(gw)),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .chain(audit_volume(bundle))
                .collect(),
            ),
            affinity: affinity(gw),
            node_selector: (!spec.placement.node_selector.is_empty())
                .then(|| spec.placement.node_selector.clone()),
            tolerations: (!spec.placement.tolerations.is_empty())
                .then(|| spec.placement.tolerations.clone()),
            topology_spread_constraints: (!spec.placement.topology_spread_constraints.is_empty())
                .then(|| spec.placement.topology_spread_constraints.clone()),
            priority_class_name: spec.placement.priority_class_name.clone(),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.clone()),
            ..Default::default()
        }),
    };
    let mut metadata = meta(gw, shape.name);
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(pod_selector.clone());
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(shape.replicas),
            selector: LabelSelector {
                match_labels: Some(pod_selector),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The user's affinity, with replicas preferring distinct nodes unless it says otherwise
/// about pods.
fn affinity(gw: &TransferGateway) -> Option<Affinity> {
    let mut a = gw.spec.placement.affinity.clone().unwrap_or_default();
    if a.pod_anti_affinity.is_none() && gw.spec.replicas > 1 {
        a.pod_anti_affinity = Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector(gw)),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        });
    }
    (a != Affinity::default()).then_some(a)
}

fn has_ftps(gw: &TransferGateway) -> bool {
    gw.spec.listeners.iter().any(|l| l.protocol.is_ftps())
}

fn service(gw: &TransferGateway, bundle: &Bundle) -> Service {
    let spec = &gw.spec;
    let mut ports: Vec<ServicePort> = spec
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.clone()),
            port: l.port,
            target_port: Some(IntOrString::Int(l.port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    // PASV names the pod's port; through a NodePort Service the client must find it on the
    // node under the same number.
    let node_port = spec.service.type_ == ServiceType::NodePort;
    let sliced = passive_slices(gw).is_some();
    for p in passive_ports(gw) {
        ports.push(ServicePort {
            name: Some(format!("pasv-{p}")),
            port: p,
            // With passive slices, by name: only the replica offering the port carries it.
            target_port: Some(if sliced {
                IntOrString::String(passive_port_name(p))
            } else {
                IntOrString::Int(p)
            }),
            node_port: node_port.then_some(p),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    let type_ = match spec.service.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let external = spec.service.type_ != ServiceType::ClusterIP;
    let cidrs: BTreeSet<String> = bundle.zone_cidrs.values().flatten().cloned().collect();
    let mut metadata = meta(gw, gw.name_any());
    if !spec.service.annotations.is_empty() {
        metadata.annotations = Some(spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(selector(gw)),
            ports: Some(ports),
            // A client's control connections stay on one pod. (Its data connections reach the
            // pod holding the control connection by the passive slices, since affinity is
            // per Service port.)
            session_affinity: Some(
                if spec.replicas > 1 && has_ftps(gw) {
                    "ClientIP"
                } else {
                    "None"
                }
                .into(),
            ),
            // The gateway checks zones against the client address, so keep it.
            external_traffic_policy: external.then(|| "Local".into()),
            load_balancer_source_ranges: (spec.service.type_ == ServiceType::LoadBalancer)
                .then(|| cidrs.into_iter().collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tcp(port: i32, end: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        end_port: end,
        protocol: Some("TCP".into()),
    }
}

fn ip_peer(cidr: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: None,
        }),
        ..Default::default()
    }
}

fn network_policy(gw: &TransferGateway, bundle: &Bundle, admin_from: &[String]) -> NetworkPolicy {
    let spec = &gw.spec;
    let mut ingress: Vec<NetworkPolicyIngressRule> = spec
        .listeners
        .iter()
        .map(|l| {
            let from: BTreeSet<&String> = l
                .zones
                .iter()
                .filter_map(|z| bundle.zone_cidrs.get(z))
                .flatten()
                .collect();
            let mut ports = vec![tcp(l.port, None)];
            if let Some(r) = &l.passive_ports {
                ports.push(tcp(i32::from(r.min), Some(i32::from(r.max))));
            }
            NetworkPolicyIngressRule {
                from: Some(from.into_iter().map(|c| ip_peer(c)).collect()),
                ports: Some(ports),
            }
        })
        .collect();
    // The admin port: the operator (it reads `/config`) and the installer's metrics scrapers,
    // by namespace name; nobody else in the cluster. The kubelet's probes come from the node,
    // which NetworkPolicy does not govern.
    if !admin_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "In".into(),
                        values: Some(admin_from.to_vec()),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(spec.admin_port, None)]),
        });
    }
    // The replicas tell each other of defender bans.
    let replicas = || {
        Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(gw)),
                ..Default::default()
            }),
            ..Default::default()
        }])
    };
    let defender_port = || {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(DEFENDER_PORT)),
            protocol: Some("UDP".into()),
            end_port: None,
        }])
    };
    ingress.push(NetworkPolicyIngressRule {
        from: replicas(),
        ports: defender_port(),
    });
    let mut by_port: BTreeMap<(i32, i32), BTreeSet<&String>> = BTreeMap::new();
    for (cidr, first, last) in &bundle.egress {
        by_port.entry((*first, *last)).or_default().insert(cidr);
    }
    let mut egress: Vec<NetworkPolicyEgressRule> = by_port
        .into_iter()
        .map(|((first, last), cidrs)| NetworkPolicyEgressRule {
            to: Some(cidrs.into_iter().map(|c| ip_peer(c)).collect()),
            ports: Some(vec![tcp(first, (last != first).then_some(last))]),
        })
        .collect();
    // Active-mode FTPS: the gateway opens the data connection to the client, within the
    // listener's zones and the ports its policy allows (NOLOWPORTS: 1024 and up).
    for l in &spec.listeners {
        let Some(a) = l.active_mode.as_ref().filter(|a| a.enabled) else {
            continue;
        };
        let low = if a.no_low_ports { 1024 } else { 1 };
        let to: BTreeSet<&String> = l
            .zones
            .iter()
            .filter_map(|z| bundle.zone_cidrs.get(z))
            .flatten()
            .collect();
        egress.push(NetworkPolicyEgressRule {
            to: Some(to.into_iter().map(|c| ip_peer(c)).collect()),
            ports: Some(vec![tcp(low, Some(65535))]),
        });
    }
    egress.push(NetworkPolicyEgressRule {
        to: replicas(),
        ports: defender_port(),
    });
    let dns = &spec.dns;
    if dns.enabled {
        let mut to = vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(dns.namespace_labels.clone()),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(dns.pod_labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }];
        to.extend(dns.cidrs.iter().map(|c| ip_peer(c)));
        egress.push(NetworkPolicyEgressRule {
            to: Some(to),
            ports: Some(vec![
                NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some("UDP".into()),
                    end_port: None,
                },
                tcp(53, None),
            ]),
        });
    }
    NetworkPolicy {
        metadata: meta(gw, gw.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(gw)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

fn pdb(gw: &TransferGateway) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(gw, gw.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            // One pod at a time: a single-replica gateway can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(gw)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{
        fixtures::{SFTP_GATEWAY, gateway, world},
        validate::compile,
    };

    /// The NetworkPolicy's UDP ingress: (port, the pod labels it admits).
    fn np_ingress_udp(np: &NetworkPolicy) -> Vec<(i32, BTreeMap<String, String>)> {
        let mut out = Vec::new();
        for rule in np.spec.as_ref().unwrap().ingress.as_ref().unwrap() {
            for p in rule.ports.iter().flatten() {
                if p.protocol.as_deref() != Some("UDP") {
                    continue;
                }
                let Some(IntOrString::Int(port)) = p.port else {
                    panic!("numeric port")
                };
                for from in rule.from.iter().flatten() {
                    let labels = from.pod_selector.as_ref().unwrap().match_labels.clone();
                    out.push((port, labels.unwrap()));
                }
            }
        }
        out
    }

    fn ftps_gateway() -> TransferGateway {
        gateway(
            "  hostKeyRing: keys\n  replicas: 2\n  service: {type: LoadBalancer}\n  listeners:\n  - {name: sftp, protocol: sftp, port: 22, zones: [lan]}\n  - {name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30003}}\n",
        )
    }

    #[test]
    fn ftps_with_replicas_pins_clients_and_exposes_every_passive_port() {
        // The bundle comes from the SFTP-only gateway (FTPS is not compiled yet); the objects
        // are built from the FTPS one, which is what this test is about.
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let gw = ftps_gateway();
        let o = objects(&gw, &bundle, &[]);
        let svc = o.service.spec.unwrap();
        assert_eq!(svc.session_affinity.as_deref(), Some("ClientIP"));
        let ports: Vec<(String, i32)> = svc
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("sftp".into(), 22),
                ("ftps".into(), 2121),
                ("pasv-30000".into(), 30000),
                ("pasv-30001".into(), 30001),
                ("pasv-30002".into(), 30002),
                ("pasv-30003".into(), 30003),
            ]
        );
        assert_eq!(svc.load_balancer_source_ranges.unwrap(), ["10.1.0.0/16"]);
        assert_eq!(svc.external_traffic_policy.as_deref(), Some("Local"));

        let np = o.network_policy.spec.clone().unwrap();
        let ftps_rule = &np.ingress.unwrap()[1];
        let ports: Vec<(i32, Option<i32>)> = ftps_rule
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| {
                let IntOrString::Int(port) = p.port.clone().unwrap() else {
                    panic!("numeric port")
                };
                (port, p.end_port)
            })
            .collect();
        assert_eq!(ports, [(2121, None), (30000, Some(30003))]);

        // Two replicas with FTPS: a Deployment each, with its own slice of the passive range.
        let names: Vec<String> = o.deployments.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["gw-r0", "gw-r1"]);
        for (i, d) in o.deployments.iter().enumerate() {
            let spec = d.spec.clone().unwrap();
            assert_eq!(spec.replicas, Some(1));
            let mut want_selector = selector(&gw);
            want_selector.insert(REPLICA_LABEL.into(), i.to_string());
            assert_eq!(spec.selector.match_labels.as_ref(), Some(&want_selector));
            let template_labels = spec.template.metadata.unwrap().labels.unwrap();
            assert!(
                want_selector
                    .iter()
                    .all(|(k, v)| template_labels.get(k) == Some(v))
            );
            let pod = spec.template.spec.unwrap();
            let c = &pod.containers[0];
            assert_eq!(
                c.args.as_deref().unwrap()[3..],
                ["--passive-slice".to_owned(), format!("{i}/2")]
            );
            // Port 22 without NET_BIND_SERVICE: the namespaced sysctl.
            let sysctls = pod.security_context.unwrap().sysctls.unwrap();
            assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
            // Listeners, admin, the defender's UDP port, and this replica's passive ports,
            // named for the Service.
            let ports = c.ports.as_ref().unwrap();
            assert_eq!(ports.len(), 3 + 1 + 2);
            let passive: Vec<(Option<&str>, i32)> = ports[4..]
                .iter()
                .map(|p| (p.name.as_deref(), p.container_port))
                .collect();
            let first = 30000 + 2 * i32::try_from(i).unwrap();
            let (a, b) = (format!("pasv-{first}"), format!("pasv-{}", first + 1));
            assert_eq!(
                passive,
                [(Some(a.as_str()), first), (Some(b.as_str()), first + 1)]
            );
        }
        // The Service targets each passive port by that name: only its replica's pods have it.
        let targets: Vec<IntOrString> = svc_targets(&objects(&gw, &bundle, &[]).service);
        assert_eq!(
            targets[2..],
            (30000..=30003)
                .map(|p| IntOrString::String(format!("pasv-{p}")))
                .collect::<Vec<_>>()
        );
        // The replicas reach each other on the defender's port, and only each other.
        let peers = o.peers_service.spec.unwrap();
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let udp_in = np_ingress_udp(&o.network_policy);
        assert_eq!(udp_in, [(7946, selector(&ftps_gateway()))]);
    }

    fn svc_targets(svc: &Service) -> Vec<IntOrString> {
        let ports = svc.spec.as_ref().unwrap().ports.as_ref().unwrap();
        ports
            .iter()
            .map(|p| p.target_port.clone().unwrap())
            .collect()
    }

    #[test]
    fn one_replica_or_no_ftps_keeps_one_deployment_and_numbered_ports() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let single = gateway(
            "  hostKeyRing: keys\n  replicas: 1\n  listeners:\n  - {name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30003}}\n",
        );
        let sftp_only = gateway(
            "  hostKeyRing: keys\n  replicas: 3\n  listeners:\n  - {name: sftp, protocol: sftp, port: 2222, zones: [lan]}\n",
        );
        for gw in [single, sftp_only] {
            assert_eq!(passive_slices(&gw), None);
            let o = objects(&gw, &bundle, &[]);
            assert_eq!(o.deployments.len(), 1);
            let d = &o.deployments[0];
            assert_eq!(d.name_any(), "gw");
            let spec = d.spec.clone().unwrap();
            assert_eq!(spec.replicas, Some(gw.spec.replicas));
            assert_eq!(spec.selector.match_labels, Some(selector(&gw)));
            let c = &spec.template.spec.unwrap().containers[0];
            assert_eq!(
                c.args.as_deref().unwrap(),
                ["run", "--config", CONFIG_MOUNT]
            );
            assert!(
                svc_targets(&o.service)
                    .iter()
                    .all(|t| matches!(t, IntOrString::Int(_)))
            );
            let s = shape(&gw);
            assert_eq!(s.len(), 1);
            assert_eq!(
                (s[0].name.as_str(), s[0].replicas, s[0].slice),
                ("gw", gw.spec.replicas, None)
            );
        }
    }

    #[test]
    fn active_mode_may_reach_the_clients_zones_and_nothing_else() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let rules = |gw: &TransferGateway| -> Vec<(Vec<String>, i32, Option<i32>)> {
            let np = objects(gw, &bundle, &[]).network_policy.spec.unwrap();
            np.egress
                .unwrap()
                .into_iter()
                .filter_map(|r| {
                    let to: Vec<String> = r
                        .to?
                        .into_iter()
                        .filter_map(|p| p.ip_block.map(|b| b.cidr))
                        .collect();
                    let p = r.ports?.into_iter().next()?;
                    let IntOrString::Int(port) = p.port? else {
                        return None;
                    };
                    (!to.is_empty()).then_some((to, port, p.end_port))
                })
                .collect()
        };
        let passive_only = rules(&ftps_gateway());
        let active = gateway(
            "  hostKeyRing: keys\n  listeners:\n  - {name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30003}, activeMode: {enabled: true}}\n",
        );
        let with_active = rules(&active);
        let added: Vec<_> = with_active
            .iter()
            .filter(|r| !passive_only.contains(r))
            .collect();
        assert_eq!(
            added,
            [&(vec!["10.1.0.0/16".to_owned()], 1024, Some(65535))]
        );
        // Low ports only where NOLOWPORTS is off.
        let low = gateway(
            "  hostKeyRing: keys\n  listeners:\n  - {name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30003}, activeMode: {enabled: true, noLowPorts: false}}\n",
        );
        assert!(rules(&low).contains(&(vec!["10.1.0.0/16".to_owned()], 1, Some(65535))));
    }

    #[test]
    fn placement_reaches_the_pod_and_keeps_the_default_spread() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let gw = gateway(concat!(
            "  hostKeyRing: keys\n  replicas: 2\n",
            "  imagePullSecrets: [{name: registry}]\n",
            "  placement:\n",
            "    nodeSelector: {node-pool: dmz}\n",
            "    tolerations: [{key: dedicated, operator: Equal, value: dmz, effect: NoSchedule}]\n",
            "    priorityClassName: dmz-critical\n",
            "    topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}]\n",
            "    affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [dmz-a]}]}]}}}\n",
            "  listeners:\n  - {name: sftp, protocol: sftp, port: 2222, zones: [lan]}\n",
        ));
        let pod = pod_spec(&gw, &bundle);
        assert_eq!(pod.node_selector.unwrap()["node-pool"], "dmz");
        assert_eq!(pod.tolerations.unwrap()[0].value.as_deref(), Some("dmz"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("dmz-critical"));
        assert_eq!(pod.topology_spread_constraints.unwrap()[0].max_skew, 1);
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
        let a = pod.affinity.unwrap();
        assert!(a.node_affinity.is_some(), "the user's node affinity");
        assert!(
            a.pod_anti_affinity.is_some(),
            "and the default spread of replicas"
        );
        // Unset: nothing added but the default spread.
        let plain = objects(&ftps_gateway(), &bundle, &[])
            .deployments
            .swap_remove(0)
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(plain.node_selector.is_none() && plain.tolerations.is_none());
        assert!(plain.affinity.unwrap().node_affinity.is_none());
    }

    #[test]
    fn the_admin_port_admits_the_operator_and_metrics_namespaces_only() {
        let gw = gateway(SFTP_GATEWAY);
        let bundle = compile(&gw, &world()).unwrap();
        let admin = |from: &[String]| {
            objects(&gw, &bundle, from)
                .network_policy
                .spec
                .unwrap()
                .ingress
                .unwrap()
                .into_iter()
                .filter(|r| {
                    r.ports
                        .iter()
                        .flatten()
                        .any(|p| p.port == Some(IntOrString::Int(gw.spec.admin_port)))
                })
                .collect::<Vec<_>>()
        };
        // Nobody in the cluster: the kubelet probes from the node.
        assert!(admin(&[]).is_empty());
        let rules = admin(&["portcullis-system".into(), "monitoring".into()]);
        let [rule] = rules.as_slice() else {
            panic!("one admin rule: {rules:?}")
        };
        let peers = rule.from.clone().unwrap();
        let [peer] = peers.as_slice() else {
            panic!("one peer: {peers:?}")
        };
        assert!(peer.pod_selector.is_none() && peer.ip_block.is_none());
        let sel = peer.namespace_selector.clone().unwrap();
        assert_eq!(sel.match_labels, None);
        assert_eq!(
            sel.match_expressions.unwrap(),
            vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["portcullis-system".into(), "monitoring".into()]),
            }]
        );
    }

    #[test]
    fn dns_egress_goes_where_the_spec_says() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let dns = |gw: &TransferGateway| {
            let np = objects(gw, &bundle, &[]).network_policy.spec.unwrap();
            np.egress.unwrap().into_iter().find(|r| {
                r.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(53)))
            })
        };
        let labels = |m: &[(&str, &str)]| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        // The default: the cluster DNS in kube-system.
        let rule = dns(&gateway(SFTP_GATEWAY)).expect("DNS egress by default");
        let peer = &rule.to.unwrap()[0];
        assert_eq!(
            peer.namespace_selector
                .clone()
                .unwrap()
                .match_labels
                .unwrap(),
            labels(&[("kubernetes.io/metadata.name", "kube-system")])
        );
        assert_eq!(
            peer.pod_selector.clone().unwrap().match_labels.unwrap(),
            labels(&[("k8s-app", "kube-dns")])
        );
        // Another distribution's DNS pods, and a node-local cache.
        let mut gw = gateway(SFTP_GATEWAY);
        gw.spec.dns.namespace_labels = labels(&[("kubernetes.io/metadata.name", "dns")]);
        gw.spec.dns.pod_labels = labels(&[("app", "coredns")]);
        gw.spec.dns.cidrs = vec!["169.254.20.10/32".into()];
        let to = dns(&gw).unwrap().to.unwrap();
        assert_eq!(
            to[0].pod_selector.clone().unwrap().match_labels.unwrap(),
            labels(&[("app", "coredns")])
        );
        assert_eq!(to[1].ip_block.clone().unwrap().cidr, "169.254.20.10/32");
        // Off: no port 53 anywhere.
        gw.spec.dns.enabled = false;
        gw.spec.dns.cidrs.clear();
        assert!(dns(&gw).is_none());
    }

    #[test]
    fn node_port_passive_ports_keep_their_number_on_the_node() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let mut gw = ftps_gateway();
        gw.spec.service.type_ = ServiceType::NodePort;
        let svc = objects(&gw, &bundle, &[]).service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("NodePort"));
        let nodes: Vec<(String, Option<i32>)> = svc
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.node_port))
            .collect();
        assert_eq!(
            nodes,
            [
                ("sftp".into(), None),
                ("ftps".into(), None),
                ("pasv-30000".into(), Some(30000)),
                ("pasv-30001".into(), Some(30001)),
                ("pasv-30002".into(), Some(30002)),
                ("pasv-30003".into(), Some(30003)),
            ]
        );
        // Not with a LoadBalancer: the cloud maps the ports.
        let svc = objects(&ftps_gateway(), &bundle, &[]).service.spec.unwrap();
        assert!(svc.ports.unwrap().iter().all(|p| p.node_port.is_none()));
    }

    #[test]
    fn a_single_cluster_ip_gateway_needs_no_affinity_and_no_source_ranges() {
        let bundle = compile(&gateway(SFTP_GATEWAY), &world()).unwrap();
        let o = objects(&gateway(SFTP_GATEWAY), &bundle, &[]);
        let svc = o.service.spec.unwrap();
        assert_eq!(svc.session_affinity.as_deref(), Some("None"));
        assert!(svc.load_balancer_source_ranges.is_none());
        assert!(svc.external_traffic_policy.is_none());
        let pod = o.deployments[0]
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        assert!(pod.security_context.unwrap().sysctls.is_none());
        // Owner reference: controller, with deletion blocked until the owned object is gone.
        let owner = &o.secret.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("TransferGateway", "gw")
        );
        assert_eq!(owner.controller, Some(true));
    }
}
