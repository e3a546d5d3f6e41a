//! A local directory backend, for the demo and tests. Not meant for a DMZ: the gateway's own
//! file system is the last place a DMZ should keep files.
//!
//! Paths are confined twice. Each operation's path must stay beneath its mount's backend path
//! (`Backend::confine`, called by the session): the parent resolved with its symlinks, and a
//! final symlink's target, must lie beneath the mount's directory resolved the same way, so a
//! link planted in one mount cannot reach another mount's files. Each operation also checks
//! its parent against the root, and opens the final component with `O_NOFOLLOW`.

use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendFile};
use crate::fs::{DirEntry, FileAttrs, FsError, OpenMode, VfsStats};

pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: &Path) -> Result<LocalBackend, FsError> {
        let root = root
            .canonicalize()
            .map_err(|e| FsError::Unavailable(format!("local root {}: {e}", root.display())))?;
        Ok(LocalBackend { root })
    }

    /// Maps a backend path onto the root and checks that its parent stays inside.
    fn resolve(&self, path: &str) -> Result<PathBuf, FsError> {
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|s| s == "..") || rel.contains('\0') {
            return Err(FsError::BadPath(path.to_owned()));
        }
        // The bytes the name stands for: a name that is not UTF-8 is stored as it was sent.
        let full = self
            .root
            .join(OsStr::from_bytes(&portcullis_names::unescape(rel)));
        if full == self.root {
            return Ok(full);
        }
        let parent = full.parent().unwrap_or(&self.root);
        let real_parent = parent.canonicalize()?;
        if !real_parent.starts_with(&self.root) {
            return Err(FsError::Denied("path leaves the backend root".into()));
        }
        Ok(real_parent.join(full.file_name().unwrap_or_default()))
    }

    /// As `resolve`, and if the target is a symlink, its resolution must stay inside too.
    fn resolve_follow(&self, path: &str) -> Result<PathBuf, FsError> {
        let p = self.resolve(path)?;
        let real = p.canonicalize()?;
        if !real.starts_with(&self.root) {
            return Err(FsError::Denied(
                "symlink leads outside the backend root".into(),
            ));
        }
        Ok(real)
    }
}

fn cstring(p: &Path) -> Result<std::ffi::CString, FsError> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| FsError::BadPath(p.display().to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FsError::Failure(format!("worker failed: {e}")))?
}

fn attrs_of(m: &fs::Metadata) -> FileAttrs {
    FileAttrs {
        size: Some(m.size()),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        mode: Some(m.mode()),
        atime: Some(m.atime() as u32),
        mtime: Some(m.mtime() as u32),
    }
}

fn apply_attrs(path: &Path, file: Option<&File>, attrs: &FileAttrs) -> Result<(), FsError> {
    // Each time on its own: FTP's MFMT sets only the modification time.
    let to_time = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.into());
    let times = match (attrs.atime, attrs.mtime) {
        (None, None) => None,
        (a, m) => {
            let mut t = fs::FileTimes::new();
            if let Some(a) = a {
                t = t.set_accessed(to_time(a));
            }
            if let Some(m) = m {
                t = t.set_modified(to_time(m));
            }
            Some(t)
        }
    };
    // Size and times go through a file handle: the caller's, or one opened once here without
    // following a symlink. Times alone need no write access (the owner may set them), and so
    // also work on a directory.
    let opened;
    let file = match file {
        Some(f) => Some(f),
        None if attrs.size.is_some() || times.is_some() => {
            opened = OpenOptions::new()
                .read(attrs.size.is_none())
                .write(attrs.size.is_some())
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            Some(&opened)
        }
        None => None,
    };
    if let (Some(size), Some(f)) = (attrs.size, file) {
        f.set_len(size)?;
    }
    if let (Some(times), Some(f)) = (times, file) {
        f.set_times(times)?;
    }
    if let Some(mode) = attrs.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

struct LocalFile {
    file: Arc<File>,
    path: PathBuf,
    /// For a file opened to append: its one writer, which applies writes in the order they
    /// were issued.
    appender: Option<Appender>,
}

/// A write and where to say how it went.
type AppendJob = (Bytes, tokio::sync::oneshot::Sender<Result<(), FsError>>);

/// Appends in issue order.
///
/// An append-mode file is opened with `O_APPEND`, so the kernel puts each write at the end
/// whatever its offset (as SFTP's `SSH_FXF_APPEND` asks, and as OpenSSH's sftp-server does).
/// sftp-server is serial, so its appends land in request order; our writes run concurrently on
/// the blocking pool, and left to it they would land in the order the threads happened to run:
/// a resumed upload (`reput` opens with APPEND) scrambled into 32 KiB pieces. One task per
/// append handle takes the writes in the order the session issued them and runs each on the
/// pool in turn (holding no pool thread between writes).
struct Appender {
    tx: tokio::sync::mpsc::UnboundedSender<AppendJob>,
}

impl Appender {
    fn spawn(file: Arc<File>) -> Appender {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AppendJob>();
        tokio::spawn(async move {
            while let Some((data, done)) = rx.recv().await {
                let file = file.clone();
                let r = blocking(move || {
                    use std::io::Write;
                    Ok((&*file).write_all(&data)?)
                })
                .await;
                let _ = done.send(r);
            }
        });
        Appender { tx }
    }
}

#[async_trait]
impl BackendFile for LocalFile {
    async fn read_at(&self, offset: u64, len: u32) -> Result<Option<Bytes>, FsError> {
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0u8; len as usize];
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 && len > 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some(Bytes::from(buf)))
        })
        .await
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        if let Some(appender) = &self.appender {
            // Queued before the first await, so in the order the session issued the writes.
            let (done, result) = tokio::sync::oneshot::channel();
            appender
                .tx
                .send((data, done))
                .map_err(|_| FsError::Failure("append writer stopped".into()))?;
            return result
                .await
                .map_err(|_| FsError::Failure("append writer stopped".into()))?;
        }
        let file = self.file.clone();
        blocking(move || Ok(file.write_all_at(&data, offset)?)).await
    }

    async fn stat(&self) -> Result<FileAttrs, FsError> {
        let file = self.file.clone();
        blocking(move || Ok(attrs_of(&file.metadata()?))).await
    }

    async fn set_stat(&self, attrs: FileAttrs) -> Result<(), FsError> {
        let (file, path) = (self.file.clone(), self.path.clone());
        blocking(move || apply_attrs(&path, Some(&file), &attrs)).await
    }

    async fn fsync(&self) -> Result<(), FsError> {
        let file = self.file.clone();
        blocking(move || Ok(file.sync_all()?)).await
    }

    async fn close(&self) -> Result<(), FsError> {
        let file = self.file.clone();
        // A close that cannot flush to disk must fail, so that the transfer is not reported
        // complete.
        blocking(move || Ok(file.sync_data()?)).await
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn confine(&self, base: &str, path: &str) -> Result<(), FsError> {
        if !super::beneath(base, path) {
            return Err(FsError::BadPath(path.to_owned()));
        }
        // Resolving is file-system work: all of it on the blocking pool.
        let this = LocalBackend {
            root: self.root.clone(),
        };
        let (base, path) = (base.to_owned(), path.to_owned());
        blocking(move || {
            let base = this.resolve_follow(&base)?;
            let full = this.resolve(&path)?;
            if full == base {
                return Ok(());
            }
            // `resolve` gave the parent resolved; a final symlink must lead beneath too.
            // A symlink that cannot be resolved (dangling, or unreadable) is refused too.
            let real = match full.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => full
                    .canonicalize()
                    .map_err(|_| FsError::Denied("a symlink that cannot be resolved".into()))?,
                _ => full,
            };
            if real.starts_with(&base) {
                Ok(())
            } else {
                Err(FsError::Denied("a symlink leads outside the mount".into()))
            }
        })
        .await
    }

    async fn open(&self, path: &str, mode: OpenMode) -> Result<Arc<dyn BackendFile>, FsError> {
        let p = self.resolve(path)?;
        blocking(move || {
            let mut o = OpenOptions::new();
            o.read(mode.read)
                .write(mode.write || mode.append)
                .append(mode.append)
                .truncate(mode.truncate)
                .custom_flags(libc::O_NOFOLLOW);
            if mode.create && mode.exclusive {
                o.create_new(true);
            } else {
                o.create(mode.create);
            }
            if !mode.read && !mode.write && !mode.append {
                o.read(true);
            }
            let file = o.open(&p).map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    FsError::Denied("symlinks are not followed".into())
                } else {
                    e.into()
                }
            })?;
            if file.metadata()?.is_dir() {
                return Err(FsError::Failure("is a directory".into()));
            }
            let file = Arc::new(file);
            let appender = mode.append.then(|| Appender::spawn(file.clone()));
            Ok(Arc::new(LocalFile {
                file,
                path: p,
                appender,
            }) as Arc<dyn BackendFile>)
        })
        .await
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let p = self.resolve_follow(path)?;
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&p)? {
                let entry = entry?;
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                out.push(DirEntry {
                    name: portcullis_names::escape(entry.file_name().as_bytes()).into_owned(),
                    attrs: attrs_of(&meta),
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn stat(&self, path: &str, follow: bool) -> Result<FileAttrs, FsError> {
        let p = if follow {
            self.resolve_follow(path)?
        } else {
            self.resolve(path)?
        };
        blocking(move || Ok(attrs_of(&p.symlink_metadata()?))).await
    }

    async fn set_stat(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        let p = self.resolve(path)?;
        blocking(move || {
            if p.symlink_metadata()?.file_type().is_symlink() {
                return Err(FsError::Denied("symlinks are not followed".into()));
            }
            apply_attrs(&p, None, &attrs)
        })
        .await
    }

    async fn remove(&self, path: &str) -> Result<(), FsError> {
        let p = self.resolve(path)?;
        blocking(move || {
            if p.symlink_metadata()?.is_dir() {
                return Err(FsError::Failure("is a directory".into()));
            }
            Ok(fs::remove_file(&p)?)
        })
        .await
    }

    async fn mkdir(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        // `create_dir` on an existing name is `AlreadyExists`, as on every backend.
        let p = self.resolve(path)?;
        blocking(move || {
            // mkdir(2) with the mode: the process umask applies, as with sftp-server.
            let mut b = fs::DirBuilder::new();
            if let Some(mode) = attrs.mode {
                b.mode(mode & 0o777);
            }
            b.create(&p)?;
            Ok(())
        })
        .await
    }

    async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let p = self.resolve(path)?;
        if p == self.root {
            return Err(FsError::Denied("cannot remove the backend root".into()));
        }
        blocking(move || Ok(fs::remove_dir(&p)?)).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), FsError> {
        let (a, b) = (self.resolve(from)?, self.resolve(to)?);
        blocking(move || {
            if overwrite {
                return Ok(fs::rename(&a, &b)?);
            }
            // Never replaces `to`, even one made meanwhile: renameat2's RENAME_NOREPLACE.
            let (ca, cb) = (cstring(&a)?, cstring(&b)?);
            // SAFETY: both are valid NUL-terminated paths that outlive the call.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(())
        })
        .await
    }

    async fn hardlink(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (a, b) = (self.resolve(from)?, self.resolve(to)?);
        // linkat without AT_SYMLINK_FOLLOW: a symlink is linked as itself, never its target.
        blocking(move || Ok(fs::hard_link(&a, &b)?)).await
    }

    async fn statvfs(&self, path: &str) -> Result<VfsStats, FsError> {
        let p = self.resolve_follow(path)?;
        blocking(move || {
            let c = cstring(&p)?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid path and a properly sized out-parameter.
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(VfsStats {
                block_size: st.f_bsize,
                fragment_size: st.f_frsize,
                blocks: st.f_blocks,
                blocks_free: st.f_bfree,
                blocks_avail: st.f_bavail,
                inodes: st.f_files,
                inodes_free: st.f_ffree,
                inodes_avail: st.f_favail,
                fs_id: st.f_fsid,
                flags: st.f_flag,
                name_max: st.f_namemax,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn times_can_be_set_on_directories_and_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("ro"), b"x").unwrap();
        let b = LocalBackend::new(r).unwrap();
        let at = FileAttrs {
            mtime: Some(981_173_106),
            ..Default::default()
        };
        for p in ["/d", "/ro"] {
            b.set_stat(p, at.clone()).await.unwrap();
            assert_eq!(
                b.stat(p, false).await.unwrap().mtime,
                Some(981_173_106),
                "{p}"
            );
        }
    }

    #[tokio::test]
    async fn symlinks_cannot_lead_from_one_mount_into_another() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["a/sub", "b"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("b/secret"), b"s").unwrap();
        std::os::unix::fs::symlink(r.join("b"), r.join("a/dirlink")).unwrap();
        std::os::unix::fs::symlink(r.join("b/secret"), r.join("a/link")).unwrap();
        std::os::unix::fs::symlink(r.join("a/sub"), r.join("a/inside")).unwrap();
        std::os::unix::fs::symlink(r.join("gone"), r.join("a/dangling")).unwrap();
        let b = LocalBackend::new(r).unwrap();
        let denied = |res: Result<(), FsError>| matches!(res, Err(FsError::Denied(_)));
        assert!(denied(b.confine("/a", "/a/dirlink/secret").await));
        assert!(denied(b.confine("/a", "/a/dirlink").await));
        assert!(denied(b.confine("/a", "/a/link").await));
        assert!(denied(b.confine("/a", "/a/dangling").await));
        assert!(b.confine("/a", "/a").await.is_ok());
        assert!(b.confine("/a", "/a/new-file").await.is_ok());
        assert!(b.confine("/a", "/a/inside/x").await.is_ok());
        assert!(b.confine("/a", "/a/inside").await.is_ok());
        assert!(matches!(
            b.confine("/a", "/ab/x").await,
            Err(FsError::BadPath(_))
        ));
        assert!(matches!(
            b.confine("/a", "/a/missing/x").await,
            Err(FsError::NotFound)
        ));
        // The same paths without a mount base: the root is the only bound.
        assert!(b.confine("/", "/a/dirlink/secret").await.is_ok());
    }

    #[tokio::test]
    async fn symlinks_cannot_lead_outside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("dirlink")).unwrap();
        let b = LocalBackend::new(root.path()).unwrap();
        let read = OpenMode {
            read: true,
            ..Default::default()
        };
        assert!(matches!(
            b.open("/link", read).await,
            Err(FsError::Denied(_))
        ));
        assert!(matches!(
            b.open("/dirlink/secret", read).await,
            Err(FsError::Denied(_))
        ));
        assert!(matches!(b.list("/dirlink").await, Err(FsError::Denied(_))));
        assert!(matches!(
            b.stat("/link", true).await,
            Err(FsError::Denied(_))
        ));
        assert!(
            b.stat("/link", false).await.is_ok(),
            "lstat of the link itself is fine"
        );
        assert!(matches!(
            b.open("/../etc/passwd", read).await,
            Err(FsError::BadPath(_))
        ));
    }

    #[tokio::test]
    async fn positional_io_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(root.path()).unwrap();
        let w = OpenMode {
            write: true,
            create: true,
            truncate: true,
            ..Default::default()
        };
        let f = b.open("/a.bin", w).await.unwrap();
        f.write_at(3, Bytes::from_static(b"def")).await.unwrap();
        f.write_at(0, Bytes::from_static(b"abc")).await.unwrap();
        f.close().await.unwrap();
        let r = b
            .open(
                "/a.bin",
                OpenMode {
                    read: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.read_at(0, 100).await.unwrap().unwrap(), &b"abcdef"[..]);
        assert_eq!(r.read_at(6, 100).await.unwrap(), None);
        assert_eq!(b.list("/").await.unwrap()[0].name, "a.bin");
        assert_eq!(
            b.rename("/a.bin", "/a.bin", false).await,
            Err(FsError::AlreadyExists)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_issued_concurrently_land_in_issue_order() {
        // A resumed upload: the file holds a prefix, and the client pipelines the rest with
        // APPEND and the right offsets, as OpenSSH's `reput` does.
        let root = tempfile::tempdir().unwrap();
        let chunk = 4096usize;
        let prefix = vec![0xAAu8; 10 * chunk];
        std::fs::write(root.path().join("r.bin"), &prefix).unwrap();
        let b = LocalBackend::new(root.path()).unwrap();
        let f = b
            .open(
                "/r.bin",
                OpenMode {
                    write: true,
                    append: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let pieces: Vec<Bytes> = (0..256u32)
            .map(|i| Bytes::from(i.to_be_bytes().repeat(chunk / 4)))
            .collect();
        let writes = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| f.write_at((prefix.len() + i * chunk) as u64, p.clone()));
        for r in futures::future::join_all(writes).await {
            r.unwrap();
        }
        f.close().await.unwrap();
        let got = std::fs::read(root.path().join("r.bin")).unwrap();
        let mut want = prefix.clone();
        for p in &pieces {
            want.extend_from_slice(p);
        }
        assert_eq!(got.len(), want.len());
        assert!(got == want, "appended pieces landed out of order");
    }
}
