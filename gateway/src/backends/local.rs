//! A local directory backend, for the demo and tests. Not meant for a DMZ: the gateway's own
//! file system is the last place a DMZ should keep files.
//!
//! Paths are confined to the root: the parent of every target is canonicalized and must lie
//! inside the root, and the final component is opened with `O_NOFOLLOW`, so a symlink planted
//! in the directory cannot lead outside it.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendFile, DirEntry, FileAttrs, FsError, OpenMode};

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
    fn confine(&self, path: &str) -> Result<PathBuf, FsError> {
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|s| s == "..") || rel.contains('\0') {
            return Err(FsError::BadPath(path.to_owned()));
        }
        let full = self.root.join(rel);
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

    /// As `confine`, and if the target is a symlink, its resolution must stay inside too.
    fn confine_follow(&self, path: &str) -> Result<PathBuf, FsError> {
        let p = self.confine(path)?;
        let real = p.canonicalize()?;
        if !real.starts_with(&self.root) {
            return Err(FsError::Denied(
                "symlink leads outside the backend root".into(),
            ));
        }
        Ok(real)
    }
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
    let times = match (attrs.atime, attrs.mtime) {
        (Some(a), Some(m)) => {
            let to_time = |s: u32| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.into());
            Some(
                fs::FileTimes::new()
                    .set_accessed(to_time(a))
                    .set_modified(to_time(m)),
            )
        }
        _ => None,
    };
    // Size and times go through a file handle: the caller's, or one opened once here without
    // following a symlink.
    let opened;
    let file = match file {
        Some(f) => Some(f),
        None if attrs.size.is_some() || times.is_some() => {
            opened = OpenOptions::new()
                .write(true)
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

    async fn close(&self) -> Result<(), FsError> {
        let file = self.file.clone();
        // A close that cannot flush to disk must fail, so that the transfer is not reported
        // complete.
        blocking(move || Ok(file.sync_data()?)).await
    }
}

#[async_trait]
impl Backend for LocalBackend {
    async fn open(&self, path: &str, mode: OpenMode) -> Result<Arc<dyn BackendFile>, FsError> {
        let p = self.confine(path)?;
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
            Ok(Arc::new(LocalFile {
                file: Arc::new(file),
                path: p,
            }) as Arc<dyn BackendFile>)
        })
        .await
    }

    async fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let p = self.confine_follow(path)?;
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&p)? {
                let entry = entry?;
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                out.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
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
            self.confine_follow(path)?
        } else {
            self.confine(path)?
        };
        blocking(move || Ok(attrs_of(&p.symlink_metadata()?))).await
    }

    async fn set_stat(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        let p = self.confine(path)?;
        blocking(move || {
            if p.symlink_metadata()?.file_type().is_symlink() {
                return Err(FsError::Denied("symlinks are not followed".into()));
            }
            apply_attrs(&p, None, &attrs)
        })
        .await
    }

    async fn remove(&self, path: &str) -> Result<(), FsError> {
        let p = self.confine(path)?;
        blocking(move || {
            if p.symlink_metadata()?.is_dir() {
                return Err(FsError::Failure("is a directory".into()));
            }
            Ok(fs::remove_file(&p)?)
        })
        .await
    }

    async fn mkdir(&self, path: &str, attrs: FileAttrs) -> Result<(), FsError> {
        let p = self.confine(path)?;
        blocking(move || {
            fs::create_dir(&p)?;
            if let Some(mode) = attrs.mode {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            Ok(())
        })
        .await
    }

    async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let p = self.confine(path)?;
        if p == self.root {
            return Err(FsError::Denied("cannot remove the backend root".into()));
        }
        blocking(move || Ok(fs::remove_dir(&p)?)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (a, b) = (self.confine(from)?, self.confine(to)?);
        blocking(move || {
            // SFTP v3 rename does not overwrite.
            if b.symlink_metadata().is_ok() {
                return Err(FsError::AlreadyExists);
            }
            Ok(fs::rename(&a, &b)?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            b.rename("/a.bin", "/a.bin").await,
            Err(FsError::AlreadyExists)
        );
    }
}
