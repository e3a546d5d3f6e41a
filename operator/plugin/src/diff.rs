//! `policy diff`: what a change to the policy does to access, in the terms a reviewer decides
//! on: which users gain or lose which verbs on which paths (and from where), and which zones,
//! endpoints and gateways changed.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_api::Verb;

use crate::offline::Namespace;

/// A user's effective access: mount path → (target, verbs). The union of the user's roles, as
/// the gateway's tree unions them.
type Access = BTreeMap<String, (String, BTreeSet<Verb>)>;

fn access(ns: &Namespace, user: &str) -> Access {
    let mut out = Access::new();
    let Some(u) = ns.users().get(user) else {
        return out;
    };
    for r in &u.spec.roles {
        for m in ns.roles().get(r).into_iter().flat_map(|r| &r.spec.mounts) {
            let e = out.entry(m.path.clone()).or_insert_with(|| {
                (
                    format!("{}:{}", m.endpoint, m.backend_path),
                    BTreeSet::new(),
                )
            });
            e.1.extend(m.verbs.iter().copied());
        }
    }
    out
}

fn verbs(v: &BTreeSet<Verb>) -> String {
    v.iter()
        .map(|v| format!("{v:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One section of the summary: a heading and its lines.
pub struct Section {
    pub title: &'static str,
    pub lines: Vec<String>,
}

/// The summary of `old` → `new` for one namespace.
pub fn diff(old: &Namespace, new: &Namespace) -> Vec<Section> {
    let mut users = Vec::new();
    let names: BTreeSet<&String> = old.users().keys().chain(new.users().keys()).collect();
    for name in names {
        let (a, b) = (access(old, name), access(new, name));
        let (ou, nu) = (old.users().get(name), new.users().get(name));
        let mut parts = Vec::new();
        match (ou, nu) {
            (None, Some(_)) => parts.push("new user".to_owned()),
            (Some(_), None) => parts.push("removed".to_owned()),
            _ => {}
        }
        let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for p in paths {
            let empty = (String::new(), BTreeSet::new());
            let (ta, va) = a.get(p).unwrap_or(&empty);
            let (tb, vb) = b.get(p).unwrap_or(&empty);
            let gained: BTreeSet<Verb> = vb.difference(va).copied().collect();
            let lost: BTreeSet<Verb> = va.difference(vb).copied().collect();
            if !gained.is_empty() {
                parts.push(format!("gains {} on {p}", verbs(&gained)));
            }
            if !lost.is_empty() {
                parts.push(format!("loses {} on {p}", verbs(&lost)));
            }
            if !ta.is_empty() && !tb.is_empty() && ta != tb {
                parts.push(format!("{p} now maps to {tb} (was {ta})"));
            }
        }
        if let (Some(ou), Some(nu)) = (ou, nu) {
            let (o, n) = (&ou.spec, &nu.spec);
            if o.zones != n.zones {
                parts.push(format!(
                    "zones [{}] → [{}]",
                    o.zones.join(", "),
                    n.zones.join(", ")
                ));
            }
            if o.disabled != n.disabled {
                parts.push(if n.disabled { "disabled" } else { "enabled" }.to_owned());
            }
            if o.auth_methods != n.auth_methods {
                parts.push(format!(
                    "authMethods [{}] → [{}]",
                    chains(&o.auth_methods),
                    chains(&n.auth_methods)
                ));
            }
            if o.public_keys != n.public_keys
                || o.password_hash != n.password_hash
                || o.certificate_names != n.certificate_names
                || o.totp_secret != n.totp_secret
            {
                parts.push("credentials changed".to_owned());
            }
            if o.expires_at != n.expires_at {
                parts.push(format!(
                    "expiresAt {} → {}",
                    o.expires_at.as_deref().unwrap_or("never"),
                    n.expires_at.as_deref().unwrap_or("never")
                ));
            }
        }
        if !parts.is_empty() {
            users.push(format!("{name}: {}", parts.join("; ")));
        }
    }

    let mut zones = Vec::new();
    let names: BTreeSet<&String> = old.zones().keys().chain(new.zones().keys()).collect();
    for name in names {
        let set = |ns: &Namespace| -> BTreeSet<String> {
            ns.zones()
                .get(name)
                .map(|z| z.spec.cidrs.iter().cloned().collect())
                .unwrap_or_default()
        };
        let (a, b) = (set(old), set(new));
        let mut parts: Vec<String> = Vec::new();
        match (
            old.zones().contains_key(name),
            new.zones().contains_key(name),
        ) {
            (false, true) => parts.push("new zone".into()),
            (true, false) => parts.push("removed".into()),
            _ => {}
        }
        parts.extend(b.difference(&a).map(|c| format!("+ {c}")));
        parts.extend(a.difference(&b).map(|c| format!("- {c}")));
        if !parts.is_empty() {
            // Who the change admits or shuts out: the users the zone admits in the new policy
            // (in the old one, when the zone is removed).
            let side = if new.zones().contains_key(name) {
                new
            } else {
                old
            };
            let who: Vec<&str> = side
                .users()
                .iter()
                .filter(|(_, u)| u.spec.zones.is_empty() || u.spec.zones.contains(name))
                .map(|(n, _)| n.as_str())
                .collect();
            if !who.is_empty() {
                parts.push(format!("for users {}", who.join(", ")));
            }
            zones.push(format!("{name}: {}", parts.join(", ")));
        }
    }

    let changed =
        |kind: &str, a: Option<serde_json::Value>, b: Option<serde_json::Value>| match (a, b) {
            (None, Some(_)) => Some(format!("new {kind}")),
            (Some(_), None) => Some("removed".to_owned()),
            (Some(a), Some(b)) if a != b => Some(changed_fields(&a, &b)),
            _ => None,
        };
    let spec = |v: Option<serde_json::Value>| v.map(|v| v["spec"].clone());
    let mut endpoints = Vec::new();
    let names: BTreeSet<&String> = old
        .endpoints()
        .keys()
        .chain(new.endpoints().keys())
        .collect();
    for name in names {
        let j = |ns: &Namespace| {
            spec(
                ns.endpoints()
                    .get(name)
                    .and_then(|e| serde_json::to_value(e).ok()),
            )
        };
        if let Some(c) = changed("endpoint", j(old), j(new)) {
            endpoints.push(format!("{name}: {c}"));
        }
    }
    let mut gateways = Vec::new();
    let names: BTreeSet<&String> = old.gateways.keys().chain(new.gateways.keys()).collect();
    for name in names {
        let j = |ns: &Namespace| {
            spec(
                ns.gateways
                    .get(name)
                    .and_then(|e| serde_json::to_value(e).ok()),
            )
        };
        if let Some(c) = changed("gateway", j(old), j(new)) {
            gateways.push(format!("{name}: {c}"));
        }
    }
    let mut rings = Vec::new();
    let names: BTreeSet<&String> = old
        .world
        .key_rings
        .keys()
        .chain(new.world.key_rings.keys())
        .collect();
    for name in names {
        let j = |ns: &Namespace| {
            spec(
                ns.world
                    .key_rings
                    .get(name)
                    .and_then(|e| serde_json::to_value(e).ok()),
            )
        };
        if let Some(c) = changed("key ring", j(old), j(new)) {
            rings.push(format!("{name}: {c}"));
        }
    }
    vec![
        Section {
            title: "Users",
            lines: users,
        },
        Section {
            title: "Zones",
            lines: zones,
        },
        Section {
            title: "Endpoints",
            lines: endpoints,
        },
        Section {
            title: "Key rings",
            lines: rings,
        },
        Section {
            title: "Gateways",
            lines: gateways,
        },
    ]
}

/// `changed spec.addresses, spec.ftps` for two specs.
fn changed_fields(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let keys: BTreeSet<&String> = a
        .as_object()
        .into_iter()
        .chain(b.as_object())
        .flat_map(|o| o.keys())
        .collect();
    let fields: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
        .map(|k| format!("spec.{k}"))
        .collect();
    format!("changed {}", fields.join(", "))
}

/// The summary as text or as Markdown (for a pull request).
pub fn render(namespace: &str, sections: &[Section], markdown: bool) -> String {
    let mut out = String::new();
    let any = sections.iter().any(|s| !s.lines.is_empty());
    if markdown {
        out.push_str(&format!(
            "### Portcullis policy changes in `{namespace}`\n\n"
        ));
    } else {
        out.push_str(&format!("namespace {namespace}\n"));
    }
    if !any {
        out.push_str(if markdown {
            "No change to access.\n"
        } else {
            "  no change\n"
        });
        return out;
    }
    for s in sections.iter().filter(|s| !s.lines.is_empty()) {
        if markdown {
            out.push_str(&format!("**{}**\n\n", s.title));
            for l in &s.lines {
                out.push_str(&format!("- {l}\n"));
            }
            out.push('\n');
        } else {
            out.push_str(&format!("  {}:\n", s.title));
            for l in &s.lines {
                out.push_str(&format!("    {l}\n"));
            }
        }
    }
    out
}

/// Method chains as a user writes them: `publickey,password; certificate`.
fn chains(c: &[portcullis_config::AuthChain]) -> String {
    c.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn namespace(text: &str) -> Namespace {
        let docs = crate::load::split(Path::new("f.yaml"), text).unwrap();
        let report = crate::check::check(docs, "ns", 0).unwrap();
        report.namespaces.into_values().next().unwrap()
    }

    #[test]
    fn a_change_is_summarized_as_access_gained_and_lost() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/base.yaml"),
        )
        .unwrap();
        let old = namespace(&base);
        let new = namespace(
            &(base
                .replace("verbs: [list, write]", "verbs: [list, read]")
                .replace("cidrs: [10.1.0.0/16]", "cidrs: [10.1.0.0/16, 10.2.0.0/16]")
                .replace("backendPath: /data/in", "backendPath: /data/inbound")
                + "---\napiVersion: portcullis.dev/v1alpha1\nkind: TransferUser\nmetadata: {name: bob}\nspec: {publicKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGL7C0bUqy0uK3s4Zl3FQWbXzFNx6bc2FVQn3E9rLr5W bob'], roles: [ops], disabled: true}\n"),
        );
        let text = render("ns", &diff(&old, &new), false);
        assert_eq!(
            text,
            "namespace ns\n  Users:\n    alice: gains read on /in; loses write on /in; /in now maps to backend:/data/inbound (was backend:/data/in)\n    bob: new user; gains list, read on /in\n  Zones:\n    lan: + 10.2.0.0/16, for users alice, bob\n"
        );
        assert_eq!(
            render("ns", &diff(&old, &old), true),
            "### Portcullis policy changes in `ns`\n\nNo change to access.\n"
        );
    }
}
