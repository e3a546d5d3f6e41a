//! Policy: path normalization, a user's virtual tree of mounts, and the allow/deny decision.
//!
//! Everything here is pure. Deny is the default: a path outside every mount, or a verb that no
//! role grants on the mount, is refused with the reason; an allowed operation carries the rule
//! that allowed it, so the audit record can name it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use portcullis_config::{Role, Verb};

/// A normalized absolute virtual path: starts with `/`, no empty, `.` or `..` segments, no
/// trailing slash (except the root itself), no NUL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VPath(String);

/// Why a path was refused before any policy was consulted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path is longer than {max} bytes")]
    TooLong { max: usize },
}

impl VPath {
    pub const MAX_LEN: usize = 4096;

    pub fn root() -> VPath {
        VPath("/".to_owned())
    }

    /// Normalizes a client path lexically, relative to `/`. `..` never climbs above the root,
    /// exactly as in a chroot, so `../../etc/passwd` is `/etc/passwd` in the virtual tree, which
    /// no mount can contain unless a mount is literally named `/etc`.
    pub fn parse(raw: &str) -> Result<VPath, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(PathError::TooLong { max: Self::MAX_LEN });
        }
        let mut parts: Vec<&str> = Vec::new();
        for seg in raw.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                s => parts.push(s),
            }
        }
        let mut out = String::with_capacity(raw.len() + 1);
        for p in &parts {
            out.push('/');
            out.push_str(p);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(VPath(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// `self` is `base` or below it.
    fn strip_prefix(&self, base: &str) -> Option<&str> {
        let rest = self.0.strip_prefix(base)?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One mount in a user's tree: the union of every role that mounts the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountGrant {
    pub path: String,
    pub endpoint: String,
    pub backend_path: String,
    /// Each allowed verb, with the first role (in the user's role order) that grants it.
    pub verbs: BTreeMap<Verb, String>,
    /// `SITE` subcommands (upper-cased first words) any role allows here, with the verb `site`.
    pub site_commands: BTreeSet<String>,
    /// Permission bits no client-set mode may carry: every role's umask for the path, added up.
    pub umask: u32,
    /// The largest a file may become here: the smallest any role sets.
    pub max_file_bytes: Option<u64>,
}

impl MountGrant {
    /// The permission bits of a mode a client asks for that may be set here: never setuid,
    /// setgid, sticky or type bits, and nothing the umask removes.
    pub fn settable_mode(&self, mode: u32) -> u32 {
        mode & 0o777 & !self.umask
    }
}

impl MountGrant {
    /// Joins a path relative to the mount onto the backend path.
    pub fn backend_path_of(&self, rel: &str) -> String {
        match (self.backend_path.trim_end_matches('/'), rel) {
            ("", "") => "/".to_owned(),
            (base, "") => base.to_owned(),
            (base, rel) => format!("{base}/{rel}"),
        }
    }
}

/// Where a virtual path lands.
#[derive(Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// The root or a directory above some mount; it lists the next segments of mount paths.
    Virtual { children: BTreeSet<String> },
    /// Inside a mount; `rel` is empty at the mount point itself.
    Mounted {
        mount: &'a MountGrant,
        rel: String,
        backend_path: String,
    },
    /// Outside every mount.
    Nowhere,
}

/// A decision that allows: the rule that allowed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed<'a> {
    pub mount: &'a MountGrant,
    pub backend_path: String,
    pub rule: String,
}

/// A decision that denies, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// A user's virtual tree: the union of its roles' mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    mounts: Vec<MountGrant>,
}

impl Tree {
    /// Builds the tree from the user's roles, in the user's order. The config's `validate`
    /// guarantees that mounts with the same path agree on their target and do not nest.
    pub fn build<'a>(user_roles: &[String], roles: impl IntoIterator<Item = &'a Role>) -> Tree {
        let by_name: BTreeMap<&str, &Role> =
            roles.into_iter().map(|r| (r.name.as_str(), r)).collect();
        let mut mounts: BTreeMap<String, MountGrant> = BTreeMap::new();
        for role in user_roles.iter().filter_map(|n| by_name.get(n.as_str())) {
            for m in &role.mounts {
                let grant = mounts.entry(m.path.clone()).or_insert_with(|| MountGrant {
                    path: m.path.clone(),
                    endpoint: m.endpoint.clone(),
                    backend_path: m.backend_path.clone(),
                    verbs: BTreeMap::new(),
                    site_commands: BTreeSet::new(),
                    umask: 0,
                    max_file_bytes: None,
                });
                // An unreadable umask (refused by validate) masks everything: fail closed.
                grant.umask |= portcullis_config::parse_umask(&m.umask).unwrap_or(0o777);
                grant.max_file_bytes = match (grant.max_file_bytes, m.max_file_bytes) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                for v in &m.verbs {
                    grant.verbs.entry(*v).or_insert_with(|| role.name.clone());
                }
                if m.verbs.contains(&Verb::Site) {
                    grant
                        .site_commands
                        .extend(m.site_commands.iter().map(|c| c.to_ascii_uppercase()));
                }
            }
        }
        Tree {
            mounts: mounts.into_values().collect(),
        }
    }

    pub fn locate(&self, path: &VPath) -> Location<'_> {
        for m in &self.mounts {
            if let Some(rel) = path.strip_prefix(&m.path) {
                return Location::Mounted {
                    mount: m,
                    rel: rel.to_owned(),
                    backend_path: m.backend_path_of(rel),
                };
            }
        }
        let mut children = BTreeSet::new();
        for m in &self.mounts {
            let below = if path.is_root() {
                Some(&m.path[1..])
            } else {
                m.path
                    .strip_prefix(path.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
            };
            if let Some(below) = below.filter(|b| !b.is_empty()) {
                children.insert(below.split('/').next().unwrap_or(below).to_owned());
            }
        }
        if path.is_root() || !children.is_empty() {
            Location::Virtual { children }
        } else {
            Location::Nowhere
        }
    }

    /// Whether `authorize` would allow `verb` on `path`, without building the decision (no
    /// strings): the re-check on every read and write of an open handle. A `false` goes on to
    /// `authorize` for the reason and its audit record.
    pub fn grants(&self, verb: Verb, path: &VPath) -> bool {
        self.mounts
            .iter()
            .find_map(|m| path.strip_prefix(&m.path).map(|rel| (m, rel)))
            .is_some_and(|(m, rel)| {
                !(rel.is_empty() && matches!(verb, Verb::Delete | Verb::Rmdir | Verb::Rename))
                    && m.verbs.contains_key(&verb)
            })
    }

    /// The one decision: may this user apply `verb` to `path`?
    pub fn authorize(&self, verb: Verb, path: &VPath) -> Result<Allowed<'_>, Denied> {
        match self.locate(path) {
            Location::Mounted {
                mount,
                rel,
                backend_path,
            } => {
                if rel.is_empty() && matches!(verb, Verb::Delete | Verb::Rmdir | Verb::Rename) {
                    return Err(Denied(format!(
                        "{path} is a mount point; it cannot be removed or renamed"
                    )));
                }
                match mount.verbs.get(&verb) {
                    Some(role) => Ok(Allowed {
                        mount,
                        backend_path,
                        rule: format!("role {role}: mount {} allows {verb}", mount.path),
                    }),
                    None => Err(Denied(format!(
                        "no role grants {verb} on mount {}",
                        mount.path
                    ))),
                }
            }
            Location::Virtual { .. } => Err(Denied(format!(
                "{path} is a virtual directory; only list is possible there"
            ))),
            Location::Nowhere => Err(Denied(format!("{path} is outside every mount"))),
        }
    }

    /// May this user send `SITE <command>` from `path`? The verb `site` on the mount, and the
    /// subcommand's first word on its allow-list.
    pub fn authorize_site(&self, path: &VPath, command: &str) -> Result<Allowed<'_>, Denied> {
        let allowed = self.authorize(Verb::Site, path)?;
        let word = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if allowed.mount.site_commands.contains(&word) {
            Ok(allowed)
        } else {
            Err(Denied(format!(
                "SITE {word} is not on mount {}'s allow-list",
                allowed.mount.path
            )))
        }
    }
}

/// A client's path argument made absolute against the working directory `cwd`, with `.` and
/// `..` resolved (never above `/`).
pub fn join(cwd: &str, arg: &str) -> String {
    let mut parts: Vec<&str> = if arg.starts_with('/') {
        Vec::new()
    } else {
        cwd.split('/').filter(|s| !s.is_empty()).collect()
    };
    for seg in arg.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use portcullis_config::Mount;

    use super::*;

    fn vp(s: &str) -> VPath {
        VPath::parse(s).unwrap()
    }

    fn role(name: &str, mounts: &[(&str, &str, &str, &[Verb])]) -> Role {
        Role {
            name: name.to_owned(),
            mounts: mounts
                .iter()
                .map(|(p, e, b, v)| Mount {
                    path: (*p).to_owned(),
                    endpoint: (*e).to_owned(),
                    backend_path: (*b).to_owned(),
                    verbs: v.iter().copied().collect(),
                    site_commands: if v.contains(&Verb::Site) {
                        vec!["FILETYPE=JES".into()]
                    } else {
                        vec![]
                    },
                    umask: "022".into(),
                    max_file_bytes: None,
                })
                .collect(),
        }
    }

    fn tree() -> Tree {
        let roles = [
            role(
                "readers",
                &[("/in/daily", "mf", "/data/in", &[Verb::List, Verb::Read])],
            ),
            role(
                "writers",
                &[
                    ("/in/daily", "mf", "/data/in", &[Verb::Write]),
                    (
                        "/out",
                        "local",
                        "/",
                        &[Verb::List, Verb::Read, Verb::Delete],
                    ),
                ],
            ),
            role("unrelated", &[("/secret", "mf", "/", &[Verb::Read])]),
        ];
        Tree::build(&["readers".into(), "writers".into()], &roles)
    }

    #[test]
    fn grants_agrees_with_authorize() {
        let t = tree();
        for p in [
            "/",
            "/in",
            "/in/daily",
            "/in/daily/a.txt",
            "/out",
            "/out/x/y",
            "/secret",
            "/outx",
        ] {
            for v in Verb::ALL {
                assert_eq!(
                    t.grants(v, &vp(p)),
                    t.authorize(v, &vp(p)).is_ok(),
                    "{v} {p}"
                );
            }
        }
    }

    #[test]
    fn site_needs_the_verb_and_the_allow_list() {
        let roles = vec![
            role("jes", &[("/mf", "mf", "/", &[Verb::List, Verb::Site])]),
            role("plain", &[("/other", "mf", "/x", &[Verb::List])]),
        ];
        let t = Tree::build(&["jes".into(), "plain".into()], &roles);
        assert!(t.authorize_site(&vp("/mf"), "filetype=jes").is_ok());
        assert!(
            t.authorize_site(&vp("/mf/sub"), "FILETYPE=JES NOWAIT")
                .is_ok()
        );
        let no = t.authorize_site(&vp("/mf"), "CHMOD 777 x").unwrap_err();
        assert_eq!(no.0, "SITE CHMOD is not on mount /mf's allow-list");
        let no = t.authorize_site(&vp("/other"), "FILETYPE=JES").unwrap_err();
        assert_eq!(no.0, "no role grants site on mount /other");
        assert!(t.authorize_site(&vp("/"), "FILETYPE=JES").is_err());
    }

    #[test]
    fn normalization_never_escapes_the_root() {
        for (raw, want) in [
            ("", "/"),
            (".", "/"),
            ("/", "/"),
            ("..", "/"),
            ("../../etc/passwd", "/etc/passwd"),
            ("/out/../../../etc/passwd", "/etc/passwd"),
            ("//out///a//", "/out/a"),
            ("out/./a/./b/..", "/out/a"),
            ("/out/a/../../out/b", "/out/b"),
        ] {
            assert_eq!(vp(raw).as_str(), want, "{raw:?}");
        }
        assert_eq!(VPath::parse("/out/a\0b"), Err(PathError::Nul));
        assert!(VPath::parse(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn roles_union_per_mount_and_name_the_granting_role() {
        let t = tree();
        let read = t.authorize(Verb::Read, &vp("/in/daily/x.dat")).unwrap();
        assert_eq!(read.rule, "role readers: mount /in/daily allows read");
        assert_eq!(read.backend_path, "/data/in/x.dat");
        let write = t.authorize(Verb::Write, &vp("/in/daily/x.dat")).unwrap();
        assert_eq!(write.rule, "role writers: mount /in/daily allows write");
        assert_eq!(
            t.authorize(Verb::Delete, &vp("/in/daily/x.dat")),
            Err(Denied("no role grants delete on mount /in/daily".into()))
        );
    }

    #[test]
    fn deny_is_the_default() {
        let t = tree();
        assert!(
            t.authorize(Verb::Read, &vp("/secret/x")).is_err(),
            "role not granted"
        );
        assert!(t.authorize(Verb::Read, &vp("/etc/passwd")).is_err());
        assert!(
            t.authorize(Verb::Read, &vp("/in/dailyx/y")).is_err(),
            "prefix is not a mount"
        );
        assert!(t.authorize(Verb::Write, &vp("/in")).is_err(), "virtual dir");
        assert!(t.authorize(Verb::Write, &vp("/")).is_err());
        assert!(
            t.authorize(Verb::Delete, &vp("/out")).is_err(),
            "mount point"
        );
        assert!(
            t.authorize(Verb::Read, &vp("/out/../../etc/passwd"))
                .is_err()
        );
        assert!(Tree::default().authorize(Verb::List, &vp("/x")).is_err());
    }

    #[test]
    fn traversal_stays_inside_the_mount() {
        let t = tree();
        let a = t
            .authorize(Verb::Read, &vp("/out/../out/../../out/a/../b"))
            .unwrap();
        assert_eq!(a.backend_path, "/b");
        assert_eq!(a.mount.path, "/out");
    }

    #[test]
    fn virtual_directories_list_mount_segments() {
        let t = tree();
        let kids = |p: &str| match t.locate(&vp(p)) {
            Location::Virtual { children } => children.into_iter().collect::<Vec<_>>(),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(kids("/"), ["in", "out"]);
        assert_eq!(kids("/in"), ["daily"]);
        assert_eq!(t.locate(&vp("/nope")), Location::Nowhere);
    }

    #[test]
    fn backend_path_joins() {
        let m = |b: &str| MountGrant {
            path: "/m".into(),
            endpoint: "e".into(),
            backend_path: b.into(),
            verbs: BTreeMap::new(),
            site_commands: BTreeSet::new(),
            umask: 0o022,
            max_file_bytes: None,
        };
        assert_eq!(m("/").backend_path_of(""), "/");
        assert_eq!(m("/").backend_path_of("a/b"), "/a/b");
        assert_eq!(m("/x/").backend_path_of("a"), "/x/a");
        assert_eq!(m("/x").backend_path_of(""), "/x");
    }

    #[test]
    fn mounts_of_one_path_take_the_strictest_umask_and_file_limit() {
        let mut a = role("a", &[("/m", "e", "/", &[Verb::Write])]);
        let mut b = role("b", &[("/m", "e", "/", &[Verb::Setattr])]);
        a.mounts[0].umask = "027".into();
        a.mounts[0].max_file_bytes = Some(5 << 20);
        b.mounts[0].umask = "0002".into();
        b.mounts[0].max_file_bytes = Some(1 << 20);
        let t = Tree::build(&["a".into(), "b".into()], [&a, &b]);
        let m = t.authorize(Verb::Setattr, &vp("/m/f")).unwrap().mount;
        assert_eq!(m.umask, 0o027);
        assert_eq!(m.max_file_bytes, Some(1 << 20));
        assert_eq!(m.settable_mode(0o4777), 0o750);
        b.mounts[0].max_file_bytes = None;
        b.mounts[0].umask = "bad".into();
        let t = Tree::build(&["a".into(), "b".into()], [&a, &b]);
        let m = t.authorize(Verb::Write, &vp("/m/f")).unwrap().mount;
        assert_eq!(
            m.max_file_bytes,
            Some(5 << 20),
            "an unset limit does not lift another"
        );
        assert_eq!(
            m.settable_mode(0o777),
            0,
            "an unreadable umask masks everything"
        );
    }
}
