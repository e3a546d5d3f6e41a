//! `--manage-crds`: the leader brings the cluster's CustomResourceDefinitions up to this
//! build's before it reconciles. Helm installs a chart's `crds/` once and never upgrades them,
//! so without this an upgraded operator would run against the old schemas, and the apiserver
//! would prune (or refuse) every field the new release added.

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::shared::apply::FIELD_MANAGER;

/// The annotation naming the operator version that applied a CRD.
pub const APPLIED_BY: &str = "portcullis.dev/operator-version";

/// What to do with a live CRD that version `live` of the operator applied.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Apply,
    /// A newer operator applied it: a rolled-back operator must not take fields away.
    KeepNewer,
}

/// `MAJOR.MINOR.PATCH` as numbers; anything after `-` or `+` is ignored.
fn release(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let r = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(r)
}

fn decide(live: Option<&str>, ours: &str) -> Decision {
    match (live.and_then(release), release(ours)) {
        (Some(live), Some(ours)) if live > ours => Decision::KeepNewer,
        _ => Decision::Apply,
    }
}

/// Applies every CRD of this build (server-side apply, the operator's field manager), unless a
/// newer operator applied it. Fails with the CRD's name and what the operator needs.
pub async fn upgrade(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ours = env!("CARGO_PKG_VERSION");
    for (_, mut crd) in portcullis_api::crds() {
        let name = crd.name_any();
        let live = api.get_opt(&name).await.with_context(|| {
            format!("reading CRD {name} (--manage-crds needs get and patch on it)")
        })?;
        let by = live
            .as_ref()
            .and_then(|l| l.annotations().get(APPLIED_BY).cloned());
        if decide(by.as_deref(), ours) == Decision::KeepNewer {
            tracing::warn!(
                crd = name,
                applied_by = by,
                ours,
                "a newer operator applied this CRD; leaving it as it is"
            );
            continue;
        }
        crd.annotations_mut()
            .insert(APPLIED_BY.to_owned(), ours.to_owned());
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| {
            format!(
                "applying CRD {name} (--manage-crds needs get and patch on it, and the CRD installed: \
                 helm installs it from the chart's crds/)"
            )
        })?;
        tracing::info!(crd = name, version = ours, "CRD up to date");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crd_is_applied_unless_a_newer_operator_applied_it() {
        assert_eq!(decide(None, "0.2.0"), Decision::Apply);
        assert_eq!(decide(Some("0.1.9"), "0.2.0"), Decision::Apply);
        assert_eq!(decide(Some("0.2.0"), "0.2.0"), Decision::Apply);
        assert_eq!(decide(Some("0.10.0"), "0.9.3"), Decision::KeepNewer);
        assert_eq!(decide(Some("1.0.0-rc.1"), "0.9.3"), Decision::KeepNewer);
        // An annotation that is not a version does not block an upgrade.
        assert_eq!(decide(Some("latest"), "0.2.0"), Decision::Apply);
        assert_eq!(decide(Some("1.2"), "0.2.0"), Decision::Apply);
        assert_eq!(release("1.2.3.4"), None);
    }
}
