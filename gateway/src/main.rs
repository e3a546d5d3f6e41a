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
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain and the checkpoint signatures of audit files (a directory: its files,
    /// ordered by their first record's seq, as one trail). Names the first bad record and the kind of tampering;
    /// exits 1 on any, 0 with a one-line summary when all is well.
    Verify {
        /// A trusted Ed25519 public key (PEM `PUBLIC KEY`); repeat for rotated keys. Without
        /// one, only the chain is checked.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// The trail is still being written: records after the last checkpoint, or a last
        /// line being written, are not a finding.
        #[arg(long)]
        live: bool,
        /// The trail must begin at the first record of the chain: one that begins at a
        /// rotated file's header (earlier files shipped or deleted) is a finding.
        #[arg(long)]
        from_start: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write a new Ed25519 signing key (PKCS#8 PEM, mode 0600) for `audit.signingKeyFile`,
    /// and its public key (PEM) beside it, with the extension `.pub`.
    Keygen { file: PathBuf },
    /// Print the public key (PEM) of a signing key, for `audit verify --key`.
    PublicKey { file: PathBuf },
    /// Print a transfer's receipt: its `transferEnd` record and the checkpoint that signs it,
    /// two lines a partner checks offline with `audit check-receipt` and the public key.
    Receipt {
        /// The transfer's id (`transfer` in its records).
        #[arg(long)]
        transfer: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check a receipt with the public key(s): exits 0 and says what it proves, 1 if it does
    /// not hold.
    CheckReceipt {
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        file: PathBuf,
    },
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
        Command::Audit(command) => audit(command),
        Command::Run {
            config,
            passive_slice,
        } => serve(Ok(config), passive_slice),
        Command::Demo { dir } => serve(demo::prepare(dir.as_deref()), None),
    }
}

fn audit(command: AuditCommand) -> ExitCode {
    use portcullis_gateway::audit::{chain, verify};
    let fail = |e: String| {
        eprintln!("portcullis-gateway audit: {e}");
        ExitCode::from(2)
    };
    match command {
        AuditCommand::Verify {
            keys,
            live,
            from_start,
            paths,
        } => {
            let keys = match chain::Verifier::from_pem_files(&keys) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let report = verify::files_of(&paths).and_then(|files| {
                let mut r = verify::verify(&files, &keys, live)?;
                if from_start {
                    r.require_start(&files);
                }
                Ok(r)
            });
            match report {
                Ok(r) if r.finding.is_none() => {
                    println!("{r}");
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    println!("{r}");
                    ExitCode::FAILURE
                }
                Err(e) => fail(e.to_string()),
            }
        }
        AuditCommand::Keygen { file } => {
            match chain::write_key_pair(&file, &file.with_extension("pub")) {
                Ok(public) => {
                    print!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
        AuditCommand::Receipt { transfer, paths } => {
            match verify::files_of(&paths).and_then(|files| verify::receipt(&files, &transfer)) {
                Ok(Ok(receipt)) => {
                    print!("{receipt}");
                    ExitCode::SUCCESS
                }
                Ok(Err(why)) => {
                    eprintln!("portcullis-gateway audit: {why}");
                    ExitCode::FAILURE
                }
                Err(e) => fail(e.to_string()),
            }
        }
        AuditCommand::CheckReceipt { keys, file } => {
            let keys = match chain::Verifier::from_pem_files(&keys) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => return fail(format!("{}: {e}", file.display())),
            };
            match verify::check_receipt(&text, &keys) {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    println!("NOT VALID: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::PublicKey { file } => {
            match std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|pem| chain::public_key_pem(&pem))
            {
                Ok(public) => {
                    print!("{public}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{}: {e}", file.display())),
            }
        }
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
