//! `status`: what each gateway in the cluster is doing, read from its status, its Service and
//! its key rings: conditions, replicas, listeners and addresses, certificate expiry, host keys,
//! and whether the pods serve the config the operator wrote.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client, ResourceExt, api::ListParams};
use portcullis_api::{KeyRing, TransferGateway};

/// Where to look.
pub struct Scope<'a> {
    pub namespace: Option<&'a str>,
    pub all_namespaces: bool,
    pub gateway: Option<&'a str>,
}

/// The report for the gateways in scope; `Ok(None)` when there is none.
pub async fn status(scope: Scope<'_>, now: i64) -> anyhow::Result<Option<String>> {
    let client = Client::try_default().await?;
    let ns = scope
        .namespace
        .map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    let api: Api<TransferGateway> = if scope.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &ns)
    };
    let mut gateways = match scope.gateway {
        Some(name) => vec![api.get(name).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    gateways.sort_by_key(|g| (g.namespace(), g.name_any()));
    if gateways.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    for gw in &gateways {
        let gns = gw.namespace().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(client.clone(), &gns);
        let rings: Api<KeyRing> = Api::namespaced(client.clone(), &gns);
        let svc = services.get_opt(&gw.name_any()).await?;
        let mut ring_list: Vec<String> = gw
            .spec
            .listeners
            .iter()
            .filter_map(|l| l.key_ring.clone())
            .chain(gw.spec.host_key_ring.clone())
            .collect();
        ring_list.sort();
        ring_list.dedup();
        let mut key_rings = Vec::new();
        for r in ring_list {
            key_rings.push((r.clone(), rings.get_opt(&r).await?));
        }
        out.push_str(&render(gw, svc.as_ref(), &key_rings, now));
        out.push('\n');
    }
    Ok(Some(out))
}

/// Days (rounded down) from `now` to an RFC 3339 time.
fn days_left(t: &str, now: i64) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?.timestamp();
    Some((t - now).div_euclid(86_400))
}

/// One gateway's block.
pub fn render(
    gw: &TransferGateway,
    svc: Option<&Service>,
    key_rings: &[(String, Option<KeyRing>)],
    now: i64,
) -> String {
    let mut o = String::new();
    let st = gw.status.clone().unwrap_or_default();
    let _ = writeln!(
        o,
        "gateway {}/{}",
        gw.namespace().unwrap_or_default(),
        gw.name_any()
    );
    let stale = st.observed_generation != gw.metadata.generation;
    for c in &st.conditions {
        let _ = writeln!(
            o,
            "  {:<12} {} ({}){}{}",
            format!("{}:", c.type_),
            c.status,
            c.reason,
            if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            },
            if stale {
                " [status is for an older generation]"
            } else {
                ""
            }
        );
    }
    if st.conditions.is_empty() {
        let _ = writeln!(
            o,
            "  Ready:       unknown (the operator has not reported yet)"
        );
    }
    let _ = writeln!(
        o,
        "  replicas     {}",
        st.replicas.as_deref().unwrap_or("-")
    );
    let addrs: Vec<String> = svc
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            let ingress = s
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip.or(i.hostname));
            ingress
                .chain(spec.cluster_ip.filter(|ip| ip != "None"))
                .collect()
        })
        .unwrap_or_default();
    for l in &gw.spec.listeners {
        let _ = writeln!(
            o,
            "  listener     {} {} port {} zones [{}]{}",
            l.name,
            serde_json::to_value(l.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            l.port,
            l.zones.join(", "),
            if addrs.is_empty() {
                String::new()
            } else {
                format!(
                    " at {}",
                    addrs
                        .iter()
                        .map(|a| format!("{a}:{}", l.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    }
    match &st.certificate_not_after {
        Some(t) => {
            let _ = writeln!(
                o,
                "  certificates {t} ({} days left)",
                days_left(t, now).map_or("?".into(), |d| d.to_string())
            );
        }
        None => {
            let _ = writeln!(o, "  certificates none presented");
        }
    }
    for (name, kr) in key_rings {
        let Some(kr) = kr else {
            let _ = writeln!(o, "  key ring     {name}: not found");
            continue;
        };
        let ks = kr.status.clone().unwrap_or_default();
        let _ = writeln!(
            o,
            "  key ring     {name}: certificate until {} ({} days), renews {}{}",
            ks.not_after.as_deref().unwrap_or("-"),
            ks.not_after
                .as_deref()
                .and_then(|t| days_left(t, now))
                .map_or("?".into(), |d| d.to_string()),
            ks.renewal_time.as_deref().unwrap_or("-"),
            if ks.host_key_fingerprints.is_empty() {
                String::new()
            } else {
                format!(
                    "; SSH host keys (no expiry): {}",
                    ks.host_key_fingerprints.join(", ")
                )
            }
        );
    }
    let hash = st.config_hash.as_deref().unwrap_or("-");
    let served = match (&st.config_hash, &st.served_config_hash) {
        (Some(a), Some(b)) if a == b => "served by every ready pod".to_owned(),
        (Some(_), _) => "NOT yet served by every ready pod".to_owned(),
        _ => "-".to_owned(),
    };
    let _ = writeln!(o, "  config       {hash} ({served})");
    o
}
