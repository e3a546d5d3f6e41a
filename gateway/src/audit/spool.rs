//! The file sink: the active file, its rotation into `STEM-SEQ.EXT` files beside it, and the
//! spool the rotated files make.
//!
//! Records reach the disk here or wait in memory until they can: a failed write or sync
//! truncates the file back to its last whole record and keeps the records, so a full disk
//! never leaves half a record behind, and nothing is lost while the process lives.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::chain::{self, Resume};

pub struct FileSink {
    active: PathBuf,
    dir: PathBuf,
    stem: String,
    /// `.jsonl`, or empty.
    ext: String,
    /// `None` after a failed open: tried again at the next flush.
    file: Option<File>,
    /// Bytes of the active file that hold whole records (synced ones, when syncing).
    len: u64,
    /// Records not yet on disk (not yet synced, when syncing), oldest first.
    pending: Vec<u8>,
    sync: bool,
    /// The active file's first record: its seq, and when it was written.
    first: Option<(u64, SystemTime)>,
    /// Bytes in rotated files, as last counted.
    rotated: u64,
    /// The last write, sync or open error, while it lasts.
    pub error: Option<String>,
}

impl FileSink {
    /// Opens the active file `path` for appending, and says where the chain stands: at the
    /// end of the active file, or, if there is none, of the newest rotated file.
    pub fn open(path: &Path, sync: bool) -> io::Result<(FileSink, Resume)> {
        let (dir, stem, ext) = parts(path);
        let mut sink = FileSink {
            active: path.to_owned(),
            dir,
            stem,
            ext,
            file: None,
            len: 0,
            pending: Vec::new(),
            sync,
            first: None,
            rotated: 0,
            error: None,
        };
        let resume = if path.exists() {
            sink.first = first_record(path)?;
            chain::resume(path)?
        } else {
            match sink.rotated_files()?.last() {
                // Rotated but not yet reopened (a crash between the two): the newest rotated
                // file holds the head. It was synced whole before it was renamed.
                Some((newest, _)) => match chain::resume(newest)? {
                    Resume::Continue { seq, head, .. } => Resume::Continue {
                        seq,
                        head,
                        torn: 0,
                        terminate: false,
                    },
                    other => other,
                },
                None => Resume::Fresh,
            }
        };
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        sink.len = f.metadata()?.len();
        sink.file = Some(f);
        sink.count_rotated();
        Ok((sink, resume))
    }

    /// Queues one whole line (`seq` is its record's).
    pub fn push(&mut self, seq: u64, line: &[u8]) {
        if self.first.is_none() {
            self.first = Some((seq, SystemTime::now()));
        }
        self.pending.extend_from_slice(line);
    }

    /// Bytes that must reach the file before the chain may end a line there (a crash left
    /// half a record): written first, as part of the pending bytes.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes (and syncs, when syncing) what is pending. On failure the file is cut back to
    /// its last whole record and the records stay pending.
    pub fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.active)
                .and_then(|f| f.metadata().map(|m| (f, m.len())))
            {
                Ok((f, len)) => {
                    self.file = Some(f);
                    self.len = len;
                }
                Err(e) => return Err(self.failed(format!("cannot open: {e}"))),
            }
        }
        let f = self.file.as_mut().expect("opened above");
        let written = f
            .write_all(&self.pending)
            .and_then(|()| if self.sync { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                self.error = None;
                Ok(())
            }
            Err(e) => {
                // A partial write must not stay: the file goes back to its last whole record
                // and the records are written again, whole, once the disk takes them.
                if let Err(cut) = f.set_len(self.len) {
                    tracing::error!(error = %cut, "cannot cut the audit file back after a failed write; reopening it");
                    self.file = None;
                }
                Err(self.failed(e.to_string()))
            }
        }
    }

    fn failed(&mut self, e: String) -> String {
        let e = format!("{}: {e}", self.active.display());
        self.error = Some(e.clone());
        e
    }

    /// Whether the active path still names the file being written. If it was removed or
    /// replaced, the next flush opens the path anew (the caller records why), so that records
    /// do not go on into a file nobody can read.
    pub fn lost_active(&mut self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = &self.file else {
            return false;
        };
        let Ok(open) = f.metadata() else {
            return false;
        };
        let same = fs::metadata(&self.active)
            .is_ok_and(|named| named.dev() == open.dev() && named.ino() == open.ino());
        if same {
            return false;
        }
        self.file = None;
        self.len = 0;
        self.first = None;
        true
    }

    /// The active file's name.
    pub fn active_name(&self) -> String {
        self.active
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The active file's size with what is pending.
    pub fn active_bytes(&self) -> u64 {
        self.len + self.pending.len() as u64
    }

    /// When the active file's first record was written, if it has one.
    pub fn started(&self) -> Option<SystemTime> {
        self.first.map(|(_, t)| t)
    }

    /// The active and rotated files together, as last counted.
    pub fn spool_bytes(&self) -> u64 {
        self.rotated + self.active_bytes()
    }

    /// Counts the rotated files again (another process may have shipped and deleted some).
    pub fn count_rotated(&mut self) {
        self.rotated = self
            .rotated_files()
            .map(|files| files.iter().map(|(_, len)| len).sum())
            .unwrap_or(self.rotated);
    }

    /// Renames the active file (everything flushed) to `STEM-SEQ.EXT` after its first
    /// record's seq, never over an existing file, and starts a new one. Returns the old
    /// file's new name.
    pub fn rotate(&mut self) -> Result<String, String> {
        let Some((seq, _)) = self.first else {
            return Err("nothing to rotate".into());
        };
        self.flush()?;
        let mut n = 0;
        let target = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!("-{n}")
            };
            let target = self
                .dir
                .join(format!("{}-{seq:020}{suffix}{}", self.stem, self.ext));
            match rename_no_replace(&self.active, &target) {
                Ok(()) => break target,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(self.failed(format!("cannot rotate: {e}"))),
            }
        };
        // The rename is durable before records go to the new file.
        let _ = File::open(&self.dir).and_then(|d| d.sync_all());
        self.rotated += self.len;
        self.len = 0;
        self.first = None;
        self.file = None;
        match OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&self.active)
        {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                self.failed(format!("cannot start a new file: {e}"));
            }
        }
        Ok(target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    /// Deletes the oldest rotated files until the spool holds at most `limit` bytes.
    pub fn delete_oldest(&mut self, limit: u64) -> Deleted {
        let mut deleted = Deleted::default();
        let Ok(files) = rotated(&self.dir, &self.stem, &self.ext) else {
            return deleted;
        };
        for f in files {
            if self.spool_bytes() <= limit {
                deleted.next_seq = Some(f.first_seq);
                break;
            }
            match fs::remove_file(&f.path) {
                Ok(()) => {
                    self.rotated = self.rotated.saturating_sub(f.len);
                    deleted.first_seq.get_or_insert(f.first_seq);
                    deleted.files.push((
                        f.path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        f.len,
                    ));
                }
                Err(e) => {
                    tracing::error!(path = %f.path.display(), error = %e, "cannot delete a rotated audit file");
                    deleted.next_seq = Some(f.first_seq);
                    break;
                }
            }
        }
        if deleted.next_seq.is_none() {
            deleted.next_seq = self.first.map(|(seq, _)| seq);
        }
        deleted
    }

    /// This sink's rotated files and their sizes, oldest first.
    fn rotated_files(&self) -> io::Result<Vec<(PathBuf, u64)>> {
        Ok(rotated(&self.dir, &self.stem, &self.ext)?
            .into_iter()
            .map(|f| (f.path, f.len))
            .collect())
    }
}

/// What `delete_oldest` took away.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Names and sizes, oldest first.
    pub files: Vec<(String, u64)>,
    /// The first record of the oldest file deleted.
    pub first_seq: Option<u64>,
    /// The first record the spool still holds, if it holds any.
    pub next_seq: Option<u64>,
}

/// A rotated file of a spool.
pub struct Rotated {
    pub path: PathBuf,
    /// The seq of its first record, from its name.
    pub first_seq: u64,
    pub len: u64,
}

/// The rotated files `STEM-SEQ[-N]EXT` in `dir`, oldest first: by modification time, as a
/// chain begun again after a lost head starts its seqs anew, so names alone do not order it.
fn rotated(dir: &Path, stem: &str, ext: &str) -> io::Result<Vec<Rotated>> {
    let prefix = format!("{stem}-");
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(middle) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(ext))
        else {
            continue;
        };
        let mut parts = middle.splitn(2, '-');
        let seq = parts.next().unwrap_or("");
        // `-N`: a later file whose first seq was taken (a chain begun again).
        let suffix = match parts.next() {
            None => Some(0),
            Some(n) => n.parse::<u32>().ok(),
        };
        if seq.len() == 20
            && let (Ok(first_seq), Some(suffix)) = (seq.parse::<u64>(), suffix)
        {
            let meta = entry.metadata()?;
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.push((
                (modified, first_seq, suffix),
                Rotated {
                    path: entry.path(),
                    first_seq,
                    len: meta.len(),
                },
            ));
        }
    }
    // Within one tick of the clock, a higher seq or suffix is the later file.
    files.sort_by_key(|(key, _)| *key);
    Ok(files.into_iter().map(|(_, f)| f).collect())
}

/// The files of the spool whose active file is `active`, in the order they were written, each
/// with the seq of its first record: the rotated ones, then the active one (if it has a
/// record).
pub fn files_in_order(active: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (dir, stem, ext) = parts(active);
    let mut out: Vec<(u64, PathBuf)> = rotated(&dir, &stem, &ext)?
        .into_iter()
        .map(|f| (f.first_seq, f.path))
        .collect();
    match first_record(active) {
        Ok(Some((seq, _))) => out.push((seq, active.to_owned())),
        Ok(None) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

/// The directory, stem and extension (`.jsonl`, or empty) of an active file's path.
fn parts(path: &Path) -> (PathBuf, String, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = |s: Option<&std::ffi::OsStr>| s.map(|s| s.to_string_lossy().into_owned());
    (
        dir,
        name(path.file_stem()).unwrap_or_else(|| "audit".into()),
        name(path.extension())
            .map(|e| format!(".{e}"))
            .unwrap_or_default(),
    )
}

/// The seq and time of a file's first record.
pub fn first_record(path: &Path) -> io::Result<Option<(u64, SystemTime)>> {
    let mut line = Vec::new();
    // Bounded: a record is far shorter, and the path may not be a regular file.
    BufReader::new(File::open(path)?.take(1 << 20)).read_until(b'\n', &mut line)?;
    #[derive(serde::Deserialize)]
    struct First {
        seq: u64,
        time: String,
    }
    Ok(serde_json::from_slice::<First>(&line).ok().map(|f| {
        let time = chrono::DateTime::parse_from_rfc3339(&f.time)
            .map(SystemTime::from)
            .unwrap_or_else(|_| SystemTime::now());
        (f.seq, time)
    }))
}

/// `rename(2)` that fails with `AlreadyExists` rather than replace `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_renames_after_the_first_seq_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (mut sink, resume) = FileSink::open(&path, true).unwrap();
        assert_eq!(resume, Resume::Fresh);
        sink.push(1, b"{\"seq\":1}\n");
        sink.push(2, b"{\"seq\":2}\n");
        assert_eq!(sink.rotate().unwrap(), "audit-00000000000000000001.jsonl");
        assert_eq!(sink.active_bytes(), 0);
        assert_eq!(sink.spool_bytes(), 20);
        // A name taken (a chain begun again at seq 1): a suffix, never a replacement.
        sink.push(1, b"{\"seq\":1,\"again\":1}\n");
        assert_eq!(sink.rotate().unwrap(), "audit-00000000000000000001-1.jsonl");
        assert_eq!(
            fs::read(dir.path().join("audit-00000000000000000001.jsonl")).unwrap(),
            b"{\"seq\":1}\n{\"seq\":2}\n"
        );
        // Reopened with no active file: the chain stands at the newest rotated file's end.
        drop(sink);
        fs::remove_file(&path).unwrap();
        let (sink, resume) = FileSink::open(&path, true).unwrap();
        assert!(
            matches!(resume, Resume::Continue { seq: 1, .. }),
            "{resume:?}"
        );
        assert_eq!(sink.spool_bytes(), 40);
    }

    #[test]
    fn deleting_the_oldest_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sink, _) = FileSink::open(&dir.path().join("a.jsonl"), false).unwrap();
        for seq in 1..=3 {
            sink.push(
                seq,
                &[b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>(),
            );
            sink.rotate().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(sink.spool_bytes(), 300);
        let deleted = sink.delete_oldest(150);
        assert_eq!(
            deleted,
            Deleted {
                files: vec![
                    ("a-00000000000000000001.jsonl".to_owned(), 100),
                    ("a-00000000000000000002.jsonl".to_owned(), 100)
                ],
                first_seq: Some(1),
                next_seq: Some(3),
            }
        );
        assert_eq!(sink.spool_bytes(), 100);
    }
}
