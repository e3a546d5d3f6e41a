//! The FTPS backend: suppaftp over tokio-rustls (aws-lc-rs), with the backend's CA pinned from
//! config, `PBSZ 0`/`PROT P`, EPSV and binary mode.
//!
//! FTP allows one transfer per control connection, so metadata operations share one
//! connection per session and each open file gets a connection of its own. Transfers stream:
//! reads are served from the `RETR` stream in order (any read order within a window), writes
//! are reordered into one `STOR` stream, and the first byte's offset becomes `REST` (resume).
//! A file is only reported closed once the data connection was drained, TLS `close_notify`
//! sent, and the backend's `226` read.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use portcullis_config::FtpSecurity;
use rustls::ClientConfig;
use suppaftp::{
    FtpError, Mode,
    list::{File, ListParser},
    tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream, TransferStream},
    types::FileType,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Mutex,
};
use tokio_rustls::TlsConnector;

use super::{Backend, BackendFile};
use crate::{
    audit::{Auditor, Event},
    fs::{DirEntry, FileAttrs, FsError, OpenMode, listable},
};

/// How to reach one FTPS endpoint, compiled from config.
pub struct FtpsSpec {
    pub name: String,
    pub addresses: Vec<String>,
    pub security: FtpSecurity,
    /// Trusts only the configured CA; `None` for a plaintext endpoint.
    pub tls: Option<Arc<ClientConfig>>,
    pub server_name: Option<String>,
    pub username: String,
    pub password: String,
    pub connect_timeout: Duration,
    /// How long one step may take once connected (`ioTimeoutSeconds`): a command and its
    /// reply, a chunk of a transfer, the final `226`.
    pub io_timeout: Duration,
    /// Files a session may hold open at once on this endpoint, each its own connection.
    pub max_files: usize,
}

/// Bytes buffered ahead of (reads) or behind (writes) the stream position, at most.
const WINDOW: usize = 64 * 1024 * 1024;
/// Bytes read from a `RETR` stream per socket read.
const READ_CHUNK: usize = 256 * 1024;

type Ftp = AsyncRustlsFtpStream;
type Transfer = TransferStream<suppaftp::tokio::AsyncRustlsStream>;

pub struct FtpsBackend {
    spec: Arc<FtpsSpec>,
    audit: Auditor,
    /// The session this backend's connections serve, for the audit.
    session: String,
    /// The session's metadata connection, made on first use and remade after a failure.
    control: Mutex<Option<Ftp>>,
    /// The session's open files here, each holding a connection (see `FileSlot`).
    files: Arc<std::sync::atomic::AtomicUsize>,
}

/// An open file's place among its session's `max_files`, given back when the file goes.
struct FileSlot(Arc<std::sync::atomic::AtomicUsize>);

impl FileSlot {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<FileSlot> {
        use std::sync::atomic::Ordering;
        let slot = FileSlot(count.clone());
        (count.fetch_add(1, Ordering::AcqRel) < max).then_some(slot)
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl FtpsBackend {
    pub fn new(spec: Arc<FtpsSpec>, audit: Auditor, session: String) -> FtpsBackend {
        FtpsBackend {
            spec,
            audit,
            session,
            control: Mutex::new(None),
            files: Default::default(),
        }
    }

    /// Runs `f` on the metadata connection; a connection-level failure drops it so the next
    /// call reconnects.
    async fn with_control<T>(
        &self,
        f: impl AsyncFnOnce(&mut Ftp) -> Result<T, FtpError>,
    ) -> Result<T, FsError> {
        let mut guard = self.control().await?;
        let ftp = guard.as_mut().expect("connected by control()");
        let limit = self.spec.io_timeout;
        match tokio::time::timeout(limit, f(ftp)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                if !matches!(e, FtpError::UnexpectedResponse(_)) {
                    *guard = None;
                }
                Err(map_err(e))
            }
            Err(_) => {
                // Where the reply stream stands is unknown: the connection cannot be reused.
                *guard = None;
                Err(FsError::Unavailable(format!(
                    "endpoint {} did not answer within {} s",
                    self.spec.name,
                    limit.as_secs()
                )))
            }
        }
    }
}

impl FtpsBackend {
    /// The metadata connection, connected if it is not.
    async fn control(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Ftp>>, FsError> {
        let mut guard = self.control.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        Ok(guard)
    }
}

impl FtpsBackend {
    /// Connects to the first address that answers, secures the connection as configured and
    /// logs in (binary mode, extended passive); audited with the address and the attempt.
    async fn connect(&self) -> Result<Ftp, FsError> {
        let spec = &self.spec;
        let mut last = String::from("no address configured");
        for (i, addr) in spec.addresses.iter().enumerate() {
            let (connected, channel) = crate::tls::witness(tokio::time::timeout(
                spec.connect_timeout,
                connect_one(spec, addr),
            ))
            .await;
            match connected {
                Ok(Ok(ftp)) => {
                    self.audit
                        .emit(Event::BackendConnected {
                            session: self.session.clone(),
                            endpoint: spec.name.clone(),
                            address: addr.clone(),
                            attempt: i + 1,
                            protocol: match spec.security {
                                FtpSecurity::Explicit => "ftps-explicit",
                                FtpSecurity::Implicit => "ftps-implicit",
                                FtpSecurity::Plaintext => "ftp",
                            },
                            host_key: None,
                            channel,
                        })
                        .await;
                    return Ok(ftp);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out"),
            }
        }
        self.audit
            .emit(Event::BackendError {
                endpoint: spec.name.clone(),
                detail: last.clone(),
            })
            .await;
        Err(FsError::Unavailable(format!(
            "endpoint {}: {last}",
            spec.name
        )))
    }
}

async fn connect_one(spec: &FtpsSpec, addr: &str) -> Result<Ftp, FtpError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let domain = spec.server_name.as_deref().unwrap_or(host);
    let connector = spec
        .tls
        .as_deref()
        .map(|c| AsyncRustlsConnector::from(TlsConnector::from(own_session_store(c))));
    let mut ftp = match (spec.security, connector) {
        (FtpSecurity::Implicit, Some(c)) => {
            let mut ftp = Ftp::connect_secure_implicit(resolve(addr).await?, c, domain).await?;
            // suppaftp protects the data channel on its own only after `AUTH TLS`.
            ftp.custom_command("PBSZ 0", &[suppaftp::Status::CommandOk])
                .await?;
            ftp.custom_command("PROT P", &[suppaftp::Status::CommandOk])
                .await?;
            ftp
        }
        (FtpSecurity::Explicit, Some(c)) => {
            Ftp::connect(resolve(addr).await?)
                .await?
                .into_secure(c, domain)
                .await?
        }
        (FtpSecurity::Plaintext, _) => Ftp::connect(resolve(addr).await?).await?,
        (_, None) => {
            return Err(FtpError::SecureError(
                "a TLS endpoint without a TLS configuration".into(),
            ));
        }
    };
    ftp.login(spec.username.as_str(), spec.password.as_str())
        .await?;
    ftp.transfer_type(FileType::Binary).await?;
    ftp.set_mode(Mode::ExtendedPassive);
    ftp.set_encoding(ByteNames).await;
    Ok(ftp)
}

/// FTP names are bytes: commands carry the bytes a gateway name stands for, and `LIST`/`MLSD`
/// lines are read without loss (`portcullis_names`), so a name that is not UTF-8 is listed,
/// reached and stored exactly as on the other backends. One byte is the exception: suppaftp
/// sends a data byte 0xFF as Telnet's `IAC IAC` (RFC 959), and vsftpd, which reads command
/// lines literally, then looks for a name with two; such a name lists but cannot be reached
/// on vsftpd (docs/compatibility.md).
#[derive(Debug)]
struct ByteNames;

impl suppaftp::Encoding for ByteNames {
    fn decode(&self, bytes: &[u8]) -> String {
        portcullis_names::escape(bytes).into_owned()
    }

    fn encode(&self, text: &str) -> std::io::Result<Vec<u8>> {
        Ok(portcullis_names::unescape(text).into_owned())
    }
}

/// The endpoint's TLS config with a session store of this control connection's own.
///
/// suppaftp opens the data connections with the control connection's connector, and a
/// server with `require_ssl_reuse` (vsftpd) accepts a data connection only if it resumes a
/// session. Shared by every connection, one store would hand a data connection a ticket of
/// *another* control connection, or lose this one's to a concurrent handshake; under load
/// that failed uploads with `522 session reuse required`.
fn own_session_store(shared: &ClientConfig) -> Arc<ClientConfig> {
    let mut own = shared.clone();
    own.resumption = rustls::client::Resumption::in_memory_sessions(8);
    Arc::new(own)
}

async fn resolve(addr: &str) -> Result<SocketAddr, FtpError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(FtpError::ConnectionError)?
        .next()
        .ok_or_else(|| {
            FtpError::ConnectionError(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{addr} does not resolve"),
            ))
        })
}

fn map_err(e: FtpError) -> FsError {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let text = String::from_utf8_lossy(&r.body).trim().to_owned();
            match r.status.code() {
                550 => FsError::NotFound,
                553 | 532 | 530 => FsError::Denied(format!("by the backend: {text}")),
                _ => FsError::Failure(format!("backend replied {text}")),
            }
        }
        FtpError::ConnectionError(e) => FsError::Unavailable(e.to_string()),
        FtpError::SecureError(e) => FsError::Unavailable(format!("TLS: {e}")),
        other => FsError::Failure(other.to_string()),
    }
}

fn attrs_of(f: &File) -> FileAttrs {
    let mtime = f
        .modified()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .ok();
    let kind = if f.is_directory() {
        FileAttrs::S_IFDIR | 0o755
    } else if f.is_symlink() {
        FileAttrs::S_IFLNK | 0o777
    } else {
        0o100000 | 0o644
    };
    FileAttrs {
        size: Some(f.size() as u64),
        mode: Some(kind),
        mtime,
        atime: mtime,
        ..Default::default()
    }
}

/// The entries of a backend listing: `MLSD` fact lines, or `LIST` lines in the Unix shape
/// (DOS shape as a fallback). Lines that parse as neither are left out, and so are names that
/// are not [`listable`](listable). `now` dates
/// `LIST` lines that give a time instead of a year.
pub fn listing(mlsd: bool, lines: &[String], now: chrono::DateTime<chrono::Utc>) -> Vec<DirEntry> {
    lines
        .iter()
        .filter_map(|l| {
            if mlsd {
                ListParser::parse_mlsd(l).ok().map(|f| DirEntry {
                    name: f.name().to_owned(),
                    attrs: attrs_of(&f),
                })
            } else {
                parse_list_line(l, now).or_else(|| {
                    ListParser::parse_dos(l).ok().map(|f| DirEntry {
                        name: f.name().to_owned(),
                        attrs: attrs_of(&f),
                    })
                })
            }
        })
        .filter(|e| listable(&e.name))
        .collect()
}

/// A Unix `ls -l` style `LIST` line (vsftpd, ProFTPD, Pure-FTPd), with the name exactly as
/// sent: everything after the single space that follows the time or year, leading and
/// trailing spaces included (suppaftp's parser trims them, so such a name could be listed but
/// not reached). A symlink's ` -> target` is cut off.
fn parse_list_line(line: &str, now: chrono::DateTime<chrono::Utc>) -> Option<DirEntry> {
    use chrono::{Datelike, NaiveDate, TimeZone};
    let mut rest = line;
    let mut fields = [""; 8];
    for f in fields.iter_mut() {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ')?;
        *f = &rest[..end];
        rest = &rest[end..];
    }
    let name = rest.strip_prefix(' ')?;
    let [perms, _links, _owner, _group, size, month, day, when] = fields;
    let kind = match perms.as_bytes().first()? {
        b'd' => FileAttrs::S_IFDIR,
        b'l' => FileAttrs::S_IFLNK,
        b'-' => 0o100000,
        _ => return None,
    };
    let bits = perms.get(1..10)?;
    let mut mode = 0u32;
    for (i, c) in bits.bytes().enumerate() {
        if c != b'-' {
            mode |= 1 << (8 - i);
        }
    }
    let name = match kind {
        FileAttrs::S_IFLNK => name.split_once(" -> ").map_or(name, |(n, _)| n),
        _ => name,
    };
    if name.is_empty() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    let mtime = match when.split_once(':') {
        // `HH:MM`: within the last six months, so this year unless that is in the future.
        Some((h, m)) => {
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            let at = |y| {
                NaiveDate::from_ymd_opt(y, month, day)
                    .and_then(|d| d.and_hms_opt(h, m, 0))
                    .map(|t| chrono::Utc.from_utc_datetime(&t))
            };
            match at(now.year())? {
                t if t > now + chrono::Duration::days(1) => at(now.year() - 1)?,
                t => t,
            }
        }
        None => {
            let y: i32 = when.parse().ok()?;
            chrono::Utc
                .from_utc_datetime(&NaiveDate::from_ymd_opt(y, month, day)?.and_hms_opt(0, 0, 0)?)
        }
    };
    let mtime = u32::try_from(mtime.timestamp()).ok();
    Some(DirEntry {
        name: name.to_owned(),
        attrs: FileAttrs {
            size: size.parse().ok(),
            mode: Some(kind | mode),
            mtime,
            atime: mtime,
            ..Default::default()
        },
    })
}

/// How many files of one `LIST` get their time from `MDTM`, one round trip each.
const PRECISE_TIMES_MAX: usize = 1_000;

/// `LIST` gives times to the minute, and only the day for files older than six months; sync
/// tools (rclone, lftp's mirror) compare times to the second, and the gateway's `MLSD` and SFTP
/// attributes promise seconds. So a listing without `MLSD` asks `MDTM` for each regular file's
/// time, for the first [`PRECISE_TIMES_MAX`] files; past that, and where `MDTM` is refused, the
/// `LIST` time stands (docs/compatibility.md).
async fn precise_times(ftp: &mut Ftp, dir: &str, entries: &mut [DirEntry]) -> Result<(), FtpError> {
    let files = entries.iter_mut().filter(|e| e.attrs.is_file());
    for entry in files.take(PRECISE_TIMES_MAX) {
        if entry.name.contains(['\r', '\n']) {
            continue;
        }
        let path = format!("{}/{}", dir.trim_end_matches('/'), entry.name);
        match ftp.mdtm(&path).await {
            Ok(t) => {
                let t = u32::try_from(t.and_utc().timestamp()).ok();
                entry.attrs.mtime = t;
                entry.attrs.atime = t;
            }
            Err(FtpError::UnexpectedResponse(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn file_attrs(size: u64, mtime: Option<u32>) -> FileAttrs {
    FileAttrs {
        size: Some(size),
        mode: Some(0o100000 | 0o644),
        mtime,
        atime: mtime,
        ..Default::default()
    }
}

#[async_trait]
impl Backend for FtpsBackend {
    fn prepare(self: Arc<Self>) {
        // Connected, or a command is using or making the connection: nothing to start (so a
        // client changing directory in a loop cannot pile up connection attempts).
        if self.control.try_lock().map_or(true, |c| c.is_some()) {
            return;
        }
        tokio::spawn(async move {
            let _ = self.control().await;
        });
    }

    /// FTP shows no server's view of where a symlink leads (`LIST` gives a target as text,
    /// relative to who knows what, and `CWD` follows it silently), so the check is the
    /// path's own: beneath the mount, no `..`. The FTP server's own confinement (vsftpd's
    /// `chroot_local_user`, the account's home) is what holds symlinks in (docs/security.md).
    ///
    /// A name with CR or LF cannot be sent in an FTP command (it would end the command line),
    /// so it is refused here with a reason, before any backend connection is touched.
    async fn confine(&self, base: &str, path: &str) -> Result<(), FsError> {
        if path.contains(['\r', '\n']) {
            return Err(FsError::Unsupported(format!(
                "{path:?}: an FTP endpoint cannot take a name with CR or LF"
            )));
        }
        if super::beneath(base, path) && !path.split('/').any(|c| c == "..") {
            Ok(())
        } else {
            Err(FsError::BadPath(path.to_owned()))
        }
    }

    async fn open(&self, path: &str, mode: OpenMode) -> Result<Arc<dyn BackendFile>, FsError> {
        if mode.read && mode.writes() {
            return Err(FsError::Unsupported(
                "an FTP endpoint cannot open a file for reading and writing at once".into(),
            ));
        }
        if mode.exclusive && self.stat(path, true).await.is_ok() {
            return Err(FsError::AlreadyExists);
        }
        // A read of a missing file fails at open, as on every other backend; its attributes
        // answer `fstat` without another round trip.
        let Some(slot) = FileSlot::take(&self.files, self.spec.max_files) else {
            return Err(FsError::Failure(format!(
                "too many open files on endpoint {} (at most {} a session, each its own connection)",
                self.spec.name, self.spec.max_files
            )));
        };
        let opened = match mode.writes() {
            false => Some(self.stat(path, true).await?),
            true => None,
        };
        let ftp = self.connect().await?;
        Ok(Arc::new(FtpsFile {
            _slot: slot,
            io_timeout: self.spec.io_timeout,
            path: path.to_owned(),
            mode,
            opened,
            deferred: Default::default(),
            state: Mutex::new(FileState {
                ftp: Some(ftp),
                transfer: None,
                pump: None,
                pos: 0,
                read: ReadBuffer::default(),
                pending: BTreeMap::new(),
                pending_bytes: 0,
                eof: false,
                started: false,
                failed: None,
            }),
        }))
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let path = path.to_owned();
        let lines = self
            .with_control(async |ftp| match ftp.mlsd(Some(&path)).await {
                Ok(lines) => Ok(listing(true, &lines, chrono::Utc::now())),
                Err(FtpError::UnexpectedResponse(r)) if r.status.code() == 500 => {
                    // No MLSD (vsftpd): parse LIST. LIST of a missing directory is an empty
                    // 226 there, and of a file that file's line, so it must be a directory
                    // we can change into first.
                    ftp.cwd(&path).await?;
                    ftp.cwd("/").await?;
                    // `-a`: vsftpd and most Unix servers hide dot files from a bare LIST,
                    // so a file uploaded as `.name` would seem lost. A server that takes
                    // no options refuses it, and gets the bare LIST.
                    let lines = match ftp.list(Some(&format!("-a {path}"))).await {
                        Err(FtpError::UnexpectedResponse(_)) => ftp.list(Some(&path)).await?,
                        other => other?,
                    };
                    let mut entries = listing(false, &lines, chrono::Utc::now());
                    precise_times(ftp, &path, &mut entries).await?;
                    Ok(entries)
                }
                Err(e) => Err(e),
            })
            .await?;
        Ok(lines)
    }

    async fn stat(&self, path: &str, _follow: bool) -> Result<FileAttrs, FsError> {
        if path == "/" {
            return Ok(FileAttrs::virtual_dir());
        }
        let path = path.to_owned();
        self.with_control(async |ftp| match ftp.size(&path).await {
            Ok(size) => {
                let mtime = ftp
                    .mdtm(&path)
                    .await
                    .ok()
                    .map(|t| t.and_utc().timestamp() as u32);
                Ok(Some(file_attrs(size as u64, mtime)))
            }
            Err(FtpError::UnexpectedResponse(_)) => {
                // Not a file: a directory if we can change into it.
                match ftp.cwd(&path).await {
                    Ok(()) => {
                        ftp.cwd("/").await?;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        })
        .await
        .map(|a| {
            a.unwrap_or(FileAttrs {
                mode: Some(FileAttrs::S_IFDIR | 0o755),
                size: Some(0),
                ..Default::default()
            })
        })
    }

    async fn set_stat(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        settable_over_ftp(&attrs)?;
        if attrs.mtime.is_none() && attrs.mode.is_none() {
            return Ok(());
        }
        let mut guard = self.control().await?;
        let ftp = guard.as_mut().expect("connected by control()");
        let r = apply_attrs(ftp, path, &attrs).await;
        if matches!(r, Err(FsError::Unavailable(_))) {
            // The connection is gone: the next call reconnects.
            *guard = None;
        }
        r
    }

    async fn remove(&self, path: &str) -> Result<(), FsError> {
        let path = path.to_owned();
        self.with_control(async |ftp| ftp.rm(&path).await).await
    }

    async fn mkdir(&self, path: &str, _attrs: FileAttrs) -> Result<(), FsError> {
        let p = path.to_owned();
        match self.with_control(async |ftp| ftp.mkdir(&p).await).await {
            // FTP servers answer 550 for "exists" and "no parent" alike: look.
            Err(FsError::NotFound) | Err(FsError::Failure(_))
                if self.stat(path, false).await.is_ok() =>
            {
                Err(FsError::AlreadyExists)
            }
            other => other,
        }
    }

    async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let path = path.to_owned();
        self.with_control(async |ftp| ftp.rmdir(&path).await).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), FsError> {
        // FTP's RNTO replaces an existing name on the servers in use (vsftpd, ProFTPD). A
        // rename that must not replace looks first; a name made between the look and the RNTO
        // is replaced all the same (FTP has no exclusive rename).
        if !overwrite && self.stat(to, false).await.is_ok() {
            return Err(FsError::AlreadyExists);
        }
        let (from, to) = (from.to_owned(), to.to_owned());
        self.with_control(async |ftp| ftp.rename(&from, &to).await)
            .await
    }

    async fn site(&self, dir: &str, command: &str) -> Result<(u16, String), FsError> {
        let (dir, command) = (dir.to_owned(), command.to_owned());
        let r = self
            .with_control(async |ftp| {
                ftp.cwd(&dir).await?;
                let r = match ftp.site(&command).await {
                    Ok(r) | Err(FtpError::UnexpectedResponse(r)) => r,
                    Err(e) => return Err(e),
                };
                ftp.cwd("/").await?;
                Ok(r)
            })
            .await?;
        let text = String::from_utf8_lossy(&r.body);
        // The body repeats the code: `200 SITE CHMOD command ok.`
        let text = text.trim().get(4..).unwrap_or("").to_owned();
        Ok((r.status.code() as u16, text))
    }
}

/// Reads a `RETR` stream ahead of the requests, on a task of its own, so that the backend
/// leg never waits for the client side to ask.
struct Pump {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    /// The stream comes back when the pump stops, for `finish` or `abort`; with whether it
    /// reached the end.
    task: tokio::task::JoinHandle<(Transfer, bool)>,
}

/// Chunks the pump keeps ready: `PUMP_DEPTH × READ_CHUNK` bytes ahead at most.
const PUMP_DEPTH: usize = 32;

/// A step of a transfer (open, each write, each read, the final `226`) bounded by the
/// endpoint's `ioTimeoutSeconds`: a stalled endpoint must end in a reported failure, never a
/// transfer that hangs with its client.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    step: impl std::future::Future<Output = Result<T, FsError>>,
) -> Result<T, FsError> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(FsError::Unavailable(format!(
            "the endpoint did not {what} within {} s",
            limit.as_secs()
        )))
    })
}

async fn pump(
    mut t: Transfer,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
) -> (Transfer, bool) {
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut eof = false;
        while buf.len() < READ_CHUNK {
            match t.read_buf(&mut buf).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("data connection: {e}"))).await;
                    return (t, false);
                }
            }
        }
        if !buf.is_empty() && tx.send(Ok(buf.freeze())).await.is_err() {
            return (t, false); // the file was closed early
        }
        if eof {
            return (t, true);
        }
    }
}

/// A download's bytes read off the stream and not yet handed out, kept as the chunks the pump
/// read: a read within one chunk (the usual case: the pump's chunks are a multiple of what
/// clients ask for) is a slice of it, not a copy.
#[derive(Default)]
struct ReadBuffer {
    chunks: VecDeque<Bytes>,
    /// The stream offset of the first byte of `chunks`.
    start: u64,
    len: usize,
    /// Ranges handed out above `start` (offset → end), released once all before them are.
    served: BTreeMap<u64, u64>,
}

impl ReadBuffer {
    fn at(start: u64) -> ReadBuffer {
        ReadBuffer {
            start,
            ..Default::default()
        }
    }

    fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Hands out `[from, to)`, which the buffer holds, and releases what has been handed out
    /// from its start.
    fn take(&mut self, from: u64, to: u64) -> Bytes {
        debug_assert!(self.start <= from && from < to && to <= self.end());
        let out = self.range(from, to);
        if from == self.start {
            self.release(to);
        } else {
            self.served.insert(from, to);
        }
        while let Some(done) = self.served.remove(&self.start) {
            self.release(done);
        }
        out
    }

    /// `[from, to)`: a slice of one chunk when it lies in one (no allocation), else a copy.
    fn range(&self, from: u64, to: u64) -> Bytes {
        let mut at = self.start;
        let mut joined: Option<BytesMut> = None;
        for c in &self.chunks {
            let c_end = at + c.len() as u64;
            if c_end > from {
                let piece = &c[from.saturating_sub(at) as usize..(to.min(c_end) - at) as usize];
                if joined.is_none() && c_end >= to {
                    return c.slice_ref(piece);
                }
                joined
                    .get_or_insert_with(|| BytesMut::with_capacity((to - from) as usize))
                    .extend_from_slice(piece);
            }
            if c_end >= to {
                break;
            }
            at = c_end;
        }
        joined.map(BytesMut::freeze).unwrap_or_default()
    }

    /// Drops the bytes before `to`.
    fn release(&mut self, to: u64) {
        while self.start < to {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = (to - self.start).min(front.len() as u64) as usize;
            if n == front.len() {
                self.chunks.pop_front();
            } else {
                front.advance(n);
            }
            self.start += n as u64;
            self.len -= n;
        }
    }
}

struct FileState {
    ftp: Option<Ftp>,
    transfer: Option<Transfer>,
    pump: Option<Pump>,
    /// Stream position: the offset of the next byte the transfer carries.
    pos: u64,
    /// Reads: what was read off the stream and not yet handed out.
    read: ReadBuffer,
    /// Writes: data that arrived ahead of `pos`.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
    eof: bool,
    started: bool,
    /// Why opening the transfer failed: the file is then done for, and neither a later
    /// read or write nor the close tries again (a retried `STOR` at close would leave an
    /// empty file where the upload failed).
    failed: Option<FsError>,
}

pub struct FtpsFile {
    _slot: FileSlot,
    /// The endpoint's `ioTimeoutSeconds`, for each step of the transfer.
    io_timeout: Duration,
    path: String,
    mode: OpenMode,
    /// A read's attributes at open.
    opened: Option<FileAttrs>,
    /// Attributes set through the handle (OpenSSH `put -p` sets them before it closes): the
    /// file's connection carries a transfer until then, and FTP can only set them on a stored
    /// file, so they are applied after the `226`.
    deferred: std::sync::Mutex<FileAttrs>,
    state: Mutex<FileState>,
}

impl FtpsFile {
    /// Opens the transfer at `offset` (`REST` when non-zero), once: a failure is kept and
    /// returned to every later call.
    async fn start(&self, st: &mut FileState, offset: u64) -> Result<(), FsError> {
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let r = bounded(
            self.io_timeout,
            "open the transfer",
            self.start_unbounded(st, offset),
        )
        .await;
        if let Err(e) = &r {
            st.failed = Some(e.clone());
            // Where the reply stream stands is unknown: the connection is not used again.
            st.ftp = None;
        }
        r
    }

    async fn start_unbounded(&self, st: &mut FileState, offset: u64) -> Result<(), FsError> {
        let ftp = st
            .ftp
            .as_mut()
            .ok_or_else(|| FsError::Failure("the file's connection is gone".into()))?;
        if offset > 0 {
            ftp.resume_transfer(offset as usize)
                .await
                .map_err(map_err)?;
        }
        let t = if self.mode.writes() {
            if self.mode.append && offset == 0 && !self.mode.truncate {
                ftp.append_with_stream(&self.path).await
            } else {
                ftp.put_with_stream(&self.path).await
            }
        } else {
            ftp.retr_as_stream(&self.path).await
        }
        .map_err(map_err)?;
        if self.mode.writes() {
            st.transfer = Some(t);
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(PUMP_DEPTH);
            st.pump = Some(Pump {
                rx,
                task: tokio::spawn(pump(t, tx)),
            });
        }
        st.pos = offset;
        st.read = ReadBuffer::at(offset);
        st.started = true;
        Ok(())
    }

    async fn write_in_order(
        st: &mut FileState,
        data: &[u8],
        limit: Duration,
    ) -> Result<(), FsError> {
        let t = st.transfer.as_mut().expect("started");
        bounded(limit, "take the data", async {
            t.write_all(data)
                .await
                .map_err(|e| FsError::Unavailable(format!("data connection: {e}")))
        })
        .await?;
        st.pos += data.len() as u64;
        Ok(())
    }
}

#[async_trait]
impl BackendFile for FtpsFile {
    async fn read_at(&self, offset: u64, len: u32) -> Result<Option<Bytes>, FsError> {
        let mut st = self.state.lock().await;
        if !st.started {
            self.start(&mut st, offset).await?;
        }
        if offset < st.read.start {
            return Err(FsError::Unsupported(
                "an FTP endpoint reads forward only; this range was already passed".into(),
            ));
        }
        let want_end = offset + u64::from(len);
        while !st.eof && st.read.end() < want_end {
            if st.read.len > WINDOW {
                return Err(FsError::Failure(
                    "reads too far ahead of the stream for an FTP endpoint".into(),
                ));
            }
            let pump = st.pump.as_mut().expect("started");
            let next = bounded(self.io_timeout, "send data", async {
                Ok(pump.rx.recv().await)
            })
            .await?;
            match next {
                Some(Ok(chunk)) => {
                    st.pos += chunk.len() as u64;
                    st.read.push(chunk);
                }
                Some(Err(e)) => return Err(FsError::Unavailable(e)),
                None => st.eof = true,
            }
        }
        if offset >= st.read.end() {
            return Ok(None);
        }
        let end = want_end.min(st.read.end());
        Ok(Some(st.read.take(offset, end)))
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        if !st.started {
            self.start(&mut st, offset).await?;
        }
        if offset < st.pos {
            return Err(FsError::Unsupported(
                "an FTP endpoint writes forward only; this range was already written".into(),
            ));
        }
        if offset > st.pos {
            st.pending_bytes += data.len();
            if st.pending_bytes > WINDOW {
                return Err(FsError::Failure(
                    "writes too far ahead of the stream for an FTP endpoint".into(),
                ));
            }
            st.pending.insert(offset, data);
            return Ok(());
        }
        Self::write_in_order(&mut st, &data, self.io_timeout).await?;
        loop {
            let pos = st.pos;
            let Some(next) = st.pending.remove(&pos) else {
                break;
            };
            st.pending_bytes -= next.len();
            Self::write_in_order(&mut st, &next, self.io_timeout).await?;
        }
        Ok(())
    }

    async fn stat(&self) -> Result<FileAttrs, FsError> {
        match &self.opened {
            Some(a) => Ok(a.clone()),
            None => Ok(file_attrs(self.state.lock().await.pos, None)),
        }
    }

    async fn set_stat(&self, attrs: FileAttrs) -> Result<(), FsError> {
        settable_over_ftp(&attrs)?;
        let mut d = self.deferred.lock().expect("deferred lock poisoned");
        d.mtime = attrs.mtime.or(d.mtime);
        d.mode = attrs.mode.or(d.mode);
        Ok(())
    }

    async fn close(&self) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if self.mode.writes() && !st.started {
            // An empty file: the transfer still has to happen.
            self.start(&mut st, 0).await?;
        }
        if !st.pending.is_empty() {
            return Err(FsError::Failure(format!(
                "gap in the written data at offset {}",
                st.pos
            )));
        }
        let transfer = match st.pump.take() {
            // Stopping the pump hands the stream back, and says whether it reached the end.
            // A pump blocked on a stalled endpoint is abandoned after the step limit.
            Some(Pump { rx, mut task }) => {
                drop(rx);
                match tokio::time::timeout(self.io_timeout, &mut task).await {
                    Ok(Ok((t, eof))) => Some((t, eof)),
                    Ok(Err(e)) => return Err(FsError::Failure(format!("read task: {e}"))),
                    Err(_) => {
                        task.abort();
                        return Err(FsError::Unavailable(format!(
                            "the endpoint did not end the download within {} s",
                            self.io_timeout.as_secs()
                        )));
                    }
                }
            }
            None => st.transfer.take().map(|t| (t, true)),
        };
        let result = match transfer {
            None => Ok(()),
            Some((t, true)) => {
                bounded(self.io_timeout, "confirm the transfer", async {
                    t.finish().await.map_err(map_err)
                })
                .await
            }
            Some((t, false)) => {
                // A download the client stopped early: abort it at the backend.
                let ftp = st.ftp.as_mut().expect("connection kept while transferring");
                bounded(self.io_timeout, "abort the transfer", async {
                    ftp.abort(t).await.map_err(map_err)
                })
                .await
            }
        };
        let deferred = std::mem::take(&mut *self.deferred.lock().expect("deferred lock poisoned"));
        let result = match (result, st.ftp.as_mut()) {
            (Ok(()), Some(ftp)) if deferred != FileAttrs::default() => {
                bounded(
                    self.io_timeout,
                    "set the times and mode",
                    apply_attrs(ftp, &self.path, &deferred),
                )
                .await
            }
            (r, _) => r,
        };
        if let Some(mut ftp) = st.ftp.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
        }
        result
    }
}

/// What FTP can set: the modification time and the permission bits. A size change (truncate)
/// cannot be expressed; access times have no FTP command and are left as the server keeps
/// them.
fn settable_over_ftp(attrs: &FileAttrs) -> Result<(), FsError> {
    if attrs.size.is_some() {
        return Err(FsError::Unsupported(
            "an FTP endpoint cannot change a file's size".into(),
        ));
    }
    Ok(())
}

/// Sets `path`'s modification time (`MFMT`, or `MDTM` with a time as vsftpd takes it) and
/// permissions (`SITE CHMOD`).
async fn apply_attrs(ftp: &mut Ftp, path: &str, attrs: &FileAttrs) -> Result<(), FsError> {
    use suppaftp::Status;
    if let Some(m) = attrs.mtime {
        let t = chrono::DateTime::from_timestamp(i64::from(m), 0)
            .ok_or_else(|| FsError::Failure("time out of range".into()))?
            .format("%Y%m%d%H%M%S");
        let mfmt = ftp
            .custom_command(format!("MFMT {t} {path}"), &[Status::File])
            .await;
        match mfmt {
            Ok(_) => {}
            Err(FtpError::UnexpectedResponse(r)) if matches!(r.status.code(), 500 | 502) => {
                ftp.custom_command(format!("MDTM {t} {path}"), &[Status::File])
                    .await
                    .map_err(|e| match e {
                        FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 500..=502) => {
                            FsError::Unsupported(
                                "the FTP endpoint cannot set modification times".into(),
                            )
                        }
                        e => map_err(e),
                    })?;
            }
            Err(e) => return Err(map_err(e)),
        }
    }
    if let Some(mode) = attrs.mode {
        ftp.custom_command(
            format!("SITE CHMOD {:o} {path}", mode & 0o7777),
            &[Status::CommandOk],
        )
        .await
        .map_err(|e| match e {
            FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 500 | 502 | 504) => {
                FsError::Unsupported("the FTP endpoint cannot change permissions".into())
            }
            e => map_err(e),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn list_lines_keep_names_exactly() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let e = parse_list_line(
            "-rw-r--r--    1 1001     1001         1234 Nov 30 09:15   two leading.txt",
            now,
        )
        .unwrap();
        assert_eq!(e.name, "  two leading.txt");
        assert_eq!(e.attrs.size, Some(1234));
        assert_eq!(e.attrs.mode, Some(0o100644));
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 11, 30, 9, 15, 0)
            .unwrap();
        assert_eq!(e.attrs.mtime, Some(t.timestamp() as u32));

        let e = parse_list_line(
            "drwxr-x---    2 0        0            4096 Jan 05  2023 dir ",
            now,
        )
        .unwrap();
        assert_eq!(e.name, "dir ");
        assert!(e.attrs.is_dir());
        assert_eq!(e.attrs.mode, Some(FileAttrs::S_IFDIR | 0o750));
        let t = chrono::Utc.with_ymd_and_hms(2023, 1, 5, 0, 0, 0).unwrap();
        assert_eq!(e.attrs.mtime, Some(t.timestamp() as u32));

        // December in the listing of early January is last year's.
        let jan = chrono::Utc.with_ymd_and_hms(2027, 1, 3, 0, 0, 0).unwrap();
        let e = parse_list_line("-rw-------    1 0 0 1 Dec 31 23:59 a", jan).unwrap();
        let t = chrono::Utc
            .with_ymd_and_hms(2026, 12, 31, 23, 59, 0)
            .unwrap();
        assert_eq!(e.attrs.mtime, Some(t.timestamp() as u32));

        let e = parse_list_line("lrwxrwxrwx    1 0 0 7 Nov 30 09:15 link -> target", now).unwrap();
        assert_eq!(e.name, "link");
        assert!(e.attrs.is_symlink());

        for bad in [
            "",
            "total 8",
            "-rw-r--r-- 1 0 0 12 Nov 30 09:15",
            "xrw-r--r-- 1 0 0 1 Nov 30 09:15 n",
        ] {
            assert!(parse_list_line(bad, now).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn listings_drop_names_that_leave_the_directory() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        let lines: Vec<String> = ["../../.bashrc", "a/b", "..", "ok", "nul\0x"]
            .iter()
            .map(|n| format!("-rw-r--r-- 1 0 0 1 Nov 30 09:15 {n}"))
            .chain(["type=file;size=1; ".to_owned()])
            .collect();
        let names: Vec<String> = listing(false, &lines, now)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["ok"]);
        let names: Vec<String> = listing(true, &lines[5..], now)
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn file_slots_are_capped_and_given_back() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held: Vec<FileSlot> = (0..2).filter_map(|_| FileSlot::take(&count, 2)).collect();
        assert_eq!(held.len(), 2);
        assert!(FileSlot::take(&count, 2).is_none());
        drop(held);
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(FileSlot::take(&count, 2).is_some());
    }

    /// A read buffer at `start` holding 0, 1, 2, … (mod 251) in chunks of these sizes.
    fn buffer(start: u64, sizes: &[usize]) -> ReadBuffer {
        let mut b = ReadBuffer::at(start);
        let mut at = start;
        for &n in sizes {
            b.push((at..at + n as u64).map(|i| (i % 251) as u8).collect());
            at += n as u64;
        }
        b
    }

    fn expected(from: u64, to: u64) -> Vec<u8> {
        (from..to).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn reads_within_a_chunk_are_slices_of_it_not_copies() {
        let mut b = buffer(1000, &[256, 256]);
        let chunk_ptr = b.chunks[0].as_ptr();
        let first = b.take(1000, 1128);
        assert_eq!(
            first.as_ptr(),
            chunk_ptr,
            "an in-order read within a chunk is a slice"
        );
        assert_eq!(&first[..], expected(1000, 1128));
        let second = b.take(1128, 1256);
        assert_eq!(second.as_ptr(), chunk_ptr.wrapping_add(128));
        assert_eq!((b.start, b.len, b.chunks.len()), (1256, 256, 1));
    }

    #[test]
    fn reads_across_chunks_are_whole_and_release_what_they_cover() {
        let mut b = buffer(0, &[100, 100, 100]);
        let r = b.take(0, 250);
        assert_eq!(&r[..], expected(0, 250));
        assert_eq!((b.start, b.len, b.chunks.len()), (250, 50, 1));
        assert_eq!(&b.take(250, 300)[..], expected(250, 300));
        assert_eq!((b.len, b.chunks.len()), (0, 0));
    }

    #[test]
    fn out_of_order_reads_are_held_until_the_gap_before_them_is_read() {
        let mut b = buffer(0, &[64, 64, 64]);
        assert_eq!(&b.take(128, 192)[..], expected(128, 192));
        assert_eq!(&b.take(64, 128)[..], expected(64, 128));
        assert_eq!(
            (b.start, b.len),
            (0, 192),
            "nothing released while 0..64 is unread"
        );
        assert_eq!(&b.take(0, 64)[..], expected(0, 64));
        assert_eq!((b.start, b.len, b.chunks.len()), (192, 0, 0));
        assert!(b.served.is_empty());
    }
}
