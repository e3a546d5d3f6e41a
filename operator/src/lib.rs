//! The Portcullis operator as a library: the controllers and their pure steps (dereference,
//! validate, build), which `portcullis-operator` runs against a cluster and
//! `kubectl-portcullis` runs offline against files.

use std::net::SocketAddr;

pub mod controller;
pub mod crds;
pub mod keyring;
pub mod metrics;
pub mod run;
pub mod shared;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Hold a Lease so that only one replica reconciles.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// The namespace of the leader-election Lease (default: the pod's namespace, or `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// The Lease name.
    #[arg(long, default_value = "portcullis-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease lasts without renewal (2 to 3600).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_duration_seconds: u64,
    /// Log format: `json` (default) or `text`.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// A gateway image the operator may deploy besides its default: an exact reference, or a
    /// prefix ending in `*`. Repeat for more. A TransferGateway naming any other image is
    /// refused (`ImageNotAllowed`).
    #[arg(long, value_parser = image_pattern)]
    pub allowed_gateway_image: Vec<String>,
    /// A namespace whose pods may reach the gateways' admin port (`/metrics`): where the
    /// cluster's Prometheus runs. Repeat for more. The operator's own namespace is always
    /// allowed (it reads each pod's `/config`); no other namespace is.
    #[arg(long, value_parser = namespace_name)]
    pub metrics_namespace: Vec<String>,
    /// Once leading, apply this build's CRDs (server-side apply) unless a newer operator
    /// applied them, and stop if that fails. Helm never upgrades a chart's `crds/`; the chart
    /// sets this, with get and patch on the six CRDs.
    #[arg(long)]
    pub manage_crds: bool,
    /// Watch only this namespace (repeat for more): the operator lists, watches and reads
    /// nothing elsewhere, so Roles in these namespaces are all the access it needs (the
    /// chart's `watchNamespaces`). Without it, every namespace.
    #[arg(long, value_parser = namespace_name)]
    pub watch_namespace: Vec<String>,
    /// The operator's own namespace, when it runs in a pod (set by the chart).
    #[arg(skip = std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))]
    pub pod_namespace: Option<String>,
}

/// A namespace name: a DNS label.
fn namespace_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then(|| s.to_owned())
        .ok_or_else(|| format!("{s:?} is not a namespace name (a DNS label)"))
}

/// An allowed-image entry: no whitespace, and a `*` only at the end of a prefix that names at
/// least a registry or repository (`*` alone would allow every image).
fn image_pattern(s: &str) -> Result<String, String> {
    let body = s.strip_suffix('*').unwrap_or(s);
    if body.is_empty() || body.contains(|c: char| c.is_whitespace() || c == '*') {
        return Err(format!(
            "{s:?} is not an image reference or a prefix ending in * (such as registry.example/portcullis/*)"
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod layering {
    //! The drivers (`controller`: gateway and policy; `keyring`) never import each other, and
    //! `shared` imports none of them: read off the sources, so a new import that breaks the
    //! rule fails here.

    use std::path::Path;

    /// Every `.rs` file under `dir` with its text.
    fn sources(dir: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&root).expect("a source directory") {
            let p = e.expect("an entry").path();
            if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("a source file");
                out.push((p.display().to_string(), text));
            }
        }
        assert!(!out.is_empty(), "{dir}");
        out
    }

    fn imports(text: &str, module: &str) -> bool {
        text.contains(&format!("crate::{module}")) || text.contains(&format!("crate::{{{module}"))
    }

    #[test]
    fn drivers_do_not_import_each_other_and_shared_imports_no_driver() {
        for (file, text) in sources("shared") {
            for driver in ["controller", "keyring", "run"] {
                assert!(!imports(&text, driver), "{file} imports {driver}");
            }
        }
        for (file, text) in sources("keyring") {
            assert!(
                !imports(&text, "controller"),
                "{file} imports the gateway driver"
            );
        }
        for (file, text) in sources("controller") {
            assert!(
                !imports(&text, "keyring"),
                "{file} imports the key ring driver"
            );
            assert!(!imports(&text, "run"), "{file} imports the runner");
        }
    }
}
