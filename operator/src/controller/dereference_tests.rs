//! Tests of what the drivers read through the snapshot (`shared::dereference`): a gateway
//! compiles the same from only the Secrets it names, and a policy object's checks read only
//! what it depends on.

use std::collections::BTreeSet;

use crate::controller::{
    fixtures::{SFTP_GATEWAY, gateway, secret, world},
    policy::PolicyKind,
    validate::compile,
};
use crate::shared::dereference::World;

/// Every kind of Secret reference at once, and a Secret nobody names.
fn referencing_world() -> World {
    let mut w = world();
    let kr = w.key_rings.get_mut("keys").unwrap();
    kr.spec.audit_signing_key = true;
    let keys = w
        .secrets
        .get_mut("keys-keyring")
        .unwrap()
        .data
        .as_mut()
        .unwrap();
    let ca = keys["ca.crt"].clone();
    keys.insert("backend-cas.crt".into(), ca);
    w.endpoints.insert("mf".into(), serde_yaml_ng::from_str(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferEndpoint\nmetadata: {name: mf}\nspec: {protocol: ftps, addresses: [{host: 10.7.0.9, port: 21}], username: batch, credentials: {secretName: mf-creds}, ftps: {keyRing: keys, clientCertificate: true}}",
    ).unwrap());
    w.roles.insert("mf".into(), serde_yaml_ng::from_str(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferRole\nmetadata: {name: mf}\nspec: {mounts: [{path: /mf, endpoint: mf, verbs: [list, read]}]}",
    ).unwrap());
    w.users.insert("bob".into(), serde_yaml_ng::from_str(
        "apiVersion: portcullis.dev/v1alpha1\nkind: TransferUser\nmetadata: {name: bob}\nspec: {passwordHash: {name: bob-pw, key: hash}, totpSecret: {name: bob-totp, key: seed}, authMethods: ['password,keyboard-interactive'], roles: [ops, mf]}",
    ).unwrap());
    w.secrets.extend([
        secret("mf-creds", &[("password", b"s3cret")]),
        secret("bob-pw", &[("hash", b"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g")]),
        secret("bob-totp", &[("seed", b"JBSWY3DPEHPK3PXP")]),
        secret("collector-ca", &[("ca.crt", b"-----BEGIN CERTIFICATE-----\n")]),
        secret("gw-config", &[
            ("defender.key", &[7; 64]),
            ("audit-signing.pem", crate::shared::ca::new_audit_signing_key().unwrap().as_bytes()),
        ]),
        secret("nobodys", &[("token", b"not for the operator")]),
    ]);
    w
}

fn only(w: &World, names: &BTreeSet<String>) -> World {
    let mut out = w.clone();
    out.secrets.retain(|n, _| names.contains(n));
    out
}

#[test]
fn a_gateway_compiles_the_same_from_only_the_secrets_it_names() {
    let w = referencing_world();
    for spec in [
        SFTP_GATEWAY.to_owned(),
        format!(
            "{SFTP_GATEWAY}  audit: {{signingKeyRing: keys, file: {{}}, collector: {{url: 'https://10.3.0.7:8443/ingest', ca: {{name: collector-ca}}}}}}\n"
        ),
        "  hostKeyRing: keys\n  listeners: [{name: ftps, protocol: ftps, port: 2121, zones: [lan], keyRing: keys, passivePorts: {min: 30000, max: 30009}}]\n".to_owned(),
    ] {
        let gw = gateway(&spec);
        let names = w.secret_names(&gw);
        assert!(!names.contains("nobodys"), "{names:?}");
        let all = compile(&gw, &w);
        let named = compile(&gw, &only(&w, &names));
        let all = all.unwrap_or_else(|p| panic!("the full world compiles: {p:?}"));
        let named = named.unwrap_or_else(|p| panic!("{spec}: named Secrets alone: {p:?}"));
        assert_eq!(named, all, "{spec}");
    }
}

/// `obj`'s checks read from only the Secrets it names are its checks read from all, and
/// differ from its checks with no Secret at all (so the names matter).
fn checks_the_same_from_its_names<K: PolicyKind>(what: &str, obj: &K, w: &World) {
    let problems = |w: &World| format!("{:?}", obj.problems(w));
    let names = obj.secret_names().into_iter().collect();
    let mut none = w.clone();
    none.secrets.clear();
    assert_eq!(problems(&only(w, &names)), problems(w), "{what}");
    assert_ne!(problems(&none), problems(w), "{what}");
}

/// `obj`'s checks read from only the objects it [`PolicyKind::depends_on`] are its checks
/// read from the whole namespace, and differ from its checks against an empty namespace (so
/// what it depends on matters).
fn checks_the_same_from_its_dependencies<K: PolicyKind>(what: &str, obj: &K, w: &World) {
    use crate::controller::policy::Dep;
    let problems = |w: &World| format!("{:?}", obj.problems(w));
    let mut deps = w.clone();
    deps.endpoints
        .retain(|n, _| obj.depends_on(Dep::Endpoint, n));
    deps.roles.retain(|n, _| obj.depends_on(Dep::Role, n));
    deps.zones.retain(|n, _| obj.depends_on(Dep::Zone, n));
    deps.secrets.retain(|n, _| obj.depends_on(Dep::Secret, n));
    deps.key_rings.clear();
    deps.users.clear();
    assert_eq!(problems(&deps), problems(w), "{what}");
    assert_ne!(problems(&World::default()), problems(w), "{what}");
    // Of endpoints, roles and zones only existence counts: hollowed out, they check the
    // same (so a change to one that does not create or delete it reconciles nothing).
    let mut hollow = w.clone();
    hollow
        .roles
        .values_mut()
        .for_each(|r| r.spec.mounts.clear());
    hollow.zones.values_mut().for_each(|z| z.spec.cidrs.clear());
    hollow.endpoints.values_mut().for_each(|e| {
        e.spec.addresses.clear();
        e.spec.host_keys.clear();
    });
    assert_eq!(problems(&hollow), problems(w), "{what}");
}

#[test]
fn a_policy_object_is_reconciled_on_a_change_of_what_it_reads_and_nothing_else() {
    let w = referencing_world();
    for (name, user) in &w.users {
        checks_the_same_from_its_dependencies(&format!("user {name}"), user, &w);
    }
    for (name, ep) in &w.endpoints {
        checks_the_same_from_its_dependencies(&format!("endpoint {name}"), ep, &w);
    }
    for (name, role) in &w.roles {
        checks_the_same_from_its_dependencies(&format!("role {name}"), role, &w);
    }
    // What a role change reaches: the users naming it, not the others.
    use crate::controller::policy::Dep;
    let bob = &w.users["bob"];
    assert!(bob.depends_on(Dep::Role, "mf") && !bob.depends_on(Dep::Role, "payroll"));
    assert!(!bob.depends_on(Dep::Endpoint, "mf"));
}

#[test]
fn a_policy_object_checks_the_same_from_only_the_secrets_it_names() {
    let w = referencing_world();
    for (name, user) in &w.users {
        checks_the_same_from_its_names(&format!("user {name}"), user, &w);
    }
    for (name, ep) in &w.endpoints {
        checks_the_same_from_its_names(&format!("endpoint {name}"), ep, &w);
    }
}
