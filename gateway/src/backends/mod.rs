//! Backends: where file operations land once the session has allowed them. Every backend speaks
//! backend paths (already authorized and mapped by the session) and positional I/O, so any
//! front end can drive any backend.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub mod ftps;
pub mod local;
pub mod sftp;

/// File attributes, protocol-neutral. `None` means unknown or unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileAttrs {
    pub size: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Full `st_mode`, type bits included.
    pub mode: Option<u32>,
    pub atime: Option<u32>,
    pub mtime: Option<u32>,
}

impl FileAttrs {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;

    pub fn is_file(&self) -> bool {
        self.mode.is_some_and(|m| m & Self::S_IFMT == Self::S_IFREG)
    }

    pub fn is_dir(&self) -> bool {
        self.mode.is_some_and(|m| m & Self::S_IFMT == Self::S_IFDIR)
    }

    pub fn is_symlink(&self) -> bool {
        self.mode.is_some_and(|m| m & Self::S_IFMT == Self::S_IFLNK)
    }

    /// Attributes of a directory the gateway makes up (the root, or above a mount).
    pub fn virtual_dir() -> FileAttrs {
        FileAttrs {
            mode: Some(Self::S_IFDIR | 0o555),
            size: Some(0),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attrs: FileAttrs,
}

/// Whether a backend's listing may pass `name` on to a client: not empty, `.` or `..`, and
/// without `/` or NUL. A hostile or broken backend must not make a client that downloads a
/// listing write outside the directory it downloads into.
pub fn listable(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\0'])
}

/// How to open a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenMode {
    pub fn writes(&self) -> bool {
        self.write || self.append || self.create || self.truncate
    }
}

/// What went wrong, protocol-neutral. Each front end maps it to its own codes at the edge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("already exists")]
    AlreadyExists,
    #[error("invalid path: {0}")]
    BadPath(String),
    #[error("invalid handle")]
    BadHandle,
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A mount's `maxFileBytes` would be passed.
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("{0}")]
    Failure(String),
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound => FsError::NotFound,
            PermissionDenied => FsError::Denied("by the backend".into()),
            AlreadyExists => FsError::AlreadyExists,
            _ => FsError::Failure(e.to_string()),
        }
    }
}

/// File-system figures, as `statvfs@openssh.com` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfsStats {
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    pub inodes_avail: u64,
    pub fs_id: u64,
    pub flags: u64,
    pub name_max: u64,
}

/// An open file on a backend.
#[async_trait]
pub trait BackendFile: Send + Sync {
    /// Reads up to `len` bytes at `offset`; `None` at end of file.
    async fn read_at(&self, offset: u64, len: u32) -> Result<Option<Bytes>, FsError>;
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), FsError>;
    async fn stat(&self) -> Result<FileAttrs, FsError>;
    async fn set_stat(&self, attrs: FileAttrs) -> Result<(), FsError>;
    /// Asks the backend to put what was written on stable storage.
    async fn fsync(&self) -> Result<(), FsError> {
        Err(FsError::Unsupported(
            "this endpoint cannot flush a file before it is closed".into(),
        ))
    }
    /// Closes the file; only a successful close means the backend has the whole file.
    async fn close(&self) -> Result<(), FsError>;
}

/// Whether `path` is `base` or lies beneath it, by whole components: `/inbox` is not beneath
/// `/in`.
pub fn beneath(base: &str, path: &str) -> bool {
    let base = base.trim_end_matches('/');
    base.is_empty()
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A connected backend.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Checks that `path` stays beneath `base` (the mount's backend path) where it really
    /// leads: the directories on the way resolved with their symlinks, and a final symlink's
    /// target, must lie beneath `base` resolved the same way. The session calls it before
    /// every path operation. It is a check before use: a symlink swapped in between by
    /// someone with write access to the backend directory is not caught (docs/security.md).
    async fn confine(&self, base: &str, path: &str) -> Result<(), FsError>;
    async fn open(&self, path: &str, mode: OpenMode) -> Result<Arc<dyn BackendFile>, FsError>;
    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError>;
    /// `follow` false is lstat.
    async fn stat(&self, path: &str, follow: bool) -> Result<FileAttrs, FsError>;
    async fn set_stat(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError>;
    async fn remove(&self, path: &str) -> Result<(), FsError>;
    async fn mkdir(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError>;
    async fn rmdir(&self, path: &str) -> Result<(), FsError>;
    /// Renames `from` to `to`. Without `overwrite` an existing `to` is refused with
    /// `AlreadyExists` on every backend (SFTP v3 `RENAME`); with it, `to` is replaced
    /// (`posix-rename@openssh.com`, FTP `RNTO`).
    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), FsError>;
    /// Figures of the file system holding `path`.
    async fn statvfs(&self, _path: &str) -> Result<VfsStats, FsError> {
        Err(FsError::Unsupported(
            "this endpoint does not report file-system figures".into(),
        ))
    }
    /// Sends an FTP `SITE` command (already authorized, path arguments already mapped) from
    /// the backend directory `dir`, so that a relative name resolves there; returns the
    /// server's reply code and text, whatever the code.
    async fn site(&self, _dir: &str, _command: &str) -> Result<(u16, String), FsError> {
        Err(FsError::Unsupported(
            "SITE commands need an FTP endpoint".into(),
        ))
    }
    /// Whether the connection is gone (an SFTP backend reconnects on next use).
    fn is_closed(&self) -> bool {
        false
    }
}
