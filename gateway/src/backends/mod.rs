//! Backends: where file operations land once the session has allowed them. Every backend speaks
//! backend paths (already authorized and mapped by the session) and positional I/O, so any
//! front end can drive any backend.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::fs::{DirEntry, FileAttrs, FsError, OpenMode, VfsStats};

pub mod ftps;
pub mod local;
pub mod sftp;

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
    /// Makes `to` a second name for the file `from`; never replaces an existing `to`.
    async fn hardlink(&self, _from: &str, _to: &str) -> Result<(), FsError> {
        Err(FsError::Unsupported(
            "this endpoint cannot make hard links".into(),
        ))
    }
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
    /// Starts connecting in the background if not connected, so that the first operation
    /// does not wait for the endpoint's handshake and login; a failure here is audited and
    /// the next operation tries again.
    fn prepare(self: Arc<Self>) {}
}
