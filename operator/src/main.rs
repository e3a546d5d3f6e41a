//! `portcullis-operator`: reconciles transfer policy into hardened gateway deployments.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use portcullis_operator::{RunArgs, run};

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
            let result = rt.block_on(run::run(args));
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
