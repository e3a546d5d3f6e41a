//! Step 4: server-side apply as `portcullis-operator`, skipping objects that already match,
//! so that reconciling an unchanged world writes nothing (GitOps sees no drift).
//!
//! "Already match" is exact for what the operator wants: each applied object carries the
//! digest of the configuration it was applied with ([`APPLIED`]). A change to that
//! configuration (a field added, changed or *removed*) changes the digest, so it is applied,
//! and server-side apply then drops the fields this field manager no longer sets. Fields that
//! others (or the apiserver's defaults) add do not count as drift.

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Context, Error, Step};

pub const FIELD_MANAGER: &str = "portcullis-operator";

/// The annotation holding the SHA-256 of the configuration an object was last applied with.
pub const APPLIED: &str = "portcullis.dev/applied-config";

/// Applies `desired` unless the live object was applied with this exact configuration and
/// still has every field it sets. Returns whether it wrote.
pub async fn apply<K>(ctx: &Context, desired: &K) -> Result<bool, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let ns = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let want = with_digest(serde_json::to_value(desired).map_err(Error::serialize(Step::Apply))?);
    if let Some(live) = api.get_opt(&name).await.map_err(Error::kube(Step::Apply))? {
        let live = serde_json::to_value(&live).map_err(Error::serialize(Step::Apply))?;
        if contains(&live, &want) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&want),
    )
    .await
    .map_err(Error::kube(Step::Apply))?;
    ctx.metrics
        .writes
        .get_or_create(&vec![(
            "kind",
            K::kind(&K::DynamicType::default()).into_owned(),
        )])
        .inc();
    Ok(true)
}

/// `want` with the [`APPLIED`] annotation: the digest of `want` itself (without it).
pub fn with_digest(mut want: Value) -> Value {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(want.to_string().as_bytes()));
    if let Some(meta) = want.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED.to_owned(), Value::String(digest));
        }
    }
    want
}

/// Whether `live` has every field of `want` with the same value. Lists must match element by
/// element (a list we set is a list we own).
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, wv)| match l.get(k) {
            Some(lv) => contains(lv, wv),
            None => wv.is_null() || is_empty(wv),
        }),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(lv, wv)| contains(lv, wv))
        }
        (l, w) => l == w,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{contains, with_digest};

    #[test]
    fn defaults_added_by_the_apiserver_do_not_count_as_drift() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"port": 22}]}});
        let live =
            json!({"spec": {"replicas": 2, "ports": [{"port": 22, "protocol": "TCP"}], "x": 1}});
        assert!(contains(&live, &want));
        assert!(!contains(
            &json!({"spec": {"replicas": 3, "ports": [{"port": 22}]}}),
            &want
        ));
        assert!(!contains(
            &json!({"spec": {"replicas": 2, "ports": []}}),
            &want
        ));
        assert!(contains(&json!({"a": 1}), &json!({"b": {}})));
    }

    #[test]
    fn a_removed_field_is_applied_not_mistaken_for_a_match() {
        let before = with_digest(
            json!({"metadata": {"name": "gw", "annotations": {"a": "1"}},
            "spec": {"resources": {"limits": {"memory": "1Gi"}}}}),
        );
        // What the cluster holds after that apply, with the apiserver's additions.
        let mut live = before.clone();
        live["metadata"]["uid"] = json!("u-1");
        assert!(
            contains(&live, &before),
            "an unchanged world writes nothing"
        );
        // The user removes the annotation and the limit: a subset of what is live, but not
        // what was applied, so it is applied (and server-side apply drops them).
        let after = with_digest(json!({"metadata": {"name": "gw", "annotations": {}},
            "spec": {"resources": {}}}));
        assert!(!contains(&live, &after));
        // Someone else's field on the live object is still no drift.
        live["metadata"]["annotations"]["other"] = json!("x");
        assert!(contains(&live, &before));
    }
}
