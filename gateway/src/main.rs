//! `portcullis-gateway`: run, check, or demo the gateway.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
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
    },
    /// Check a config and print every error with its path.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the embedded demo: SFTP on 127.0.0.1:2222, user demo/demo, mount /files.
    Demo {
        /// Working directory: DIR/files is served, DIR/state keeps the host key.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Read a password on stdin and print its argon2id PHC hash for `passwordHash`.
    HashPassword,
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
        Command::Check { config } => match gateway::check(&config) {
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
        Command::Run { config } => serve(Ok(config)),
        Command::Demo { dir } => serve(demo::prepare(dir.as_deref())),
    }
}

fn serve(config: anyhow::Result<PathBuf>) -> ExitCode {
    init_tracing();
    let result = config.and_then(|path| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(gateway::run(&path))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
