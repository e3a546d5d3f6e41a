//! Audit: typed records, hash-chained, written as JSON lines to stdout and/or a file.
//!
//! Each line carries `seq` and `prev`, the SHA-256 of the previous line's bytes, so removing or
//! editing a record breaks the chain (`verify_chain`). Records are written by one thread in the
//! order they were emitted; emitters wait when the queue is full rather than drop records.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
};

use portcullis_config::AuditSettings;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// How sure we are that a transfer's bytes arrived whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Confidence {
    /// Complete, and the backend confirmed it (close succeeded, size matches).
    High,
    /// The client went away before closing the file.
    NoEOF,
    /// The backend failed or disagreed.
    Low,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
}

/// A key ring certificate in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    pub key_ring: String,
    /// SHA-256 of the leaf (DER), hex.
    pub sha256: String,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
}

/// One audited fact. Field names are the record's JSON keys.
#[derive(Clone, Debug, Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    DaemonStart {
        version: &'static str,
        config_hash: String,
        listeners: Vec<ListenerInfo>,
        algorithms: AlgorithmInfo,
        certificates: Vec<CertificateInfo>,
        /// Endpoints reached without TLS, by their explicit `allowPlaintext` consent.
        plaintext_endpoints: Vec<String>,
    },
    ConfigReloaded {
        config_hash: String,
        previous_hash: String,
        algorithms: AlgorithmInfo,
        certificates: Vec<CertificateInfo>,
        plaintext_endpoints: Vec<String>,
    },
    ConfigRejected {
        kept_hash: String,
        errors: Vec<String>,
    },
    ConnectionRefused {
        listener: String,
        peer: SocketAddr,
        reason: String,
    },
    /// The defender banned an address or locked a user, here or at a peer replica.
    DefenderBan {
        /// `address` or `user`.
        kind: &'static str,
        /// The address (IPv6 as its /64) or the user name.
        key: String,
        until: String,
        seconds: u64,
        level: u32,
        reason: String,
        /// The replica that made the ban.
        origin: String,
        shared_by_peer: bool,
    },
    LogonSuccess {
        session: String,
        user: String,
        peer: SocketAddr,
        zone: String,
        methods: Vec<String>,
    },
    LogonFailure {
        user: String,
        peer: SocketAddr,
        zone: Option<String>,
        method: String,
        reason: String,
    },
    SessionStart {
        session: String,
        user: String,
        peer: SocketAddr,
        protocol: String,
        listener: String,
    },
    SessionEnd {
        session: String,
        user: String,
        reason: String,
        duration_ms: u64,
    },
    Request {
        session: String,
        user: String,
        op: &'static str,
        path: Option<String>,
        target: Option<String>,
        result: String,
        rule: Option<String>,
    },
    PolicyDenied {
        session: String,
        user: String,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// A request the gateway does not serve at all (SSH exec, shell, port forwarding, a second
    /// channel; SFTP symlink, readlink, an extension not offered): refused and recorded.
    RequestRefused {
        session: String,
        user: String,
        request: String,
        reason: String,
    },
    TransferStart {
        session: String,
        user: String,
        path: String,
        endpoint: String,
        direction: Direction,
        mode: String,
        /// The client channel's protection, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
        channel: Option<String>,
    },
    TransferEnd {
        session: String,
        user: String,
        path: String,
        endpoint: String,
        direction: Direction,
        bytes: u64,
        duration_ms: u64,
        sha256: Option<String>,
        confidence: Confidence,
        detail: Option<String>,
        channel: Option<String>,
    },
    /// One FTP command and the reply it got (z/OS `FTCHKCMD` + `FTPOSTPR`). The argument of
    /// `PASS` is never recorded.
    FtpCommand {
        peer: SocketAddr,
        listener: String,
        session: Option<String>,
        user: Option<String>,
        verb: String,
        argument: Option<String>,
        reply: u16,
        text: String,
    },
    /// A data connection refused (foreign peer, TLS not resumed, handshake failure, timeout).
    DataConnectionRefused {
        peer: SocketAddr,
        session: Option<String>,
        from: Option<SocketAddr>,
        reason: String,
    },
    BackendHostKeyRejected {
        endpoint: String,
        address: String,
        presented: String,
    },
    BackendError {
        endpoint: String,
        detail: String,
    },
    ProtocolError {
        session: String,
        user: String,
        detail: String,
    },
    ShutdownStarted {
        sessions: usize,
        grace_seconds: u64,
    },
    ShutdownComplete {
        sessions_left: usize,
    },
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerInfo {
    pub name: String,
    pub protocol: String,
    pub address: String,
    pub zones: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AlgorithmInfo {
    pub kex: Vec<String>,
    pub ciphers: Vec<String>,
    pub macs: Vec<String>,
    pub host_keys: Vec<String>,
}

#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// The handle every component emits through. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
}

impl Auditor {
    /// Starts the writer thread. Fails if the file sink cannot be opened: a gateway that cannot
    /// audit does not start.
    pub fn start(settings: &AuditSettings, metrics: Arc<Metrics>) -> io::Result<Auditor> {
        let file = match &settings.file {
            Some(path) => Some((
                PathBuf::from(path),
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        let stdout = settings.stdout;
        let (tx, mut rx) = mpsc::channel::<Msg>(8192);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let mut prev = hex::encode([0u8; 32]);
                let mut seq = 0u64;
                let mut file = file.map(|(p, f)| (p, io::BufWriter::new(f)));
                let mut out = io::BufWriter::new(io::stdout());
                while let Some(msg) = rx.blocking_recv() {
                    let mut flushes = Vec::new();
                    let mut batch = vec![msg];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for msg in batch {
                        match msg {
                            Msg::Flush(done) => flushes.push(done),
                            Msg::Event(event) => {
                                seq += 1;
                                let record = Record {
                                    seq,
                                    time: chrono::Utc::now()
                                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                                    prev: &prev,
                                    event: &event,
                                };
                                let mut line = escape_line_breaks(
                                    serde_json::to_vec(&record)
                                        .expect("audit records always serialize"),
                                );
                                line.push(b'\n');
                                if stdout && out.write_all(&line).is_err() {
                                    metrics.audit_write_errors.inc();
                                }
                                if let Some((path, f)) = file.as_mut()
                                    && let Err(e) = f.write_all(&line)
                                {
                                    metrics.audit_write_errors.inc();
                                    tracing::error!(path = %path.display(), error = %e, "audit file write failed");
                                }
                                prev = hex::encode(Sha256::digest(&line));
                            }
                        }
                    }
                    let _ = out.flush();
                    if let Some((path, f)) = file.as_mut()
                        && let Err(e) = f.flush()
                    {
                        metrics.audit_write_errors.inc();
                        tracing::error!(path = %path.display(), error = %e, "audit file flush failed");
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(Auditor { tx })
    }

    /// Records an event. Waits while the writer is behind; never drops.
    pub async fn emit(&self, event: Event) {
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Waits until everything emitted so far is written and flushed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Checks a JSON-lines audit log's hash chain. Returns the number of records, or the 1-based
/// line number where the chain breaks.
pub fn verify_chain(text: &str) -> Result<u64, usize> {
    let mut prev = hex::encode([0u8; 32]);
    let mut n = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| i + 1)?;
        if v.get("prev").and_then(|p| p.as_str()) != Some(prev.as_str()) {
            return Err(i + 1);
        }
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        n += 1;
    }
    Ok(n)
}

/// JSON allows U+0085, U+2028 and U+2029 raw inside strings, but log shippers and JavaScript
/// readers take them for line breaks, so one record could be read as two. serde_json emits
/// them only inside strings, where the `\uXXXX` escape means the same.
fn escape_line_breaks(json: Vec<u8>) -> Vec<u8> {
    const BREAKS: [(&[u8], &[u8]); 3] = [
        ("\u{85}".as_bytes(), b"\\u0085"),
        ("\u{2028}".as_bytes(), b"\\u2028"),
        ("\u{2029}".as_bytes(), b"\\u2029"),
    ];
    if !json.iter().any(|&b| b == 0xc2 || b == 0xe2) {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut rest = json.as_slice();
    'bytes: while let Some((&first, tail)) = rest.split_first() {
        for (raw, escaped) in BREAKS {
            if rest.starts_with(raw) {
                out.extend_from_slice(escaped);
                rest = &rest[raw.len()..];
                continue 'bytes;
            }
        }
        out.push(first);
        rest = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_inside_strings_are_escaped() {
        let json = serde_json::to_vec(&serde_json::json!({"path": "a\u{2028}b\u{2029}c\u{85}d é"}))
            .unwrap();
        let out = escape_line_breaks(json);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#"{"path":"a\u2028b\u2029c\u0085d é"}"#);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["path"], "a\u{2028}b\u{2029}c\u{85}d é");
    }

    #[tokio::test]
    async fn records_are_chained_and_tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            ..Default::default()
        };
        let audit = Auditor::start(&settings, Arc::new(Metrics::default())).unwrap();
        for i in 0..5 {
            audit
                .emit(Event::ConfigRejected {
                    kept_hash: format!("h{i}"),
                    errors: vec![],
                })
                .await;
        }
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(&text), Ok(5));
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], "configRejected");
        assert_eq!(first["keptHash"], "h0");
        assert_eq!(first["seq"], 1);

        let tampered = text.replacen("\"h2\"", "\"hX\"", 1);
        assert_eq!(verify_chain(&tampered), Err(4));
        let dropped: String = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert_eq!(verify_chain(&dropped), Err(2));
    }
}
