//! A namespace's [`World`] built from files instead of the cluster, so that the operator's own
//! compile step runs offline.
//!
//! What Git does not hold is stood in for, and each stand-in is reported:
//! - a key ring is taken as issued: Ready, with fresh material of the kinds its spec asks for
//!   (the operator would issue the same kinds);
//! - a Secret the policy names but the files do not hold (it comes from sealed-secrets,
//!   external-secrets or by hand) gets a well-formed placeholder of the kind its reference
//!   needs. A Secret the files do hold is checked as it is.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::ResourceExt;
use portcullis_api::{
    EndpointProtocol, KeyRing, KeyRingStatus, NetworkZone, TransferEndpoint, TransferGateway,
    TransferRole, TransferUser,
};
use portcullis_operator::shared::{
    ca,
    dereference::World,
    keyring_secret::{self as keyring, keys},
    status,
};
use serde::de::DeserializeOwned;

use crate::load::Doc;

/// The objects of one namespace, as the files give them.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    pub name: String,
    pub world: World,
    pub gateways: BTreeMap<String, TransferGateway>,
    /// Where each object is: (kind, name) → its document.
    pub docs: BTreeMap<(String, String), Doc>,
    /// Secret names some other document supplies (a SealedSecret or an ExternalSecret), with
    /// where.
    pub supplied: BTreeMap<String, String>,
    /// The Secrets stood in for: name → the keys given placeholders.
    pub placeholders: BTreeMap<String, BTreeSet<String>>,
}

/// A document that is ours but does not read as its kind.
pub struct Unreadable {
    pub doc: Doc,
    pub message: String,
}

/// Splits admitted documents by namespace (`default_ns` when a document names none) and
/// reads each into its type.
pub fn namespaces(
    docs: &[(Doc, serde_json::Value)],
    default_ns: &str,
) -> (BTreeMap<String, Namespace>, Vec<Unreadable>) {
    let mut out: BTreeMap<String, Namespace> = BTreeMap::new();
    let mut bad = Vec::new();
    for (doc, admitted) in docs {
        let ns_name = doc.namespace().unwrap_or(default_ns).to_owned();
        let ns = out.entry(ns_name.clone()).or_insert_with(|| Namespace {
            name: ns_name.clone(),
            ..Default::default()
        });
        let name = doc.name().to_owned();
        let mut read = |what: Result<(), serde_json::Error>| {
            if let Err(e) = what {
                bad.push(Unreadable {
                    doc: doc.clone(),
                    message: format!("does not read as a {}: {e}", doc.kind()),
                });
            }
        };
        match (doc.is_policy(), doc.kind()) {
            (true, "TransferGateway") => read(insert(&mut ns.gateways, &name, admitted, &ns_name)),
            (true, "TransferEndpoint") => {
                read(insert(&mut ns.world.endpoints, &name, admitted, &ns_name))
            }
            (true, "NetworkZone") => read(insert(&mut ns.world.zones, &name, admitted, &ns_name)),
            (true, "KeyRing") => read(insert(&mut ns.world.key_rings, &name, admitted, &ns_name)),
            (true, "TransferUser") => read(insert(&mut ns.world.users, &name, admitted, &ns_name)),
            (true, "TransferRole") => read(insert(&mut ns.world.roles, &name, admitted, &ns_name)),
            (false, "Secret") if doc.value["apiVersion"] == "v1" => {
                read(insert(&mut ns.world.secrets, &name, admitted, &ns_name));
                // `stringData` folded into `data`, as the apiserver does.
                if let Some(s) = ns.world.secrets.get_mut(&name)
                    && let Some(strings) = s.string_data.take()
                {
                    s.data.get_or_insert_with(Default::default).extend(
                        strings
                            .into_iter()
                            .map(|(k, v)| (k, ByteString(v.into_bytes()))),
                    );
                }
            }
            (false, "SealedSecret") => {
                let target = admitted["spec"]["template"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or(&name);
                ns.supplied.insert(
                    target.to_owned(),
                    format!("SealedSecret at {}", doc.location()),
                );
            }
            (false, "ExternalSecret") => {
                let target = admitted["spec"]["target"]["name"].as_str().unwrap_or(&name);
                ns.supplied.insert(
                    target.to_owned(),
                    format!("ExternalSecret at {}", doc.location()),
                );
            }
            _ => continue,
        }
        ns.docs.insert((doc.kind().to_owned(), name), doc.clone());
    }
    (out, bad)
}

fn insert<K: DeserializeOwned + ResourceExt>(
    map: &mut BTreeMap<String, K>,
    name: &str,
    v: &serde_json::Value,
    ns: &str,
) -> Result<(), serde_json::Error> {
    let mut k: K = serde_json::from_value(v.clone())?;
    k.meta_mut().namespace = Some(ns.to_owned());
    k.meta_mut().generation.get_or_insert(1);
    k.meta_mut()
        .uid
        .get_or_insert_with(|| format!("offline-{name}"));
    map.insert(name.to_owned(), k);
    Ok(())
}

/// A placeholder argon2id hash (of no password anyone uses).
const PLACEHOLDER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$cGxhY2Vob2xkZXI$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
const PLACEHOLDER_TOTP: &str = "JBSWY3DPEHPK3PXP";

impl Namespace {
    /// Makes the world whole where Git cannot be: issued key rings, and placeholders for the
    /// Secrets the policy names that the files do not hold. Fails only if key material cannot
    /// be made.
    pub fn complete(&mut self, now: i64) -> anyhow::Result<()> {
        self.world.now = now;
        let when = time::OffsetDateTime::from_unix_timestamp(now)?;
        let rings: Vec<KeyRing> = self.world.key_rings.values().cloned().collect();
        for kr in rings {
            let secret = keyring::secret_name(&kr);
            let name = kr.name_any();
            let issuer = ca::new_ca(&format!("{name} (offline)"), when)?;
            let leaf = ca::issue_leaf(
                &issuer,
                &name,
                &kr.spec.dns_names,
                &kr.spec.ip_addresses,
                when,
                ca::DEFAULT_DURATION,
            )?;
            let not_after = keyring::rfc3339(ca::facts(&leaf.cert_pem)?.not_after);
            let mut data = vec![
                ("tls.crt", leaf.cert_pem.clone().into_bytes()),
                ("tls.key", leaf.key_pem.clone().into_bytes()),
                ("ca.crt", issuer.cert_pem.clone().into_bytes()),
            ];
            if kr.spec.ssh_host_keys {
                data.push((keys::SSH_ED25519, ca::new_host_key(false)?.into_bytes()));
                data.push((keys::SSH_ECDSA, ca::new_host_key(true)?.into_bytes()));
            }
            if !kr.spec.client_cas.is_empty() {
                data.push((keys::CLIENT_CAS, issuer.cert_pem.clone().into_bytes()));
            }
            if !kr.spec.backend_cas.is_empty() {
                data.push((keys::BACKEND_CAS, issuer.cert_pem.clone().into_bytes()));
            }
            self.world
                .secrets
                .insert(secret.clone(), secret_of(&secret, data));
            let kr = self.world.key_rings.get_mut(&name).expect("listed above");
            kr.status = Some(KeyRingStatus {
                conditions: status::merge(
                    &[],
                    vec![status::Want {
                        type_: portcullis_api::READY,
                        status: true,
                        reason: "Issued",
                        message: "issued offline by kubectl-portcullis".into(),
                    }],
                    Some(1),
                ),
                observed_generation: Some(1),
                secret_name: Some(secret),
                not_after: Some(not_after),
                ..Default::default()
            });
        }

        let mut wanted: Vec<(String, String, Vec<u8>)> = Vec::new();
        for u in self.world.users.values() {
            if let Some(r) = &u.spec.password_hash {
                wanted.push((r.name.clone(), r.key.clone(), PLACEHOLDER_HASH.into()));
            }
            if let Some(r) = &u.spec.totp_secret {
                wanted.push((r.name.clone(), r.key.clone(), PLACEHOLDER_TOTP.into()));
            }
        }
        for e in self.world.endpoints.values() {
            let c = &e.spec.credentials;
            match e.spec.protocol {
                EndpointProtocol::Sftp => wanted.push((
                    c.secret_name.clone(),
                    c.private_key_key().to_owned(),
                    ca::new_host_key(false)?.into_bytes(),
                )),
                EndpointProtocol::Ftps => wanted.push((
                    c.secret_name.clone(),
                    c.password_key.clone(),
                    b"placeholder".to_vec(),
                )),
            }
        }
        for gw in self.gateways.values() {
            if let Some(c) = &gw.spec.audit.collector {
                let pem = ca::new_ca("collector (offline)", when)?.cert_pem;
                wanted.push((c.ca.name.clone(), c.ca.key.clone(), pem.into_bytes()));
            }
        }
        let from_files: BTreeSet<String> = self
            .world
            .secrets
            .keys()
            .filter(|n| {
                !self
                    .world
                    .key_rings
                    .values()
                    .any(|k| keyring::secret_name(k) == **n)
            })
            .cloned()
            .collect();
        for (secret, key, value) in wanted {
            if from_files.contains(&secret) {
                continue;
            }
            self.placeholders
                .entry(secret.clone())
                .or_default()
                .insert(key.clone());
            let s = self
                .world
                .secrets
                .entry(secret.clone())
                .or_insert_with(|| secret_of(&secret, Vec::new()));
            s.data
                .get_or_insert_with(Default::default)
                .entry(key)
                .or_insert(ByteString(value));
        }
        Ok(())
    }

    /// The namespace's zones, endpoints, roles and users by name, for `diff`.
    pub fn zones(&self) -> &BTreeMap<String, NetworkZone> {
        &self.world.zones
    }
    pub fn endpoints(&self) -> &BTreeMap<String, TransferEndpoint> {
        &self.world.endpoints
    }
    pub fn roles(&self) -> &BTreeMap<String, TransferRole> {
        &self.world.roles
    }
    pub fn users(&self) -> &BTreeMap<String, TransferUser> {
        &self.world.users
    }
}

fn secret_of(name: &str, data: Vec<(&str, Vec<u8>)>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_owned());
    s.data = Some(
        data.into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v)))
            .collect(),
    );
    s
}
