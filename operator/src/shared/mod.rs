//! What every driver (the gateway, key ring and policy controllers) shares, importing none of
//! them: the reconcile context and its errors, the object names and labels that are contracts
//! between drivers, conditions (`status`), server-side apply (`apply`), the shared caches and
//! the snapshot they give (`cache`, `scope`, `dereference`), the key ring Secret's layout
//! (`keyring_secret`) and the CA (`ca`).

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
    },
};
use portcullis_api::TransferGateway;

use crate::metrics::Metrics;
use cache::Caches;

pub mod apply;
pub mod ca;
pub mod cache;
pub mod dereference;
pub mod keyring_secret;
pub mod scope;
pub mod status;
#[cfg(test)]
pub mod testing;

/// Resolves once on SIGTERM/SIGINT; every controller holds a clone.
pub type Stop = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// The `app.kubernetes.io/managed-by` of everything the operator makes.
pub const MANAGED_BY: &str = "portcullis-operator";

/// The Secret holding a gateway's compiled bundle (and its defender and audit signing keys).
pub fn config_secret_name(gw: &TransferGateway) -> String {
    format!("{}-config", gw.name_any())
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    /// The policy objects and the Secrets they name; reconciles read here, not from the API.
    pub caches: Arc<Caches>,
    /// Gateway images allowed besides the default (`--allowed-gateway-image`).
    pub allowed_images: Vec<String>,
    /// Namespaces whose pods may reach the gateways' admin port: the operator's own (it reads
    /// `/config` there) and `--metrics-namespace`.
    pub admin_namespaces: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

/// The step of a reconcile. Dereference, validate and build are pure over the snapshot, and an
/// invalid object is not an error (its status says why, counted under `validate`); the steps
/// that talk to the API, or make keys, can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the Secrets a reconcile needs.
    Dereference,
    /// Checking and compiling (problems only, never an [`Error`]).
    Validate,
    /// Making or renewing key material (the key ring's CA and leaf).
    Issue,
    /// Server-side applying what was built.
    Apply,
    /// Following the rollout: the owned Deployments, the pods' served config.
    Rollout,
    /// Writing the object's status.
    Status,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Dereference => "dereference",
            Step::Validate => "validate",
            Step::Issue => "issue",
            Step::Apply => "apply",
            Step::Rollout => "rollout",
            Step::Status => "status",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a step: the API, our own serialization, or key material.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("serializing an object: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("key material: {0}")]
    KeyRing(#[source] crate::shared::ca::CaError),
}

/// A reconcile failure, with the step it happened in. Invalid objects are not errors; their
/// status says why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct Error {
    pub step: Step,
    #[source]
    pub cause: Cause,
}

impl Error {
    /// For `map_err`: an API error in `step`.
    pub fn kube(step: Step) -> impl FnOnce(kube::Error) -> Error {
        move |e| Error {
            step,
            cause: Cause::Kube(e),
        }
    }

    /// For `map_err`: a serialization error in `step`.
    pub fn serialize(step: Step) -> impl FnOnce(serde_json::Error) -> Error {
        move |e| Error {
            step,
            cause: Cause::Serialize(e),
        }
    }

    /// The metric label and log field, besides the step.
    pub fn category(&self) -> &'static str {
        match &self.cause {
            Cause::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Cause::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Cause::Kube(_) => "ApiError",
            Cause::Serialize(_) => "Serialize",
            Cause::KeyRing(_) => "KeyRing",
        }
    }
}

/// Key material is made in the issue step.
impl From<crate::shared::ca::CaError> for Error {
    fn from(e: crate::shared::ca::CaError) -> Error {
        Error {
            step: Step::Issue,
            cause: Cause::KeyRing(e),
        }
    }
}

impl Context {
    /// Publishes an Event about `obj`; a failure to record is logged, not fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not record an event");
        }
    }

    /// Counts a reconcile and its duration.
    pub fn observe(&self, controller: &'static str, started: std::time::Instant) {
        let l = vec![("controller", controller.to_owned())];
        self.metrics.reconciles.get_or_create(&l).inc();
        self.metrics
            .duration
            .get_or_create(&l)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a write that did not go through [`apply::apply`] (status patches).
    pub fn count_write(&self, kind: &str) {
        self.metrics
            .writes
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    pub fn count_error(&self, controller: &'static str, step: Step, category: &str) {
        self.metrics
            .errors
            .get_or_create(&vec![
                ("controller", controller.to_owned()),
                ("step", step.as_str().to_owned()),
                ("category", category.to_owned()),
            ])
            .inc();
    }
}

/// Requeue with a short backoff after a failure.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        object = %ObjectRef::from_obj(obj.as_ref()),
        step = %err.step,
        category = err.category(),
        error = %err.cause,
        "reconcile failed; retrying"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Maps any object to every object of `store` in the same namespace (a change to a zone,
/// role, key ring... concerns every gateway, or every policy object, of its namespace).
pub fn in_namespace<K, O>(
    store: kube::runtime::reflector::Store<K>,
) -> impl Fn(O) -> Vec<ObjectRef<K>> + Send + Sync + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    O: ResourceExt,
{
    move |obj: O| {
        let ns = obj.namespace();
        store
            .state()
            .iter()
            .filter(|k| k.namespace() == ns)
            .map(|k| ObjectRef::from_obj(k.as_ref()))
            .collect()
    }
}

/// Whether a Secret is someone else's: ours are outputs, and watching them would only echo our
/// writes.
pub fn foreign(s: &PartialObjectMeta<Secret>) -> bool {
    s.labels()
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        != Some(MANAGED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_step_and_category() {
        let e = Error::serialize(Step::Status)(serde_json::from_str::<u8>("x").unwrap_err());
        assert_eq!((e.step, e.category()), (Step::Status, "Serialize"));
        assert!(
            e.to_string().starts_with("status: serializing an object: "),
            "{e}"
        );
        let e: Error = crate::shared::ca::CaError::KeyMismatch.into();
        assert_eq!((e.step, e.category()), (Step::Issue, "KeyRing"));
    }
}
