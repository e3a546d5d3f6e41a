//! The KeyRing controller: a small CA per key ring. It issues (or passes on) the certificate,
//! renews it on time, keeps SSH host keys stable, and gathers trusted CAs, all into the
//! Secret named in the status.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use portcullis_api::{
    AuditKey, DeletionPolicy, IssuerType, KeyRing, KeyRingSpec, KeyRingStatus, PublishedAuditKey,
    READY, TransferGateway,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::shared::{
    Context, Error, MANAGED_BY, Step,
    apply::apply,
    ca,
    keyring_secret::{keys, rfc3339, secret_name},
    status,
};

/// The annotation recording what the leaf was issued for, so a spec change re-issues.
const ISSUED_FOR: &str = "portcullis.dev/issued-for";

fn ca_secret_name(kr: &KeyRing) -> String {
    format!("{}-ca", kr.name_any())
}

fn owned_meta(kr: &KeyRing, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kr.namespace(),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".into(), "portcullis-keyring".into()),
            ("app.kubernetes.io/instance".into(), kr.name_any()),
            ("app.kubernetes.io/part-of".into(), "portcullis".into()),
            ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        ])),
        // Retained by default: host keys and a CA outlive the KeyRing object.
        owner_references: (kr.spec.deletion_policy == DeletionPolicy::Delete)
            .then(|| kr.controller_owner_ref(&()).map(|o| vec![o]))
            .flatten(),
        ..Default::default()
    }
}

fn get<'s>(s: Option<&'s Secret>, key: &str) -> Option<&'s [u8]> {
    s?.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

fn text(s: Option<&Secret>, key: &str) -> Option<String> {
    get(s, key).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Why a key ring cannot be issued right now.
struct NotReady {
    reason: &'static str,
    message: String,
}

pub async fn reconcile(kr: Arc<KeyRing>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&kr, &ctx).await;
    ctx.observe("keyring", started);
    if let Err(e) = &result {
        ctx.count_error("keyring", e.step, e.category());
    }
    result
}

async fn reconcile_inner(kr: &KeyRing, ctx: &Context) -> Result<Action, Error> {
    let ns = kr.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let current = secrets
        .get_opt(&secret_name(kr))
        .await
        .map_err(Error::kube(Step::Dereference))?;
    let current = current.as_ref();
    let now = OffsetDateTime::now_utc();
    let spec = &kr.spec;
    let durations = durations(spec);
    let renew_before = durations.as_ref().ok().and_then(|d| d.1);

    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    let mut issuing = false;
    let outcome = match durations {
        Ok(d) => gather(kr, ctx, &secrets, current, now, d, &mut data, &mut issuing).await?,
        Err(nr) => Err(nr),
    };

    let old = kr.status.clone().unwrap_or_default();
    let generation = kr.meta().generation;
    let mut new = KeyRingStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let requeue;
    let (ok, reason, message) = match outcome {
        Ok(()) => {
            let mut meta = owned_meta(kr, secret_name(kr));
            meta.annotations = Some(BTreeMap::from([(ISSUED_FOR.to_owned(), issued_for(kr))]));
            let facts = ca::facts(&String::from_utf8_lossy(&data["tls.crt"].0))?;
            let secret = Secret {
                metadata: meta,
                type_: Some("kubernetes.io/tls".into()),
                data: Some(data.clone()),
                ..Default::default()
            };
            apply(ctx, &secret).await?;
            let renewal = ca::renewal_time(&facts, renew_before);
            requeue = Duration::from_secs((renewal - now.unix_timestamp()).clamp(1, 3600) as u64);
            new.secret_name = Some(secret_name(kr));
            new.not_after = Some(rfc3339(facts.not_after));
            new.renewal_time =
                (spec.issuer.type_ != IssuerType::TlsSecret).then(|| rfc3339(renewal));
            new.certificate_fingerprint = Some(facts.sha256.clone());
            new.ca_fingerprint = data
                .get("ca.crt")
                .and_then(|c| ca::facts(&String::from_utf8_lossy(&c.0)).ok())
                .map(|f| f.sha256);
            new.host_key_fingerprints = [keys::SSH_ED25519, keys::SSH_ECDSA]
                .iter()
                .filter_map(|k| {
                    data.get(*k)
                        .and_then(|v| ca::host_key_fingerprint(&String::from_utf8_lossy(&v.0)))
                })
                .collect();
            if issuing {
                ctx.event(
                    kr,
                    false,
                    "Issued",
                    format!(
                        "issued certificate {} valid until {}",
                        facts.sha256,
                        rfc3339(facts.not_after)
                    ),
                )
                .await;
            }
            (
                true,
                "Issued",
                format!(
                    "certificate valid until {}; renewal at {}",
                    rfc3339(facts.not_after),
                    rfc3339(renewal)
                ),
            )
        }
        Err(nr) => {
            ctx.count_error("keyring", Step::Validate, nr.reason);
            requeue = Duration::from_secs(30);
            (false, nr.reason, nr.message)
        }
    };
    // The gateways' audit keys: published whether or not the certificate is issued.
    let gateways = ctx.caches.gateways.in_namespace(&ns);
    new.audit_keys = publish_audit_keys(
        &old.audit_keys,
        gateways.values().filter(|g| signs_with(kr, g)).map(|g| {
            (
                g.name_any(),
                g.status.as_ref().map_or(&[][..], |s| &s.audit_keys[..]),
            )
        }),
        &rfc3339(now.unix_timestamp()),
    );
    new.conditions = status::merge(
        &old.conditions,
        vec![
            status::Want {
                type_: READY,
                status: ok,
                reason,
                message: message.clone(),
            },
            status::Want {
                type_: "Issuing",
                status: false,
                reason: if ok { "Idle" } else { reason },
                message: String::new(),
            },
        ],
        generation,
    );
    if new != old || issuing {
        let api: Api<KeyRing> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &kr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status::merge_patch(&old, &new)? })),
        )
        .await
        .map_err(Error::kube(Step::Status))?;
        if !ok && status::ready_changed(&old.conditions, &new.conditions) {
            ctx.event(kr, true, reason, message).await;
        }
    }
    Ok(Action::requeue(requeue))
}

/// The certificate lifetime and renewal lead from the spec. The CRD's CEL rules check them
/// with the same grammar, so a failure here means an object that bypassed them: it is
/// reported, never replaced by a default.
fn durations(spec: &KeyRingSpec) -> Result<(Duration, Option<Duration>), NotReady> {
    let parse = |field: &str, v: &str| {
        ca::parse_duration(v).ok_or_else(|| {
            not_ready(
                "InvalidDuration",
                format!("{field} {v:?} is not a duration such as 2160h or 1.5h"),
            )
        })
    };
    let lifetime = match &spec.duration {
        Some(d) => parse("duration", d)?,
        None => ca::DEFAULT_DURATION,
    };
    let renew_before = match &spec.renew_before {
        Some(r) => Some(parse("renewBefore", r)?),
        None => None,
    };
    Ok((lifetime, renew_before))
}

/// What a leaf is issued for: a change re-issues it.
fn issued_for(kr: &KeyRing) -> String {
    let s = &kr.spec;
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        s.issuer, s.dns_names, s.ip_addresses, s.duration
    )
}

fn not_ready(reason: &'static str, message: String) -> NotReady {
    NotReady { reason, message }
}

/// A `tls.crt`/`tls.key` pair from Secret `name`, checked to parse and to belong together,
/// with the Secret's `ca.crt` when it has one.
async fn tls_pair(
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Result<(ca::Pair, Option<String>), NotReady>, Error> {
    let src = secrets
        .get_opt(name)
        .await
        .map_err(Error::kube(Step::Dereference))?;
    let (Some(cert_pem), Some(key_pem)) =
        (text(src.as_ref(), "tls.crt"), text(src.as_ref(), "tls.key"))
    else {
        return Ok(Err(not_ready(
            "SecretNotFound",
            format!("Secret {name} does not exist or lacks tls.crt/tls.key"),
        )));
    };
    let pair = ca::Pair { cert_pem, key_pem };
    Ok(match ca::check_pair(&pair) {
        Ok(()) => Ok((pair, text(src.as_ref(), "ca.crt"))),
        Err(e) => Err(not_ready(
            "InvalidCertificate",
            format!("Secret {name}: {e}"),
        )),
    })
}

/// Gathers the key ring Secret's contents into `data`: host keys (kept), trusted CAs, and the
/// certificate (kept, issued or passed on). API failures are errors (retried); everything
/// else that makes the key ring unusable is a [`NotReady`] for the status.
#[allow(clippy::too_many_arguments)]
async fn gather(
    kr: &KeyRing,
    ctx: &Context,
    secrets: &Api<Secret>,
    current: Option<&Secret>,
    now: OffsetDateTime,
    (lifetime, renew_before): (Duration, Option<Duration>),
    data: &mut BTreeMap<String, ByteString>,
    issuing: &mut bool,
) -> Result<Result<(), NotReady>, Error> {
    let spec = &kr.spec;
    let mut put = |k: &str, v: String| {
        data.insert(k.to_owned(), ByteString(v.into_bytes()));
    };
    // SSH host keys: generated once, then kept.
    if spec.ssh_host_keys {
        for (key, ecdsa) in [(keys::SSH_ED25519, false), (keys::SSH_ECDSA, true)] {
            let pem = match text(current, key).filter(|k| ca::host_key_fingerprint(k).is_some()) {
                Some(k) => k,
                None => ca::new_host_key(ecdsa)?,
            };
            put(key, pem);
        }
    }
    // Trusted CAs.
    for (list, key) in [
        (&spec.client_cas, keys::CLIENT_CAS),
        (&spec.backend_cas, keys::BACKEND_CAS),
    ] {
        let mut bundle = String::new();
        for r in list {
            let s = secrets
                .get_opt(&r.name)
                .await
                .map_err(Error::kube(Step::Dereference))?;
            let Some(pem) = text(s.as_ref(), &r.key) else {
                return Ok(Err(not_ready(
                    "SecretNotFound",
                    format!(
                        "trusted CA Secret {} (key {}) does not exist",
                        r.name, r.key
                    ),
                )));
            };
            if let Err(e) = ca::facts(&pem) {
                return Ok(Err(not_ready(
                    "InvalidCertificate",
                    format!("Secret {} key {}: {e}", r.name, r.key),
                )));
            }
            bundle.push_str(&pem);
        }
        if !bundle.is_empty() {
            put(key, bundle);
        }
    }
    // The certificate.
    let source = spec.issuer.secret_name.clone().unwrap_or_default();
    let signer = match spec.issuer.type_ {
        IssuerType::TlsSecret => {
            let (pair, chain_ca) = match tls_pair(secrets, &source).await? {
                Ok(p) => p,
                Err(nr) => return Ok(Err(nr)),
            };
            let f = ca::facts(&pair.cert_pem)?;
            if f.not_after <= now.unix_timestamp() {
                return Ok(Err(not_ready(
                    "Expired",
                    format!(
                        "the certificate in Secret {source} expired at {}",
                        rfc3339(f.not_after)
                    ),
                )));
            }
            if let Some(ca) = chain_ca {
                put("ca.crt", ca);
            }
            put("tls.crt", pair.cert_pem);
            put("tls.key", pair.key_pem);
            return Ok(Ok(()));
        }
        IssuerType::Ca => match tls_pair(secrets, &source).await? {
            Ok((p, _)) => p,
            Err(nr) => return Ok(Err(nr)),
        },
        IssuerType::SelfSigned => {
            let name = ca_secret_name(kr);
            let existing = secrets
                .get_opt(&name)
                .await
                .map_err(Error::kube(Step::Dereference))?;
            match (
                text(existing.as_ref(), "tls.crt"),
                text(existing.as_ref(), "tls.key"),
            ) {
                (Some(cert_pem), Some(key_pem)) => ca::Pair { cert_pem, key_pem },
                _ => {
                    let pair = ca::new_ca(
                        &format!(
                            "portcullis {}/{} CA",
                            kr.namespace().unwrap_or_default(),
                            kr.name_any()
                        ),
                        now,
                    )?;
                    let s = Secret {
                        metadata: owned_meta(kr, name),
                        type_: Some("kubernetes.io/tls".into()),
                        data: Some(BTreeMap::from([
                            (
                                "tls.crt".into(),
                                ByteString(pair.cert_pem.clone().into_bytes()),
                            ),
                            (
                                "tls.key".into(),
                                ByteString(pair.key_pem.clone().into_bytes()),
                            ),
                        ])),
                        ..Default::default()
                    };
                    apply(ctx, &s).await?;
                    pair
                }
            }
        }
    };
    let leaf = text(current, "tls.crt").zip(text(current, "tls.key"));
    let still_good = leaf
        .as_ref()
        .and_then(|(crt, _)| ca::facts(crt).ok())
        .is_some_and(|f| {
            now.unix_timestamp() < ca::renewal_time(&f, renew_before)
                && current.and_then(|s| s.annotations().get(ISSUED_FOR)) == Some(&issued_for(kr))
                && text(current, "ca.crt").as_deref() == Some(signer.cert_pem.as_str())
        });
    let (crt, key) = match leaf.filter(|_| still_good) {
        Some(pair) => pair,
        None => {
            *issuing = true;
            set_issuing(ctx, kr).await;
            let p = match ca::issue_leaf(
                &signer,
                &kr.name_any(),
                &spec.dns_names,
                &spec.ip_addresses,
                now,
                lifetime,
            ) {
                Ok(p) => p,
                Err(e) => return Ok(Err(not_ready("IssueFailed", e.to_string()))),
            };
            (p.cert_pem, p.key_pem)
        }
    };
    put("tls.crt", crt);
    put("tls.key", key);
    put("ca.crt", signer.cert_pem);
    Ok(Ok(()))
}

/// Marks the key ring Issuing while a certificate is being made.
async fn set_issuing(ctx: &Context, kr: &KeyRing) {
    let old = kr.status.clone().unwrap_or_default();
    let conditions = status::merge(
        &old.conditions,
        vec![status::Want {
            type_: "Issuing",
            status: true,
            reason: "Issuing",
            message: "issuing a certificate".into(),
        }],
        kr.meta().generation,
    );
    let api: Api<KeyRing> =
        Api::namespaced(ctx.client.clone(), &kr.namespace().unwrap_or_default());
    if let Err(e) = api
        .patch_status(
            &kr.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "conditions": conditions } })),
        )
        .await
    {
        tracing::warn!(error = %e, "could not mark the key ring Issuing");
    } else {
        ctx.count_write("KeyRing/status");
    }
}

/// Whether gateway `gw` signs its audit trail under key ring `kr`: it names the ring, and the
/// ring is an audit signing authority.
fn signs_with(kr: &KeyRing, gw: &TransferGateway) -> bool {
    kr.spec.audit_signing_key
        && gw.spec.audit.signing_key_ring.as_deref() == Some(kr.name_any().as_str())
}

/// Whether key ring `kr`'s `status.auditKeys` is out of date for gateway `gw` (`exists`: it is
/// still in the cache), so that a change of the gateway reconciles the key ring only when it
/// has something to publish.
pub fn publishes_stale_keys_of(kr: &KeyRing, gw: &TransferGateway, exists: bool) -> bool {
    let name = gw.name_any();
    let listed: Vec<(&str, bool)> = kr
        .status
        .iter()
        .flat_map(|s| &s.audit_keys)
        .filter(|p| p.gateway == name)
        .map(|p| (p.key_id.as_str(), p.retired_at.is_some()))
        .collect();
    if !(exists && signs_with(kr, gw)) {
        // Only a key still listed as current has to be retired.
        return listed.iter().any(|(_, retired)| !retired);
    }
    gw.status
        .iter()
        .flat_map(|s| &s.audit_keys)
        .any(|k| !listed.contains(&(k.key_id.as_str(), k.retired_at.is_some())))
}

/// How many replaced audit keys a key ring's status keeps.
const RETIRED_AUDIT_KEYS: usize = 32;

/// The key ring's `status.auditKeys`: every key of the gateways that name it (`gateways`: each
/// one's name and its status's keys, current first), then keys the status listed before that
/// no gateway lists any more, as retired at `now`. Current keys come first by gateway; the
/// retired ones newest first, at most [`RETIRED_AUDIT_KEYS`].
fn publish_audit_keys<'a>(
    old: &[PublishedAuditKey],
    gateways: impl Iterator<Item = (String, &'a [AuditKey])>,
    now: &str,
) -> Vec<PublishedAuditKey> {
    let mut keys: Vec<PublishedAuditKey> = gateways
        .flat_map(|(gateway, keys)| {
            keys.iter().map(move |k| PublishedAuditKey {
                gateway: gateway.clone(),
                key_id: k.key_id.clone(),
                public_key: k.public_key.clone(),
                created_at: k.created_at.clone(),
                retired_at: k.retired_at.clone(),
            })
        })
        .collect();
    for k in old {
        if !keys
            .iter()
            .any(|n| n.gateway == k.gateway && n.key_id == k.key_id)
        {
            keys.push(PublishedAuditKey {
                retired_at: Some(k.retired_at.clone().unwrap_or_else(|| now.to_owned())),
                ..k.clone()
            });
        }
    }
    // Current first, by gateway; then retired, newest first.
    keys.sort_by(|a, b| {
        (
            a.retired_at.is_some(),
            b.retired_at.as_ref(),
            &a.gateway,
            &a.key_id,
        )
            .cmp(&(
                b.retired_at.is_some(),
                a.retired_at.as_ref(),
                &b.gateway,
                &b.key_id,
            ))
    });
    let current = keys.iter().filter(|k| k.retired_at.is_none()).count();
    keys.truncate(current + RETIRED_AUDIT_KEYS);
    keys
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::shared::{
        cache::{Caches, Listed},
        testing::{Seen, answering_status, context, mock_client},
    };

    fn edge() -> KeyRing {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "KeyRing",
            "metadata": {"name": "edge", "namespace": "team", "generation": 1, "uid": "k1"},
            "spec": {"issuer": {"type": "selfSigned"}, "dnsNames": ["transfer.example.com"]},
        }))
        .unwrap()
    }

    /// Answers a status patch with the key ring it patched, and a GET of a Secret in `secrets`
    /// (path → object) with it.
    fn api(kr: &KeyRing, secrets: Vec<(String, Value)>) -> impl Fn(&Seen) -> (u16, Value) + use<> {
        let otherwise = answering_status(kr);
        move |s| match secrets.iter().find(|(p, _)| *p == s.path) {
            Some((_, sec)) if s.method == "GET" => (200, sec.clone()),
            _ => otherwise(s),
        }
    }

    #[tokio::test]
    async fn a_new_key_ring_is_issued_into_its_secret_once_and_then_left_alone() {
        let kr = edge();
        let caches = Caches::holding(Listed {
            key_rings: vec![kr.clone()],
            ..Default::default()
        })
        .await;
        let (client, log) = mock_client(api(&kr, vec![]));
        reconcile(Arc::new(kr.clone()), context(client, caches.clone()))
            .await
            .unwrap();
        let seen = log.lock().unwrap().clone();
        let secret = "/api/v1/namespaces/team/secrets/edge-keyring";
        let ca = "/api/v1/namespaces/team/secrets/edge-ca";
        let status_path = "/apis/portcullis.dev/v1alpha1/namespaces/team/keyrings/edge/status";
        let lines: Vec<String> = seen.iter().map(Seen::line).collect();
        // The key ring's own CA first, then "Issuing" on the status, then the leaf, the
        // Event and the final status.
        assert_eq!(
            lines,
            [
                format!("GET {secret}"),
                format!("GET {ca}"),
                format!("GET {ca}"),
                format!("PATCH {ca}"),
                format!("PATCH {status_path}"),
                format!("GET {secret}"),
                format!("PATCH {secret}"),
                "POST /apis/events.k8s.io/v1/namespaces/team/events".into(),
                format!("PATCH {status_path}"),
            ]
        );
        let issuing = seen[4].body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Issuing")
            .unwrap()
            .clone();
        assert_eq!(issuing["status"], "True", "{issuing}");
        // Server-side apply, by the operator; retained by default (no owner: host keys and a
        // CA outlive the KeyRing object), labelled as the key ring's.
        let applied = &seen[6];
        assert!(
            applied.query.contains("fieldManager=portcullis-operator"),
            "{}",
            applied.query
        );
        assert!(applied.query.contains("force=true"), "{}", applied.query);
        assert_eq!(applied.body["type"], "kubernetes.io/tls");
        assert!(applied.body["metadata"]["ownerReferences"].is_null());
        assert_eq!(
            applied.body["metadata"]["labels"]["app.kubernetes.io/instance"],
            "edge"
        );
        let data = applied.body["data"].as_object().unwrap();
        for k in ["tls.crt", "tls.key", "ca.crt"] {
            assert!(data.contains_key(k), "{k} missing: {:?}", data.keys());
        }
        let status = &seen[8].body["status"];
        assert_eq!(status["secretName"], "edge-keyring");
        assert!(status["certificateFingerprint"].is_string(), "{status}");
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("True"), &json!("Issued"))
        );
        assert_eq!(seen[7].body["reason"], "Issued");

        // Again, with the Secret and the status it now has: read, found current, nothing
        // issued, written or announced.
        let mut issued = kr.clone();
        issued.status = serde_json::from_value(status.clone()).unwrap();
        let (client, log) = mock_client(api(
            &issued,
            vec![
                (secret.into(), applied.body.clone()),
                (ca.into(), seen[3].body.clone()),
            ],
        ));
        reconcile(Arc::new(issued), context(client, caches))
            .await
            .unwrap();
        let lines: Vec<String> = log.lock().unwrap().iter().map(Seen::line).collect();
        assert_eq!(
            lines,
            [
                format!("GET {secret}"),
                format!("GET {ca}"),
                format!("GET {secret}")
            ]
        );
    }

    fn key(id: &str, created: &str, retired: Option<&str>) -> AuditKey {
        AuditKey {
            key_id: id.into(),
            public_key: format!("PEM {id}"),
            created_at: created.into(),
            retired_at: retired.map(Into::into),
        }
    }

    fn ids(keys: &[PublishedAuditKey]) -> Vec<(&str, &str, Option<&str>)> {
        keys.iter()
            .map(|k| {
                (
                    k.gateway.as_str(),
                    k.key_id.as_str(),
                    k.retired_at.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn a_key_ring_publishes_its_gateways_keys_and_keeps_those_it_no_longer_sees() {
        let t0 = "2026-01-01T00:00:00Z";
        let (t1, t2) = ("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
        let a = [key("a2", t1, None), key("a1", t0, Some(t1))];
        let b = [key("b1", t0, None)];
        let first = publish_audit_keys(
            &[],
            [("west".to_owned(), &b[..]), ("east".to_owned(), &a[..])].into_iter(),
            t1,
        );
        assert_eq!(
            ids(&first),
            [
                ("east", "a2", None),
                ("west", "b1", None),
                ("east", "a1", Some(t1))
            ]
        );
        assert_eq!(first[0].public_key, "PEM a2");
        assert_eq!(first[0].created_at, t1);
        // The same world again: the same list (so no status write).
        let again = publish_audit_keys(
            &first,
            [("east".to_owned(), &a[..]), ("west".to_owned(), &b[..])].into_iter(),
            t2,
        );
        assert_eq!(again, first);
        // west is gone (or names another ring): its key stays, retired now; east's history,
        // which its own status dropped, stays as it was.
        let gone = publish_audit_keys(&first, [("east".to_owned(), &a[..1])].into_iter(), t2);
        assert_eq!(
            ids(&gone),
            [
                ("east", "a2", None),
                ("west", "b1", Some(t2)),
                ("east", "a1", Some(t1))
            ]
        );
    }

    #[test]
    fn a_gateway_change_reconciles_its_key_ring_only_when_the_ring_lists_other_keys() {
        let mut kr: KeyRing = serde_yaml_ng::from_str(
            "metadata: {name: ring, namespace: ns}\nspec: {issuer: {type: selfSigned}, auditSigningKey: true}",
        )
        .unwrap();
        let mut gw: TransferGateway = serde_yaml_ng::from_str(
            "metadata: {name: gw, namespace: ns}\nspec: {listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [z]}], audit: {signingKeyRing: ring}}",
        )
        .unwrap();
        let t = "2026-01-01T00:00:00Z";
        // Signing, and not yet listed.
        gw.status = Some(portcullis_api::TransferGatewayStatus {
            audit_keys: vec![key("k1", t, None), key("k0", t, Some(t))],
            ..Default::default()
        });
        assert!(publishes_stale_keys_of(&kr, &gw, true));
        // Listed as the gateway lists them: nothing to do.
        kr.status = Some(KeyRingStatus {
            audit_keys: publish_audit_keys(
                &[],
                [("gw".to_owned(), &gw.status.as_ref().unwrap().audit_keys[..])].into_iter(),
                t,
            ),
            ..Default::default()
        });
        assert!(!publishes_stale_keys_of(&kr, &gw, true));
        // A new key.
        gw.status.as_mut().unwrap().audit_keys[0] = key("k2", t, None);
        assert!(publishes_stale_keys_of(&kr, &gw, true));
        gw.status.as_mut().unwrap().audit_keys[0] = key("k1", t, None);
        // Deleted, or naming another ring: k1 is listed as current and must be retired.
        assert!(publishes_stale_keys_of(&kr, &gw, false));
        gw.spec.audit.signing_key_ring = Some("other".into());
        assert!(publishes_stale_keys_of(&kr, &gw, true));
        // Once retired, nothing more.
        let published = kr.status.as_ref().unwrap().audit_keys.clone();
        kr.status.as_mut().unwrap().audit_keys = publish_audit_keys(&published, [].into_iter(), t);
        assert!(!publishes_stale_keys_of(&kr, &gw, true));
        // Another gateway's change is none of this ring's business.
        let mut other = gw.clone();
        other.metadata.name = Some("other-gw".into());
        assert!(!publishes_stale_keys_of(&kr, &other, false));
    }

    #[test]
    fn a_key_ring_keeps_at_most_32_retired_keys_newest_first() {
        let mut published = Vec::new();
        for i in 0..40 {
            let at = format!("2026-01-01T00:{i:02}:00Z");
            let current = [key(&format!("k{i}"), &at, None)];
            published = publish_audit_keys(
                &published,
                [("gw".to_owned(), &current[..])].into_iter(),
                &at,
            );
        }
        assert_eq!(published.len(), 1 + RETIRED_AUDIT_KEYS);
        assert_eq!(ids(&published)[0], ("gw", "k39", None));
        assert_eq!(
            ids(&published)[1],
            ("gw", "k38", Some("2026-01-01T00:39:00Z"))
        );
        assert_eq!(ids(&published)[32].1, "k7");
    }
}
