//! Status for the policy kinds (endpoints, zones, users, roles): each says whether its own
//! references resolve, so a broken one is visible on the object itself, not only on gateways.

use std::{sync::Arc, time::Instant};

use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture, future::ready};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action},
};
use portcullis_api::{
    CommonStatus, NetworkZone, READY, TransferEndpoint, TransferRole, TransferUser,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{
    Context, Error,
    cache::{Caches, Shared},
    dereference::{self, World},
    status, validate,
};

/// A policy kind: its name in metrics and how to find its problems.
pub trait PolicyKind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const CONTROLLER: &'static str;
    fn problems(&self, world: &World) -> Vec<validate::Problem>;
    fn common_status(&self) -> Option<&CommonStatus>;
    /// The Secrets [`PolicyKind::problems`] reads.
    fn secret_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// What a user of a valid object should still know, added to the `Ready` message.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

impl PolicyKind for TransferEndpoint {
    const CONTROLLER: &'static str = "transferendpoint";
    fn problems(&self, world: &World) -> Vec<validate::Problem> {
        validate::endpoint_problems(&self.name_any(), self, world)
    }
    fn common_status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn secret_names(&self) -> Vec<String> {
        vec![dereference::endpoint_secret_name(self)]
    }
}

impl PolicyKind for NetworkZone {
    const CONTROLLER: &'static str = "networkzone";
    fn problems(&self, _world: &World) -> Vec<validate::Problem> {
        Vec::new() // The apiserver checks the CIDRs; a zone has no references.
    }
    fn common_status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
}

impl PolicyKind for TransferUser {
    const CONTROLLER: &'static str = "transferuser";
    fn problems(&self, world: &World) -> Vec<validate::Problem> {
        validate::user_problems(&self.name_any(), self, world)
    }
    fn common_status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
    fn secret_names(&self) -> Vec<String> {
        dereference::user_secret_names(self).collect()
    }
    fn notes(&self) -> Vec<String> {
        validate::ftps_refusal(&self.spec).into_iter().collect()
    }
}

impl PolicyKind for TransferRole {
    const CONTROLLER: &'static str = "transferrole";
    fn problems(&self, world: &World) -> Vec<validate::Problem> {
        validate::role_problems(&self.name_any(), self, world)
    }
    fn common_status(&self) -> Option<&CommonStatus> {
        self.status.as_ref()
    }
}

/// A policy kind's status controller, over the shared caches: triggered by its own objects and
/// by whatever they may reference in their namespace.
pub fn controller<K: PolicyKind>(
    shared: &Shared<K>,
    caches: &Caches,
    ctx: Arc<Context>,
    stopped: impl Fn() -> super::Stop,
) -> BoxFuture<'static, ()> {
    let s = shared.store();
    Controller::for_stream(shared.subscribe(), s.clone())
        .watches_stream(caches.endpoints.subscribe(), super::in_namespace(s.clone()))
        .watches_stream(caches.roles.subscribe(), super::in_namespace(s.clone()))
        .watches_stream(caches.zones.subscribe(), super::in_namespace(s.clone()))
        .watches_stream(caches.key_rings.subscribe(), super::in_namespace(s.clone()))
        .watches_stream(
            caches
                .secrets
                .subscribe()
                .try_filter(|s| ready(super::foreign(s))),
            super::in_namespace(s.clone()),
        )
        .graceful_shutdown_on(stopped())
        .run(reconcile::<K>, super::error_policy, ctx)
        .for_each(|_| ready(()))
        .boxed()
}

async fn reconcile<K: PolicyKind>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_default();
    let result: Result<Action, Error> = async {
        let world = ctx
            .caches
            .with_secrets(
                &ctx.client,
                &ns,
                ctx.caches.snapshot(&ns),
                obj.secret_names().into_iter().collect(),
            )
            .await
            .map_err(Error::Kube)?;
        let problems = obj.problems(&world);
        let (ok, reason, message) = match problems.first() {
            None => (
                true,
                "Valid",
                std::iter::once("every reference resolves".to_owned())
                    .chain(obj.notes())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Some(p) => (
                false,
                p.reason.as_str(),
                problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        for p in &problems {
            ctx.count_error(K::CONTROLLER, p.reason.as_str());
        }
        let old = obj.common_status().cloned().unwrap_or_default();
        let generation = obj.meta().generation;
        let new = CommonStatus {
            conditions: status::merge(
                &old.conditions,
                vec![status::Want {
                    type_: READY,
                    status: ok,
                    reason,
                    message: message.clone(),
                }],
                generation,
            ),
            observed_generation: generation,
        };
        if new != old {
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
            api.patch_status(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": new })),
            )
            .await
            .map_err(Error::Kube)?;
            ctx.count_write(&format!("{}/status", K::kind(&())));
            if status::ready_changed(&old.conditions, &new.conditions) && !ok {
                ctx.event(obj.as_ref(), true, reason, message).await;
            }
        }
        Ok(Action::requeue(std::time::Duration::from_secs(600)))
    }
    .await;
    ctx.observe(K::CONTROLLER, started);
    if let Err(e) = &result {
        ctx.count_error(K::CONTROLLER, e.category());
    }
    result
}
