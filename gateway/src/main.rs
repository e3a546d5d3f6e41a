//! `portcullis-gateway`: run, check, or demo the gateway.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use portcullis_config::PassiveSlice;
use portcullis_gateway::{auth, demo, gateway};

/// jemalloc gives freed memory back; glibc's per-thread arenas kept it (see the `jemalloc`
/// feature in Cargo.toml).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about = "Portcullis secure file-transfer gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run from a config file (YAML or JSON), or a directory holding config.yaml.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Serve only replica K of N's share of every FTPS passive range (`K/N`), so that a
        /// Service can route each passive port to the one replica that offers it. The
        /// operator sets it when a gateway with FTPS runs more than one replica.
        #[arg(long, value_name = "K/N")]
        passive_slice: Option<PassiveSlice>,
    },
    /// Check a config and print every error with its path.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// As for `run`.
        #[arg(long, value_name = "K/N")]
        passive_slice: Option<PassiveSlice>,
    },
    /// Run the embedded demo: SFTP on 127.0.0.1:2222, user demo/demo, mount /files.
    Demo {
        /// Working directory: DIR/files is served, DIR/state keeps the host key.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Read a password on stdin and print its argon2id PHC hash for `passwordHash`.
    HashPassword,
    /// Check or sign the audit trail.
    #[command(subcommand)]
    Audit(portcullis_gateway::audit::cli::AuditCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,russh=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            passive_slice,
        } => match gateway::check(&config, passive_slice) {
            Ok(hash) => {
                println!("config is valid (sha256 {hash})");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{} error(s)", errors.len());
                ExitCode::from(2)
            }
        },
        Command::HashPassword => {
            let mut pw = String::new();
            if std::io::stdin().read_line(&mut pw).is_err() {
                return ExitCode::FAILURE;
            }
            println!("{}", auth::hash_password(pw.trim_end_matches(['\r', '\n'])));
            ExitCode::SUCCESS
        }
        Command::Audit(command) => portcullis_gateway::audit::cli::run(command),
        Command::Run {
            config,
            passive_slice,
        } => serve(Ok(config), passive_slice),
        Command::Demo { dir } => serve(demo::prepare(dir.as_deref()), None),
    }
}

fn serve(config: anyhow::Result<PathBuf>, passive_slice: Option<PassiveSlice>) -> ExitCode {
    init_tracing();
    let result = config.and_then(|path| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(gateway::run(&path, passive_slice))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
