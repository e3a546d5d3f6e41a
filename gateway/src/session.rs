//! The one enforcement point. Front ends decode wire requests into a [`FileOp`] and call
//! [`Session::execute`]; the session authorizes against the policy in force, audits, calls the
//! backend, tracks transfers (bytes, SHA-256 in flight, confidence) and audits the outcome.
//! Errors leave as [`FsError`]; each front end maps them to its own codes at the edge.
//!
//! `execute` takes `&self` and may run many operations at once. For a handle's data operations
//! it does no await before handing the request to the backend, so backends that pipeline (the
//! SFTP client) receive a handle's requests in the order the front end issued them.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use portcullis_config::{DataOpsAudit, UploadMode, Verb};
use sha2::{Digest, Sha256};

use crate::{
    audit::{Confidence, Direction, Event},
    backends::{Backend, BackendFile, ftps::FtpsBackend, sftp::SftpBackend},
    fs::{DirEntry, FileAttrs, FileOp, FsError, OpOutput, OpenMode},
    policy::{Location, VPath},
    runtime::{BackendSpec, EndpointSpec, UserEntry},
    state::Shared,
};

/// Open handles (files and directories) a session may hold at once. Each open file may be a
/// backend connection of its own (FTPS), so this bounds what one session can make the
/// gateway hold; `limits@openssh.com` reports it.
pub const MAX_OPEN_HANDLES: usize = 256;

/// Directory entries handed out per READDIR.
const DIR_BATCH: usize = 128;

/// How far ahead of the hashed prefix out-of-order data may be held to keep the digest.
const REORDER_WINDOW: usize = 32 * 1024 * 1024;

/// Bytes handed to a transfer's hashing task and not yet hashed, at most. Past this the
/// producer hashes queued chunks itself before it goes on, so a starved hashing task slows
/// the transfer instead of costing the digest or growing memory.
const HASH_QUEUE_LIMIT: usize = 8 * 1024 * 1024;

/// Hashes a transfer's bytes on a task of its own, so that the hash overlaps the copies and
/// crypto of the data path instead of adding to the dispatcher's work. Chunks are hashed in
/// the order they were queued, by the task or by a producer that found the queue full.
struct HashTask {
    shared: Arc<HashShared>,
    limit: usize,
    done: tokio::task::JoinHandle<()>,
}

struct HashShared {
    /// Taken before the queue by whoever hashes, so chunks are popped and hashed in order.
    hasher: Mutex<Sha256>,
    queue: Mutex<VecDeque<Bytes>>,
    queued: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl HashShared {
    /// Hashes the oldest queued chunk; false when there was none.
    fn hash_one(&self) -> bool {
        let mut h = self.hasher.lock().expect("hasher lock poisoned");
        let Some(chunk) = self.queue.lock().expect("hash queue poisoned").pop_front() else {
            return false;
        };
        h.update(&chunk);
        self.queued.fetch_sub(chunk.len(), Ordering::AcqRel);
        true
    }
}

impl HashTask {
    fn spawn(limit: usize) -> HashTask {
        let shared = Arc::new(HashShared {
            hasher: Mutex::new(Sha256::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: Default::default(),
            closed: Default::default(),
            wake: tokio::sync::Notify::new(),
        });
        let s = shared.clone();
        let done = tokio::spawn(async move {
            loop {
                while s.hash_one() {
                    tokio::task::yield_now().await;
                }
                if s.closed.load(Ordering::Acquire) {
                    break;
                }
                s.wake.notified().await;
            }
        });
        HashTask {
            shared,
            limit,
            done,
        }
    }

    fn push(&self, data: Bytes) {
        let s = &self.shared;
        s.queued.fetch_add(data.len(), Ordering::AcqRel);
        s.queue.lock().expect("hash queue poisoned").push_back(data);
        s.wake.notify_one();
        while s.queued.load(Ordering::Acquire) > self.limit && s.hash_one() {}
    }

    /// Waits for the task to hash what is queued, and returns the digest.
    async fn finish(self) -> Result<Vec<u8>, &'static str> {
        let s = self.shared;
        s.closed.store(true, Ordering::Release);
        s.wake.notify_one();
        self.done.await.map_err(|_| "hashing task failed")?;
        let h = s.hasher.lock().expect("hasher lock poisoned").clone();
        Ok(h.finalize().to_vec())
    }
}

/// SHA-256 over a file's bytes in offset order, whatever order they arrive in (within a bounded
/// window). Any gap, overlap or overflow makes the digest unavailable rather than wrong.
struct InOrderDigest {
    /// Started with the first byte, so that a transfer that moves nothing costs no task.
    hasher: Option<HashTask>,
    /// Bytes the hashing task may have queued before the producer helps.
    limit: usize,
    next: u64,
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
    broken: Option<&'static str>,
}

impl InOrderDigest {
    fn new() -> Self {
        Self::with_limit(HASH_QUEUE_LIMIT)
    }

    fn with_limit(limit: usize) -> Self {
        InOrderDigest {
            hasher: None,
            limit,
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            broken: None,
        }
    }

    fn feed(&mut self, offset: u64, data: Bytes) {
        if self.broken.is_some() || data.is_empty() {
            return;
        }
        if offset < self.next {
            self.broken = Some("non-sequential access");
        } else if offset > self.next {
            if self.pending_bytes + data.len() > REORDER_WINDOW
                || self.pending.contains_key(&offset)
            {
                self.broken = Some("non-sequential access");
                return;
            }
            self.pending_bytes += data.len();
            self.pending.insert(offset, data);
        } else {
            self.hash(data);
            while let Some(entry) = self.pending.first_entry() {
                if *entry.key() != self.next {
                    break;
                }
                let d = entry.remove();
                self.pending_bytes -= d.len();
                self.hash(d);
            }
        }
    }

    /// Hands the next in-order chunk to the hashing task.
    fn hash(&mut self, data: Bytes) {
        self.next += data.len() as u64;
        let limit = self.limit;
        self.hasher
            .get_or_insert_with(|| HashTask::spawn(limit))
            .push(data);
    }

    /// The digest and the length it covers, if the bytes seen form one run from offset 0.
    async fn finish(self) -> Result<(String, u64), &'static str> {
        if let Some(why) = self.broken {
            return Err(why);
        }
        if !self.pending.is_empty() {
            return Err("gaps in the transferred range");
        }
        let digest = match self.hasher {
            None => Sha256::digest(b"").to_vec(),
            Some(task) => task.finish().await?,
        };
        Ok((hex::encode(digest), self.next))
    }
}

struct Transfer {
    started: Instant,
    bytes: u64,
    digest: InOrderDigest,
    saw_eof: bool,
}

impl Transfer {
    fn new() -> Transfer {
        Transfer {
            started: Instant::now(),
            bytes: 0,
            digest: InOrderDigest::new(),
            saw_eof: false,
        }
    }
}

struct OpenFile {
    /// The transfer's id in the audit trail.
    id: String,
    file: Arc<dyn BackendFile>,
    path: VPath,
    backend_path: String,
    /// An atomic upload's temporary name (backend path), renamed to `backend_path` on a
    /// clean close and removed otherwise.
    temp: Option<String>,
    endpoint: String,
    backend: Arc<dyn Backend>,
    mode: OpenMode,
    transfer: Mutex<Transfer>,
    /// Why a write on this handle failed, the first time one did: the upload is then
    /// abandoned at its close.
    failed: Mutex<Option<String>>,
    /// The mount's `maxFileBytes`; for an append, the size the file had at the open and the
    /// bytes appended since (counted before the write, so pipelined appends cannot overshoot).
    max_file_bytes: Option<u64>,
    append_base: u64,
    appended: AtomicU64,
}

impl OpenFile {
    fn direction(&self) -> Direction {
        if self.mode.writes() {
            Direction::Upload
        } else {
            Direction::Download
        }
    }
}

struct DirListing {
    entries: VecDeque<DirEntry>,
}

enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<Mutex<DirListing>>),
}

/// An authorized target: which backend, which path there, and the rule that allowed it.
struct Target {
    endpoint: String,
    /// The mount's backend path: `backend_path` must stay beneath it.
    base: String,
    backend_path: String,
    rule: String,
    /// The mount's umask and file size limit (see `MountGrant`).
    umask: u32,
    max_file_bytes: Option<u64>,
}

impl From<crate::policy::Allowed<'_>> for Target {
    fn from(a: crate::policy::Allowed<'_>) -> Target {
        Target {
            endpoint: a.mount.endpoint.clone(),
            base: a.mount.backend_path.clone(),
            backend_path: a.backend_path,
            rule: a.rule,
            umask: a.mount.umask,
            max_file_bytes: a.mount.max_file_bytes,
        }
    }
}

/// A session's connection to an endpoint, with the endpoint config it was made from.
type CachedBackend = (Arc<EndpointSpec>, Arc<dyn Backend>);

/// Who logged in, from where and how: what `Session::start` audits.
pub struct Login<'a> {
    pub user: &'a str,
    pub peer: SocketAddr,
    pub zone: &'a str,
    pub listener: &'a str,
    pub protocol: &'static str,
    pub methods: Vec<String>,
    /// The client channel's protection, for transfer records.
    pub channel: Option<String>,
}

pub struct Session {
    pub id: String,
    pub user: String,
    pub peer: SocketAddr,
    protocol: &'static str,
    /// The client channel's protection: known at login for FTPS; for SFTP set when the
    /// subsystem starts (russh's auth callbacks do not see the transport).
    channel: std::sync::OnceLock<String>,
    shared: Arc<Shared>,
    started: Instant,
    backends: tokio::sync::Mutex<HashMap<String, CachedBackend>>,
    handles: Mutex<HashMap<u64, Handle>>,
    /// Set once the user was found disabled, expired or removed: the front end ends the
    /// session at its next step.
    revoked: std::sync::atomic::AtomicBool,
    next_handle: AtomicU64,
    finished: std::sync::atomic::AtomicBool,
}

fn too_many_handles() -> FsError {
    FsError::Failure(format!(
        "too many open handles (at most {MAX_OPEN_HANDLES} a session)"
    ))
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// This process's part of every session id: random, so that ids stay unique in a trail that one
/// chain carries across restarts (in a container the pid is the same every time).
static RUN_ID: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{:08x}", rand::random::<u32>()));
static NEXT_TEMP: AtomicU64 = AtomicU64::new(1);
static NEXT_TRANSFER: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// Starts the session of a user who has just logged in: audits the logon and the session
    /// start, and counts it. Every front end logs users in through here.
    pub async fn start(shared: Arc<Shared>, login: Login<'_>) -> Arc<Session> {
        let n = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id: format!("{}-{n}", *RUN_ID),
            user: login.user.to_owned(),
            peer: login.peer,
            protocol: login.protocol,
            channel: login.channel.clone().map(Into::into).unwrap_or_default(),
            shared,
            started: Instant::now(),
            backends: tokio::sync::Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            revoked: std::sync::atomic::AtomicBool::new(false),
            next_handle: AtomicU64::new(1),
            finished: false.into(),
        });
        let audit = &session.shared.audit;
        audit
            .emit(Event::LogonSuccess {
                session: session.id.clone(),
                user: session.user.clone(),
                peer: login.peer,
                zone: login.zone.to_owned(),
                methods: login.methods,
            })
            .await;
        // Durable before the client is told it is logged in (this follows LogonSuccess).
        audit
            .record(Event::SessionStart {
                session: session.id.clone(),
                user: session.user.clone(),
                peer: login.peer,
                protocol: login.protocol.to_owned(),
                listener: login.listener.to_owned(),
                channel: login.channel.clone(),
            })
            .await;
        let labels = session.protocol_label();
        let metrics = &session.shared.metrics;
        metrics.sessions.get_or_create(&labels).inc();
        metrics.sessions_total.get_or_create(&labels).inc();
        session.shared.track_session(&session);
        session
    }

    fn protocol_label(&self) -> Vec<(&'static str, String)> {
        vec![("protocol", self.protocol.to_owned())]
    }

    /// Open file handles (not directories), for graceful shutdown.
    pub fn open_files(&self) -> usize {
        self.handles
            .lock()
            .expect("handle lock poisoned")
            .values()
            .filter(|h| matches!(h, Handle::File(_)))
            .count()
    }

    /// Runs one operation: authorize, audit, execute, audit the outcome.
    pub async fn execute(&self, op: FileOp) -> Result<OpOutput, FsError> {
        let name = op.name();
        let data = op.is_data();
        let (path, target) = match &op {
            FileOp::Rename { from, to, .. } | FileOp::Hardlink { from, to } => {
                (Some(from.clone()), Some(to.clone()))
            }
            FileOp::Site { cwd, command } => (Some(cwd.clone()), Some(command.clone())),
            FileOp::Open { path, .. }
            | FileOp::OpenDir { path }
            | FileOp::Stat { path, .. }
            | FileOp::SetStat { path, .. }
            | FileOp::Remove { path }
            | FileOp::Mkdir { path, .. }
            | FileOp::Rmdir { path }
            | FileOp::RealPath { path }
            | FileOp::StatVfs { path } => (Some(path.clone()), None),
            _ => (None, None),
        };
        let mut rule = None;
        let result = self.run(op, &mut rule).await;
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        self.shared.metrics.op(name, result_label(&result));
        let each = self.shared.runtime.load().config.audit.data_ops == DataOpsAudit::Each;
        if !data || each {
            self.shared
                .audit
                .record(Event::Request {
                    session: self.id.clone(),
                    user: self.user.clone(),
                    op: name,
                    path,
                    target,
                    result: outcome,
                    rule,
                })
                .await;
        }
        result
    }

    async fn run(&self, op: FileOp, rule: &mut Option<String>) -> Result<OpOutput, FsError> {
        match op {
            FileOp::Read {
                handle,
                offset,
                len,
            } => {
                let f = self.file(handle)?;
                if !f.mode.read {
                    return Err(FsError::Denied("handle not opened for reading".into()));
                }
                self.still_allowed(Verb::Read, &f.path).await?;
                let got = f.file.read_at(offset, len).await?;
                let mut t = f.transfer.lock().expect("transfer lock poisoned");
                match got {
                    Some(d) if !d.is_empty() => {
                        t.bytes += d.len() as u64;
                        self.count_bytes("download", d.len());
                        t.digest.feed(offset, d.clone());
                        Ok(OpOutput::Data(d))
                    }
                    _ => {
                        t.saw_eof = true;
                        Ok(OpOutput::Eof)
                    }
                }
            }
            FileOp::Write {
                handle,
                offset,
                data,
            } => {
                let f = self.file(handle)?;
                if !f.mode.writes() {
                    return Err(FsError::Denied("handle not opened for writing".into()));
                }
                // A refused or failed write spoils the upload: a client that pipelines (and
                // checks replies late, or never) must not get the rest committed at CLOSE.
                let written = self.write(&f, offset, data).await;
                if let Err(e) = &written {
                    let mut failed = f.failed.lock().expect("failure lock poisoned");
                    failed.get_or_insert_with(|| e.to_string());
                }
                written.map(|()| OpOutput::Done)
            }
            FileOp::Close { handle } => {
                let h = self
                    .handles
                    .lock()
                    .expect("handle lock poisoned")
                    .remove(&handle)
                    .ok_or(FsError::BadHandle)?;
                match h {
                    Handle::Dir(_) => Ok(OpOutput::Done),
                    Handle::File(f) => {
                        // A user disabled (or a role withdrawn) since the open does not get
                        // the file committed: the transfer is abandoned.
                        let verb = if f.mode.writes() {
                            Verb::Write
                        } else {
                            Verb::Read
                        };
                        if let Err(e) = self.still_allowed(verb, &f.path).await {
                            let _ = self.close_file(&f, Some("access withdrawn")).await;
                            return Err(e);
                        }
                        let failed = f.failed.lock().expect("failure lock poisoned").clone();
                        if let Some(why) = failed {
                            let why = format!("a write failed: {why}");
                            let _ = self.close_file(&f, Some(&why)).await;
                            return Err(FsError::Failure(format!("upload abandoned: {why}")));
                        }
                        let closed = self.close_file(&f, None).await;
                        closed.map(|()| OpOutput::Done)
                    }
                }
            }
            FileOp::FStat { handle } => {
                let f = self.file(handle)?;
                self.still_allowed(Verb::List, &f.path).await?;
                Ok(OpOutput::Attrs(f.file.stat().await?))
            }
            FileOp::FSetStat { handle, attrs } => {
                let f = self.file(handle)?;
                let user = self.user()?;
                let t = self.authorize(&user, Verb::Setattr, &f.path).await?;
                if attrs.size.is_some() {
                    self.authorize(&user, Verb::Write, &f.path).await?;
                }
                *rule = Some(t.rule.clone());
                let attrs = settable(attrs, &t)?;
                f.file.set_stat(attrs).await?;
                Ok(OpOutput::Done)
            }
            FileOp::ReadDir { handle } => {
                let listing = match self
                    .handles
                    .lock()
                    .expect("handle lock poisoned")
                    .get(&handle)
                {
                    Some(Handle::Dir(d)) => d.clone(),
                    _ => return Err(FsError::BadHandle),
                };
                self.user()?;
                let mut l = listing.lock().expect("listing lock poisoned");
                if l.entries.is_empty() {
                    return Ok(OpOutput::Eof);
                }
                let n = l.entries.len().min(DIR_BATCH);
                Ok(OpOutput::Entries(l.entries.drain(..n).collect()))
            }
            FileOp::RealPath { path } => Ok(OpOutput::Path(parse(&path)?.to_string())),
            FileOp::Open { path, mode } => self.open(&path, mode, rule).await,
            FileOp::OpenDir { path } => {
                let vpath = parse(&path)?;
                let entries = self.list(&vpath, rule).await?;
                let id = self.insert(Handle::Dir(Arc::new(Mutex::new(DirListing {
                    entries: entries.into(),
                }))))?;
                Ok(OpOutput::Handle(id))
            }
            FileOp::Stat { path, follow } => {
                let vpath = parse(&path)?;
                let user = self.user()?;
                match user.tree.locate(&vpath) {
                    Location::Virtual { .. } => Ok(OpOutput::Attrs(FileAttrs::virtual_dir())),
                    Location::Nowhere => Err(FsError::NotFound),
                    Location::Mounted { .. } => {
                        let t = self.authorize(&user, Verb::List, &vpath).await?;
                        *rule = Some(t.rule.clone());
                        let b = self.confined(&t).await?;
                        Ok(OpOutput::Attrs(b.stat(&t.backend_path, follow).await?))
                    }
                }
            }
            FileOp::SetStat { path, attrs } => {
                let vpath = parse(&path)?;
                let user = self.user()?;
                let t = self.authorize(&user, Verb::Setattr, &vpath).await?;
                if attrs.size.is_some() {
                    self.authorize(&user, Verb::Write, &vpath).await?;
                }
                *rule = Some(t.rule.clone());
                let attrs = settable(attrs, &t)?;
                let b = self.confined(&t).await?;
                b.set_stat(&t.backend_path, attrs).await?;
                Ok(OpOutput::Done)
            }
            FileOp::Remove { path } => {
                let t = self.target(Verb::Delete, &path, rule).await?;
                self.confined(&t).await?.remove(&t.backend_path).await?;
                Ok(OpOutput::Done)
            }
            FileOp::Mkdir { path, attrs } => {
                let t = self.target(Verb::Mkdir, &path, rule).await?;
                // Only the permission bits: a `[list, mkdir]` role asked for 0o47777.
                let attrs = FileAttrs {
                    mode: attrs.mode.map(|m| m & 0o777 & !t.umask),
                    ..Default::default()
                };
                self.confined(&t)
                    .await?
                    .mkdir(&t.backend_path, attrs)
                    .await?;
                Ok(OpOutput::Done)
            }
            FileOp::Rmdir { path } => {
                let t = self.target(Verb::Rmdir, &path, rule).await?;
                self.confined(&t).await?.rmdir(&t.backend_path).await?;
                Ok(OpOutput::Done)
            }
            FileOp::Rename {
                from,
                to,
                overwrite,
            } => {
                let a = self.target(Verb::Rename, &from, rule).await?;
                let b = self.target(Verb::Rename, &to, rule).await?;
                if a.endpoint != b.endpoint {
                    return Err(FsError::Unsupported(
                        "rename across endpoints; copy and delete instead".into(),
                    ));
                }
                // Replacing a file destroys it: only for a user who may delete it. Others get
                // the rename that never replaces.
                // (A probe, not a decision: no denial is audited here.)
                let user = self.user()?;
                let overwrite =
                    overwrite && user.tree.authorize(Verb::Delete, &parse(&to)?).is_ok();
                self.confined(&b).await?;
                self.confined(&a)
                    .await?
                    .rename(&a.backend_path, &b.backend_path, overwrite)
                    .await?;
                Ok(OpOutput::Done)
            }
            FileOp::Hardlink { from, to } => {
                // Both names get the verb: the link shares the bytes of `from` under `to`.
                let a = self.target(Verb::Link, &from, rule).await?;
                let b = self.target(Verb::Link, &to, rule).await?;
                if a.endpoint != b.endpoint {
                    return Err(FsError::Unsupported(
                        "a hard link cannot cross endpoints".into(),
                    ));
                }
                self.confined(&b).await?;
                self.confined(&a)
                    .await?
                    .hardlink(&a.backend_path, &b.backend_path)
                    .await?;
                Ok(OpOutput::Done)
            }
            FileOp::StatVfs { path } => {
                let t = self.target(Verb::List, &path, rule).await?;
                let b = self.confined(&t).await?;
                Ok(OpOutput::VfsStats(b.statvfs(&t.backend_path).await?))
            }
            FileOp::Fsync { handle } => {
                let f = self.file(handle)?;
                if !f.mode.writes() {
                    return Err(FsError::Denied("handle not opened for writing".into()));
                }
                f.file.fsync().await?;
                Ok(OpOutput::Done)
            }
            FileOp::Site { cwd, command } => {
                let (code, text) = self.site(&cwd, &command, rule).await?;
                Ok(OpOutput::SiteReply { code, text })
            }
        }
    }

    async fn open(
        &self,
        path: &str,
        mode: OpenMode,
        rule: &mut Option<String>,
    ) -> Result<OpOutput, FsError> {
        // A transfer that could not be audited does not start (failClosed, or a full spool);
        // transfers already open go on.
        if let Some(why) = self.shared.audit_refusal("transfer") {
            return Err(FsError::Failure(format!("transfer refused: {why}")));
        }
        let vpath = parse(path)?;
        let user = self.user()?;
        let mut target = None;
        if mode.read || !mode.writes() {
            target = Some(self.authorize(&user, Verb::Read, &vpath).await?);
        }
        if mode.writes() {
            target = Some(self.authorize(&user, Verb::Write, &vpath).await?);
        }
        let t = target.expect("one of the branches ran");
        *rule = Some(t.rule.clone());
        self.room_for_a_handle()?;
        let backend = self.confined(&t).await?;
        // An append under a size limit counts from the file's present size.
        let append_base = match (mode.append, t.max_file_bytes) {
            (true, Some(_)) => match backend.stat(&t.backend_path, true).await {
                Ok(a) => a.size.unwrap_or(0),
                Err(FsError::NotFound) => 0,
                Err(e) => return Err(e),
            },
            _ => 0,
        };
        // A fresh upload replacing the content goes under a temporary name (see UploadMode).
        let temp =
            (mode.truncate && !mode.append && self.upload_mode(&t.endpoint) == UploadMode::Atomic)
                .then(|| {
                    let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
                    temp_name(&t.backend_path, &self.id, n)
                });
        let file = match &temp {
            None => backend.open(&t.backend_path, mode).await?,
            Some(temp) => {
                if mode.exclusive && backend.stat(&t.backend_path, false).await.is_ok() {
                    return Err(FsError::AlreadyExists);
                }
                let private = OpenMode {
                    create: true,
                    exclusive: true,
                    ..mode
                };
                backend.open(temp, private).await?
            }
        };
        let open = Arc::new(OpenFile {
            id: format!(
                "{}-t{}",
                self.id,
                NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed)
            ),
            file,
            path: vpath.clone(),
            backend_path: t.backend_path,
            temp,
            endpoint: t.endpoint.clone(),
            backend,
            mode,
            transfer: Mutex::new(Transfer::new()),
            max_file_bytes: t.max_file_bytes,
            append_base,
            appended: AtomicU64::new(0),
            failed: Mutex::new(None),
        });
        let direction = open.direction();
        let id = match self.insert(Handle::File(open.clone())) {
            Ok(id) => id,
            Err(e) => {
                // Others were opened meanwhile: give this one back, temporary file and all.
                let _ = open.file.close().await;
                if let Some(temp) = &open.temp {
                    let _ = open.backend.remove(temp).await;
                }
                return Err(e);
            }
        };
        self.shared
            .audit
            .emit(Event::TransferStart {
                session: self.id.clone(),
                transfer: open.id.clone(),
                user: self.user.clone(),
                path: vpath.to_string(),
                endpoint: t.endpoint,
                direction,
                mode: mode_str(mode),
                channel: self.channel.get().cloned(),
            })
            .await;
        Ok(OpOutput::Handle(id))
    }

    async fn list(
        &self,
        vpath: &VPath,
        rule: &mut Option<String>,
    ) -> Result<Vec<DirEntry>, FsError> {
        let user = self.user()?;
        match user.tree.locate(vpath) {
            Location::Virtual { children } => Ok(children
                .into_iter()
                .map(|name| DirEntry {
                    name,
                    attrs: FileAttrs::virtual_dir(),
                })
                .collect()),
            Location::Nowhere => Err(FsError::NotFound),
            Location::Mounted { .. } => {
                let t = self.authorize(&user, Verb::List, vpath).await?;
                *rule = Some(t.rule.clone());
                let b = self.confined(&t).await?;
                b.list(&t.backend_path).await
            }
        }
    }

    /// Closes a file at the backend and audits how the transfer ended. `abandoned` says why
    /// the client never closed it.
    /// One write of an upload: still allowed, within the mount's size limit, hashed, sent.
    async fn write(&self, f: &OpenFile, offset: u64, data: Bytes) -> Result<(), FsError> {
        self.still_allowed(Verb::Write, &f.path).await?;
        let len = data.len();
        {
            let mut t = f.transfer.lock().expect("transfer lock poisoned");
            if let Some(max) = f.max_file_bytes {
                let start = if f.mode.append {
                    let before = f.appended.fetch_add(len as u64, Ordering::Relaxed);
                    f.append_base.saturating_add(before)
                } else {
                    offset
                };
                if start.saturating_add(len as u64) > max {
                    return Err(over_quota(max));
                }
            }
            t.digest.feed(offset, data.clone());
        }
        // No await before this call: see the module comment on ordering.
        f.file.write_at(offset, data).await?;
        f.transfer.lock().expect("transfer lock poisoned").bytes += len as u64;
        self.count_bytes("upload", len);
        Ok(())
    }

    async fn close_file(&self, f: &OpenFile, abandoned: Option<&str>) -> Result<(), FsError> {
        let size_before = match f.mode.writes() {
            false => f.file.stat().await.ok().and_then(|a| a.size),
            true => None,
        };
        let mut closed = f.file.close().await;
        let mut abandoned = abandoned.map(str::to_owned);
        if let Some(temp) = &f.temp {
            // Only a clean close puts the file under its name; anything else removes it.
            if closed.is_ok()
                && abandoned.is_none()
                && let Err(e) = f
                    .backend
                    .rename(temp, &f.backend_path, !f.mode.exclusive)
                    .await
            {
                closed = Err(FsError::Failure(format!(
                    "could not put the upload under its name: {e}"
                )));
            }
            if closed.is_err() || abandoned.is_some() {
                let removed = match f.backend.remove(temp).await {
                    Ok(()) => "the partial upload was removed".to_owned(),
                    Err(e) => format!("the partial upload {temp} could not be removed: {e}"),
                };
                match (&mut abandoned, &mut closed) {
                    (Some(why), _) => *why = format!("{why}; {removed}"),
                    (None, Err(e)) => *e = FsError::Failure(format!("{e}; {removed}")),
                    (None, Ok(())) => {}
                }
            }
        }
        let abandoned = abandoned.as_deref();
        let t = std::mem::replace(
            &mut *f.transfer.lock().expect("transfer lock poisoned"),
            Transfer::new(),
        );
        let direction = f.direction();
        let digest = t.digest.finish().await;
        let (sha256, covered) = match &digest {
            Ok((h, n)) => (Some(h.clone()), Some(*n)),
            Err(_) => (None, None),
        };
        let (confidence, detail) = match (&closed, abandoned) {
            (_, Some(why)) => (Confidence::NoEOF, Some(why.to_owned())),
            (Err(e), None) => (Confidence::Low, Some(format!("backend close failed: {e}"))),
            (Ok(()), None) => match direction {
                Direction::Upload => {
                    // Confirm with the backend that it holds what we sent.
                    let size = f
                        .backend
                        .stat(&f.backend_path, false)
                        .await
                        .ok()
                        .and_then(|a| a.size);
                    match (size, covered) {
                        (Some(s), Some(n)) if s == n => (Confidence::High, None),
                        (Some(s), Some(n)) if !f.mode.truncate && !f.mode.exclusive && s > n => (
                            Confidence::High,
                            Some(format!(
                                "backend file is {s} bytes; {n} written by this transfer"
                            )),
                        ),
                        (Some(s), Some(n)) => (
                            Confidence::Low,
                            Some(format!("backend reports {s} bytes, {n} were sent")),
                        ),
                        (None, _) => (
                            Confidence::Low,
                            Some("backend could not confirm the size".into()),
                        ),
                        (_, None) => (
                            Confidence::Low,
                            Some(digest.clone().err().unwrap_or_default().into()),
                        ),
                    }
                }
                Direction::Download => match (size_before, covered) {
                    (Some(s), Some(n)) if s == n => (Confidence::High, None),
                    _ if t.saw_eof && covered.is_some() => (Confidence::High, None),
                    (s, n) => (
                        Confidence::NoEOF,
                        Some(format!(
                            "client closed after {} of {} bytes",
                            n.unwrap_or(t.bytes),
                            s.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
                        )),
                    ),
                },
            },
        };
        self.shared
            .audit
            .record(Event::TransferEnd {
                session: self.id.clone(),
                transfer: f.id.clone(),
                user: self.user.clone(),
                path: f.path.to_string(),
                endpoint: f.endpoint.clone(),
                direction,
                bytes: t.bytes,
                duration_ms: t.started.elapsed().as_millis() as u64,
                sha256,
                confidence,
                detail,
                channel: self.channel.get().cloned(),
            })
            .await;
        closed
    }

    /// Says that a transfer on `handle` starts at `offset` (an FTP `REST`): the in-flight
    /// digest then covers the bytes from there.
    pub fn resume_at(&self, handle: u64, offset: u64) {
        if let Ok(f) = self.file(handle) {
            let mut t = f.transfer.lock().expect("transfer lock poisoned");
            if t.bytes == 0 {
                t.digest.next = offset;
            }
        }
    }

    /// Closes a file the client gave up on (an FTP `ABOR`, a broken data connection): the
    /// transfer is audited as NoEOF with `reason`.
    pub async fn abandon(&self, handle: u64, reason: &str) {
        let h = self
            .handles
            .lock()
            .expect("handle lock poisoned")
            .remove(&handle);
        if let Some(Handle::File(f)) = h {
            let _ = self.close_file(&f, Some(reason)).await;
        }
    }

    /// `SITE <command>` from the directory `cwd`: the verb `site` on the mount and the
    /// subcommand on the mount's allow-list, then the endpoint's own answer.
    ///
    /// Arguments are confined like any path: for `CHGRP` and `CHOWN` the last argument is a
    /// path, resolved against `cwd`, authorized on its own mount (`site` and `setattr`),
    /// confined, and sent as the backend path. Any other subcommand is sent from the cwd's
    /// backend directory and may not carry an argument that names a path (`/`, `\`, `..`).
    /// `SITE CHMOD` is not sent here: front ends run it as a SETSTAT ([`site_chmod`]).
    async fn site(
        &self,
        cwd: &str,
        command: &str,
        rule: &mut Option<String>,
    ) -> Result<(u16, String), FsError> {
        let user = self.user()?;
        let words: Vec<&str> = command.split_whitespace().collect();
        let word = words.first().copied().unwrap_or("").to_ascii_uppercase();
        let takes_path = matches!(word.as_str(), "CHGRP" | "CHOWN");
        let vpath = if takes_path {
            // The path is the rest of the line after one space: names may hold spaces.
            let Some((_, path)) = site_path_args(command) else {
                return Err(FsError::BadPath(format!(
                    "SITE {word} takes two arguments: SITE {word} <owner> <path>"
                )));
            };
            parse(&crate::policy::join(cwd, path))?
        } else {
            if let Some(a) = words[1..]
                .iter()
                .find(|a| a.contains('/') || a.contains('\\') || a.contains(".."))
            {
                let why = format!(
                    "SITE {word}: argument {a:?} names a path; only CHMOD, CHGRP and CHOWN take one"
                );
                self.deny(Verb::Site, &parse(cwd)?, &why).await;
                return Err(FsError::Denied(why));
            }
            parse(cwd)?
        };
        let authorized = user.tree.authorize_site(&vpath, command).and_then(|a| {
            if takes_path {
                user.tree.authorize(Verb::Setattr, &vpath)?;
            }
            Ok(a)
        });
        let t = match authorized {
            Ok(a) => Target::from(a),
            Err(denied) => {
                self.deny(Verb::Site, &vpath, &denied.0).await;
                return Err(FsError::Denied(denied.0));
            }
        };
        *rule = Some(t.rule.clone());
        let backend = self.confined(&t).await?;
        if takes_path {
            let sent = format!("{word} {} {}", words[1], t.backend_path);
            backend.site(&t.base, &sent).await
        } else {
            backend.site(&t.backend_path, command).await
        }
    }

    /// Ends the session: open files are closed and audited as abandoned (NoEOF).
    pub async fn finish(&self, reason: &str) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let handles: Vec<Handle> = self
            .handles
            .lock()
            .expect("handle lock poisoned")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            if let Handle::File(f) = h {
                let _ = self
                    .close_file(&f, Some("session ended before the file was closed"))
                    .await;
            }
        }
        self.shared
            .audit
            .emit(Event::SessionEnd {
                session: self.id.clone(),
                user: self.user.clone(),
                reason: reason.to_owned(),
                duration_ms: self.started.elapsed().as_millis() as u64,
            })
            .await;
        self.shared
            .metrics
            .sessions
            .get_or_create(&self.protocol_label())
            .dec();
    }

    fn room_for_a_handle(&self) -> Result<(), FsError> {
        match self.handles.lock().expect("handle lock poisoned").len() {
            n if n >= MAX_OPEN_HANDLES => Err(too_many_handles()),
            _ => Ok(()),
        }
    }

    fn insert(&self, h: Handle) -> Result<u64, FsError> {
        let mut handles = self.handles.lock().expect("handle lock poisoned");
        if handles.len() >= MAX_OPEN_HANDLES {
            return Err(too_many_handles());
        }
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        handles.insert(id, h);
        Ok(id)
    }

    fn file(&self, handle: u64) -> Result<Arc<OpenFile>, FsError> {
        match self
            .handles
            .lock()
            .expect("handle lock poisoned")
            .get(&handle)
        {
            Some(Handle::File(f)) => Ok(f.clone()),
            _ => Err(FsError::BadHandle),
        }
    }

    fn count_bytes(&self, direction: &str, n: usize) {
        self.shared
            .metrics
            .bytes
            .get_or_create(&vec![("direction", direction.to_owned())])
            .inc_by(n as u64);
    }

    /// The user as the config in force has it now: a user removed or disabled by a reload
    /// loses access at the next operation.
    fn user(&self) -> Result<Arc<UserEntry>, FsError> {
        let rt = self.shared.runtime.load();
        let refused = match rt.users.get(&self.user) {
            Some(u) => match u.refusal(chrono::Utc::now()) {
                None => return Ok(u.clone()),
                Some(why) => why.to_owned(),
            },
            None => "user no longer exists".to_owned(),
        };
        self.revoked.store(true, Ordering::Relaxed);
        Err(FsError::Denied(refused))
    }

    /// Whether the user is disabled, expired or removed under the config in force: the
    /// session is over.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed) || self.user().is_err()
    }

    /// Resolves once the user's access is withdrawn: by a reload that disables or removes
    /// them, or by their expiry passing. Front ends wait on it beside the client, so an idle
    /// connection is closed then, not at its next command.
    pub async fn withdrawn(&self) {
        let mut reloads = self.shared.reloads.subscribe();
        loop {
            let expiry = match self.user() {
                Err(_) => return,
                Ok(u) => u.expires_at,
            };
            let until_expiry = async {
                match expiry.and_then(|t| (t - chrono::Utc::now()).to_std().ok()) {
                    // Checked again when the time comes (and past it, at once).
                    Some(d) => tokio::time::sleep(d + std::time::Duration::from_millis(10)).await,
                    None if expiry.is_some() => {}
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = reloads.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = until_expiry => {}
            }
        }
    }

    /// An operation on an open handle is judged again: the user must still be allowed in
    /// (not disabled, not expired, not removed) and still hold the verb on the handle's path
    /// under the policy in force. A reload that withdraws either stops the next read or write.
    async fn still_allowed(&self, verb: Verb, path: &VPath) -> Result<(), FsError> {
        let user = self.user()?;
        if user.tree.grants(verb, path) {
            return Ok(());
        }
        self.authorize(&user, verb, path).await.map(drop)
    }

    async fn target(
        &self,
        verb: Verb,
        path: &str,
        rule: &mut Option<String>,
    ) -> Result<Target, FsError> {
        let vpath = parse(path)?;
        let user = self.user()?;
        let t = self.authorize(&user, verb, &vpath).await?;
        *rule = Some(t.rule.clone());
        Ok(t)
    }

    /// The policy decision, audited when it denies; the denial record is queued before the
    /// caller sees the error.
    async fn authorize(
        &self,
        user: &UserEntry,
        verb: Verb,
        path: &VPath,
    ) -> Result<Target, FsError> {
        match user.tree.authorize(verb, path) {
            Ok(a) => Ok(Target::from(a)),
            Err(denied) => {
                self.deny(verb, path, &denied.0).await;
                Err(FsError::Denied(denied.0))
            }
        }
    }

    /// Records a request the gateway does not serve at all (see `Event::RequestRefused`).
    pub async fn refused(&self, request: String, reason: &str) {
        self.shared
            .audit
            .emit(Event::RequestRefused {
                session: self.id.clone(),
                user: self.user.clone(),
                request,
                reason: reason.to_owned(),
            })
            .await;
    }

    async fn deny(&self, verb: Verb, path: &VPath, reason: &str) {
        let event = Event::PolicyDenied {
            session: self.id.clone(),
            user: self.user.clone(),
            op: verb.as_str(),
            path: path.to_string(),
            reason: reason.to_owned(),
        };
        // Durable before the caller learns of the denial (and tells the client).
        self.shared.audit.record(event).await;
    }

    /// Names the client channel's protection once it is known (a second call is ignored).
    pub fn set_channel(&self, protection: String) {
        let _ = self.channel.set(protection);
    }

    /// How uploads land on `endpoint`, from the config in force.
    fn upload_mode(&self, endpoint: &str) -> UploadMode {
        self.shared
            .runtime
            .load()
            .endpoints
            .get(endpoint)
            .map_or(UploadMode::Atomic, |e| e.upload_mode)
    }

    /// This session's connection to an endpoint, made on first use and remade when the
    /// endpoint's config changed or its connection dropped.
    /// The endpoint's connection, once the backend has shown that `t`'s path stays beneath
    /// its mount through every component (a symlinked directory or a final symlink that leads
    /// elsewhere is refused). Every path operation gets its backend here.
    async fn confined(&self, t: &Target) -> Result<Arc<dyn Backend>, FsError> {
        let b = self.backend(&t.endpoint).await?;
        b.confine(&t.base, &t.backend_path).await?;
        Ok(b)
    }

    /// Starts the connection to the endpoint behind `path`, if the user may list, read or
    /// write there, so that the first command needing it does not wait for the endpoint's
    /// login: FTP clients change into a directory before they ask for its files, and curl,
    /// for one, then waits up to a second longer when a `SIZE` reply is slow. Asks for no
    /// file operation, so it denies and audits nothing itself (the connection is audited).
    pub async fn prepare(&self, path: &str) {
        let (Ok(vpath), Ok(user)) = (parse(path), self.user()) else {
            return;
        };
        let endpoint = [Verb::List, Verb::Read, Verb::Write]
            .into_iter()
            .find_map(|v| user.tree.authorize(v, &vpath).ok())
            .map(|a| Target::from(a).endpoint);
        if let Some(endpoint) = endpoint
            && let Ok(b) = self.backend(&endpoint).await
        {
            b.prepare();
        }
    }

    async fn backend(&self, endpoint: &str) -> Result<Arc<dyn Backend>, FsError> {
        let rt = self.shared.runtime.load();
        let spec = rt.endpoints.get(endpoint).cloned().ok_or_else(|| {
            FsError::Unavailable(format!("endpoint {endpoint} is not configured"))
        })?;
        let mut cache = self.backends.lock().await;
        if let Some((s, b)) = cache.get(endpoint)
            && Arc::ptr_eq(s, &spec)
            && !b.is_closed()
        {
            return Ok(b.clone());
        }
        let backend: Arc<dyn Backend> = match &spec.backend {
            BackendSpec::Local(l) => l.clone(),
            BackendSpec::Sftp(s) => Arc::new(SftpBackend::new(
                s.clone(),
                self.shared.audit.clone(),
                self.id.clone(),
            )),
            BackendSpec::Ftps(s) => Arc::new(FtpsBackend::new(
                s.clone(),
                self.shared.audit.clone(),
                self.id.clone(),
            )),
        };
        cache.insert(endpoint.to_owned(), (spec, backend.clone()));
        Ok(backend)
    }
}

/// The temporary name an atomic upload is written under: hidden, beside the target (so the
/// final rename stays on one file system), unique per session and handle, and within the
/// usual 255-byte name limit.
fn temp_name(target: &str, session: &str, seq: u64) -> String {
    let (dir, name) = match target.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", target),
    };
    let suffix = format!(".portcullis-{session}-{seq}.part");
    let mut keep = name.len().min(255 - 1 - suffix.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{dir}/.{}{suffix}", &name[..keep])
}

fn parse(path: &str) -> Result<VPath, FsError> {
    VPath::parse(path).map_err(|e| FsError::BadPath(e.to_string()))
}

/// What a client may set on `t`: never the owner, and of the mode only the permission bits
/// the mount's umask leaves. Setuid, setgid and sticky are dropped (a role with `setattr`
/// must not mint a setuid file on a backend), as are type bits. A size past the mount's
/// `maxFileBytes` is refused.
fn settable(attrs: FileAttrs, t: &Target) -> Result<FileAttrs, FsError> {
    if let (Some(size), Some(max)) = (attrs.size, t.max_file_bytes)
        && size > max
    {
        return Err(over_quota(max));
    }
    Ok(FileAttrs {
        uid: None,
        gid: None,
        mode: attrs.mode.map(|m| m & 0o777 & !t.umask),
        ..attrs
    })
}

/// `SITE CHMOD <mode> <path>`, if `command` is a CHMOD: the path and the octal mode, or why the
/// arguments are malformed. Front ends run it as a SETSTAT of the mode.
pub fn site_chmod(command: &str) -> Option<Result<(&str, u32), String>> {
    let word = command.split_whitespace().next()?;
    if !word.eq_ignore_ascii_case("CHMOD") {
        return None;
    }
    Some(match site_path_args(command) {
        None => Err("SITE CHMOD takes two arguments: SITE CHMOD <mode> <path>".to_owned()),
        Some((mode, path)) => u32::from_str_radix(mode, 8)
            .map(|m| (path, m))
            .map_err(|_| format!("{mode:?} is not an octal mode")),
    })
}

/// `SITE CHMOD|CHGRP|CHOWN <arg> <path>`: the argument, and the path as the rest of the line
/// after the one space that follows it (names may hold spaces, as lftp's `mirror -R` sends).
fn site_path_args(command: &str) -> Option<(&str, &str)> {
    let (_, rest) = command.trim_start().split_once(char::is_whitespace)?;
    let (arg, path) = rest.trim_start().split_once(char::is_whitespace)?;
    (!path.is_empty()).then_some((arg, path))
}

fn over_quota(max: u64) -> FsError {
    FsError::Quota(format!("files here may hold at most {max} bytes"))
}

fn mode_str(m: OpenMode) -> String {
    let mut s = Vec::new();
    for (on, n) in [
        (m.read, "read"),
        (m.write, "write"),
        (m.append, "append"),
        (m.create, "create"),
        (m.truncate, "truncate"),
        (m.exclusive, "exclusive"),
    ] {
        if on {
            s.push(n);
        }
    }
    s.join(",")
}

fn result_label(r: &Result<OpOutput, FsError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(FsError::Denied(_)) => "denied",
        Err(FsError::NotFound) => "not_found",
        Err(FsError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{audit::Auditor, metrics::Metrics};

    /// A session of `alice` over a local directory: `/in` (everything but delete), `/ro`
    /// (list, read) and `/drop` (write only), with the audit in a file.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        audit: PathBuf,
        shared: Arc<Shared>,
        session: Arc<Session>,
    }

    async fn fixture(upload_mode: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["in", "ro", "drop", "outside"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("ro/readme.txt"), b"read me").unwrap();
        std::fs::write(root.join("outside/secret"), b"s").unwrap();
        let audit = dir.path().join("audit.jsonl");
        let host_key = dir.path().join("host_key");
        russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
            .unwrap()
            .write_openssh_file(&host_key, russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        let text = format!(
            r#"
listeners: [{{name: sftp, protocol: sftp, address: "127.0.0.1:0", zones: [lo]}}]
ssh: {{hostKeyFiles: ["{host_key}"]}}
zones: [{{name: lo, cidrs: ["127.0.0.0/8"]}}]
endpoints:
  - {{name: disk, type: local, root: "{root}", uploadMode: {upload_mode}}}
users:
  - {{name: alice, passwordHash: "{hash}", zones: [lo], roles: [rw, ro, drop]}}
roles:
  - name: rw
    mounts: [{{path: /in, endpoint: disk, backendPath: /in, verbs: [list, read, write, mkdir, rmdir, rename, setattr, link]}}]
  - name: ro
    mounts: [{{path: /ro, endpoint: disk, backendPath: /ro, verbs: [list, read]}}]
  - name: drop
    mounts: [{{path: /drop, endpoint: disk, backendPath: /drop, verbs: [write]}}]
audit: {{stdout: false, file: "{audit}"}}
"#,
            root = root.display(),
            audit = audit.display(),
            host_key = host_key.display(),
            hash = *crate::auth::DUMMY_HASH,
        );
        let rt = crate::runtime::compile(&text, dir.path(), None).expect("test config compiles");
        let metrics = Arc::new(Metrics::default());
        let auditor = Auditor::start(&rt.config.audit, None, metrics.clone()).unwrap();
        let shared = Shared::new(rt, auditor, metrics);
        let session = Session::start(
            shared.clone(),
            Login {
                user: "alice",
                peer: "127.0.0.1:40000".parse().unwrap(),
                zone: "lo",
                listener: "test",
                protocol: "sftp",
                methods: vec!["password".into()],
                channel: None,
            },
        )
        .await;
        Fixture {
            _dir: dir,
            root,
            audit,
            shared,
            session,
        }
    }

    impl Fixture {
        /// The audit records so far, once every queued one is written.
        async fn records(&self) -> Vec<serde_json::Value> {
            // Denials are queued from synchronous code; give them a turn to land.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.shared.audit.flush().await;
            std::fs::read_to_string(&self.audit)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }

        async fn write_file(&self, path: &str, body: &[u8]) -> Result<u64, FsError> {
            let mode = OpenMode {
                write: true,
                create: true,
                truncate: true,
                ..Default::default()
            };
            let h = match self
                .session
                .execute(FileOp::Open {
                    path: path.into(),
                    mode,
                })
                .await?
            {
                OpOutput::Handle(h) => h,
                other => panic!("open gave {other:?}"),
            };
            self.session
                .execute(FileOp::Write {
                    handle: h,
                    offset: 0,
                    data: Bytes::copy_from_slice(body),
                })
                .await?;
            Ok(h)
        }

        fn names(&self, dir: &str) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(self.root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    fn read_only() -> OpenMode {
        OpenMode {
            read: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn user_verb_path_table_decides_and_audits_every_denial() {
        let f = fixture("atomic").await;
        std::fs::write(f.root.join("in/a.txt"), b"a").unwrap();
        let ok = |r: &Result<OpOutput, FsError>| r.is_ok();
        let denied = |r: &Result<OpOutput, FsError>| matches!(r, Err(FsError::Denied(_)));
        let missing = |r: &Result<OpOutput, FsError>| matches!(r, Err(FsError::NotFound));
        type Check = fn(&Result<OpOutput, FsError>) -> bool;
        let table: Vec<(FileOp, Check, Option<&str>)> = vec![
            // (operation, expected outcome, the verb a denial record names)
            (FileOp::OpenDir { path: "/in".into() }, ok, None),
            (FileOp::OpenDir { path: "/ro".into() }, ok, None),
            (
                FileOp::OpenDir {
                    path: "/drop".into(),
                },
                denied,
                Some("list"),
            ),
            (
                FileOp::Open {
                    path: "/ro/readme.txt".into(),
                    mode: read_only(),
                },
                ok,
                None,
            ),
            (
                FileOp::Open {
                    path: "/ro/new.txt".into(),
                    mode: OpenMode {
                        write: true,
                        create: true,
                        ..Default::default()
                    },
                },
                denied,
                Some("write"),
            ),
            (
                FileOp::Open {
                    path: "/drop/x".into(),
                    mode: read_only(),
                },
                denied,
                Some("read"),
            ),
            (
                FileOp::Remove {
                    path: "/in/a.txt".into(),
                },
                denied,
                Some("delete"),
            ),
            (
                FileOp::Remove {
                    path: "/ro/readme.txt".into(),
                },
                denied,
                Some("delete"),
            ),
            (
                FileOp::Mkdir {
                    path: "/in/d".into(),
                    attrs: FileAttrs::default(),
                },
                ok,
                None,
            ),
            (
                FileOp::Mkdir {
                    path: "/ro/d".into(),
                    attrs: FileAttrs::default(),
                },
                denied,
                Some("mkdir"),
            ),
            (
                FileOp::Rmdir {
                    path: "/in/d".into(),
                },
                ok,
                None,
            ),
            (
                FileOp::Rename {
                    from: "/in/a.txt".into(),
                    to: "/ro/a.txt".into(),
                    overwrite: false,
                },
                denied,
                Some("rename"),
            ),
            (
                FileOp::Rename {
                    from: "/in/a.txt".into(),
                    to: "/in/b.txt".into(),
                    overwrite: false,
                },
                ok,
                None,
            ),
            (
                FileOp::Stat {
                    path: "/in/b.txt".into(),
                    follow: true,
                },
                ok,
                None,
            ),
            (
                FileOp::Stat {
                    path: "/nowhere".into(),
                    follow: true,
                },
                missing,
                None,
            ),
            (
                FileOp::Stat {
                    path: "/in/../outside/secret".into(),
                    follow: true,
                },
                missing,
                None,
            ),
            (FileOp::StatVfs { path: "/in".into() }, ok, None),
            (
                FileOp::StatVfs {
                    path: "/drop".into(),
                },
                denied,
                Some("list"),
            ),
            (
                FileOp::SetStat {
                    path: "/ro/readme.txt".into(),
                    attrs: FileAttrs {
                        mode: Some(0o600),
                        ..Default::default()
                    },
                },
                denied,
                Some("setattr"),
            ),
            (
                FileOp::Hardlink {
                    from: "/in/b.txt".into(),
                    to: "/in/c.txt".into(),
                },
                ok,
                None,
            ),
            (
                FileOp::Hardlink {
                    from: "/ro/readme.txt".into(),
                    to: "/in/r.txt".into(),
                },
                denied,
                Some("link"),
            ),
            (
                FileOp::Site {
                    cwd: "/ro".into(),
                    command: "HELP".into(),
                },
                denied,
                Some("site"),
            ),
            (
                FileOp::Site {
                    cwd: "/in".into(),
                    command: "UMASK ../x".into(),
                },
                denied,
                Some("site"),
            ),
        ];
        let mut expected_denials = Vec::new();
        for (op, check, verb) in table {
            let shown = format!("{op:?}");
            let path = match &op {
                FileOp::Rename { to, .. } => to.clone(),
                FileOp::Hardlink { from, .. } => from.clone(),
                FileOp::OpenDir { path }
                | FileOp::Open { path, .. }
                | FileOp::Remove { path }
                | FileOp::Mkdir { path, .. }
                | FileOp::Rmdir { path }
                | FileOp::Stat { path, .. }
                | FileOp::StatVfs { path }
                | FileOp::SetStat { path, .. } => path.clone(),
                FileOp::Site { cwd, .. } => cwd.clone(),
                _ => unreachable!(),
            };
            let r = f.session.execute(op).await;
            assert!(check(&r), "{shown} gave {r:?}");
            if let Some(v) = verb {
                expected_denials.push((v.to_owned(), path));
            }
        }
        let records = f.records().await;
        let denials: Vec<(String, String)> = records
            .iter()
            .filter(|r| r["event"] == "policyDenied")
            .map(|r| {
                (
                    r["op"].as_str().unwrap().into(),
                    r["path"].as_str().unwrap().into(),
                )
            })
            .collect();
        for d in &expected_denials {
            assert!(
                denials.contains(d),
                "no denial record for {d:?} in {denials:?}"
            );
        }
        assert_eq!(denials.len(), expected_denials.len(), "{denials:?}");
        // Every request, allowed or not, has its record with the outcome.
        let requests = records.iter().filter(|r| r["event"] == "request").count();
        assert!(requests >= 23, "{requests} request records");
        assert_eq!(f.names("in"), ["b.txt", "c.txt"]);
        let meta = |n: &str| std::fs::metadata(f.root.join(n)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta("in/b.txt").ino(), meta("in/c.txt").ino());
        assert_eq!(f.names("ro"), ["readme.txt"]);
    }

    #[tokio::test]
    async fn atomic_upload_appears_only_when_closed_and_vanishes_when_abandoned() {
        let f = fixture("atomic").await;
        std::fs::write(f.root.join("in/old.txt"), b"previous content").unwrap();
        // While the upload runs, the real name still shows the old file; the new bytes sit
        // under a hidden temporary name.
        let h = f.write_file("/in/old.txt", b"new content").await.unwrap();
        assert_eq!(
            std::fs::read(f.root.join("in/old.txt")).unwrap(),
            b"previous content"
        );
        let names = f.names("in");
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(".old.txt.portcullis-") && n.ends_with(".part"))
        );
        f.session
            .execute(FileOp::Close { handle: h })
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(f.root.join("in/old.txt")).unwrap(),
            b"new content"
        );
        assert_eq!(f.names("in"), ["old.txt"]);

        // An upload the client never closes (the session ends) leaves nothing behind, and
        // the file it would have replaced is untouched.
        let _h = f.write_file("/in/old.txt", b"half").await.unwrap();
        let _h2 = f.write_file("/in/fresh.txt", b"half").await.unwrap();
        f.session.finish("client vanished").await;
        assert_eq!(f.names("in"), ["old.txt"]);
        assert_eq!(
            std::fs::read(f.root.join("in/old.txt")).unwrap(),
            b"new content"
        );
        let ends: Vec<_> = f
            .records()
            .await
            .into_iter()
            .filter(|r| r["event"] == "transferEnd" && r["confidence"] == "NoEOF")
            .collect();
        assert_eq!(ends.len(), 2);
        for e in ends {
            let detail = e["detail"].as_str().unwrap();
            assert!(detail.contains("partial upload was removed"), "{detail}");
        }
    }

    #[tokio::test]
    async fn direct_uploads_write_in_place_and_appends_never_use_a_temporary_name() {
        let f = fixture("direct").await;
        let h = f.write_file("/in/d.txt", b"direct").await.unwrap();
        assert_eq!(f.names("in"), ["d.txt"]);
        f.session
            .execute(FileOp::Close { handle: h })
            .await
            .unwrap();

        let f = fixture("atomic").await;
        std::fs::write(f.root.join("in/r.bin"), b"0123").unwrap();
        let mode = OpenMode {
            write: true,
            append: true,
            ..Default::default()
        };
        let OpOutput::Handle(h) = f
            .session
            .execute(FileOp::Open {
                path: "/in/r.bin".into(),
                mode,
            })
            .await
            .unwrap()
        else {
            panic!("no handle")
        };
        assert_eq!(f.names("in"), ["r.bin"], "a resume writes in place");
        f.session
            .execute(FileOp::Write {
                handle: h,
                offset: 4,
                data: Bytes::from_static(b"4567"),
            })
            .await
            .unwrap();
        f.session
            .execute(FileOp::Close { handle: h })
            .await
            .unwrap();
        assert_eq!(std::fs::read(f.root.join("in/r.bin")).unwrap(), b"01234567");
    }

    #[tokio::test]
    async fn rename_never_replaces_unless_asked_and_allowed_to_delete() {
        let f = fixture("atomic").await;
        for n in ["a", "b"] {
            std::fs::write(f.root.join(format!("in/{n}")), n).unwrap();
        }
        let rename = |overwrite| FileOp::Rename {
            from: "/in/a".into(),
            to: "/in/b".into(),
            overwrite,
        };
        assert_eq!(
            f.session.execute(rename(false)).await,
            Err(FsError::AlreadyExists)
        );
        // posix-rename asks to replace, but `rw` has no delete verb: no file is destroyed.
        assert_eq!(
            f.session.execute(rename(true)).await,
            Err(FsError::AlreadyExists)
        );
        assert_eq!(std::fs::read(f.root.join("in/b")).unwrap(), b"b");
        assert!(Path::new(&f.root.join("in/a")).exists());
    }

    #[tokio::test]
    async fn modes_keep_only_permission_bits() {
        use std::os::unix::fs::PermissionsExt;
        let f = fixture("atomic").await;
        let mode_of = |p: &str| {
            std::fs::metadata(f.root.join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        f.session
            .execute(FileOp::Mkdir {
                path: "/in/d".into(),
                attrs: FileAttrs {
                    mode: Some(0o47777),
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        assert_eq!(mode_of("in/d") & 0o7000, 0, "{:o}", mode_of("in/d"));
        std::fs::write(f.root.join("in/x"), b"x").unwrap();
        f.session
            .execute(FileOp::SetStat {
                path: "/in/x".into(),
                attrs: FileAttrs {
                    mode: Some(0o106755),
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        assert_eq!(mode_of("in/x") & 0o7777, 0o755);
    }

    #[tokio::test]
    async fn open_handles_are_bounded_per_session() {
        let f = fixture("atomic").await;
        let mut handles = Vec::new();
        for _ in 0..MAX_OPEN_HANDLES {
            match f
                .session
                .execute(FileOp::OpenDir { path: "/in".into() })
                .await
            {
                Ok(OpOutput::Handle(h)) => handles.push(h),
                other => panic!("{other:?}"),
            }
        }
        let over = f
            .session
            .execute(FileOp::OpenDir { path: "/in".into() })
            .await;
        assert!(
            matches!(over, Err(FsError::Failure(ref m)) if m.contains("too many open handles")),
            "{over:?}"
        );
        f.session
            .execute(FileOp::Close { handle: handles[0] })
            .await
            .unwrap();
        assert!(
            f.session
                .execute(FileOp::OpenDir { path: "/in".into() })
                .await
                .is_ok()
        );
    }

    /// On a current-thread runtime the hashing task cannot run while the test feeds, as on a
    /// machine too busy to schedule it: the producer then hashes, and the digest holds.
    #[tokio::test]
    async fn a_starved_hashing_task_slows_the_producer_and_keeps_the_digest() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        let mut d = InOrderDigest::with_limit(64 * 1024);
        for (i, chunk) in data.chunks(32 * 1024).enumerate() {
            d.feed((i * 32 * 1024) as u64, Bytes::copy_from_slice(chunk));
            let queued = d
                .hasher
                .as_ref()
                .unwrap()
                .shared
                .queued
                .load(Ordering::Acquire);
            assert!(queued <= 64 * 1024, "{queued} bytes queued");
        }
        let want = hex::encode(Sha256::digest(&data));
        assert_eq!(d.finish().await, Ok((want, 1 << 20)));
    }

    #[tokio::test]
    async fn digest_tolerates_reordering_but_not_gaps() {
        let data: Vec<u8> = (0..100u8).collect();
        let want = hex::encode(Sha256::digest(&data));
        let mut d = InOrderDigest::new();
        for (off, len) in [(20, 30), (0, 20), (70, 30), (50, 20)] {
            d.feed(off as u64, Bytes::copy_from_slice(&data[off..off + len]));
        }
        assert_eq!(d.finish().await, Ok((want, 100)));
        let empty = hex::encode(Sha256::digest(b""));
        assert_eq!(InOrderDigest::new().finish().await, Ok((empty, 0)));

        let mut gap = InOrderDigest::new();
        gap.feed(0, Bytes::from_static(b"ab"));
        gap.feed(5, Bytes::from_static(b"cd"));
        assert!(gap.finish().await.is_err());

        let mut overlap = InOrderDigest::new();
        overlap.feed(0, Bytes::from_static(b"abcd"));
        overlap.feed(2, Bytes::from_static(b"cd"));
        assert!(overlap.finish().await.is_err());
    }

    #[test]
    fn site_path_arguments_keep_spaces_in_names() {
        assert_eq!(
            site_path_args("CHMOD 644 ./s p.txt"),
            Some(("644", "./s p.txt"))
        );
        assert_eq!(site_path_args("chmod  600 a"), Some(("600", "a")));
        assert_eq!(site_path_args("CHMOD 644"), None);
        assert_eq!(site_path_args("CHMOD 644 "), None);
        assert_eq!(site_path_args("CHMOD"), None);
    }
}
