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
    DeletionPolicy, IssuerType, KeyRing, KeyRingSpec, KeyRingStatus, READY, RetiredAuditKey,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::controller::{Context, Error, apply::apply, build::MANAGED_BY, status};

pub mod ca;

/// Keys of the key ring Secret besides `tls.crt`, `tls.key` and `ca.crt`.
pub mod keys {
    pub const SSH_ED25519: &str = "ssh_host_ed25519_key";
    pub const SSH_ECDSA: &str = "ssh_host_ecdsa_key";
    pub const CLIENT_CAS: &str = "client-cas.crt";
    pub const BACKEND_CAS: &str = "backend-cas.crt";
    pub const AUDIT_SIGNING: &str = "audit-signing.pem";
}

/// The annotation recording what the leaf was issued for, so a spec change re-issues.
const ISSUED_FOR: &str = "portcullis.dev/issued-for";

pub fn secret_name(kr: &KeyRing) -> String {
    format!("{}-keyring", kr.name_any())
}

fn ca_secret_name(kr: &KeyRing) -> String {
    format!("{}-ca", kr.name_any())
}

/// Whether key ring `kr` reads Secret `name` (its issuer or a trusted CA).
/// The KeyRing a Secret the operator made for one belongs to (by its instance label), owner
/// reference or not.
pub fn keyring_of(meta: &ObjectMeta) -> Option<String> {
    let labels = meta.labels.as_ref()?;
    (labels.get("app.kubernetes.io/name")? == "portcullis-keyring")
        .then(|| labels.get("app.kubernetes.io/instance").cloned())
        .flatten()
}

pub fn uses_secret(kr: &KeyRing, name: &str) -> bool {
    kr.spec.issuer.secret_name.as_deref() == Some(name)
        || kr
            .spec
            .client_cas
            .iter()
            .chain(&kr.spec.backend_cas)
            .any(|r| r.name == name)
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
        ctx.count_error("keyring", e.category());
    }
    result
}

async fn reconcile_inner(kr: &KeyRing, ctx: &Context) -> Result<Action, Error> {
    let ns = kr.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let current = secrets
        .get_opt(&secret_name(kr))
        .await
        .map_err(Error::Kube)?;
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
            let audit_key = data
                .get(keys::AUDIT_SIGNING)
                .and_then(|v| ca::audit_key_facts(&String::from_utf8_lossy(&v.0)));
            new.audit_public_key = audit_key.as_ref().map(|(public, _)| public.clone());
            new.audit_key_id = audit_key.map(|(_, id)| id);
            retire_audit_key(&old, &mut new, now.unix_timestamp());
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
            ctx.count_error("keyring", nr.reason);
            requeue = Duration::from_secs(30);
            (false, nr.reason, nr.message)
        }
    };
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
            &Patch::Merge(json!({ "status": new })),
        )
        .await
        .map_err(Error::Kube)?;
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
    let src = secrets.get_opt(name).await.map_err(Error::Kube)?;
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
    // The audit signing key: generated once, then kept.
    if spec.audit_signing_key {
        let pem =
            match text(current, keys::AUDIT_SIGNING).filter(|k| ca::audit_key_facts(k).is_some()) {
                Some(k) => k,
                None => ca::new_audit_signing_key()?,
            };
        put(keys::AUDIT_SIGNING, pem);
    }
    // Trusted CAs.
    for (list, key) in [
        (&spec.client_cas, keys::CLIENT_CAS),
        (&spec.backend_cas, keys::BACKEND_CAS),
    ] {
        let mut bundle = String::new();
        for r in list {
            let s = secrets.get_opt(&r.name).await.map_err(Error::Kube)?;
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
            let existing = secrets.get_opt(&name).await.map_err(Error::Kube)?;
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

/// Keeps the public half of an audit signing key that `new` no longer holds, newest first.
fn retire_audit_key(old: &KeyRingStatus, new: &mut KeyRingStatus, now: i64) {
    let (Some(id), Some(public)) = (&old.audit_key_id, &old.audit_public_key) else {
        return;
    };
    if new.audit_key_id.as_ref() == Some(id)
        || new.previous_audit_keys.iter().any(|k| &k.key_id == id)
    {
        return;
    }
    new.previous_audit_keys.insert(
        0,
        RetiredAuditKey {
            key_id: id.clone(),
            public_key: public.clone(),
            retired_at: rfc3339(now),
        },
    );
    new.previous_audit_keys.truncate(10);
}

pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(id: &str) -> KeyRingStatus {
        KeyRingStatus {
            audit_key_id: Some(id.into()),
            audit_public_key: Some(format!("PEM {id}")),
            ..Default::default()
        }
    }

    #[test]
    fn a_replaced_audit_key_is_kept_once_newest_first_and_ten_at_most() {
        let mut s = with_key("k0");
        for i in 1..=12 {
            let mut new = KeyRingStatus {
                audit_key_id: Some(format!("k{i}")),
                audit_public_key: Some(format!("PEM k{i}")),
                ..s.clone()
            };
            retire_audit_key(&s, &mut new, 0);
            // The same reconcile again retires nothing more.
            let again = new.clone();
            retire_audit_key(&again, &mut new, 0);
            s = new;
        }
        let ids: Vec<&str> = s
            .previous_audit_keys
            .iter()
            .map(|k| k.key_id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["k11", "k10", "k9", "k8", "k7", "k6", "k5", "k4", "k3", "k2"]
        );
        assert_eq!(s.previous_audit_keys[0].public_key, "PEM k11");
        assert_eq!(s.previous_audit_keys[0].retired_at, "1970-01-01T00:00:00Z");
        // An unchanged key, or none before, retires nothing.
        let mut same = with_key("a");
        retire_audit_key(&with_key("a"), &mut same, 0);
        let mut first = with_key("a");
        retire_audit_key(&KeyRingStatus::default(), &mut first, 0);
        assert!(same.previous_audit_keys.is_empty() && first.previous_audit_keys.is_empty());
    }
}
