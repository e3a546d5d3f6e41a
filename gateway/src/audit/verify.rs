//! `portcullis-gateway audit verify`: checks a trail's chain and checkpoint signatures, and
//! names the first bad record and the kind of tampering.
//!
//! The files are read as one stream in name order (a directory: its files, by name). What is
//! found:
//! - a record whose hash is not what the next record names: **edited**;
//! - a gap in `seq`: **deleted**, or **reordered** when the missing records come later, or a
//!   **missing file** when the gap is at a file boundary;
//! - a `seq` seen before: **inserted**;
//! - a checkpoint whose signature fails: **bad signature** (the records it covers were
//!   changed and their hashes rebuilt); from a key not given: **unknown key**;
//! - records after the last checkpoint: **unsigned tail** (a truncation after the last
//!   checkpoint cannot be excluded), unless the trail is still being written (`--live`);
//! - the gateway's own `chainResumed` record with `headLost`: a **gap** it could not avoid.
//!
//! A line torn by a crash mid-write is accepted only where the restarted gateway declared it
//! (`chainResumed.tornBytes`).

use std::{
    fmt,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::chain::{GENESIS, Verifier};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    Edited,
    Deleted,
    Inserted,
    Reordered,
    MissingFile,
    BadSignature,
    UnknownKey,
    UnsignedTail,
    Gap,
    NotARecord,
}

impl fmt::Display for Tamper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tamper::Edited => "edited",
            Tamper::Deleted => "deleted",
            Tamper::Inserted => "inserted",
            Tamper::Reordered => "reordered",
            Tamper::MissingFile => "missing file",
            Tamper::BadSignature => "bad signature",
            Tamper::UnknownKey => "unknown key",
            Tamper::UnsignedTail => "unsigned tail",
            Tamper::Gap => "gap",
            Tamper::NotARecord => "not a record",
        })
    }
}

/// The first thing wrong, and where.
#[derive(Debug)]
pub struct Finding {
    pub kind: Tamper,
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.kind,
            self.detail
        )
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub checkpoints: u64,
    /// The seq of the last checkpoint record.
    pub last_checkpoint: u64,
    /// Whether checkpoint signatures were checked (keys were given).
    pub signatures_checked: bool,
    pub restarts: u64,
    /// The trail given begins with a rotated file's first record, after this earlier file
    /// (not given: shipped elsewhere, or deleted by retention).
    pub begins_after: Option<String>,
    pub finding: Option<Finding>,
}

impl Report {
    /// Makes a trail that begins after files not given (at a rotated file's header) a
    /// finding: `audit verify --from-start`.
    pub fn require_start(&mut self, files: &[PathBuf]) {
        if self.finding.is_some() {
            return;
        }
        if let (Some(before), Some(first)) = (&self.begins_after, files.first()) {
            self.finding = Some(Finding {
                kind: Tamper::MissingFile,
                file: first.clone(),
                line: 1,
                detail: format!(
                    "the trail begins at seq {} after {before}, which is not given",
                    self.first_seq.unwrap_or(0)
                ),
            });
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(finding) = &self.finding {
            return write!(f, "TAMPERED: {finding}");
        }
        write!(
            f,
            "ok: {} records in {} file(s), seq {}..{}, {} checkpoint(s), signed through seq {}, {} restart(s); signatures {}",
            self.records,
            self.files,
            self.first_seq.unwrap_or(0),
            self.last_seq,
            self.checkpoints,
            self.last_checkpoint.saturating_sub(1),
            self.restarts,
            if self.signatures_checked {
                "checked"
            } else {
                "NOT checked (no --key given)"
            }
        )?;
        if let Some(file) = &self.begins_after {
            write!(
                f,
                "; begins after {file} (not given), at seq {}",
                self.first_seq.unwrap_or(0)
            )?;
        }
        Ok(())
    }
}

/// The fields a verifier reads; everything else in a record is only hashed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    time: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    torn_bytes: Option<u64>,
    #[serde(borrow, default)]
    head_lost: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    previous_file: Option<std::borrow::Cow<'a, str>>,
}

/// The files of `paths` in the order they are verified: by the seq of their first record
/// (rotated files are named after it, but names can be changed), then by name.
pub fn files_of(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for entry in std::fs::read_dir(p)? {
                let path = entry?.path();
                let hidden = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if path.is_file() && !hidden {
                    out.push(path);
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    let mut keyed = Vec::with_capacity(out.len());
    for path in out {
        let seq = super::spool::first_record(&path)?.map_or(u64::MAX, |(seq, _)| seq);
        keyed.push((seq, path));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, p)| p).collect())
}

/// Verifies `files` as one trail. `keys` empty: signatures are not checked. `live`: the trail
/// is still being written, so records after the last checkpoint are not a finding.
pub fn verify(files: &[PathBuf], keys: &[Verifier], live: bool) -> std::io::Result<Report> {
    let mut st = State {
        report: Report {
            files: files.len(),
            signatures_checked: !keys.is_empty(),
            ..Default::default()
        },
        head: GENESIS.to_owned(),
        seq: 0,
        torn: None,
        gap: None,
        seen_after_gap: Vec::new(),
        last_at: None,
    };
    for file in files {
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
        let mut line = Vec::with_capacity(4096);
        let mut n = 0usize;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            n += 1;
            if st.gap.is_some() {
                // After a gap only the seqs matter: do the missing ones come later?
                if let Ok(f) = serde_json::from_slice::<Fields>(&line) {
                    st.seen_after_gap.push(f.seq);
                }
                continue;
            }
            st.line(file, n, &line, keys);
            if st.report.finding.is_some() {
                return Ok(st.report);
            }
        }
    }
    Ok(st.finish(live))
}

struct State {
    report: Report,
    /// The hash of the last record line, and its seq.
    head: String,
    seq: u64,
    /// An unparsable line waiting for a `chainResumed` that declares it: (bytes, file, line).
    torn: Option<(u64, PathBuf, usize)>,
    /// A jump in seq: (first missing, first after the gap, where, at a file start).
    gap: Option<(u64, u64, PathBuf, usize, bool)>,
    seen_after_gap: Vec<u64>,
    last_at: Option<(PathBuf, usize)>,
}

impl State {
    fn found(&mut self, kind: Tamper, file: &Path, line: usize, detail: String) {
        self.report.finding = Some(Finding {
            kind,
            file: file.to_owned(),
            line,
            detail,
        });
    }

    fn line(&mut self, file: &Path, n: usize, bytes: &[u8], keys: &[Verifier]) {
        let Ok(r) = serde_json::from_slice::<Fields>(bytes) else {
            if self.torn.is_some() {
                let (_, f, l) = self.torn.take().expect("checked");
                return self.found(
                    Tamper::NotARecord,
                    &f,
                    l,
                    "a line that is not a record, never declared torn by the gateway".into(),
                );
            }
            let len = bytes.strip_suffix(b"\n").unwrap_or(bytes).len() as u64;
            self.torn = Some((len, file.to_owned(), n));
            return;
        };
        if let Some((len, f, l)) = self.torn.take() {
            let declared = r.event == "chainResumed" && r.torn_bytes == Some(len);
            if !declared {
                return self.found(
                    Tamper::NotARecord,
                    &f,
                    l,
                    format!(
                        "a line of {len} bytes that is not a record (the next record does not declare it torn)"
                    ),
                );
            }
        }
        if r.event == "chainResumed"
            && let Some(why) = &r.head_lost
        {
            return self.found(
                Tamper::Gap,
                file,
                n,
                format!(
                    "seq {}: the gateway lost the head of the chain and started a new one: {why}",
                    r.seq
                ),
            );
        }
        let first = self.report.records == 0;
        if first && r.event == "fileStart" {
            // A trail that begins mid-chain, at a rotated file: it goes on from the head
            // that file names.
            self.seq = r.seq.saturating_sub(1);
            self.head = r.prev.to_string();
            self.report.begins_after = Some(r.previous_file.as_deref().unwrap_or("?").to_owned());
        }
        let expected = self.seq + 1;
        if r.seq > expected {
            let at_file_start = n == 1;
            self.gap = Some((expected, r.seq, file.to_owned(), n, at_file_start));
            return;
        }
        if r.seq < expected {
            return self.found(
                Tamper::Inserted,
                file,
                n,
                format!(
                    "seq {} appears again after seq {} (a record was inserted or replayed)",
                    r.seq, self.seq
                ),
            );
        }
        if r.prev != self.head {
            let detail = if first {
                format!("seq {}: the first record does not begin a chain", r.seq)
            } else {
                format!(
                    "seq {}: the record before it (seq {}{}) is not the one it names; it was edited",
                    r.seq,
                    self.seq,
                    self.last_at
                        .as_ref()
                        .map(|(f, l)| format!(", {}:{l}", f.display()))
                        .unwrap_or_default()
                )
            };
            let (f, l) = self.last_at.clone().unwrap_or_else(|| (file.to_owned(), n));
            return self.found(Tamper::Edited, &f, l, detail);
        }
        if r.event == "checkpoint" {
            self.report.checkpoints += 1;
            if !keys.is_empty() {
                let key_id = r.key_id.as_deref().unwrap_or("");
                let Some(key) = keys.iter().find(|k| k.key_id == key_id) else {
                    return self.found(
                        Tamper::UnknownKey,
                        file,
                        n,
                        format!(
                            "seq {}: checkpoint signed by key {key_id:?}, not one given",
                            r.seq
                        ),
                    );
                };
                let good = key.verify(
                    self.seq,
                    &self.head,
                    r.time.as_deref().unwrap_or(""),
                    r.signature.as_deref().unwrap_or(""),
                );
                if !good {
                    return self.found(
                        Tamper::BadSignature,
                        file,
                        n,
                        format!(
                            "seq {}: the checkpoint's signature does not match seq {} and its hash: records up to there were changed and their chain rebuilt",
                            r.seq, self.seq
                        ),
                    );
                }
            }
            self.report.last_checkpoint = r.seq;
        }
        if r.event == "chainResumed" {
            self.report.restarts += 1;
        }
        self.report.first_seq.get_or_insert(r.seq);
        self.report.records += 1;
        self.report.last_seq = r.seq;
        self.seq = r.seq;
        self.head = hex::encode(Sha256::digest(bytes));
        self.last_at = Some((file.to_owned(), n));
    }

    fn finish(mut self, live: bool) -> Report {
        if let Some((missing, after, file, line, at_file_start)) = self.gap.take() {
            let later = self
                .seen_after_gap
                .iter()
                .any(|&s| (missing..after).contains(&s));
            let (kind, detail) = if later {
                (
                    Tamper::Reordered,
                    format!("seq {after} comes before seq {missing}, which appears later"),
                )
            } else if missing == 1 {
                (
                    Tamper::MissingFile,
                    format!("the trail begins at seq {after}: the file(s) before it are missing"),
                )
            } else if at_file_start {
                (
                    Tamper::MissingFile,
                    format!(
                        "the file begins at seq {after}, but the previous one ended at seq {}: a file is missing",
                        missing - 1
                    ),
                )
            } else {
                (
                    Tamper::Deleted,
                    format!("seq {missing}..{} is missing before seq {after}", after - 1),
                )
            };
            self.found(kind, &file, line, detail);
            return self.report;
        }
        if let Some((len, file, line)) = self.torn.take() {
            if !live {
                self.found(
                    Tamper::NotARecord,
                    &file,
                    line,
                    format!("the trail ends in {len} bytes that are not a record (torn by a crash, or still being written: --live)"),
                );
            }
            return self.report;
        }
        if !live && self.report.records > 0 && self.report.last_checkpoint < self.report.last_seq {
            let (file, line) = self.last_at.clone().expect("records were read");
            self.found(
                Tamper::UnsignedTail,
                &file,
                line,
                format!(
                    "seq {}..{} follow the last checkpoint: a truncation after it cannot be excluded (a trail still being written: --live)",
                    self.report.last_checkpoint + 1,
                    self.report.last_seq
                ),
            );
        }
        self.report
    }
}

/// A transfer's receipt: its `transferEnd` line and the checkpoint that follows it and signs it,
/// byte for byte as in the trail. `Ok(Err(why))` when there is none to give.
pub fn receipt(files: &[PathBuf], transfer: &str) -> std::io::Result<Result<String, String>> {
    let needle = format!("\"transfer\":{}", serde_json::Value::from(transfer));
    let mut found: Vec<String> = Vec::new();
    for file in files {
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
        let mut line = Vec::with_capacity(4096);
        let mut want_checkpoint: Option<String> = None;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some(end) = want_checkpoint.take() {
                let signed =
                    serde_json::from_slice::<Fields>(&line).is_ok_and(|f| f.event == "checkpoint");
                if !signed {
                    return Ok(Err(format!(
                        "transfer {transfer}: no checkpoint follows its record ({}): the gateway had no signing key",
                        file.display()
                    )));
                }
                found.push(end + &text);
                continue;
            }
            if text.contains(&needle)
                && serde_json::from_slice::<Fields>(&line).is_ok_and(|f| f.event == "transferEnd")
            {
                want_checkpoint = Some(text);
            }
        }
        if want_checkpoint.is_some() {
            return Ok(Err(format!(
                "transfer {transfer}: its record is the last line of {}: not signed yet",
                file.display()
            )));
        }
    }
    Ok(match found.len() {
        0 => Err(format!("no transferEnd record for transfer {transfer}")),
        1 => Ok(found.remove(0)),
        n => Err(format!(
            "{n} transferEnd records name transfer {transfer} (trails of different gateways?)"
        )),
    })
}

/// Checks a receipt (`receipt`'s two lines) with the public keys, offline. `Ok`: a one-line
/// account of the transfer it proves.
pub fn check_receipt(text: &str, keys: &[Verifier]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct End {
        transfer: String,
        time: String,
        user: String,
        path: String,
        direction: String,
        bytes: u64,
        sha256: Option<String>,
        confidence: String,
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let [end_line, checkpoint_line] = lines[..] else {
        return Err(format!(
            "a receipt is two lines (a transferEnd record and its checkpoint), not {}",
            lines.len()
        ));
    };
    let end_fields: Fields =
        serde_json::from_str(end_line).map_err(|e| format!("line 1 is not a record: {e}"))?;
    let end: End = serde_json::from_str(end_line)
        .map_err(|e| format!("line 1 is not a transferEnd record: {e}"))?;
    if end_fields.event != "transferEnd" {
        return Err(format!(
            "line 1 is a {} record, not transferEnd",
            end_fields.event
        ));
    }
    let cp: Fields = serde_json::from_str(checkpoint_line)
        .map_err(|e| format!("line 2 is not a record: {e}"))?;
    let head = hex::encode(Sha256::digest(end_line.as_bytes()));
    if cp.event != "checkpoint" || cp.seq != end_fields.seq + 1 || cp.prev != head {
        return Err("line 2 is not the checkpoint that follows line 1".into());
    }
    let key_id = cp.key_id.as_deref().unwrap_or("");
    let key = keys
        .iter()
        .find(|k| k.key_id == key_id)
        .ok_or_else(|| format!("signed by key {key_id:?}, not one given"))?;
    let time = cp.time.as_deref().unwrap_or("");
    if !key.verify(
        end_fields.seq,
        &head,
        time,
        cp.signature.as_deref().unwrap_or(""),
    ) {
        return Err("bad signature: the record is not the one that was signed".into());
    }
    Ok(format!(
        "ok: transfer {}: {} of {} by {} at {}, {} bytes, sha256 {}, confidence {}; signed by key {key_id} at {time}",
        end.transfer,
        end.direction,
        end.path,
        end.user,
        end.time,
        end.bytes,
        end.sha256.as_deref().unwrap_or("none"),
        end.confidence
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use portcullis_config::AuditSettings;

    use super::*;
    use crate::{
        audit::{
            Auditor, Event,
            chain::{Signer, generate_pem, public_key_pem},
        },
        metrics::Metrics,
    };

    struct Trail {
        dir: tempfile::TempDir,
        file: PathBuf,
        key: Verifier,
        signer: Arc<Signer>,
    }

    impl Trail {
        fn new() -> Trail {
            let dir = tempfile::tempdir().unwrap();
            let pem = generate_pem();
            std::fs::write(dir.path().join("k.pem"), &pem).unwrap();
            std::fs::write(dir.path().join("k.pub"), public_key_pem(&pem).unwrap()).unwrap();
            Trail {
                file: dir.path().join("audit.jsonl"),
                key: Verifier::from_pem_file(&dir.path().join("k.pub")).unwrap(),
                signer: Arc::new(Signer::from_pem_file(&dir.path().join("k.pem")).unwrap()),
                dir,
            }
        }

        /// One run of a gateway: `n` records, then a checkpoint at shutdown when `seal`.
        async fn run(&self, n: usize, seal: bool) {
            let settings = AuditSettings {
                stdout: false,
                file: Some(self.file.display().to_string()),
                ..Default::default()
            };
            let audit = Auditor::start(
                &settings,
                Some(self.signer.clone()),
                Arc::new(Metrics::default()),
            )
            .unwrap();
            for i in 0..n {
                audit
                    .emit(Event::ConfigRejected {
                        kept_hash: format!("h{i}"),
                        errors: vec![],
                    })
                    .await;
            }
            if seal {
                audit.seal().await;
            } else {
                audit.flush().await;
            }
        }

        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(&self.file)
                .unwrap()
                .split_inclusive('\n')
                .map(str::to_owned)
                .collect()
        }

        fn rewrite(&self, lines: &[String]) {
            std::fs::write(&self.file, lines.concat()).unwrap();
        }

        fn check(&self, live: bool) -> Report {
            verify(
                std::slice::from_ref(&self.file),
                std::slice::from_ref(&self.key),
                live,
            )
            .unwrap()
        }

        fn finding(&self) -> (Tamper, usize) {
            let r = self.check(false);
            let summary = r.to_string();
            let f = r.finding.unwrap_or_else(|| panic!("no finding: {summary}"));
            (f.kind, f.line)
        }
    }

    /// Rebuilds every `prev` after an edit, as an attacker without the key would.
    fn rechain(lines: &mut [String]) {
        let mut prev = GENESIS.to_owned();
        for line in lines.iter_mut() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["prev"] = prev.clone().into();
            *line = format!("{}\n", serde_json::to_string(&v).unwrap());
            prev = hex::encode(Sha256::digest(line.as_bytes()));
        }
    }

    #[tokio::test]
    async fn a_sealed_trail_across_restarts_verifies() {
        let t = Trail::new();
        t.run(5, true).await;
        t.run(3, true).await;
        let r = t.check(false);
        assert!(r.finding.is_none(), "{r}");
        // 5 + checkpoint, then chainResumed + 3 + checkpoint.
        assert_eq!(
            (r.records, r.last_seq, r.checkpoints, r.restarts),
            (11, 11, 2, 1)
        );
        assert_eq!(r.last_checkpoint, 11);
        assert!(r.to_string().starts_with("ok: 11 records"), "{r}");
        let lines = t.lines();
        let resumed: serde_json::Value = serde_json::from_str(&lines[6]).unwrap();
        assert_eq!(resumed["event"], "chainResumed");
        assert_eq!(resumed["seq"], 7);
        assert_eq!(resumed["v"], 1);
    }

    #[tokio::test]
    async fn each_kind_of_tampering_is_named_at_its_record() {
        let t = Trail::new();
        t.run(6, true).await;
        let good = t.lines();

        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"h2\"", "\"hX\"");
        t.rewrite(&edited);
        assert_eq!(t.finding(), (Tamper::Edited, 3));

        let mut deleted = good.clone();
        deleted.remove(3);
        t.rewrite(&deleted);
        assert_eq!(t.finding(), (Tamper::Deleted, 4));

        let mut inserted = good.clone();
        inserted.insert(4, good[1].clone());
        t.rewrite(&inserted);
        assert_eq!(t.finding(), (Tamper::Inserted, 5));

        let mut reordered = good.clone();
        reordered.swap(2, 3);
        t.rewrite(&reordered);
        assert_eq!(t.finding(), (Tamper::Reordered, 3));

        // Records after the last checkpoint removed, with the checkpoint: the tail is unsigned.
        t.rewrite(&good[..4]);
        assert_eq!(t.finding(), (Tamper::UnsignedTail, 4));
        assert!(
            t.check(true).finding.is_none(),
            "a live trail may end unsigned"
        );

        // An edit whose chain was rebuilt passes the hashes but not the signature.
        let mut rebuilt = good.clone();
        rebuilt[2] = rebuilt[2].replace("\"h2\"", "\"hX\"");
        rechain(&mut rebuilt);
        t.rewrite(&rebuilt);
        assert_eq!(t.finding(), (Tamper::BadSignature, 7));
        assert!(
            verify(std::slice::from_ref(&t.file), &[], false)
                .unwrap()
                .finding
                .is_none(),
            "without a key only the chain is checked"
        );

        // Signed by a key the auditor does not trust.
        t.rewrite(&good);
        let stranger = Trail::new();
        let r = verify(std::slice::from_ref(&t.file), &[stranger.key], false).unwrap();
        assert_eq!(r.finding.unwrap().kind, Tamper::UnknownKey);

        // A line that is not a record.
        let mut junk = good.clone();
        junk.insert(2, "{not json\n".into());
        t.rewrite(&junk);
        assert_eq!(t.finding(), (Tamper::NotARecord, 3));
    }

    #[tokio::test]
    async fn a_file_missing_from_the_sequence_is_named() {
        let t = Trail::new();
        t.run(3, true).await;
        t.run(3, true).await;
        t.run(3, true).await;
        // Split into three files at the restarts, then lose the middle one.
        let lines = t.lines();
        let a = t.dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("audit-1.jsonl"), lines[..4].concat()).unwrap();
        std::fs::write(a.join("audit-2.jsonl"), lines[4..9].concat()).unwrap();
        std::fs::write(a.join("audit-3.jsonl"), lines[9..].concat()).unwrap();
        let files = files_of(std::slice::from_ref(&a)).unwrap();
        let r = verify(&files, std::slice::from_ref(&t.key), false).unwrap();
        assert!(r.finding.is_none(), "{r}");
        std::fs::remove_file(a.join("audit-2.jsonl")).unwrap();
        let files = files_of(std::slice::from_ref(&a)).unwrap();
        let f = verify(&files, std::slice::from_ref(&t.key), false)
            .unwrap()
            .finding
            .unwrap();
        assert_eq!((f.kind, f.line), (Tamper::MissingFile, 1));
        assert!(f.file.ends_with("audit-3.jsonl"));
    }

    #[tokio::test]
    async fn a_record_torn_by_a_crash_is_declared_and_the_chain_goes_on() {
        let t = Trail::new();
        t.run(4, false).await;
        // A crash mid-write leaves half a record.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&t.file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"v\":1,\"seq\":5,\"ti").unwrap();
        drop(f);
        assert_eq!(t.check(true).finding.map(|f| f.kind), None);
        assert_eq!(t.finding().0, Tamper::NotARecord);
        t.run(2, true).await;
        let r = t.check(false);
        assert!(r.finding.is_none(), "{r}");
        let resumed: serde_json::Value = serde_json::from_str(&t.lines()[5]).unwrap();
        assert_eq!(resumed["event"], "chainResumed");
        assert_eq!(resumed["tornBytes"], 18);
        assert_eq!(resumed["seq"], 5);

        // Lost head: the restarted gateway says so, and verify reports the gap.
        let lost = Trail::new();
        std::fs::write(&lost.file, "garbage\n").unwrap();
        lost.run(1, true).await;
        let f = lost.check(false).finding.unwrap();
        assert_eq!(f.kind, Tamper::NotARecord, "{f}");

        // A lost head whose torn bytes the restart declares: the torn line is accepted, and
        // the new chain is reported as the gap it is.
        let torn_head = Trail::new();
        std::fs::write(&torn_head.file, "garbage").unwrap();
        torn_head.run(1, true).await;
        let resumed: serde_json::Value = serde_json::from_str(&torn_head.lines()[1]).unwrap();
        assert_eq!(resumed["tornBytes"], 7);
        assert!(resumed["headLost"].is_string(), "{resumed}");
        let f = torn_head.check(false).finding.unwrap();
        assert_eq!((f.kind, f.line), (Tamper::Gap, 2), "{f}");
    }
}
