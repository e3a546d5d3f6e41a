//! Step 1: what a namespace's gateways are compiled from. The policy objects come from the
//! shared caches ([`super::cache::Caches::snapshot`]); the Secrets they name are fetched
//! ([`super::cache::Caches::with_secrets`]), and no other.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use portcullis_api::{
    KeyRing, NetworkZone, TransferEndpoint, TransferGateway, TransferRole, TransferUser,
};

/// One namespace's policy objects and Secrets, by name.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub endpoints: BTreeMap<String, TransferEndpoint>,
    pub zones: BTreeMap<String, NetworkZone>,
    pub key_rings: BTreeMap<String, KeyRing>,
    pub users: BTreeMap<String, TransferUser>,
    pub roles: BTreeMap<String, TransferRole>,
    pub secrets: BTreeMap<String, Secret>,
    /// When the snapshot was taken (Unix seconds): the clock that key ages are judged by.
    pub now: i64,
}

impl World {
    /// Every Secret that compiling `gateway` against this world reads: the users' and
    /// endpoints' credentials, the key rings' material, the gateway's own config Secret (its
    /// defender key) and its audit collector's CA. A test holds this complete.
    pub fn secret_names(&self, gateway: &TransferGateway) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .users
            .values()
            .flat_map(user_secret_names)
            .chain(self.endpoints.values().map(endpoint_secret_name))
            .chain(
                self.key_rings
                    .values()
                    .filter_map(|k| k.status.as_ref()?.secret_name.clone()),
            )
            .collect();
        names.insert(super::config_secret_name(gateway));
        if let Some(c) = &gateway.spec.audit.collector {
            names.insert(c.ca.name.clone());
        }
        names
    }

    /// The bytes under `key` in Secret `name`, or why there are none.
    pub fn secret_value(&self, name: &str, key: &str) -> Result<&[u8], SecretLookup> {
        let secret = self.secrets.get(name).ok_or(SecretLookup::NoSecret)?;
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .ok_or(SecretLookup::NoKey)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretLookup {
    NoSecret,
    NoKey,
}

/// The Secrets a user's own checks read: its password hash and TOTP seed.
pub fn user_secret_names(u: &TransferUser) -> impl Iterator<Item = String> + '_ {
    [&u.spec.password_hash, &u.spec.totp_secret]
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
}

/// The Secret an endpoint's own checks read: its credentials.
pub fn endpoint_secret_name(e: &TransferEndpoint) -> String {
    e.spec.credentials.secret_name.clone()
}
