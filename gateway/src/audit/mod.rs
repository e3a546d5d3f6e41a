//! Audit: typed records, hash-chained, written as JSON lines to stdout and/or a file.
//!
//! Each line carries `v` (the schema), `seq` and `prev`, the SHA-256 of the previous line's
//! bytes, so removing or editing a record breaks the chain. A file's chain continues across
//! restarts (`chain::resume`), and with a signing key, checkpoints sign it (`chain`);
//! `verify` checks all of it. Records are written by one thread in the order they were
//! emitted; emitters wait when the queue is full rather than drop records.

pub mod chain;
pub mod verify;

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use portcullis_config::{AuditFsync, AuditSettings};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use self::chain::{GENESIS, Resume, SCHEMA, Signer};
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
    /// The first record after a restart: the chain goes on from the file's last complete
    /// record (`prev`). `tornBytes`: an unfinished record a crash left behind it, which the
    /// writer ended with a newline. `headLost`: no record could be found to go on from, so a
    /// new chain begins here (a gap that `audit verify` reports).
    ChainResumed {
        torn_bytes: u64,
        head_lost: Option<String>,
    },
    /// Signs `(seq, prev, time)` of the record before it with the key `keyId` (Ed25519, hex).
    Checkpoint {
        key_id: String,
        signature: String,
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
    v: u32,
    seq: u64,
    time: &'a str,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

enum Msg {
    Event(Event),
    Flush(oneshot::Sender<()>),
    /// Write a checkpoint if records were written since the last one.
    Checkpoint,
}

/// The handle every component emits through. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
}

impl Auditor {
    /// Starts the writer thread, going on with the chain of an existing file. Fails if the
    /// file sink cannot be opened: a gateway that cannot audit does not start.
    pub fn start(
        settings: &AuditSettings,
        signer: Option<Arc<Signer>>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Auditor> {
        let mut writer = Writer {
            seq: 0,
            prev: GENESIS.to_owned(),
            since_checkpoint: 0,
            signer,
            fsync: settings.fsync,
            unsynced: false,
            file: None,
            stdout: settings.stdout.then(|| io::BufWriter::new(io::stdout())),
            metrics,
        };
        let mut first = None;
        if let Some(path) = &settings.file {
            let path = PathBuf::from(path);
            let resume = chain::resume(&path)?;
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            first = match resume {
                Resume::Fresh => None,
                Resume::Continue {
                    seq,
                    head,
                    torn,
                    terminate,
                } => {
                    if terminate {
                        f.write_all(b"\n")?;
                    }
                    writer.seq = seq;
                    writer.prev = head;
                    Some(Event::ChainResumed {
                        torn_bytes: torn,
                        head_lost: None,
                    })
                }
                Resume::Lost { reason, torn } => {
                    if torn > 0 {
                        f.write_all(b"\n")?;
                    }
                    Some(Event::ChainResumed {
                        torn_bytes: torn,
                        head_lost: Some(reason),
                    })
                }
            };
            writer.file = Some((path, io::BufWriter::new(f)));
        }
        let (tx, mut rx) = mpsc::channel::<Msg>(8192);
        if writer.signer.is_some() {
            let interval = Duration::from_secs(settings.checkpoint_seconds);
            // Weak, so that the writer ends when the last Auditor is dropped.
            let tick = tx.downgrade();
            std::thread::Builder::new()
                .name("audit-checkpoint".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(interval);
                        let Some(tx) = tick.upgrade() else { break };
                        if tx.blocking_send(Msg::Checkpoint).is_err() {
                            break;
                        }
                    }
                })?;
        }
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                if let Some(event) = first {
                    writer.write(&event, now());
                }
                while let Some(msg) = rx.blocking_recv() {
                    let mut flushes = Vec::new();
                    let mut batch = vec![msg];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for msg in batch {
                        match msg {
                            Msg::Flush(done) => flushes.push(done),
                            Msg::Event(event) => writer.write(&event, now()),
                            Msg::Checkpoint => writer.checkpoint(),
                        }
                    }
                    writer.flush();
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

    /// Records an event that reports an outcome, and returns once it is written and, per
    /// `audit.fsync`, on disk: the caller tells the client only after that.
    pub async fn record(&self, event: Event) {
        self.emit(event).await;
        self.flush().await;
    }

    /// Waits until everything emitted so far is written and flushed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Signs what was written so far (with a signing key), and flushes: the trail's last
    /// record is then a checkpoint. Called at shutdown.
    pub async fn seal(&self) {
        let _ = self.tx.send(Msg::Checkpoint).await;
        self.flush().await;
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The writer thread's end of the chain.
struct Writer {
    seq: u64,
    /// The hash of the last line written.
    prev: String,
    since_checkpoint: u64,
    signer: Option<Arc<Signer>>,
    fsync: AuditFsync,
    /// Written to the file since its last sync.
    unsynced: bool,
    file: Option<(PathBuf, io::BufWriter<File>)>,
    stdout: Option<io::BufWriter<io::Stdout>>,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn write(&mut self, event: &Event, time: String) {
        self.seq += 1;
        let record = Record {
            v: SCHEMA,
            seq: self.seq,
            time: &time,
            prev: &self.prev,
            event,
        };
        let mut line = escape_line_breaks(
            serde_json::to_vec(&record).expect("audit records always serialize"),
        );
        line.push(b'\n');
        if let Some(out) = self.stdout.as_mut()
            && out.write_all(&line).is_err()
        {
            self.metrics.audit_write_errors.inc();
        }
        if let Some((path, f)) = self.file.as_mut() {
            self.unsynced = true;
            if let Err(e) = f.write_all(&line) {
                self.metrics.audit_write_errors.inc();
                tracing::error!(path = %path.display(), error = %e, "audit file write failed");
            }
        }
        if self.fsync == AuditFsync::Record {
            self.flush();
        }
        self.prev = hex::encode(Sha256::digest(&line));
        self.since_checkpoint = match event {
            Event::Checkpoint { .. } => 0,
            _ => self.since_checkpoint + 1,
        };
    }

    fn checkpoint(&mut self) {
        let Some(signer) = self.signer.clone() else {
            return;
        };
        if self.since_checkpoint == 0 {
            return;
        }
        let time = now();
        let signature = signer.sign(self.seq, &self.prev, &time);
        let event = Event::Checkpoint {
            key_id: signer.key_id.clone(),
            signature,
        };
        self.write(&event, time);
    }

    fn flush(&mut self) {
        if let Some(out) = self.stdout.as_mut() {
            let _ = out.flush();
        }
        let Some((path, f)) = self.file.as_mut() else {
            return;
        };
        let synced = f.flush().and_then(|()| {
            if self.fsync != AuditFsync::None && self.unsynced {
                f.get_ref().sync_data()?;
            }
            Ok(())
        });
        self.unsynced = false;
        if let Err(e) = synced {
            self.metrics.audit_write_errors.inc();
            tracing::error!(path = %path.display(), error = %e, "audit file flush or sync failed");
        }
    }
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
    async fn a_recorded_outcome_is_in_the_file_when_record_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for fsync in [AuditFsync::Batch, AuditFsync::Record, AuditFsync::None] {
            let settings = AuditSettings {
                stdout: false,
                file: Some(path.display().to_string()),
                fsync,
                ..Default::default()
            };
            let audit = Auditor::start(&settings, None, Arc::new(Metrics::default())).unwrap();
            for i in 0..50 {
                audit
                    .record(Event::ConfigRejected {
                        kept_hash: format!("{fsync:?}{i}"),
                        errors: vec![],
                    })
                    .await;
                let text = std::fs::read_to_string(&path).unwrap();
                let last: serde_json::Value =
                    serde_json::from_str(text.lines().last().unwrap()).unwrap();
                assert_eq!(last["keptHash"], format!("{fsync:?}{i}"));
            }
        }
    }
}
