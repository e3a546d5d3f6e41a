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
