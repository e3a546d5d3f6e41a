//! Test fixtures: a namespace's world built in memory from YAML, for the pure steps.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::ResourceExt;
use portcullis_api::{KeyRing, TransferGateway};
use serde::de::DeserializeOwned;

use crate::shared::dereference::World;

pub const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl backend";
pub const USER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGL7C0bUqy0uK3s4Zl3FQWbXzFNx6bc2FVQn3E9rLr5W acme";

fn parse<K: DeserializeOwned + ResourceExt>(yaml: &str) -> (String, K) {
    let k: K = serde_yaml_ng::from_str(yaml).expect("fixture YAML parses");
    (k.name_any(), k)
}

pub fn secret(name: &str, data: &[(&str, &[u8])]) -> (String, Secret) {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.data = Some(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect(),
    );
    (name.to_owned(), s)
}

pub fn gateway(yaml_spec: &str) -> TransferGateway {
    let mut gw: TransferGateway = serde_yaml_ng::from_str(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferGateway\nmetadata: {{name: gw, namespace: ns, uid: u-1}}\nspec:\n{yaml_spec}"
    ))
    .expect("gateway YAML parses");
    gw.metadata.generation = Some(1);
    gw
}

/// A complete, valid namespace: zone `lan`, ready key ring `keys` (with host keys and a
/// certificate), endpoint `backend`, role `ops`, user `alice`.
pub fn world() -> World {
    let endpoint_key = crate::shared::ca::new_host_key(false).unwrap();
    let ed = crate::shared::ca::new_host_key(false).unwrap();
    let ec = crate::shared::ca::new_host_key(true).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca = crate::shared::ca::new_ca("t", now).unwrap();
    let leaf = crate::shared::ca::issue_leaf(
        &ca,
        "keys",
        &["gw.example".into()],
        &[],
        now,
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    let mut w = World::default();
    w.zones.extend([parse(
        "apiVersion: portcullis.dev/v1alpha1\nkind: NetworkZone\nmetadata: {name: lan}\nspec: {cidrs: [10.1.0.0/16]}",
    )]);
    let (n, mut kr): (String, KeyRing) = parse(
        "apiVersion: portcullis.dev/v1alpha1\nkind: KeyRing\nmetadata: {name: keys}\nspec: {issuer: {type: selfSigned}}",
    );
    kr.status = Some(portcullis_api::KeyRingStatus {
        conditions: crate::shared::status::merge(
            &[],
            vec![crate::shared::status::Want {
                type_: portcullis_api::READY,
                status: true,
                reason: "Issued",
                message: String::new(),
            }],
            Some(1),
        ),
        secret_name: Some("keys-keyring".into()),
        not_after: Some("2030-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    w.key_rings.insert(n, kr);
    w.endpoints.extend([parse(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferEndpoint\nmetadata: {{name: backend}}\nspec: {{protocol: sftp, addresses: [{{host: 10.9.0.5, port: 22}}, {{host: sftp.example, port: 2022, egressCidrs: [10.8.0.0/24]}}], hostKeys: ['{HOST_KEY}'], username: svc, credentials: {{secretName: backend-creds}}}}"
    ))]);
    w.roles.extend([parse(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferRole\nmetadata: {name: ops}\nspec: {mounts: [{path: /in, endpoint: backend, backendPath: /data/in, verbs: [list, write]}]}",
    )]);
    w.users.extend([parse(&format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferUser\nmetadata: {{name: alice}}\nspec: {{publicKeys: ['{USER_KEY}'], passwordHash: {{name: alice-pw, key: hash}}, roles: [ops]}}"
    ))]);
    w.secrets = BTreeMap::from([
        secret("backend-creds", &[("ssh-privatekey", endpoint_key.as_bytes())]),
        secret("alice-pw", &[("hash", b"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g")]),
        secret(
            "keys-keyring",
            &[
                ("tls.crt", leaf.cert_pem.as_bytes()),
                ("tls.key", leaf.key_pem.as_bytes()),
                ("ca.crt", ca.cert_pem.as_bytes()),
                ("client-cas.crt", ca.cert_pem.as_bytes()),
                ("ssh_host_ed25519_key", ed.as_bytes()),
                ("ssh_host_ecdsa_key", ec.as_bytes()),
            ],
        ),
    ]);
    w
}

pub const SFTP_GATEWAY: &str =
    "  hostKeyRing: keys\n  listeners: [{name: sftp, protocol: sftp, port: 2222, zones: [lan]}]\n";
