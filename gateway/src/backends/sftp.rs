//! The SFTP backend: a russh client with a pinned host key, and russh-sftp's raw client, so
//! that every front-end request maps onto one pipelined backend request.
//!
//! One backend connection per front-end session and endpoint, opened on first use: users stay
//! isolated from each other, and an idle session costs nothing here. A dropped connection is
//! re-established on the next operation; addresses are tried in order (failover).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use russh::{
    client,
    keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate},
};
use russh_sftp::{
    client::{RawSftpSession, error::Error as SftpError},
    protocol::{FileAttributes, OpenFlags, StatusCode},
};
use tokio::{net::TcpStream, sync::Mutex};

use super::{Backend, BackendFile};
use crate::fs::{DirEntry, FileAttrs, FsError, OpenMode, VfsStats, listable};
use crate::{
    audit::{Auditor, Event},
    sftp_wire::{from_wire, to_wire},
};

/// A compiled SFTP endpoint: key material parsed, secrets loaded.
pub struct SftpSpec {
    pub name: String,
    pub addresses: Vec<String>,
    pub host_keys: Vec<PublicKey>,
    pub username: String,
    pub credential: Credential,
    pub connect_timeout: Duration,
    /// How long one request may wait for its answer (`ioTimeoutSeconds`).
    pub io_timeout: Duration,
}

pub enum Credential {
    Key(Arc<PrivateKey>),
    Password(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Key(_) => "Key(<redacted>)",
            Credential::Password(_) => "Password(<redacted>)",
        })
    }
}

struct Pinned {
    keys: Vec<PublicKey>,
    /// What the server showed: the refused key, read after the handshake fails, or the pinned
    /// one it proved it holds, for the audit record.
    presented: Arc<std::sync::Mutex<Option<String>>>,
    /// The algorithms the key exchange settled on, for the audit record.
    negotiated: Arc<std::sync::Mutex<Option<String>>>,
}

impl Pinned {
    fn refuse(&self, what: String) -> Result<bool, russh::Error> {
        *self.presented.lock().expect("presented lock poisoned") = Some(what);
        Ok(false)
    }
}

fn describe(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm(),
        key.fingerprint(Default::default())
    )
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return self.refuse("a host certificate (only pinned keys are accepted)".into());
        };
        if self.keys.iter().any(|k| k.key_data() == key.key_data()) {
            *self.presented.lock().expect("presented lock poisoned") = Some(describe(key));
            return Ok(true);
        }
        self.refuse(describe(key))
    }

    /// The SFTP channel opens after the key exchange: the algorithms it settled on.
    async fn channel_open_confirmation(
        &mut self,
        _id: russh::ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        *self.negotiated.lock().expect("negotiated lock poisoned") =
            session.negotiated().map(str::to_owned);
        Ok(())
    }
}

struct Conn {
    ssh: client::Handle<Pinned>,
    sftp: RawSftpSession,
    /// The peer address and the pinned host key it proved, for the audit record.
    peer: String,
    host_key: Option<String>,
    channel: Option<String>,
}

pub struct SftpBackend {
    spec: Arc<SftpSpec>,
    audit: Auditor,
    /// The session this backend connection serves, for the audit.
    session: String,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Each mount directory's `realpath`, asked once per session. Safe to keep: if the
    /// directory is later swapped for a link elsewhere, its contents no longer resolve
    /// beneath the kept answer and are refused (fails closed).
    real_bases: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl SftpBackend {
    pub fn new(spec: Arc<SftpSpec>, audit: Auditor, session: String) -> SftpBackend {
        SftpBackend {
            spec,
            audit,
            session,
            conn: Mutex::new(None),
            real_bases: Default::default(),
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, FsError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.ssh.is_closed()
        {
            return Ok(c.clone());
        }
        *slot = None;
        let mut last = String::from("no addresses");
        for (i, addr) in self.spec.addresses.iter().enumerate() {
            match tokio::time::timeout(self.spec.connect_timeout, self.connect(addr)).await {
                Ok(Ok(c)) => {
                    self.audit
                        .emit(Event::BackendConnected {
                            session: self.session.clone(),
                            endpoint: self.spec.name.clone(),
                            address: c.peer.clone(),
                            attempt: i + 1,
                            protocol: "sftp",
                            host_key: c.host_key.clone(),
                            channel: c.channel.clone(),
                        })
                        .await;
                    let c = Arc::new(c);
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out"),
            }
            tracing::warn!(endpoint = %self.spec.name, error = %last, "backend address failed");
        }
        self.audit
            .emit(Event::BackendError {
                endpoint: self.spec.name.clone(),
                detail: last.clone(),
            })
            .await;
        Err(FsError::Unavailable(format!(
            "endpoint {}: {last}",
            self.spec.name
        )))
    }

    async fn connect(&self, addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).ok();
        let peer: Option<SocketAddr> = stream.peer_addr().ok();
        let config = Arc::new(client::Config {
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65535,
            channel_buffer_size: 256,
            preferred: russh::Preferred {
                // AES-GCM runs on AES-NI; on the gateway's side of the backend leg it costs
                // a fraction of ChaCha20-Poly1305. Both ends are ours to choose here.
                cipher: std::borrow::Cow::Borrowed(&[
                    russh::cipher::AES_128_GCM,
                    russh::cipher::AES_256_GCM,
                    russh::cipher::CHACHA20_POLY1305,
                    russh::cipher::AES_256_CTR,
                ]),
                ..Default::default()
            },
            nodelay: true,
            ..Default::default()
        });
        let presented = Arc::new(std::sync::Mutex::new(None));
        let negotiated = Arc::new(std::sync::Mutex::new(None));
        let pinned = Pinned {
            keys: self.spec.host_keys.clone(),
            presented: presented.clone(),
            negotiated: negotiated.clone(),
        };
        let mut ssh = match client::connect_stream(config, stream, pinned).await {
            Ok(h) => h,
            Err(russh::Error::UnknownKey) => {
                let presented = presented
                    .lock()
                    .expect("presented lock poisoned")
                    .take()
                    .unwrap_or_else(|| "a host key that is not pinned".into());
                self.audit
                    .emit(Event::BackendHostKeyRejected {
                        endpoint: self.spec.name.clone(),
                        address: peer
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| addr.to_owned()),
                        presented: presented.clone(),
                    })
                    .await;
                return Err(format!("host key refused: {presented}"));
            }
            Err(e) => return Err(e.to_string()),
        };
        let auth = match &self.spec.credential {
            Credential::Key(key) => {
                let hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
                ssh.authenticate_publickey(
                    &self.spec.username,
                    PrivateKeyWithHashAlg::new(key.clone(), hash),
                )
                .await
            }
            Credential::Password(pw) => ssh.authenticate_password(&self.spec.username, pw).await,
        }
        .map_err(|e| e.to_string())?;
        if !auth.success() {
            return Err(format!("backend refused login for {}", self.spec.username));
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| e.to_string())?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(self.spec.io_timeout.as_secs());
        sftp.init().await.map_err(|e| e.to_string())?;
        Ok(Conn {
            ssh,
            sftp,
            peer: peer.map_or_else(|| addr.to_owned(), |p| p.to_string()),
            host_key: presented.lock().expect("presented lock poisoned").take(),
            channel: negotiated.lock().expect("negotiated lock poisoned").take(),
        })
    }
}

const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// SFTP v3 has no "already exists" code (OpenSSH answers FAILURE when `mkdir` or `rename`
/// meets an existing name): a FAILURE where `path` exists is `AlreadyExists`.
async fn exists_or(conn: &Conn, path: &str, r: Result<(), FsError>) -> Result<(), FsError> {
    match r {
        Err(FsError::Failure(_)) if conn.sftp.lstat(path).await.is_ok() => {
            Err(FsError::AlreadyExists)
        }
        other => other,
    }
}

/// SFTP v3 sets access and modification times only as a pair: the one not being changed keeps
/// its current value (FTP's MFMT changes only the modification time).
fn pair_times(attrs: &mut FileAttrs, current: &FileAttrs) {
    attrs.atime = attrs.atime.or(current.atime).or(attrs.mtime);
    attrs.mtime = attrs.mtime.or(current.mtime).or(attrs.atime);
}

fn map_err(e: SftpError) -> FsError {
    match e {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => FsError::NotFound,
            StatusCode::PermissionDenied => {
                FsError::Denied(format!("by the backend: {}", s.error_message))
            }
            StatusCode::OpUnsupported => FsError::Unsupported(s.error_message),
            StatusCode::NoConnection | StatusCode::ConnectionLost => {
                FsError::Unavailable(s.error_message)
            }
            _ => FsError::Failure(s.error_message),
        },
        other => FsError::Unavailable(other.to_string()),
    }
}

struct SftpFile {
    conn: Arc<Conn>,
    handle: String,
}

#[async_trait]
impl BackendFile for SftpFile {
    async fn read_at(&self, offset: u64, len: u32) -> Result<Option<Bytes>, FsError> {
        match self.conn.sftp.read(self.handle.as_str(), offset, len).await {
            Ok(d) => Ok(Some(d.data)),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        self.conn
            .sftp
            .write(self.handle.as_str(), offset, Vec::from(data))
            .await
            .map(drop)
            .map_err(map_err)
    }

    async fn stat(&self) -> Result<FileAttrs, FsError> {
        let a = self
            .conn
            .sftp
            .fstat(self.handle.as_str())
            .await
            .map_err(map_err)?;
        Ok(from_wire(&a.attrs))
    }

    async fn set_stat(&self, mut attrs: FileAttrs) -> Result<(), FsError> {
        if attrs.atime.is_some() != attrs.mtime.is_some() {
            let now = self.stat().await?;
            pair_times(&mut attrs, &now);
        }
        self.conn
            .sftp
            .fsetstat(self.handle.as_str(), to_wire(&attrs))
            .await
            .map(drop)
            .map_err(map_err)
    }

    async fn fsync(&self) -> Result<(), FsError> {
        self.conn
            .sftp
            .fsync(self.handle.as_str())
            .await
            .map(drop)
            .map_err(map_err)
    }

    async fn close(&self) -> Result<(), FsError> {
        self.conn
            .sftp
            .close(self.handle.as_str())
            .await
            .map(drop)
            .map_err(map_err)
    }
}

#[async_trait]
impl Backend for SftpBackend {
    fn prepare(self: Arc<Self>) {
        // Connected, or an operation is using or making the connection: nothing to start.
        let idle = self
            .conn
            .try_lock()
            .is_ok_and(|c| c.as_ref().is_none_or(|c| c.ssh.is_closed()));
        if !idle {
            return;
        }
        tokio::spawn(async move {
            let _ = self.conn().await;
        });
    }

    /// `realpath` of the mount's directory (once a session) and of the path's parent, and of
    /// the path itself when it is a symlink: each resolved path must lie beneath the resolved
    /// mount. Two extra round trips per path operation (three for a symlink); none per read
    /// or write on a handle.
    async fn confine(&self, base: &str, path: &str) -> Result<(), FsError> {
        if !super::beneath(base, path) {
            return Err(FsError::BadPath(path.to_owned()));
        }
        let conn = self.conn().await?;
        let realpath = |p: String| {
            let conn = &conn;
            async move {
                let name = conn.sftp.realpath(p).await.map_err(map_err)?;
                name.files
                    .into_iter()
                    .next()
                    .map(|f| f.filename)
                    .ok_or_else(|| FsError::Failure("empty realpath answer".into()))
            }
        };
        let known = self
            .real_bases
            .lock()
            .expect("real_bases lock poisoned")
            .get(base)
            .cloned();
        let real_base = match known {
            Some(r) => r,
            None => {
                let r = realpath(base.to_owned()).await?;
                self.real_bases
                    .lock()
                    .expect("real_bases lock poisoned")
                    .insert(base.to_owned(), r.clone());
                r
            }
        };
        if path.trim_end_matches('/') == base.trim_end_matches('/') {
            return Ok(());
        }
        let parent = match path.trim_end_matches('/').rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((p, _)) => p.to_owned(),
        };
        let outside = || FsError::Denied("a symlink leads outside the mount".into());
        if !super::beneath(&real_base, &realpath(parent).await?) {
            return Err(outside());
        }
        // A symlink that cannot be resolved (dangling, or unreadable) is refused too.
        if let Ok(a) = conn.sftp.lstat(path).await
            && from_wire(&a.attrs).is_symlink()
            && !realpath(path.to_owned())
                .await
                .is_ok_and(|real| super::beneath(&real_base, &real))
        {
            return Err(outside());
        }
        Ok(())
    }

    async fn open(&self, path: &str, mode: OpenMode) -> Result<Arc<dyn BackendFile>, FsError> {
        let conn = self.conn().await?;
        // Symlinks on the backend are not followed: a link planted there must not lead a
        // gateway user out of the mount's subtree.
        match conn.sftp.lstat(path).await {
            Ok(a) if from_wire(&a.attrs).is_symlink() => {
                return Err(FsError::Denied("symlinks are not followed".into()));
            }
            _ => {}
        }
        let mut flags = OpenFlags::empty();
        for (on, f) in [
            (mode.read, OpenFlags::READ),
            (mode.write, OpenFlags::WRITE),
            (mode.append, OpenFlags::APPEND),
            (mode.create, OpenFlags::CREATE),
            (mode.truncate, OpenFlags::TRUNCATE),
            (mode.exclusive, OpenFlags::EXCLUDE),
        ] {
            if on {
                flags |= f;
            }
        }
        let h = conn
            .sftp
            .open(path, flags, FileAttributes::empty())
            .await
            .map_err(map_err)?;
        Ok(Arc::new(SftpFile {
            conn,
            handle: h.handle,
        }))
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let conn = self.conn().await?;
        let h = conn.sftp.opendir(path).await.map_err(map_err)?.handle;
        let mut out = Vec::new();
        let result = loop {
            match conn.sftp.readdir(h.as_str()).await {
                Ok(name) => out.extend(
                    name.files
                        .into_iter()
                        .filter(|f| listable(&f.filename))
                        .map(|f| DirEntry {
                            attrs: from_wire(&f.attrs),
                            name: f.filename,
                        }),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(()),
                Err(e) => break Err(map_err(e)),
            }
        };
        let _ = conn.sftp.close(h).await;
        result.map(|()| out)
    }

    async fn stat(&self, path: &str, follow: bool) -> Result<FileAttrs, FsError> {
        let conn = self.conn().await?;
        let a = if follow {
            conn.sftp.stat(path).await
        } else {
            conn.sftp.lstat(path).await
        }
        .map_err(map_err)?;
        Ok(from_wire(&a.attrs))
    }

    async fn set_stat(&self, path: &str, mut attrs: FileAttrs) -> Result<(), FsError> {
        let conn = self.conn().await?;
        if attrs.atime.is_some() != attrs.mtime.is_some() {
            let now = conn.sftp.lstat(path).await.map_err(map_err)?;
            pair_times(&mut attrs, &from_wire(&now.attrs));
        }
        conn.sftp
            .setstat(path, to_wire(&attrs))
            .await
            .map(drop)
            .map_err(map_err)
    }

    async fn remove(&self, path: &str) -> Result<(), FsError> {
        let conn = self.conn().await?;
        conn.sftp.remove(path).await.map(drop).map_err(map_err)
    }

    async fn mkdir(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        let conn = self.conn().await?;
        let r = conn.sftp.mkdir(path, to_wire(&attrs)).await;
        exists_or(&conn, path, r.map(drop).map_err(map_err)).await
    }

    async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let conn = self.conn().await?;
        conn.sftp.rmdir(path).await.map(drop).map_err(map_err)
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), FsError> {
        let conn = self.conn().await?;
        if overwrite {
            let mut data = Vec::with_capacity(8 + from.len() + to.len());
            for s in [from, to] {
                // The bytes the names stand for, as the codec writes every other name.
                let s = portcullis_names::unescape(s);
                data.extend_from_slice(&(s.len() as u32).to_be_bytes());
                data.extend_from_slice(&s);
            }
            return match conn.sftp.extended(POSIX_RENAME, data).await {
                Ok(russh_sftp::protocol::Packet::Status(s)) if s.status_code == StatusCode::Ok => {
                    Ok(())
                }
                Ok(russh_sftp::protocol::Packet::Status(s)) => Err(map_err(SftpError::Status(s))),
                Ok(_) => Err(FsError::Failure("unexpected answer to posix-rename".into())),
                Err(e) => Err(map_err(e)),
            };
        }
        // OpenSSH's v3 rename never replaces an existing name.
        let r = conn.sftp.rename(from, to).await;
        exists_or(&conn, to, r.map(drop).map_err(map_err)).await
    }

    async fn hardlink(&self, from: &str, to: &str) -> Result<(), FsError> {
        let conn = self.conn().await?;
        let r = conn
            .sftp
            .hardlink(from, to)
            .await
            .map(drop)
            .map_err(map_err);
        exists_or(&conn, to, r).await
    }

    async fn statvfs(&self, path: &str) -> Result<VfsStats, FsError> {
        let conn = self.conn().await?;
        let v = conn.sftp.statvfs(path).await.map_err(map_err)?;
        Ok(VfsStats {
            block_size: v.block_size,
            fragment_size: v.fragment_size,
            blocks: v.blocks,
            blocks_free: v.blocks_free,
            blocks_avail: v.blocks_avail,
            inodes: v.inodes,
            inodes_free: v.inodes_free,
            inodes_avail: v.inodes_avail,
            fs_id: v.fs_id,
            flags: v.flags,
            name_max: v.name_max,
        })
    }

    fn is_closed(&self) -> bool {
        self.conn
            .try_lock()
            .map(|c| c.as_ref().is_some_and(|c| c.ssh.is_closed()))
            .unwrap_or(false)
    }
}
