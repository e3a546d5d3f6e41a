//! The key ring Secret as a contract between the key ring driver, which writes it, and the
//! gateway driver, which reads it: its name, its keys, its labels, and the time format of the
//! key ring's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use portcullis_api::KeyRing;
use time::OffsetDateTime;

/// Keys of the key ring Secret besides `tls.crt`, `tls.key` and `ca.crt`.
pub mod keys {
    pub const SSH_ED25519: &str = "ssh_host_ed25519_key";
    pub const SSH_ECDSA: &str = "ssh_host_ecdsa_key";
    pub const CLIENT_CAS: &str = "client-cas.crt";
    pub const BACKEND_CAS: &str = "backend-cas.crt";
}

/// The Secret a key ring writes its material into.
pub fn secret_name(kr: &KeyRing) -> String {
    format!("{}-keyring", kr.name_any())
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

pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
