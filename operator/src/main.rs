//! `portcullis-operator`: reconciles transfer policy into hardened gateway deployments.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

mod controller;
mod crds;
mod keyring;
mod metrics;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the CustomResourceDefinitions as YAML, or writes one file per kind into each
    /// `--dir` (the repository keeps `crds/` and `charts/portcullis/crds/`), and each kind's JSON
    /// Schema under `--schemas` (`crds/schemas/`: GROUP/KIND_VERSION.json, for editors and
    /// kubeconform).
    Crd {
        #[arg(long)]
        dir: Vec<PathBuf>,
        #[arg(long)]
        schemas: Option<PathBuf>,
    },
    /// Runs the controllers against the cluster in KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { dir, schemas } => match write_crds(dir, schemas) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis-operator crd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_tracing(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let result = rt.block_on(controller::run(args));
            rt.shutdown_timeout(Duration::from_secs(5));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn write_crds(dirs: Vec<PathBuf>, schemas: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = portcullis_api::crds();
    if let Some(root) = schemas {
        for (_, crd) in &crds {
            let file = root.join(portcullis_api::json_schema_path(crd));
            std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
            std::fs::write(file, portcullis_api::json_schema_text(crd))?;
        }
    }
    if dirs.is_empty() {
        for (_, crd) in &crds {
            print!("---\n{}", portcullis_api::crd_yaml(crd));
        }
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (stem, crd) in &crds {
            std::fs::write(
                dir.join(format!("{stem}.yaml")),
                portcullis_api::crd_yaml(crd),
            )?;
        }
    }
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
