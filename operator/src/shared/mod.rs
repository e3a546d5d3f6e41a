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

/// A reconcile failure: the API or our own serialization. Invalid objects are not errors;
/// their status says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("serializing an object: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("key ring: {0}")]
    KeyRing(#[from] crate::shared::ca::CaError),
}

impl Error {
    /// The metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "Forbidden",
            Error::Kube(_) => "ApiError",
            Error::Serialize(_) => "Serialize",
            Error::KeyRing(_) => "KeyRing",
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

    pub fn count_error(&self, controller: &'static str, category: &str) {
        self.metrics
            .errors
            .get_or_create(&vec![
                ("controller", controller.to_owned()),
                ("category", category.to_owned()),
            ])
            .inc();
    }
}

/// Requeue with a short backoff after a failure.
pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, category = err.category(), "reconcile failed; retrying");
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
