//! The chain the writer extends: where it stands, how it resumes after a restart, and the
//! Ed25519 checkpoints that sign it.
//!
//! Each line is one record whose `prev` is the SHA-256 of the previous line's bytes. A
//! checkpoint signs `(seq, head, time)` of the record before it, so it vouches for every
//! record up to there: an attacker who rewrites records and rebuilds the hashes cannot make
//! the signature match without the private key.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::Path,
};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer, pem::PemObject};
use sha2::{Digest, Sha256};

/// The record schema version every record carries as `v`.
pub const SCHEMA: u32 = 1;

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest tail read back at start to find the chain's head.
const TAIL_READ: u64 = 1 << 20;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The bytes a checkpoint signs.
pub fn checkpoint_message(seq: u64, head: &str, time: &str) -> Vec<u8> {
    format!("portcullis-audit-checkpoint/{SCHEMA}\n{seq}\n{head}\n{time}\n").into_bytes()
}

/// A public key's id as checkpoints name it: the first 8 bytes of the SHA-256 of the raw
/// 32-byte key, hex.
pub fn key_id(raw_public: &[u8]) -> String {
    hex::encode(&Sha256::digest(raw_public)[..8])
}

/// The private half, in the writer.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub key_id: String,
}

impl Signer {
    /// Reads a PKCS#8 PEM Ed25519 private key (v1 from OpenSSL, or v2).
    pub fn from_pem_file(path: &Path) -> Result<Signer, String> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            format!(
                "cannot read a PKCS#8 PEM private key from {}: {e}",
                path.display()
            )
        })?;
        Signer::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| "not an Ed25519 private key".to_owned())?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    /// The signature of a checkpoint after record `seq` whose line hashes to `head`, hex.
    pub fn sign(&self, seq: u64, head: &str, time: &str) -> String {
        hex::encode(
            self.pair
                .sign(&checkpoint_message(seq, head, time))
                .as_ref(),
        )
    }
}

/// A public key a verifier trusts.
pub struct Verifier {
    raw: Vec<u8>,
    pub key_id: String,
}

impl Verifier {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, `openssl pkey -pubout`).
    pub fn from_pem_file(path: &Path) -> Result<Verifier, String> {
        let spki = SubjectPublicKeyInfoDer::from_pem_file(path)
            .map_err(|e| format!("cannot read a PEM public key from {}: {e}", path.display()))?;
        let der: &[u8] = spki.as_ref();
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) if raw.len() == 32 => Ok(Verifier::from_raw(raw)),
            _ => Err(format!("{}: not an Ed25519 public key", path.display())),
        }
    }

    /// Every key of `paths`, or the first that cannot be read.
    pub fn from_pem_files(paths: &[std::path::PathBuf]) -> Result<Vec<Verifier>, String> {
        paths.iter().map(|p| Verifier::from_pem_file(p)).collect()
    }

    pub fn from_raw(raw: &[u8]) -> Verifier {
        Verifier {
            raw: raw.to_vec(),
            key_id: key_id(raw),
        }
    }

    pub fn verify(&self, seq: u64, head: &str, time: &str, signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(&checkpoint_message(seq, head, time), &signature)
            .is_ok()
    }
}

/// The PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of a PEM private key, as `audit verify --key`
/// reads it.
pub fn public_key_pem(private_pem: &str) -> Result<String, String> {
    let pair = rcgen::KeyPair::from_pem(private_pem).map_err(|e| e.to_string())?;
    if !pair.is_compatible(&rcgen::PKCS_ED25519) {
        return Err("not an Ed25519 private key".into());
    }
    Ok(pair.public_key_pem())
}

/// A new Ed25519 private key, PKCS#8 PEM.
pub fn generate_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .expect("Ed25519 key generation")
        .serialize_pem()
}

/// Makes a new signing key: the private half goes to `private` (mode 0600 from its creation,
/// never over an existing file), the public half to `public`. Returns the public PEM.
pub fn write_key_pair(private: &Path, public: &Path) -> io::Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let private_pem = generate_pem();
    let public_pem = public_key_pem(&private_pem).expect("a key just made is Ed25519");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(private)
        .and_then(|mut f| {
            f.write_all(private_pem.as_bytes())
                .and_then(|()| f.sync_all())
        })
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", private.display())))?;
    std::fs::write(public, &public_pem)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", public.display())))?;
    Ok(public_pem)
}

/// Where an existing audit file leaves the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// No file, or an empty one: a new chain.
    Fresh,
    /// The last complete record's seq and line hash; `torn` bytes of an unfinished record
    /// follow it (a crash mid-write). `terminate`: the file does not end in a newline, so the
    /// writer writes one first.
    Continue {
        seq: u64,
        head: String,
        torn: u64,
        terminate: bool,
    },
    /// The file holds something, but no complete record could be found at its end.
    Lost { reason: String, torn: u64 },
}

/// Reads the end of `path` to find where the chain stands.
pub fn resume(path: &Path) -> io::Result<Resume> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resume::Fresh),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Resume::Fresh);
    }
    let from = len.saturating_sub(TAIL_READ);
    f.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    f.read_to_end(&mut tail)?;
    Ok(resume_from_tail(&tail, from == 0))
}

fn resume_from_tail(tail: &[u8], whole_file: bool) -> Resume {
    let Some(last_nl) = tail.iter().rposition(|&b| b == b'\n') else {
        return Resume::Lost {
            reason: "no complete record at the end of the file".into(),
            torn: tail.len() as u64,
        };
    };
    let torn = (tail.len() - last_nl - 1) as u64;
    if torn > 0 {
        // A record written whole but for its newline is a record.
        let mut line = tail[last_nl + 1..].to_vec();
        line.push(b'\n');
        if let Some(seq) = seq_of(&line) {
            return Resume::Continue {
                seq,
                head: hex::encode(Sha256::digest(&line)),
                torn: 0,
                terminate: true,
            };
        }
    }
    let start = match tail[..last_nl].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if whole_file => 0,
        None => {
            return Resume::Lost {
                reason: "the last record is longer than the tail read back".into(),
                torn,
            };
        }
    };
    let line = &tail[start..=last_nl];
    match seq_of(line) {
        Some(seq) => Resume::Continue {
            seq,
            head: hex::encode(Sha256::digest(line)),
            torn,
            terminate: torn > 0,
        },
        None => Resume::Lost {
            reason: "the last line is not a record".into(),
            torn,
        },
    }
}

fn seq_of(line: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_finds_the_last_complete_record_and_counts_torn_bytes() {
        let a = b"{\"seq\":1,\"prev\":\"x\"}\n";
        let b = b"{\"seq\":2,\"prev\":\"y\"}\n";
        let whole = [&a[..], &b[..]].concat();
        assert_eq!(
            resume_from_tail(&whole, true),
            Resume::Continue {
                seq: 2,
                head: hex::encode(Sha256::digest(b)),
                torn: 0,
                terminate: false
            }
        );
        let torn = [&whole[..], b"{\"seq\":3,\"pr"].concat();
        assert_eq!(
            resume_from_tail(&torn, true),
            Resume::Continue {
                seq: 2,
                head: hex::encode(Sha256::digest(b)),
                torn: 12,
                terminate: true
            }
        );
        let unterminated = &whole[..whole.len() - 1];
        assert_eq!(
            resume_from_tail(unterminated, true),
            Resume::Continue {
                seq: 2,
                head: hex::encode(Sha256::digest(b)),
                torn: 0,
                terminate: true
            }
        );
        assert!(matches!(
            resume_from_tail(b"garbage\n", true),
            Resume::Lost { torn: 0, .. }
        ));
        assert!(matches!(
            resume_from_tail(b"no newline at all", true),
            Resume::Lost { torn: 17, .. }
        ));
    }

    #[test]
    fn a_checkpoint_verifies_only_with_its_key_and_its_fields() {
        let private = generate_pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), &private).unwrap();
        let signer = Signer::from_pem_file(&dir.path().join("k.pem")).unwrap();
        let pem = dir.path().join("k.pub");
        std::fs::write(&pem, public_key_pem(&private).unwrap()).unwrap();
        let verifier = Verifier::from_pem_file(&pem).unwrap();
        assert_eq!(verifier.key_id, signer.key_id);

        let sig = signer.sign(7, "ab", "2026-01-01T00:00:00Z");
        assert!(verifier.verify(7, "ab", "2026-01-01T00:00:00Z", &sig));
        assert!(!verifier.verify(8, "ab", "2026-01-01T00:00:00Z", &sig));
        assert!(!verifier.verify(7, "ac", "2026-01-01T00:00:00Z", &sig));
        assert!(!verifier.verify(7, "ab", "2026-01-01T00:00:01Z", &sig));
        std::fs::write(dir.path().join("o.pem"), generate_pem()).unwrap();
        let other = Signer::from_pem_file(&dir.path().join("o.pem")).unwrap();
        assert!(!verifier.verify(
            7,
            "ab",
            "2026-01-01T00:00:00Z",
            &other.sign(7, "ab", "2026-01-01T00:00:00Z")
        ));
    }
}
