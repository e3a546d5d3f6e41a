//! Audit: typed records, hash-chained, written as JSON lines to stdout and/or a file.
//!
//! Each line carries `v` (the schema), `seq` and `prev`, the SHA-256 of the previous line's
//! bytes, so removing or editing a record breaks the chain. A file's chain continues across
//! restarts (`chain::resume`), and with a signing key, checkpoints sign it (`chain`);
//! `verify` checks all of it. Records are written by one thread in the order they were
//! emitted; emitters wait when the queue is full rather than drop records.

pub mod chain;
pub mod cli;
pub mod ship;
pub mod spool;
pub mod verify;

use std::{
    io::{self, Write},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use portcullis_config::{AuditFsync, AuditSettings, AuditWhenFull};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use self::{
    chain::{GENESIS, Resume, SCHEMA, Signer},
    spool::FileSink,
};
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
        /// The listener and its protocol (`sftp`, `ftps`).
        listener: String,
        protocol: String,
        method: String,
        reason: String,
    },
    SessionStart {
        session: String,
        user: String,
        peer: SocketAddr,
        protocol: String,
        listener: String,
        /// The client channel's protection (as in the transfer records).
        channel: Option<String>,
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
        /// Unique in the trail; `audit receipt --transfer` finds the transfer by it.
        transfer: String,
        user: String,
        path: String,
        endpoint: String,
        direction: Direction,
        mode: String,
        /// The client channel's protection, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
        channel: Option<String>,
    },
    /// With a signing key, a checkpoint follows at once: the two lines are the transfer's
    /// receipt (`audit receipt`).
    TransferEnd {
        session: String,
        transfer: String,
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
    /// A connection to a backend made for a session: the address that answered, after how
    /// many (`attempt` > 1: the addresses before it failed, a failover), and how it is secured.
    BackendConnected {
        session: String,
        endpoint: String,
        address: String,
        attempt: usize,
        /// `sftp`, `ftps-explicit`, `ftps-implicit`, or `ftp` (a plaintext backend, by its
        /// `allowPlaintext` consent).
        protocol: &'static str,
        /// SFTP: the pinned host key the server proved it holds.
        host_key: Option<String>,
        /// How the leg is protected. SFTP: `SSH-2.0 <cipher>[ <mac>] <kex> <host key>` as
        /// for the client leg; FTPS: `TLSv1_3 TLS13_AES_256_GCM_SHA384 cert-sha256:HEX`, the
        /// version, the suite and the server's certificate that the trusted CAs verified.
        channel: Option<String>,
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
    /// The first record of a file after rotation: the previous file's name and last seq
    /// (`prev` is its last record's hash). `reason`: `size` or `age`.
    FileStart {
        previous_file: String,
        previous_seq: u64,
        reason: &'static str,
    },
    /// The audit trail cannot be made durable; `refusing`: new logins and transfers are
    /// refused until it can.
    AuditDegraded {
        cause: Degraded,
        detail: String,
        refusing: bool,
        spool_bytes: u64,
        max_bytes: u64,
    },
    /// The trail is durable again after `afterMs`; service resumes.
    AuditRestored {
        cause: Degraded,
        after_ms: u64,
    },
    /// Rotated files deleted to keep the spool under `maxBytes` (`whenFull: deleteOldest`).
    AuditFilesDeleted {
        files: Vec<String>,
        bytes: u64,
        /// The records deleted: `firstSeq..=lastSeq` of this chain.
        first_seq: u64,
        last_seq: u64,
        /// A collector is configured: the shipper deletes what it has shipped, so some or all
        /// of these records never reached it.
        unshipped: bool,
        reason: String,
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
    /// The host name: on Kubernetes the pod's name, which begins with its gateway's.
    host: &'a str,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

enum Msg {
    Event(Box<Event>),
    /// Answered once everything before it is written and, per `fsync`, synced (with
    /// `failClosed: false`, once that was tried).
    Flush(oneshot::Sender<()>),
    /// Write a checkpoint if records were written since the last one.
    Checkpoint,
    /// Once a second: checkpoints, rotation by age, the spool, retries after a failure.
    Tick,
}

/// Whether new logins and transfers may start: closed while the audit trail cannot be made
/// durable (`failClosed`) or its spool is full (`whenFull: refuse`).
#[derive(Default)]
struct Gate {
    refusal: ArcSwapOption<String>,
}

/// The handle every component emits through. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    gate: Arc<Gate>,
}

/// Records held in memory while the disk refuses them, beyond which emitters wait.
const MAX_PENDING: usize = 64 << 20;

impl Auditor {
    /// Starts the writer thread, going on with the chain of an existing file. Fails if the
    /// file sink cannot be opened: a gateway that cannot audit does not start.
    pub fn start(
        settings: &AuditSettings,
        signer: Option<Arc<Signer>>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Auditor> {
        let gate = Arc::new(Gate::default());
        let mut writer = Writer {
            host: hostname(),
            seq: 0,
            prev: GENESIS.to_owned(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            checkpoint_every: Duration::from_secs(settings.checkpoint_seconds),
            signer,
            fsync: settings.fsync,
            file: None,
            rotate_bytes: settings.rotate_bytes(),
            rotate_age: Duration::from_secs(settings.rotate_seconds()),
            max_bytes: settings.max_bytes(),
            when_full: settings.when_full(),
            ships: settings.collector.is_some(),
            fail_closed: settings.fail_closed(),
            degraded: None,
            waiting: Vec::new(),
            gate: gate.clone(),
            stdout: settings.stdout.then(|| io::BufWriter::new(io::stdout())),
            metrics,
        };
        let mut first = None;
        if let Some(path) = &settings.file {
            let (mut sink, resume) =
                FileSink::open(Path::new(path), settings.fsync != AuditFsync::None)?;
            first = match resume {
                Resume::Fresh => None,
                Resume::Continue {
                    seq,
                    head,
                    torn,
                    terminate,
                } => {
                    if terminate {
                        sink.push_raw(b"\n");
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
                        sink.push_raw(b"\n");
                    }
                    Some(Event::ChainResumed {
                        torn_bytes: torn,
                        head_lost: Some(reason),
                    })
                }
            };
            writer.file = Some(sink);
        }
        let (tx, mut rx) = mpsc::channel::<Msg>(8192);
        // Weak, so that the writer ends when the last Auditor is dropped.
        let tick = tx.downgrade();
        std::thread::Builder::new()
            .name("audit-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(tx) = tick.upgrade() else { break };
                    if tx.blocking_send(Msg::Tick).is_err() {
                        break;
                    }
                }
            })?;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                if let Some(event) = first {
                    writer.write(&event, now());
                    writer.flush();
                }
                while let Some(msg) = rx.blocking_recv() {
                    let mut batch = vec![msg];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    for msg in batch {
                        match msg {
                            Msg::Flush(done) => writer.waiting.push(done),
                            Msg::Event(event) => writer.write(&event, now()),
                            Msg::Checkpoint => writer.checkpoint(),
                            Msg::Tick => writer.tick(),
                        }
                    }
                    writer.flush();
                    // While the disk refuses records they wait in memory, up to a bound;
                    // then emitters wait too.
                    while writer.pending() > MAX_PENDING {
                        std::thread::sleep(Duration::from_secs(1));
                        writer.flush();
                    }
                }
            })?;
        Ok(Auditor { tx, gate })
    }

    /// Records an event. Waits while the writer is behind; never drops.
    pub async fn emit(&self, event: Event) {
        if self.tx.send(Msg::Event(Box::new(event))).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Records an event that reports an outcome, and returns once it is written and, per
    /// `audit.fsync`, on disk: the caller tells the client only after that. Records emitted
    /// together share one write and one sync.
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

    /// Why new logins and transfers are refused now, if they are: the audit trail cannot be
    /// made durable. Every front end asks here, through the login and open paths.
    pub fn refusal(&self) -> Option<Arc<String>> {
        self.gate.refusal.load_full()
    }
}

/// This machine's host name (a pod's name), or `portcullis-gateway` if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "portcullis-gateway".into()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Why the trail is degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Degraded {
    /// A write or sync failed; records wait in memory.
    WriteError,
    /// The spool reached `maxBytes` (`whenFull: refuse`).
    SpoolFull,
}

/// The writer thread's end of the chain.
struct Writer {
    /// Every record's `host`.
    host: String,
    seq: u64,
    /// The hash of the last line written.
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    signer: Option<Arc<Signer>>,
    fsync: AuditFsync,
    file: Option<FileSink>,
    rotate_bytes: u64,
    rotate_age: Duration,
    max_bytes: u64,
    when_full: AuditWhenFull,
    /// A collector takes the file sink's records.
    ships: bool,
    fail_closed: bool,
    /// Since when, and why, the trail is degraded.
    degraded: Option<(Degraded, Instant)>,
    /// Flushes to answer once what came before them is durable.
    waiting: Vec<oneshot::Sender<()>>,
    gate: Arc<Gate>,
    stdout: Option<io::BufWriter<io::Stdout>>,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn write(&mut self, event: &Event, time: String) {
        // A file is rotated when a record comes for it once it is full or old, so that a
        // file never ends in an unsigned header, and an idle gateway makes no empty files.
        if !matches!(event, Event::Checkpoint { .. } | Event::FileStart { .. })
            && let Some(reason) = self.rotation_due()
        {
            self.rotate(reason);
        }
        self.seq += 1;
        let record = Record {
            v: SCHEMA,
            seq: self.seq,
            time: &time,
            host: &self.host,
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
        if let Some(sink) = self.file.as_mut() {
            sink.push(self.seq, &line);
        }
        self.prev = hex::encode(Sha256::digest(&line));
        self.since_checkpoint = match event {
            Event::Checkpoint { .. } => 0,
            _ => self.since_checkpoint + 1,
        };
        if matches!(event, Event::TransferEnd { .. }) {
            // The transfer's receipt: its record, signed on its own.
            self.checkpoint();
        }
        if self.fsync == AuditFsync::Record {
            self.flush_sinks();
        }
    }

    fn checkpoint(&mut self) {
        let Some(signer) = self.signer.clone() else {
            return;
        };
        self.last_checkpoint = Instant::now();
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

    fn tick(&mut self) {
        if self.last_checkpoint.elapsed() >= self.checkpoint_every {
            self.checkpoint();
        }
        let Some(sink) = self.file.as_mut() else {
            return;
        };
        sink.count_rotated();
        if sink.pending() == 0 && sink.lost_active() {
            // Removed or replaced under the writer: the records since are in a file nobody
            // can read. The new file begins by saying so, and `audit verify` shows the trail
            // beginning there.
            let previous_file = format!("{} (removed while open)", sink.active_name());
            tracing::error!("the audit file was removed or replaced while open; starting it anew");
            let event = Event::FileStart {
                previous_file,
                previous_seq: self.seq,
                reason: "replaced",
            };
            self.write(&event, now());
        }
    }

    fn rotation_due(&self) -> Option<&'static str> {
        let sink = self.file.as_ref()?;
        if sink.error.is_some() {
            None
        } else if sink.active_bytes() >= self.rotate_bytes {
            Some("size")
        } else if sink
            .started()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= self.rotate_age)
        {
            Some("age")
        } else {
            None
        }
    }

    fn pending(&self) -> usize {
        self.file.as_ref().map_or(0, FileSink::pending)
    }

    /// Writes what is pending, watches the spool, and answers the flushes that are now
    /// durable.
    fn flush(&mut self) {
        self.flush_sinks();
        self.watch_spool();
        self.flush_sinks();
        let durable = self.file.as_ref().is_none_or(|f| f.pending() == 0);
        if durable || !self.fail_closed {
            for done in self.waiting.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn flush_sinks(&mut self) {
        if let Some(out) = self.stdout.as_mut() {
            let _ = out.flush();
        }
        let Some(sink) = self.file.as_mut() else {
            return;
        };
        let failed = sink.flush().err();
        match (failed, self.degraded) {
            (Some(e), _) => {
                self.metrics.audit_write_errors.inc();
                if self.degraded.is_none() {
                    tracing::error!(error = %e, "audit file write failed; records wait in memory");
                    self.degrade(Degraded::WriteError, e);
                }
            }
            (None, Some((Degraded::WriteError, _))) => self.restore(),
            (None, _) => {}
        }
    }

    /// Closes the file: a checkpoint signs it, and the next file begins by naming it.
    fn rotate(&mut self, reason: &'static str) {
        self.checkpoint();
        self.flush_sinks();
        let Some(sink) = self.file.as_mut() else {
            return;
        };
        if sink.error.is_some() {
            return;
        }
        match sink.rotate() {
            Ok(previous_file) => {
                self.metrics.audit_rotations.inc();
                let event = Event::FileStart {
                    previous_file,
                    previous_seq: self.seq,
                    reason,
                };
                self.write(&event, now());
            }
            Err(e) => {
                self.metrics.audit_write_errors.inc();
                tracing::error!(error = %e, "audit file rotation failed");
                self.degrade(Degraded::WriteError, e);
            }
        }
    }

    fn watch_spool(&mut self) {
        let Some(sink) = self.file.as_mut() else {
            return;
        };
        let bytes = sink.spool_bytes();
        self.metrics.audit_spool_bytes.set(bytes as i64);
        match (self.when_full, self.degraded) {
            (AuditWhenFull::DeleteOldest, _) if bytes > self.max_bytes => {
                // Down to the limit less one file, so that it is not done again at once.
                let deleted = sink.delete_oldest(self.max_bytes.saturating_sub(self.rotate_bytes));
                if let Some(first_seq) = deleted.first_seq {
                    let next = deleted.next_seq.unwrap_or(self.seq + 1);
                    let event = Event::AuditFilesDeleted {
                        bytes: deleted.files.iter().map(|(_, n)| n).sum(),
                        files: deleted.files.into_iter().map(|(f, _)| f).collect(),
                        first_seq,
                        last_seq: next.saturating_sub(1),
                        unshipped: self.ships,
                        reason: format!("the spool reached maxBytes ({})", self.max_bytes),
                    };
                    self.write(&event, now());
                }
            }
            (AuditWhenFull::Refuse, None) if bytes > self.max_bytes => {
                let why = format!(
                    "the audit spool is full ({bytes} of {} bytes)",
                    self.max_bytes
                );
                tracing::error!(
                    "{why}; new logins and transfers are refused until files are shipped and deleted"
                );
                self.degrade(Degraded::SpoolFull, why);
            }
            // Room for a file again: service resumes.
            (_, Some((Degraded::SpoolFull, _)))
                if bytes <= self.max_bytes.saturating_sub(self.rotate_bytes) =>
            {
                self.restore()
            }
            _ => {}
        }
    }

    fn degrade(&mut self, cause: Degraded, detail: String) {
        let refusing = cause == Degraded::SpoolFull || self.fail_closed;
        self.degraded = Some((cause, Instant::now()));
        if refusing {
            self.gate.refusal.store(Some(Arc::new(format!(
                "the audit trail cannot be made durable: {detail}"
            ))));
            self.metrics.audit_refusing.set(1);
        }
        let event = Event::AuditDegraded {
            cause,
            detail,
            refusing,
            spool_bytes: self.file.as_ref().map_or(0, FileSink::spool_bytes),
            max_bytes: self.max_bytes,
        };
        self.write(&event, now());
    }

    fn restore(&mut self) {
        let Some((cause, since)) = self.degraded.take() else {
            return;
        };
        self.gate.refusal.store(None);
        self.metrics.audit_refusing.set(0);
        tracing::info!(?cause, "the audit trail is durable again; service resumes");
        let event = Event::AuditRestored {
            cause,
            after_ms: since.elapsed().as_millis() as u64,
        };
        self.write(&event, now());
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

    fn event(i: usize) -> Event {
        Event::ConfigRejected {
            kept_hash: format!("h{i:04}"),
            errors: vec!["x".repeat(60)],
        }
    }

    fn records(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rotation_keeps_one_signed_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let public = chain::write_key_pair(&key, &dir.path().join("k.pub")).unwrap();
        std::fs::create_dir(dir.path().join("audit")).unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            rotate_bytes: Some(4096),
            ..Default::default()
        };
        let signer = Arc::new(Signer::from_pem_file(&key).unwrap());
        let audit = Auditor::start(&settings, Some(signer), Arc::new(Metrics::default())).unwrap();
        for i in 0..200 {
            audit.emit(event(i)).await;
            if i % 10 == 0 {
                audit.flush().await;
            }
        }
        audit.seal().await;
        let files = verify::files_of(&[dir.path().join("audit")]).unwrap();
        assert!(files.len() >= 5, "{files:?}");
        assert_eq!(
            files.last().unwrap(),
            &path,
            "the active file holds the newest records"
        );
        for f in &files[..files.len() - 1] {
            // Each rotated file ends signed and is no bigger than the limit and a batch.
            let recs = records(f);
            assert_eq!(
                recs.last().unwrap()["event"],
                "checkpoint",
                "{}",
                f.display()
            );
            assert!(std::fs::metadata(f).unwrap().len() < 4096 + 11 * 200);
        }
        for f in &files[1..] {
            let first = &records(f)[0];
            assert_eq!(first["event"], "fileStart", "{}", f.display());
            assert_eq!(first["reason"], "size");
        }
        std::fs::write(dir.path().join("k.pub"), public).unwrap();
        let key = chain::Verifier::from_pem_file(&dir.path().join("k.pub")).unwrap();
        let all = verify::verify(&files, std::slice::from_ref(&key), false).unwrap();
        assert!(all.finding.is_none(), "{all}");
        assert_eq!(all.files, files.len());
        assert_eq!(all.begins_after, None);
        // The newest files alone verify, as a trail that begins after the ones not given.
        let mut tail = verify::verify(&files[2..], std::slice::from_ref(&key), false).unwrap();
        assert!(tail.finding.is_none(), "{tail}");
        let begins = records(&files[1])
            .first()
            .map(|_| files[1].file_name().unwrap().to_string_lossy().into_owned());
        assert_eq!(tail.begins_after, begins, "{tail}");
        // ... unless the whole trail is asked for (`--from-start`).
        tail.require_start(&files[2..]);
        assert_eq!(
            tail.finding.as_ref().map(|f| (f.kind, f.line)),
            Some((verify::Tamper::MissingFile, 1))
        );
        let mut whole = verify::verify(&files, std::slice::from_ref(&key), false).unwrap();
        whole.require_start(&files);
        assert!(whole.finding.is_none(), "{whole}");
        // A file taken from the middle is named.
        std::fs::remove_file(&files[2]).unwrap();
        let gone = verify::verify(
            &verify::files_of(&[dir.path().join("audit")]).unwrap(),
            std::slice::from_ref(&key),
            false,
        )
        .unwrap();
        assert_eq!(
            gone.finding.map(|f| (f.kind, f.line)),
            Some((verify::Tamper::MissingFile, 1))
        );
    }

    /// `/dev/full` refuses every write (ENOSPC) and cannot be truncated: the writer keeps the
    /// records, closes the gate, and writes them all, in order, once a file takes them.
    #[tokio::test]
    async fn a_disk_that_refuses_records_closes_the_gate_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::default());
        let audit = Auditor::start(&settings, None, metrics.clone()).unwrap();
        audit.emit(event(0)).await;
        // Not durable, so not answered (failClosed).
        let waited = tokio::time::timeout(Duration::from_millis(500), audit.record(event(1))).await;
        assert!(waited.is_err(), "a record reported durable on a full disk");
        let why = audit.refusal().expect("the gate is closed");
        assert!(why.contains("No space left on device"), "{why}");
        assert_eq!(metrics.audit_refusing.get(), 1);
        // The disk comes back.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        tokio::time::timeout(Duration::from_secs(5), audit.record(event(2)))
            .await
            .expect("durable again once the disk takes records");
        assert!(audit.refusal().is_none());
        assert_eq!(metrics.audit_refusing.get(), 0);
        let recs = records(&path);
        let events: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
        let at = |name: &str| events.iter().position(|e| *e == name).unwrap();
        assert!(at("auditDegraded") < at("auditRestored"), "{events:?}");
        let kept: Vec<&str> = recs.iter().filter_map(|r| r["keptHash"].as_str()).collect();
        assert_eq!(kept, ["h0000", "h0001", "h0002"], "every record, in order");
        let degraded = &recs[at("auditDegraded")];
        assert_eq!(degraded["cause"], "writeError");
        assert_eq!(degraded["refusing"], true);
        let r = verify::verify(&[path], &[], true).unwrap();
        assert!(r.finding.is_none(), "{r}");
        assert_eq!(r.records, 5);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_until_files_are_taken_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            rotate_bytes: Some(4096),
            max_bytes: Some(3 * 4096),
            ..Default::default()
        };
        let audit = Auditor::start(&settings, None, Arc::new(Metrics::default())).unwrap();
        let mut i = 0;
        while audit.refusal().is_none() {
            audit.record(event(i)).await;
            i += 1;
            assert!(i < 1000, "the spool never filled");
        }
        // Records still go on (the sessions running are recorded).
        audit.record(event(i)).await;
        let trail: Vec<serde_json::Value> = verify::files_of(&[dir.path().to_owned()])
            .unwrap()
            .iter()
            .flat_map(|f| records(f))
            .collect();
        let degraded = trail
            .iter()
            .find(|r| r["event"] == "auditDegraded")
            .expect("the refusal is recorded");
        assert_eq!(degraded["cause"], "spoolFull");
        assert_eq!(degraded["refusing"], true);
        assert!(degraded["spoolBytes"].as_u64().unwrap() > 3 * 4096);
        // Ship and delete the rotated files.
        for f in verify::files_of(&[dir.path().to_owned()]).unwrap() {
            if f != path {
                std::fs::remove_file(f).unwrap();
            }
        }
        let resumed = tokio::time::timeout(Duration::from_secs(5), async {
            while audit.refusal().is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            resumed.is_ok(),
            "service did not resume after the spool was emptied"
        );
        audit.flush().await;
        let recs = records(&path);
        let kinds: Vec<&str> = recs.iter().map(|r| r["event"].as_str().unwrap()).collect();
        assert_eq!(kinds.last(), Some(&"auditRestored"), "{kinds:?}");
        assert_eq!(recs.last().unwrap()["cause"], "spoolFull");
    }

    #[tokio::test]
    async fn a_file_removed_while_open_is_started_anew_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            ..Default::default()
        };
        let audit = Auditor::start(&settings, None, Arc::new(Metrics::default())).unwrap();
        audit.record(event(0)).await;
        std::fs::remove_file(&path).unwrap();
        let reopened = tokio::time::timeout(Duration::from_secs(5), async {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(reopened.is_ok(), "the writer went on into the removed file");
        audit.record(event(1)).await;
        let recs = records(&path);
        assert_eq!(recs[0]["event"], "fileStart");
        assert_eq!(recs[0]["reason"], "replaced");
        assert_eq!(recs[0]["previousSeq"], 1);
        assert_eq!(recs[1]["keptHash"], "h0001");
        let r = verify::verify(&[path], &[], true).unwrap();
        assert!(r.finding.is_none(), "{r}");
        assert!(
            r.to_string()
                .contains("begins after audit.jsonl (removed while open)"),
            "{r}"
        );
    }

    fn transfer_end(id: &str, bytes: u64) -> Event {
        Event::TransferEnd {
            session: "s-1".into(),
            transfer: id.into(),
            user: "alice".into(),
            path: "/files/a.bin".into(),
            endpoint: "e".into(),
            direction: Direction::Upload,
            bytes,
            duration_ms: 1,
            sha256: Some("ab".repeat(32)),
            confidence: Confidence::High,
            detail: None,
            channel: None,
        }
    }

    #[tokio::test]
    async fn each_transfer_gets_a_receipt_checked_offline_with_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        chain::write_key_pair(&key, &dir.path().join("k.pub")).unwrap();
        let verifier = chain::Verifier::from_pem_file(&dir.path().join("k.pub")).unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = AuditSettings {
            stdout: false,
            file: Some(path.display().to_string()),
            ..Default::default()
        };
        let signer = Arc::new(Signer::from_pem_file(&key).unwrap());
        let audit = Auditor::start(&settings, Some(signer), Arc::new(Metrics::default())).unwrap();
        audit.emit(event(0)).await;
        audit.record(transfer_end("s-1-t1", 10)).await;
        audit.emit(event(1)).await;
        audit.record(transfer_end("s-1-t2", 20)).await;
        audit.seal().await;
        let files = [path.clone()];
        let receipt = verify::receipt(&files, "s-1-t2").unwrap().unwrap();
        assert_eq!(receipt.lines().count(), 2);
        let ok = verify::check_receipt(&receipt, std::slice::from_ref(&verifier)).unwrap();
        assert!(
            ok.starts_with("ok: transfer s-1-t2: upload of /files/a.bin by alice"),
            "{ok}"
        );
        assert!(ok.contains(", 20 bytes, "), "{ok}");
        // Any change to the record, or another key, and it does not hold.
        let forged = receipt.replacen("\"bytes\":20", "\"bytes\":21", 1);
        assert!(verify::check_receipt(&forged, std::slice::from_ref(&verifier)).is_err());
        let other = dir.path().join("o.pem");
        chain::write_key_pair(&other, &dir.path().join("o.pub")).unwrap();
        let stranger = chain::Verifier::from_pem_file(&dir.path().join("o.pub")).unwrap();
        let e = verify::check_receipt(&receipt, &[stranger]).unwrap_err();
        assert!(e.contains("not one given"), "{e}");
        assert!(verify::receipt(&files, "s-1-t9").unwrap().is_err());
        // The trail with its per-transfer checkpoints verifies as a whole.
        let r = verify::verify(&files, &[verifier], false).unwrap();
        assert!(r.finding.is_none(), "{r}");
        assert_eq!(
            r.checkpoints, 2,
            "one per transfer; the seal finds nothing unsigned"
        );
    }
}
