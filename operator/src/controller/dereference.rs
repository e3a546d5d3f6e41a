//! Step 1: read everything a namespace's gateways are compiled from. The only step besides
//! `apply`/`status` that touches the client.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt, api::ListParams};
use portcullis_api::{KeyRing, NetworkZone, TransferEndpoint, TransferRole, TransferUser};
use serde::de::DeserializeOwned;

/// One namespace's policy objects and Secrets, by name.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub endpoints: BTreeMap<String, TransferEndpoint>,
    pub zones: BTreeMap<String, NetworkZone>,
    pub key_rings: BTreeMap<String, KeyRing>,
    pub users: BTreeMap<String, TransferUser>,
    pub roles: BTreeMap<String, TransferRole>,
    pub secrets: BTreeMap<String, Secret>,
}

impl World {
    pub async fn load(client: &Client, namespace: &str) -> kube::Result<World> {
        let (endpoints, zones, key_rings, users, roles, secrets) = futures::try_join!(
            list::<TransferEndpoint>(client, namespace),
            list::<NetworkZone>(client, namespace),
            list::<KeyRing>(client, namespace),
            list::<TransferUser>(client, namespace),
            list::<TransferRole>(client, namespace),
            list::<Secret>(client, namespace),
        )?;
        Ok(World {
            endpoints,
            zones,
            key_rings,
            users,
            roles,
            secrets,
        })
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

async fn list<K>(client: &Client, namespace: &str) -> kube::Result<BTreeMap<String, K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.into_iter().map(|o| (o.name_any(), o)).collect())
}
