//! `policy check`: everything the apiserver and the operator would say about a folder of
//! policy, said before it is merged, each problem at its file and line.
//!
//! The checks, in order: the CRD schemas with their CEL rules; duplicate objects; each
//! object's own references (the operator's status checks); each gateway compiled by the
//! operator's compile step (references, conflicting mounts, auth chains); and what a reviewer
//! should see even when it is valid (open zones, plaintext endpoints, unused roles, users who
//! cannot log in).

use std::{collections::BTreeMap, fmt};

use portcullis_api::{EndpointProtocol, FtpSecurity, Protocol};
use portcullis_operator::controller::{
    policy::PolicyKind,
    validate::{self, Bundle},
};

use crate::{
    load::Doc,
    offline::{self, Namespace},
    schema::Schemas,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

/// One thing found, where it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub location: String,
    pub severity: Severity,
    /// The operator's status reason, `Schema`, or the lint's name.
    pub code: String,
    /// The object (`TransferUser alice`).
    pub object: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} [{}] {}: {}",
            self.location, self.severity, self.code, self.object, self.message
        )
    }
}

/// What checking a folder found, and the namespaces it read (for `explain` and `diff`).
pub struct Report {
    pub findings: Vec<Finding>,
    pub namespaces: BTreeMap<String, Namespace>,
    /// Each gateway's compiled bundle, by (namespace, gateway), when it compiled.
    pub bundles: BTreeMap<(String, String), Bundle>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

fn object(doc: &Doc) -> String {
    format!("{} {}", doc.kind(), doc.name())
}

fn at(doc: &Doc, severity: Severity, code: &str, path: &str, message: String) -> Finding {
    Finding {
        location: match named(&message).and_then(|n| doc.line_naming(n)) {
            Some(l) => l,
            None if path.is_empty() => doc.location(),
            None => doc.at(path),
        },
        severity,
        code: code.to_owned(),
        object: object(doc),
        message,
    }
}

/// The object a problem says is missing (`... names endpoint X, which does not exist`), whose
/// mention in the document is where the problem is.
fn named(message: &str) -> Option<&str> {
    let (_, rest) = message
        .split_once(" names ")
        .or_else(|| message.split_once(" admits "))?;
    let rest = rest.strip_prefix("key ring ").unwrap_or(rest);
    let rest = ["endpoint ", "role ", "zone ", "Secret "]
        .iter()
        .find_map(|k| rest.strip_prefix(k))
        .unwrap_or(rest);
    rest.split([',', ' ']).next().filter(|n| !n.is_empty())
}

/// Checks `docs` as one folder of policy; documents without a namespace are in `default_ns`.
pub fn check(docs: Vec<Doc>, default_ns: &str, now: i64) -> anyhow::Result<Report> {
    let schemas = Schemas::ours();
    let mut findings = Vec::new();
    let mut admitted = Vec::new();
    let mut seen: BTreeMap<(String, String, String), Doc> = BTreeMap::new();
    // Documents the schema refused: still read into the world when they can be (so that one
    // refused field does not make every reference to the object fail too), but not reported
    // twice when they cannot.
    let mut refused = std::collections::BTreeSet::new();
    for doc in docs {
        if doc.is_policy() {
            let (value, refusals) = schemas.admit(&doc.value);
            for r in &refusals {
                findings.push(at(
                    &doc,
                    Severity::Error,
                    "Schema",
                    &r.path,
                    format!("{}: {}", r.path, r.message),
                ));
            }
            if !refusals.is_empty() {
                refused.insert((doc.file.clone(), doc.line));
            }
            admitted.push((doc, value));
        } else if matches!(doc.kind(), "Secret" | "SealedSecret" | "ExternalSecret") {
            let v = doc.value.clone();
            admitted.push((doc, v));
        } else {
            continue;
        }
        let d = &admitted.last().expect("pushed").0;
        let key = (
            d.namespace().unwrap_or(default_ns).to_owned(),
            d.kind().to_owned(),
            d.name().to_owned(),
        );
        if let Some(first) = seen.get(&key) {
            findings.push(at(
                d,
                Severity::Error,
                "Duplicate",
                "metadata.name",
                format!(
                    "also defined at {}; the later one would replace it",
                    first.location()
                ),
            ));
        } else {
            seen.insert(key, d.clone());
        }
    }

    let (mut namespaces, unreadable) = offline::namespaces(&admitted, default_ns);
    for u in unreadable
        .into_iter()
        .filter(|u| !refused.contains(&(u.doc.file.clone(), u.doc.line)))
    {
        findings.push(at(&u.doc, Severity::Error, "Schema", "", u.message));
    }
    let mut bundles = BTreeMap::new();
    for ns in namespaces.values_mut() {
        // A refused gateway never reaches the operator: nothing to compile.
        let docs = &ns.docs;
        ns.gateways.retain(|name, _| {
            docs.get(&("TransferGateway".to_owned(), name.clone()))
                .is_none_or(|d| !refused.contains(&(d.file.clone(), d.line)))
        });
        ns.complete(now)?;
        check_namespace(ns, &mut findings, &mut bundles);
    }
    findings.sort_by(|a, b| {
        (file_line(&a.location), a.severity, &a.message).cmp(&(
            file_line(&b.location),
            b.severity,
            &b.message,
        ))
    });
    findings.dedup();
    Ok(Report {
        findings,
        namespaces,
        bundles,
    })
}

/// `file:line` ordered by file, then line as a number.
fn file_line(loc: &str) -> (&str, usize) {
    match loc.rsplit_once(':') {
        Some((f, l)) => (f, l.parse().unwrap_or(0)),
        None => (loc, 0),
    }
}

fn check_namespace(
    ns: &Namespace,
    findings: &mut Vec<Finding>,
    bundles: &mut BTreeMap<(String, String), Bundle>,
) {
    let w = &ns.world;
    let doc = |kind: &str, name: &str| ns.docs.get(&(kind.to_owned(), name.to_owned()));
    // Each object's own problems, as its status would give them.
    let mut reported = std::collections::BTreeSet::new();
    // The notes a status carries are about FTPS logins: worth a warning only where a gateway
    // of the namespace offers FTPS.
    let ftps = ns
        .gateways
        .values()
        .any(|g| g.spec.listeners.iter().any(|l| l.protocol.is_ftps()));
    let note = if ftps {
        Severity::Warning
    } else {
        Severity::Note
    };
    let mut own = |kind: &str, name: &str, problems: Vec<validate::Problem>, notes: Vec<String>| {
        let Some(d) = doc(kind, name) else { return };
        for p in problems {
            reported.insert(p.message.clone());
            findings.push(at(d, Severity::Error, p.reason.as_str(), "spec", p.message));
        }
        for n in notes {
            findings.push(at(d, note, "StatusNote", "spec", n));
        }
    };
    for (n, o) in &w.endpoints {
        own("TransferEndpoint", n, o.problems(w), o.notes());
    }
    for (n, o) in &w.roles {
        own("TransferRole", n, o.problems(w), o.notes());
    }
    for (n, o) in &w.users {
        own("TransferUser", n, o.problems(w), o.notes());
    }
    for (n, o) in &w.zones {
        own("NetworkZone", n, o.problems(w), o.notes());
    }

    // Each gateway compiled as the operator compiles it.
    for (name, gw) in &ns.gateways {
        let Some(d) = doc("TransferGateway", name) else {
            continue;
        };
        // Whether the install allows another image is not in the files: a warning.
        if let Some(p) = validate::image_problem(&gw.spec.image, &[]) {
            findings.push(at(
                d,
                Severity::Warning,
                p.reason.as_str(),
                "spec.image",
                p.message,
            ));
        }
        match validate::compile(gw, w) {
            Ok(b) => {
                bundles.insert((ns.name.clone(), name.clone()), b);
            }
            Err(problems) => {
                for p in problems
                    .into_iter()
                    .filter(|p| !reported.contains(&p.message))
                {
                    let d = blamed(ns, &p.message).unwrap_or(d);
                    findings.push(at(d, Severity::Error, p.reason.as_str(), "spec", p.message));
                }
            }
        }
    }

    lints(ns, findings);

    for (secret, keys) in &ns.placeholders {
        let by = ns.supplied.get(secret).map_or_else(
            || "not in these files".to_owned(),
            |s| format!("supplied by the {s}"),
        );
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let referrer = w
            .users
            .iter()
            .filter(|(_, u)| {
                portcullis_operator::shared::dereference::user_secret_names(u).any(|s| &s == secret)
            })
            .map(|(n, _)| ("TransferUser", n.as_str()))
            .chain(
                w.endpoints
                    .iter()
                    .filter(|(_, e)| e.spec.credentials.secret_name == *secret)
                    .map(|(n, _)| ("TransferEndpoint", n.as_str())),
            )
            .chain(
                ns.gateways
                    .iter()
                    .filter(|(_, g)| {
                        g.spec
                            .audit
                            .collector
                            .as_ref()
                            .is_some_and(|c| c.ca.name == *secret)
                    })
                    .map(|(n, _)| ("TransferGateway", n.as_str())),
            )
            .find_map(|(k, n)| doc(k, n));
        if let Some(d) = referrer {
            findings.push(at(
                d,
                Severity::Note,
                "SecretAssumed",
                "spec",
                format!(
                    "Secret {secret} is {by}; checked as if it holds {} in the right form",
                    keys.join(", ")
                ),
            ));
        }
    }
}

/// The object a compiled-config problem is about, when its path names one: `users[N]` and
/// `roles[N]` are in the order the compile step takes them, the world's (by name).
fn blamed<'n>(ns: &'n Namespace, message: &str) -> Option<&'n Doc> {
    let path = message.strip_prefix("compiled config: ")?;
    let index = |prefix: &str| -> Option<usize> {
        path.strip_prefix(prefix)?.split(']').next()?.parse().ok()
    };
    let (kind, name) = if let Some(i) = index("users[") {
        ("TransferUser", ns.world.users.keys().nth(i)?)
    } else if let Some(i) = index("roles[") {
        ("TransferRole", ns.world.roles.keys().nth(i)?)
    } else {
        return None;
    };
    ns.docs.get(&(kind.to_owned(), name.clone()))
}

/// What is valid but a reviewer should see.
fn lints(ns: &Namespace, findings: &mut Vec<Finding>) {
    let w = &ns.world;
    let doc = |kind: &str, name: &str| ns.docs.get(&(kind.to_owned(), name.to_owned()));
    for (name, z) in &w.zones {
        for (i, c) in z.spec.cidrs.iter().enumerate() {
            if c.parse::<ipnet::IpNet>().is_ok_and(|n| n.prefix_len() == 0)
                && let Some(d) = doc("NetworkZone", name)
            {
                findings.push(at(d, Severity::Warning, "OpenZone", &format!("spec.cidrs[{i}]"), format!(
                    "{c} admits every address; a DMZ zone should name the networks that send files"
                )));
            }
        }
    }
    for (name, e) in &w.endpoints {
        let plaintext = e.spec.protocol == EndpointProtocol::Ftps
            && e.spec
                .ftps
                .as_ref()
                .is_some_and(|f| f.security == FtpSecurity::Plaintext);
        if plaintext && let Some(d) = doc("TransferEndpoint", name) {
            findings.push(at(d, Severity::Warning, "PlaintextEndpoint", "spec.ftps.security", format!(
                "files and the backend password cross the network to {} in cleartext (allowPlaintext is set)",
                e.spec.addresses.iter().map(|a| format!("{}:{}", a.host, a.port)).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    for name in w.roles.keys() {
        if !w.users.values().any(|u| u.spec.roles.contains(name))
            && let Some(d) = doc("TransferRole", name)
        {
            findings.push(at(
                d,
                Severity::Warning,
                "UnusedRole",
                "metadata.name",
                "no user has this role".into(),
            ));
        }
    }
    let listener_zones: Vec<(&str, Protocol, &String)> = ns
        .gateways
        .values()
        .flat_map(|g| g.spec.listeners.iter())
        .flat_map(|l| {
            l.zones
                .iter()
                .map(move |z| (l.name.as_str(), l.protocol, z))
        })
        .collect();
    for (name, u) in &w.users {
        let Some(d) = doc("TransferUser", name) else {
            continue;
        };
        let s = &u.spec;
        if s.disabled {
            findings.push(at(
                d,
                Severity::Note,
                "Disabled",
                "spec.disabled",
                "the account is disabled".into(),
            ));
        }
        if let Some(t) = &s.expires_at
            && chrono::DateTime::parse_from_rfc3339(t).is_ok_and(|t| t.timestamp() <= w.now)
        {
            findings.push(at(
                d,
                Severity::Warning,
                "Expired",
                "spec.expiresAt",
                format!("the account expired at {t}"),
            ));
        }
        if !ns.gateways.is_empty() {
            let reachable = listener_zones
                .iter()
                .any(|(_, _, z)| s.zones.is_empty() || s.zones.contains(z));
            if !reachable {
                findings.push(at(
                    d,
                    Severity::Warning,
                    "UnreachableUser",
                    "spec.zones",
                    format!(
                        "no listener of any gateway admits the user's zones ({})",
                        s.zones.join(", ")
                    ),
                ));
            }
        }
    }
}
