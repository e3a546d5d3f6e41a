//! The audit trail's command line (`audit verify`, `receipt`, `check-receipt`, `keygen`,
//! `public-key`), shared by `portcullis-gateway audit` and `kubectl portcullis audit`.

use std::{path::PathBuf, process::ExitCode};

use super::{chain, verify};

#[derive(clap::Subcommand)]
pub enum AuditCommand {
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

pub fn run(command: AuditCommand) -> ExitCode {
    let fail = |e: String| {
        eprintln!("audit: {e}");
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
                    eprintln!("audit: {why}");
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
