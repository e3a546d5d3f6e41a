//! Status for the policy kinds (endpoints, zones, users, roles): each says whether its own
//! references resolve, so a broken one is visible on the object itself, not only on gateways.

use std::{sync::Arc, time::Instant};

use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture, future::ready};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use portcullis_api::{
    CommonStatus, NetworkZone, READY, TransferEndpoint, TransferRole, TransferUser,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::validate;
use crate::shared::{
    Context, Error, Step,
    cache::{Caches, Shared},
    dereference::{self, World},
    status,
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
    /// Whether [`PolicyKind::problems`] reads the `dep` named `name` (in this object's
    /// namespace). Of an endpoint, role or zone only its existence is read, so only its
    /// creation or deletion reconciles this object; a Secret's content is read, so any change
    /// to it does. A change to anything else reconciles nothing.
    fn depends_on(&self, _dep: Dep, _name: &str) -> bool {
        false
    }
}

/// What a policy object's problems may read besides itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dep {
    Endpoint,
    Role,
    Zone,
    Secret,
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
    fn depends_on(&self, dep: Dep, name: &str) -> bool {
        dep == Dep::Secret && dereference::endpoint_secret_name(self) == name
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
    fn depends_on(&self, dep: Dep, name: &str) -> bool {
        match dep {
            Dep::Role => self.spec.roles.iter().any(|r| r == name),
            Dep::Zone => self.spec.zones.iter().any(|z| z == name),
            Dep::Secret => dereference::user_secret_names(self).any(|s| s == name),
            Dep::Endpoint => false,
        }
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
    fn depends_on(&self, dep: Dep, name: &str) -> bool {
        dep == Dep::Endpoint && self.spec.mounts.iter().any(|m| m.endpoint == name)
    }
}

/// Passes an object to `inner` only when it appears or disappears (`own`: its kind's store,
/// which has applied the event already), for the kinds whose dependents read only whether it
/// exists: a role's new mounts, or its status, change no user's problems.
fn on_existence_change<O, K>(
    own: Store<O>,
    inner: impl Fn(O) -> Vec<ObjectRef<K>> + Send + Sync + 'static,
) -> impl Fn(O) -> Vec<ObjectRef<K>> + Send + Sync + 'static
where
    O: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    K: Resource<DynamicType = ()> + 'static,
{
    let known = std::sync::Mutex::new(std::collections::HashSet::new());
    move |obj: O| {
        let key = ObjectRef::from_obj(&obj);
        let exists = own.get(&key).is_some();
        let mut known = known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if exists {
            known.insert(key)
        } else {
            known.remove(&key)
        };
        drop(known);
        if changed { inner(obj) } else { Vec::new() }
    }
}

/// Maps a changed `dep` object to the objects of `store` in its namespace that read it.
fn dependents<K: PolicyKind, O: ResourceExt>(
    store: Store<K>,
    dep: Dep,
) -> impl Fn(O) -> Vec<ObjectRef<K>> + Send + Sync + 'static {
    move |obj: O| {
        let (ns, name) = (obj.namespace(), obj.name_any());
        store
            .state()
            .iter()
            .filter(|k| k.namespace() == ns && k.depends_on(dep, &name))
            .map(|k| ObjectRef::from_obj(k.as_ref()))
            .collect()
    }
}

/// A policy kind's status controller, over the shared caches: triggered by its own objects and
/// by the objects they reference ([`PolicyKind::depends_on`]), not by every change in their
/// namespace.
pub fn controller<K: PolicyKind>(
    shared: &Shared<K>,
    caches: &Caches,
    ctx: Arc<Context>,
    stopped: impl Fn() -> crate::shared::Stop,
) -> BoxFuture<'static, ()> {
    let s = shared.store();
    Controller::for_stream(shared.subscribe(), s.clone())
        .watches_stream(
            caches.endpoints.subscribe(),
            on_existence_change(
                caches.endpoints.store(),
                dependents(s.clone(), Dep::Endpoint),
            ),
        )
        .watches_stream(
            caches.roles.subscribe(),
            on_existence_change(caches.roles.store(), dependents(s.clone(), Dep::Role)),
        )
        .watches_stream(
            caches.zones.subscribe(),
            on_existence_change(caches.zones.store(), dependents(s.clone(), Dep::Zone)),
        )
        .watches_stream(
            caches
                .secrets
                .subscribe()
                .try_filter(|s| ready(crate::shared::foreign(s))),
            dependents(s.clone(), Dep::Secret),
        )
        .graceful_shutdown_on(stopped())
        .run(reconcile::<K>, crate::shared::error_policy, ctx)
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
            .map_err(Error::kube(Step::Dereference))?;
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
            ctx.count_error(K::CONTROLLER, Step::Validate, p.reason.as_str());
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
            .map_err(Error::kube(Step::Status))?;
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
        ctx.count_error(K::CONTROLLER, e.step, e.category());
    }
    result
}

#[cfg(test)]
mod tests {
    //! The policy driver against a mock API server: what it asks, and what it writes.

    use serde_json::{Value, json};

    use super::*;
    use crate::shared::{
        cache::Listed,
        testing::{answering_status, context, mock_client},
    };

    fn user(spec: Value) -> TransferUser {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "TransferUser",
            "metadata": {"name": "alice", "namespace": "team", "generation": 3, "uid": "u1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_user_whose_secret_is_missing_gets_a_false_ready_and_an_event_and_nothing_else() {
        let alice = user(json!({"passwordHash": {"name": "alice-pw", "key": "hash"}, "roles": []}));
        let caches = Caches::holding(Listed {
            users: vec![alice.clone()],
            ..Default::default()
        })
        .await;
        let (client, log) = mock_client(answering_status(&alice));
        let ctx = context(client, caches);
        let action = reconcile(Arc::new(alice), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(600)));
        let seen = log.lock().unwrap().clone();
        let lines: Vec<String> = seen.iter().map(|s| s.line()).collect();
        // No Secret is fetched (the store says it does not exist), no list, no get of the user:
        // one status patch and the Event that says why.
        assert_eq!(
            lines,
            [
                "PATCH /apis/portcullis.dev/v1alpha1/namespaces/team/transferusers/alice/status",
                "POST /apis/events.k8s.io/v1/namespaces/team/events",
            ]
        );
        let cond = &seen[0].body["status"]["conditions"][0];
        assert_eq!(cond["type"], "Ready");
        assert_eq!(cond["status"], "False");
        assert_eq!(cond["reason"], "SecretNotFound");
        assert_eq!(cond["observedGeneration"], 3);
        assert!(
            cond["message"].as_str().unwrap().contains("alice-pw"),
            "{cond}"
        );
        assert_eq!(seen[0].body["status"]["observedGeneration"], 3);
        assert_eq!(seen[1].body["reason"], "SecretNotFound");
        assert_eq!(seen[1].body["type"], "Warning");
        let counted = ctx
            .metrics
            .errors
            .get_or_create(&vec![
                ("controller", TransferUser::CONTROLLER.to_owned()),
                ("step", "validate".to_owned()),
                ("category", "SecretNotFound".to_owned()),
            ])
            .get();
        assert_eq!(counted, 1);
    }

    #[tokio::test]
    async fn a_status_already_true_is_not_written_again() {
        let mut alice = user(json!({"publicKeys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3Cz8X6Yq3dCF2b9pZ1a1fKq2Hh2jQb5o1q8VbJZt3s a"
        ]}));
        let caches = Caches::holding(Listed {
            users: vec![alice.clone()],
            ..Default::default()
        })
        .await;
        let (client, log) = mock_client(answering_status(&alice));
        reconcile(Arc::new(alice.clone()), context(client, caches.clone()))
            .await
            .unwrap();
        let first = log.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].body["status"]["conditions"][0]["status"], "True");
        // The same object with the status it now has: no request at all.
        alice.status = serde_json::from_value(first[0].body["status"].clone()).unwrap();
        let (client, log) = mock_client(answering_status(&alice));
        reconcile(Arc::new(alice), context(client, caches))
            .await
            .unwrap();
        assert!(log.lock().unwrap().is_empty());
    }
}
