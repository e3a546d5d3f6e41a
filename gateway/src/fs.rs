//! The vocabulary front ends, the session and backends share: file operations and their
//! results, attributes, open modes and errors, all protocol-neutral. Front ends import this
//! module and `session`, never a backend; each maps [`FsError`] to its own codes at the edge.

use bytes::Bytes;

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

/// A file operation in protocol-neutral terms. Paths are as the client sent them.
#[derive(Debug)]
pub enum FileOp {
    Open {
        path: String,
        mode: OpenMode,
    },
    Read {
        handle: u64,
        offset: u64,
        len: u32,
    },
    Write {
        handle: u64,
        offset: u64,
        data: Bytes,
    },
    Close {
        handle: u64,
    },
    OpenDir {
        path: String,
    },
    ReadDir {
        handle: u64,
    },
    Stat {
        path: String,
        follow: bool,
    },
    FStat {
        handle: u64,
    },
    SetStat {
        path: String,
        attrs: FileAttrs,
    },
    FSetStat {
        handle: u64,
        attrs: FileAttrs,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
        attrs: FileAttrs,
    },
    Rmdir {
        path: String,
    },
    /// Without `overwrite` an existing `to` is refused (SFTP v3); with it, `to` is replaced
    /// if the user may also delete it (`posix-rename@openssh.com`, FTP `RNTO`).
    Rename {
        from: String,
        to: String,
        overwrite: bool,
    },
    RealPath {
        path: String,
    },
    /// File-system figures (`statvfs@openssh.com`).
    StatVfs {
        path: String,
    },
    /// Flush a file written through `handle` (`fsync@openssh.com`).
    Fsync {
        handle: u64,
    },
    /// A second name `to` for the file `from` (`hardlink@openssh.com`).
    Hardlink {
        from: String,
        to: String,
    },
    /// An FTP `SITE <command>` from the client's directory `cwd`, passed to the endpoint
    /// where a role allows the subcommand. `SITE CHMOD` is not one: front ends send it as a
    /// `SetStat` (see `session::site_chmod`).
    Site {
        cwd: String,
        command: String,
    },
}

impl FileOp {
    pub fn name(&self) -> &'static str {
        match self {
            FileOp::Open { .. } => "open",
            FileOp::Read { .. } => "read",
            FileOp::Write { .. } => "write",
            FileOp::Close { .. } => "close",
            FileOp::OpenDir { .. } => "opendir",
            FileOp::ReadDir { .. } => "readdir",
            FileOp::Stat { follow: true, .. } => "stat",
            FileOp::Stat { follow: false, .. } => "lstat",
            FileOp::FStat { .. } => "fstat",
            FileOp::SetStat { .. } => "setstat",
            FileOp::FSetStat { .. } => "fsetstat",
            FileOp::Remove { .. } => "remove",
            FileOp::Mkdir { .. } => "mkdir",
            FileOp::Rmdir { .. } => "rmdir",
            FileOp::Rename { .. } => "rename",
            FileOp::RealPath { .. } => "realpath",
            FileOp::StatVfs { .. } => "statvfs",
            FileOp::Fsync { .. } => "fsync",
            FileOp::Site { .. } => "site",
            FileOp::Hardlink { .. } => "hardlink",
        }
    }

    pub(crate) fn is_data(&self) -> bool {
        matches!(self, FileOp::Read { .. } | FileOp::Write { .. })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum OpOutput {
    Handle(u64),
    Data(Bytes),
    Eof,
    Done,
    Attrs(FileAttrs),
    Entries(Vec<DirEntry>),
    Path(String),
    VfsStats(VfsStats),
    /// The endpoint's reply to a `SITE` command, whatever its code.
    SiteReply {
        code: u16,
        text: String,
    },
}
