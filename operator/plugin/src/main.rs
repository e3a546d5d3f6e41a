//! `kubectl portcullis`: transfer policy checked, explained and diffed offline with the
//! operator's own compile step and the gateway's own policy engine, and gateways' live status.
//!
//! Installed on the `PATH` as `kubectl-portcullis`, kubectl runs it as `kubectl portcullis`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

mod check;
mod diff;
mod explain;
#[cfg(test)]
mod golden;
mod load;
mod offline;
mod schema;
mod status;

#[derive(Parser)]
#[command(name = "kubectl-portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check, explain, diff or compile policy files (offline; no cluster needed).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show each gateway's conditions, listeners and addresses, certificate expiry, host keys
    /// and whether its pods serve the config the operator wrote (reads the cluster in
    /// KUBECONFIG).
    Status {
        /// One gateway; all in the namespace without it.
        gateway: Option<String>,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Verify the audit trail, or print and check transfer receipts.
    #[command(subcommand)]
    Audit(portcullis_gateway::audit::cli::AuditCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a folder (or files, or `-` for standard input) as the apiserver and the operator
    /// would: CRD schemas with their CEL rules, references, conflicting mounts, auth methods,
    /// and what a reviewer should see (open zones, plaintext endpoints, unused roles). Prints
    /// each finding at its file and line; exits 1 on any error (and, with --strict, warning).
    Check {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The namespace of documents that name none.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Warnings fail the check too.
        #[arg(long)]
        strict: bool,
        /// Print notes as well (Secrets assumed to come from elsewhere, disabled users).
        #[arg(short, long)]
        verbose: bool,
    },
    /// The decision a gateway compiled from these files makes for one request, and why: the
    /// listener and zone that admit the client, the user checks, and the rule that allows or
    /// denies, with the endpoint and backend path the request maps to. Exits 0 on allow, 3 on
    /// deny.
    Explain {
        #[command(flatten)]
        target: Target,
        /// The login name.
        #[arg(long)]
        user: String,
        /// The client's address.
        #[arg(long)]
        from: IpAddr,
        #[arg(long, value_enum)]
        protocol: explain::Front,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
        /// list, read, write, delete, mkdir, rmdir, rename, setattr, site, link.
        verb: String,
        path: String,
    },
    /// What changes from OLD to NEW: users gaining or losing verbs on paths, and changed
    /// zones, endpoints, key rings and gateways. Give `-f OLD -f NEW`.
    Diff {
        #[arg(short = 'f', long = "filename", num_args = 1, required = true)]
        files: Vec<PathBuf>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long, value_enum, default_value = "text")]
        output: DiffOutput,
    },
    /// Write a gateway's compiled bundle (config.yaml and the files it names) into a
    /// directory, as the operator would write its config Secret: to run a gateway from Git
    /// locally, or to read what the operator will deploy. Key rings are issued offline and
    /// Secrets the files do not hold are placeholders (said on stderr): not for production.
    Compile {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        out: PathBuf,
    },
}

/// The files and the one gateway in them that `explain` and `compile` work on.
#[derive(clap::Args)]
struct Target {
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The namespace (default: the only one the files have, else `default`).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The gateway (needed when the namespace has more than one).
    #[arg(long)]
    gateway: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiffOutput {
    Text,
    Markdown,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(p) => policy(p),
        Command::Audit(a) => return portcullis_gateway::audit::cli::run(a),
        Command::Status {
            gateway,
            namespace,
            all_namespaces,
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(status::status(
                    status::Scope {
                        namespace: namespace.as_deref(),
                        all_namespaces,
                        gateway: gateway.as_deref(),
                    },
                    now(),
                ))
            })
            .map(|report| match report {
                Some(r) => {
                    print!("{r}");
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("no TransferGateway found");
                    ExitCode::FAILURE
                }
            }),
    };
    result.unwrap_or_else(|e| {
        eprintln!("kubectl-portcullis: {e:#}");
        ExitCode::from(2)
    })
}

fn policy(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check {
            files,
            namespace,
            strict,
            verbose,
        } => {
            let report = check::check(load::load(&files)?, &namespace, now())?;
            for f in &report.findings {
                if verbose || f.severity != check::Severity::Note {
                    println!("{f}");
                }
            }
            let (errors, warnings) = (report.errors(), report.count(check::Severity::Warning));
            let objects: usize = report.namespaces.values().map(|n| n.docs.len()).sum();
            println!(
                "{objects} objects in {} namespace(s), {} gateway(s) compiled: {errors} error(s), {warnings} warning(s)",
                report.namespaces.len(),
                report.bundles.len()
            );
            Ok(if errors > 0 || (strict && warnings > 0) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        PolicyCommand::Explain {
            target,
            user,
            from,
            protocol,
            output,
            verb,
            path,
        } => {
            let verb: portcullis_config::Verb =
                serde_yaml_ng::from_str(&verb).map_err(|_| anyhow::anyhow!("{verb:?} is not a verb (list, read, write, delete, mkdir, rmdir, rename, setattr, site, link)"))?;
            let (_, _, bundle, _) = compiled(&target)?;
            let d = explain::explain(
                &bundle.config,
                &explain::Request {
                    user: &user,
                    from,
                    front: protocol,
                    verb,
                    path: &path,
                },
                chrono::Utc::now(),
            );
            match output {
                Output::Text => print!("{d}"),
                Output::Json => println!("{}", serde_json::to_string(&d)?),
            }
            Ok(if d.allow {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        PolicyCommand::Diff {
            files,
            namespace,
            output,
        } => {
            let [old, new] = files.as_slice() else {
                anyhow::bail!("give exactly two: -f OLD -f NEW");
            };
            let read = |p: &PathBuf| -> anyhow::Result<_> {
                Ok(
                    check::check(load::load(std::slice::from_ref(p))?, &namespace, now())?
                        .namespaces,
                )
            };
            let (old, new) = (read(old)?, read(new)?);
            let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            let empty = offline::Namespace::default();
            for ns in names {
                let sections =
                    diff::diff(old.get(ns).unwrap_or(&empty), new.get(ns).unwrap_or(&empty));
                print!(
                    "{}",
                    diff::render(ns, &sections, output == DiffOutput::Markdown)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Compile { target, out } => {
            let (namespace, name, bundle, stand_ins) = compiled(&target)?;
            if !stand_ins.is_empty() {
                eprintln!(
                    "note: stood in for what the files do not hold: {}",
                    stand_ins.join(", ")
                );
            }
            std::fs::create_dir_all(&out)?;
            for (file, bytes) in &bundle.files {
                let path = out.join(file);
                std::fs::write(&path, bytes)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            eprintln!(
                "gateway {namespace}/{name}: {} files in {} (config hash {})",
                bundle.files.len(),
                out.display(),
                bundle.hash
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The one gateway of `namespace` (or the one named) compiled, with its namespace, its name
/// and what was stood in for; an error listing the check's findings when it does not compile.
fn compiled(
    target: &Target,
) -> anyhow::Result<(
    String,
    String,
    portcullis_operator::controller::validate::Bundle,
    Vec<String>,
)> {
    let (files, namespace, gateway) = (
        &target.files,
        target.namespace.as_deref(),
        target.gateway.as_deref(),
    );
    let mut report = check::check(load::load(files)?, namespace.unwrap_or("default"), now())?;
    let namespace = match (
        namespace,
        report.namespaces.keys().collect::<Vec<_>>().as_slice(),
    ) {
        (Some(n), _) => n.to_owned(),
        (None, [only]) => (*only).clone(),
        (None, _) => "default".to_owned(),
    };
    let namespace = namespace.as_str();
    let names: Vec<String> = report
        .namespaces
        .get(namespace)
        .map(|n| n.gateways.keys().cloned().collect())
        .unwrap_or_default();
    let name = match (gateway, names.as_slice()) {
        (Some(g), _) => g.to_owned(),
        (None, [one]) => one.clone(),
        (None, []) => anyhow::bail!("no TransferGateway in namespace {namespace} in these files"),
        (None, many) => anyhow::bail!(
            "namespace {namespace} has {} gateways ({}); choose one with --gateway",
            many.len(),
            many.join(", ")
        ),
    };
    match report.bundles.remove(&(namespace.to_owned(), name.clone())) {
        Some(b) => {
            // What is in the bundle only because Git does not hold the real thing.
            let stand_ins = report
                .namespaces
                .get(namespace)
                .map(|ns| {
                    ns.world
                        .key_rings
                        .keys()
                        .map(|k| format!("key ring {k} (issued offline)"))
                        .chain(
                            ns.placeholders
                                .keys()
                                .map(|s| format!("Secret {s} (a placeholder)")),
                        )
                        .collect()
                })
                .unwrap_or_default();
            Ok((namespace.to_owned(), name, b, stand_ins))
        }
        None => {
            let errors: Vec<String> = report
                .findings
                .iter()
                .filter(|f| f.severity == check::Severity::Error)
                .map(ToString::to_string)
                .collect();
            anyhow::bail!(
                "gateway {namespace}/{name} does not compile:\n{}",
                if errors.is_empty() {
                    "it is not in these files".to_owned()
                } else {
                    errors.join("\n")
                }
            )
        }
    }
}
