//! The TransferGateway reconcile, in the named steps: dereference → validate → build → apply →
//! status.

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::controller::Action,
};
use portcullis_api::{READY, TransferGateway, TransferGatewayStatus};
use serde_json::json;

use super::{build, rollout::rollout_all, served, validate};
use crate::shared::{Context, Error, Step, apply::apply, status};

pub async fn reconcile(gw: Arc<TransferGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&gw, &ctx).await;
    ctx.observe("transfergateway", started);
    if let Err(e) = &result {
        ctx.count_error("transfergateway", e.step, e.category());
    }
    result
}

async fn reconcile_inner(gw: &TransferGateway, ctx: &Context) -> Result<Action, Error> {
    let ns = gw.namespace().unwrap_or_default();
    if gw.meta().deletion_timestamp.is_some() {
        // Owner references hand the owned objects to the garbage collector.
        return Ok(Action::await_change());
    }
    // 1. dereference
    let world = ctx.caches.snapshot(&ns);
    let names = world.secret_names(gw);
    let world = ctx
        .caches
        .with_secrets(&ctx.client, &ns, world, names)
        .await
        .map_err(Error::kube(Step::Dereference))?;
    // 2. validate (and compile); an image the installer did not allow is refused like any
    // other problem, so nothing is applied and the last good Deployment stays.
    let compiled = match (
        validate::image_problem(&gw.spec.image, &ctx.allowed_images),
        validate::compile(gw, &world),
    ) {
        (None, compiled) => compiled,
        (Some(p), Ok(_)) => Err(vec![p]),
        (Some(p), Err(mut problems)) => {
            problems.insert(0, p);
            Err(problems)
        }
    };
    // 3. build and 4. apply — only a valid bundle replaces the running one: a broken
    // reference leaves the last good config in force.
    let (config_hash, not_after) = match &compiled {
        Ok(bundle) => {
            let o = build::objects(gw, bundle, &ctx.admin_namespaces);
            // Independent objects: applied concurrently (a Pod that races ahead of its Secret
            // or ServiceAccount is retried by the kubelet and the ReplicaSet controller).
            futures::try_join!(
                apply(ctx, &o.service_account),
                apply(ctx, &o.secret),
                futures::future::try_join_all(o.deployments.iter().map(|d| apply(ctx, d))),
                apply(ctx, &o.service),
                apply(ctx, &o.peers_service),
                apply(ctx, &o.network_policy),
                apply(ctx, &o.pdb),
            )?;
            (
                Some(bundle.hash.clone()),
                bundle.certificate_not_after.clone(),
            )
        }
        Err(problems) => {
            for p in problems {
                ctx.count_error("transfergateway", Step::Validate, p.reason.as_str());
            }
            let old = gw.status.as_ref();
            (
                old.and_then(|s| s.config_hash.clone()),
                old.and_then(|s| s.certificate_not_after.clone()),
            )
        }
    };
    // 5. status (kstatus: Ready, Reconciling, Stalled; Available as before)
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let owned: Vec<Deployment> = deployments
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={}",
            gw.name_any(),
            build::MANAGED_BY
        )))
        .await
        .map_err(Error::kube(Step::Rollout))?
        .items
        .into_iter()
        .filter(|d| {
            d.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == gw.uid().as_ref())
        })
        .collect();
    let wanted: Vec<(String, i32)> = build::shape(gw)
        .into_iter()
        .map(|s| (s.name, s.replicas))
        .collect();
    let pods = rollout_all(&wanted, &owned);
    let ready_replicas = pods.ready;
    // Deployments of an earlier shape (one per replica, or one for all; more replicas than
    // now) go once the wanted ones are rolled out, so that their pods serve until then.
    if compiled.is_ok() && pods.done {
        for d in owned
            .iter()
            .filter(|d| !wanted.iter().any(|(n, _)| *n == d.name_any()))
        {
            deployments
                .delete(&d.name_any(), &DeleteParams::foreground())
                .await
                .map_err(Error::kube(Step::Rollout))?;
            ctx.count_write("Deployment");
        }
    }
    // Once the rollout is done, the pods are asked which config they serve.
    let served = match &compiled {
        Ok(bundle) if pods.done => Some(served::judge(
            &bundle.hash,
            &served::ask(ctx, gw, &ns).await?,
        )),
        _ => None,
    };
    // Ready: the config compiled, every object is applied, and the pods run and serve it.
    let (ok, stalled, reason, message) = match (&compiled, &served) {
        (Ok(_), Some(s)) if s.done => (
            true,
            false,
            "Reconciled",
            format!(
                "the config compiled, every object is applied, {}, and {}",
                pods.message, s.message
            ),
        ),
        (Ok(_), Some(s)) => (false, s.stalled, s.reason, s.message.clone()),
        (Ok(_), None) => (false, pods.stalled, pods.reason, pods.message.clone()),
        (Err(problems), _) => (
            false,
            true,
            problems[0].reason.as_str(),
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let reconciling = !ok && !stalled;
    let old = gw.status.clone().unwrap_or_default();
    let wants = vec![
        status::Want {
            type_: READY,
            status: ok,
            reason,
            message: message.clone(),
        },
        status::Want::flag("Reconciling", reconciling, reason, &message, "Settled"),
        status::Want::flag("Stalled", stalled, reason, &message, "Progressing"),
        status::Want {
            type_: "Available",
            status: ready_replicas >= 1,
            reason: if ready_replicas >= 1 {
                "PodsReady"
            } else {
                "NoPodsReady"
            },
            message: format!("{ready_replicas} of {} pods ready", gw.spec.replicas),
        },
    ];
    let new = TransferGatewayStatus {
        conditions: status::merge(&old.conditions, wants, gw.meta().generation),
        observed_generation: gw.meta().generation,
        replicas: Some(format!("{ready_replicas}/{}", gw.spec.replicas)),
        listeners: Some(
            gw.spec
                .listeners
                .iter()
                .map(|l| format!("{}:{}", l.name, l.port))
                .collect::<Vec<_>>()
                .join(","),
        ),
        certificate_not_after: not_after,
        served_config_hash: served.as_ref().filter(|s| s.done).and(config_hash.clone()),
        config_hash,
        // A refused bundle leaves the key the pods sign with as it was.
        audit_keys: match &compiled {
            Ok(bundle) => status::audit_keys(
                &old.audit_keys,
                bundle.audit_key.as_ref(),
                &crate::shared::keyring_secret::rfc3339(
                    time::OffsetDateTime::now_utc().unix_timestamp(),
                ),
            ),
            Err(_) => old.audit_keys.clone(),
        },
    };
    if new != old {
        let api: Api<TransferGateway> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &gw.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status::merge_patch(&old, &new)? })),
        )
        .await
        .map_err(Error::kube(Step::Status))?;
        ctx.count_write("TransferGateway/status");
        if status::ready_changed(&old.conditions, &new.conditions) {
            // A warning only when a person must act; pods starting is news, not a problem.
            ctx.event(gw, stalled, reason, message).await;
        }
    }
    // Nothing in the cluster changes when a pod picks up its Secret volume or reloads: look
    // again soon while the pods do not serve the config yet.
    let waiting = served.as_ref().is_some_and(|s| !s.done && !s.stalled);
    Ok(Action::requeue(std::time::Duration::from_secs(
        if waiting { 5 } else { 600 },
    )))
}

#[cfg(test)]
mod tests {
    //! The gateway driver against a mock API server: what it fetches, applies and reports.

    use std::collections::BTreeMap;

    use k8s_openapi::{ByteString, api::core::v1::Secret};
    use kube::core::PartialObjectMeta;
    use portcullis_api::{KeyRing, NetworkZone};
    use serde_json::{Value, json};

    use super::*;
    use crate::shared::{
        ca,
        cache::{Caches, Listed},
        keyring_secret::keys,
        testing::{Seen, answering_status, context, mock_client},
    };

    const NS: &str = "/api/v1/namespaces/team";
    const STATUS: &str =
        "/apis/portcullis.dev/v1alpha1/namespaces/team/transfergateways/dmz/status";

    fn object<K: serde::de::DeserializeOwned>(kind: &str, name: &str, spec: Value) -> K {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "team", "generation": 1, "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    fn dmz(host_key_ring: &str) -> TransferGateway {
        object(
            "TransferGateway",
            "dmz",
            json!({"hostKeyRing": host_key_ring, "replicas": 1,
                   "listeners": [{"name": "sftp", "protocol": "sftp", "port": 2222, "zones": ["z"]}]}),
        )
    }

    /// The key ring's Secret as the key ring driver leaves it: SSH host keys.
    fn key_ring_secret() -> Secret {
        let data = [keys::SSH_ED25519, keys::SSH_ECDSA]
            .into_iter()
            .map(|k| {
                let key = ca::new_host_key(k == keys::SSH_ECDSA).unwrap();
                (k.to_owned(), ByteString(key.into_bytes()))
            })
            .collect::<BTreeMap<_, _>>();
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("edge-keyring".into()),
                namespace: Some("team".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    /// A key ring as its driver leaves it once issued.
    fn issued(mut kr: KeyRing) -> KeyRing {
        kr.status = serde_json::from_value(json!({
            "secretName": "edge-keyring",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued", "message": "",
                            "lastTransitionTime": "2026-12-01T00:00:00Z"}],
        }))
        .unwrap();
        kr
    }

    /// Caches as the watches fill them: the gateway, its zone and key ring, and the metadata
    /// of `secrets`.
    async fn caches(gw: &TransferGateway, secrets: &[&Secret]) -> Arc<Caches> {
        let metas = secrets
            .iter()
            .map(|s| PartialObjectMeta::<Secret> {
                metadata: s.metadata.clone(),
                ..Default::default()
            })
            .collect();
        Caches::holding(Listed {
            gateways: vec![gw.clone()],
            zones: vec![object::<NetworkZone>(
                "NetworkZone",
                "z",
                json!({"cidrs": ["198.18.0.0/24"]}),
            )],
            key_rings: vec![issued(object::<KeyRing>(
                "KeyRing",
                "edge",
                json!({"issuer": {"type": "selfSigned"}, "sshHostKeys": true}),
            ))],
            secrets: metas,
            ..Default::default()
        })
        .await
    }

    /// Answers: the key ring Secret, `live` objects by path, an empty Deployment list, and a
    /// status patch with the gateway it patched.
    fn api(
        gw: &TransferGateway,
        secret: &Secret,
        live: BTreeMap<String, Value>,
    ) -> impl Fn(&Seen) -> (u16, Value) + use<> {
        let otherwise = answering_status(gw);
        let secret = serde_json::to_value(secret).unwrap();
        move |s| match (s.method.as_str(), s.path.as_str()) {
            ("GET", p) if p == format!("{NS}/secrets/edge-keyring") => (200, secret.clone()),
            ("GET", "/apis/apps/v1/namespaces/team/deployments") => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {}, "items": []}),
            ),
            ("GET", p) if live.contains_key(p) => (200, live[p].clone()),
            _ => otherwise(s),
        }
    }

    #[tokio::test]
    async fn a_valid_gateway_applies_its_objects_once_and_a_second_pass_writes_nothing() {
        let gw = dmz("edge");
        let secret = key_ring_secret();
        let (client, log) = mock_client(api(&gw, &secret, BTreeMap::new()));
        reconcile(
            Arc::new(gw.clone()),
            context(client, caches(&gw, &[&secret]).await),
        )
        .await
        .unwrap();
        let seen = log.lock().unwrap().clone();
        // The key ring Secret is the one Secret read, before anything else.
        assert_eq!(seen[0].line(), format!("GET {NS}/secrets/edge-keyring"));
        // Each object: looked at, then server-side applied by the operator (concurrently, so
        // in no fixed order).
        let mut applied: Vec<&str> = seen
            .iter()
            .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
            .map(|s| {
                assert!(
                    s.query.contains("fieldManager=portcullis-operator"),
                    "{s:?}"
                );
                assert_eq!(
                    s.body["metadata"]["ownerReferences"][0]["uid"], "uid-dmz",
                    "{s:?}"
                );
                s.path.as_str()
            })
            .collect();
        applied.sort();
        assert_eq!(
            applied,
            [
                "/api/v1/namespaces/team/secrets/dmz-config",
                "/api/v1/namespaces/team/serviceaccounts/dmz-gateway",
                "/api/v1/namespaces/team/services/dmz",
                "/api/v1/namespaces/team/services/dmz-peers",
                "/apis/apps/v1/namespaces/team/deployments/dmz",
                "/apis/networking.k8s.io/v1/namespaces/team/networkpolicies/dmz",
                "/apis/policy/v1/namespaces/team/poddisruptionbudgets/dmz",
            ]
        );
        for p in &applied {
            let get = seen
                .iter()
                .position(|s| s.line() == format!("GET {p}"))
                .unwrap();
            let patch = seen
                .iter()
                .position(|s| s.line() == format!("PATCH {p}"))
                .unwrap();
            assert!(get < patch, "{p}: applied without a look first");
        }
        // The config Secret holds the compiled bundle; the status names its hash.
        let config = seen
            .iter()
            .find(|s| s.line() == format!("PATCH {NS}/secrets/dmz-config"))
            .unwrap();
        assert!(
            config.body["data"]["config.yaml"].is_string(),
            "{:?}",
            config.body["data"]
        );
        let status = seen.iter().find(|s| s.path == STATUS).unwrap();
        let hash = status.body["status"]["configHash"].as_str().unwrap();
        assert!(!hash.is_empty());
        let ready = &status.body["status"]["conditions"][0];
        assert_eq!(
            (&ready["type"], &ready["status"]),
            (&json!("Ready"), &json!("False"))
        );
        assert_eq!(ready["reason"], "RollingOut", "{ready}");
        assert_eq!(ready["message"], "the Deployment does not exist yet");
        // The Deployments it owns were listed (none yet), once.
        assert_eq!(
            seen.iter()
                .filter(|s| s.path == "/apis/apps/v1/namespaces/team/deployments")
                .count(),
            1
        );

        // Again, with every object live as applied, the config Secret in the watch (its
        // defender key is then kept, not made anew) and the status as written: every object
        // is looked at, and nothing is written.
        let mut config_secret: Secret = serde_json::from_value(config.body.clone()).unwrap();
        config_secret.metadata.resource_version = Some("8".into());
        let live: BTreeMap<String, Value> = seen
            .iter()
            .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
            .map(|s| (s.path.clone(), s.body.clone()))
            .collect();
        let mut current = gw.clone();
        current.status = serde_json::from_value(status.body["status"].clone()).unwrap();
        let (client, log) = mock_client(api(&current, &secret, live));
        let caches = caches(&current, &[&secret, &config_secret]).await;
        reconcile(Arc::new(current), context(client, caches))
            .await
            .unwrap();
        let lines: Vec<String> = log.lock().unwrap().iter().map(Seen::line).collect();
        assert!(lines.iter().all(|l| l.starts_with("GET ")), "{lines:?}");
        assert!(
            lines.contains(&format!("GET {NS}/secrets/dmz-config")),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_gateway_with_a_missing_key_ring_applies_nothing_and_says_why() {
        let gw = dmz("gone");
        let secret = key_ring_secret();
        let (client, log) = mock_client(api(&gw, &secret, BTreeMap::new()));
        reconcile(
            Arc::new(gw.clone()),
            context(client, caches(&gw, &[&secret]).await),
        )
        .await
        .unwrap();
        let lines: Vec<String> = log.lock().unwrap().iter().map(Seen::line).collect();
        // The last good config stays: no object is touched, only the status says why. (The
        // namespace's key ring Secrets are read whatever the gateway names: its policy is the
        // namespace's.)
        assert_eq!(
            lines,
            [
                format!("GET {NS}/secrets/edge-keyring"),
                "GET /apis/apps/v1/namespaces/team/deployments".to_owned(),
                format!("PATCH {STATUS}"),
                "POST /apis/events.k8s.io/v1/namespaces/team/events".into(),
            ]
        );
        let seen = log.lock().unwrap().clone();
        let conds = seen[2].body["status"]["conditions"]
            .as_array()
            .unwrap()
            .clone();
        let by = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
        assert_eq!(by("Ready")["status"], "False");
        assert_eq!(by("Stalled")["status"], "True");
        assert!(
            by("Ready")["message"].as_str().unwrap().contains("gone"),
            "{conds:?}"
        );
        assert_eq!(seen[3].body["type"], "Warning");
    }
}
