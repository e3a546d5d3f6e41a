//! Shipping the file sink to a collector over HTTPS, at least once.
//!
//! The shipper reads the spool's files in the order they were written, from a position it keeps
//! beside them (`.STEM.shipped`: the first seq of the file it is in, and the byte offset), and
//! POSTs whole lines, byte for byte, as NDJSON batches. Only a 2xx answer moves the position
//! on; anything else sends the same batch again after a backoff, so a collector sees every
//! record at least once and deduplicates by (`Portcullis-Source`, `seq`). A rotated file
//! shipped to its end is deleted: the file sink is the spool, and `maxBytes` bounds what an
//! outage can hold back.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use portcullis_config::{AuditCollector, AuditSettings, HttpsUrl};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};

use super::spool;
use crate::metrics::Metrics;

/// Where shipping stands: in the file whose first record is `file`, at byte `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    file: u64,
    offset: u64,
}

/// The running shipper, as the gateway sees it.
pub struct Shipper {
    caught_up: Arc<AtomicBool>,
}

impl Shipper {
    /// Starts shipping `settings.file` to `settings.collector`, if both are set.
    pub fn start(
        settings: &AuditSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Shipper>, String> {
        let (Some(file), Some(collector)) = (&settings.file, &settings.collector) else {
            return Ok(None);
        };
        let target = Target::new(collector)?;
        let active = PathBuf::from(file);
        let (dir, name) = (
            active.parent().map(Path::to_owned).unwrap_or_default(),
            active.file_stem().unwrap_or_default().to_string_lossy(),
        );
        let caught_up = Arc::new(AtomicBool::new(false));
        let run = Run {
            cursor_path: dir.join(format!(".{name}.shipped")),
            active,
            target,
            batch: collector.batch_records.unwrap_or(500) as usize,
            metrics,
            caught_up: caught_up.clone(),
        };
        std::thread::Builder::new()
            .name("audit-ship".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the audit shipper")
                    .block_on(run.run());
            })
            .map_err(|e| format!("cannot start the audit shipper: {e}"))?;
        Ok(Some(Shipper { caught_up }))
    }

    /// Waits, up to `limit`, until everything written so far is shipped (at shutdown, after
    /// the trail is sealed). Whatever is left is shipped at the next start.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.caught_up.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        while !self.caught_up.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

/// The collector: where to connect, what to ask for, how to trust it.
struct Target {
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    path: String,
    tls: Arc<rustls::ClientConfig>,
    source: String,
}

impl Target {
    fn new(c: &AuditCollector) -> Result<Target, String> {
        let url = HttpsUrl::parse(&c.url)
            .ok_or_else(|| format!("{}: not https://HOST[:PORT]/PATH", c.url))?;
        let tls = crate::tls::backend_client_config(
            &c.ca_file,
            c.client_certificate_file.as_deref(),
            c.client_key_file.as_deref(),
        )?;
        Ok(Target {
            host: url.host,
            port: url.port,
            authority: url.authority,
            path: url.path,
            tls,
            source: c.source.clone().unwrap_or_else(super::hostname),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn post(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        body: Vec<u8>,
        records: usize,
    ) -> Result<(), String> {
        let request = Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
            .header("Portcullis-Source", self.source.as_str())
            .header("Portcullis-Records", records)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| format!("HTTP: {e}"))?;
        if answer.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {answer}"))
        }
    }
}

struct Run {
    active: PathBuf,
    cursor_path: PathBuf,
    target: Target,
    batch: usize,
    metrics: Arc<Metrics>,
    caught_up: Arc<AtomicBool>,
}

/// One step's outcome.
enum Step {
    /// Records were shipped.
    Shipped,
    /// Nothing new to ship.
    Idle,
    /// The collector did not take the batch.
    Failed(String),
}

impl Run {
    async fn run(self) {
        let mut cursor = std::fs::read(&self.cursor_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
            .unwrap_or_default();
        let mut sender = None;
        let mut backoff = Duration::from_secs(1);
        let mut failing = false;
        loop {
            let step = match self.step(&mut cursor, &mut sender).await {
                Ok(step) => step,
                Err(e) => Step::Failed(format!("reading the spool: {e}")),
            };
            match step {
                Step::Shipped => {
                    if failing {
                        tracing::info!("audit collector takes records again");
                        failing = false;
                    }
                    backoff = Duration::from_secs(1);
                }
                Step::Idle => {
                    self.caught_up.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Step::Failed(why) => {
                    sender = None;
                    self.metrics.audit_ship_failures.inc();
                    if !failing {
                        tracing::error!(error = %why, "audit collector unreachable; records wait in the spool");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Ships one batch, or moves on to the next file, or finds nothing to do.
    async fn step(
        &self,
        cursor: &mut Cursor,
        sender: &mut Option<SendRequest<Full<Bytes>>>,
    ) -> io::Result<Step> {
        let files = spool::files_in_order(&self.active)?;
        let Some(at) = files
            .iter()
            .position(|(first, _)| *first == cursor.file)
            .or_else(|| {
                // Fresh, or the file the position was in is gone: the first file after it.
                let next = files.iter().position(|(first, _)| *first > cursor.file)?;
                if cursor.file != 0 {
                    tracing::error!(
                        from = cursor.file,
                        to = files[next].0,
                        "an audit file was removed before it was shipped"
                    );
                }
                *cursor = Cursor {
                    file: files[next].0,
                    offset: 0,
                };
                Some(next)
            })
        else {
            return Ok(Step::Idle);
        };
        let (first, path) = &files[at];
        let (body, records) = match read_batch(path, *first, cursor.offset, self.batch)? {
            Some(batch) => batch,
            // Renamed by a rotation since the listing: look again.
            None => return Ok(Step::Shipped),
        };
        if records == 0 {
            if let Some((next, _)) = files.get(at + 1) {
                // A rotated file shipped to its end: delete it, go on with the next.
                if *path != self.active {
                    std::fs::remove_file(path)?;
                }
                *cursor = Cursor {
                    file: *next,
                    offset: 0,
                };
                self.save(cursor);
                return Ok(Step::Shipped);
            }
            return Ok(Step::Idle);
        }
        if sender.is_none() {
            match self.target.connect().await {
                Ok(s) => *sender = Some(s),
                Err(e) => return Ok(Step::Failed(e)),
            }
        }
        let len = body.len() as u64;
        let s = sender.as_mut().expect("connected above");
        if let Err(e) = self.target.post(s, body, records).await {
            return Ok(Step::Failed(e));
        }
        cursor.offset += len;
        self.save(cursor);
        self.metrics.audit_shipped.inc_by(records as u64);
        Ok(Step::Shipped)
    }

    fn save(&self, cursor: &Cursor) {
        let tmp = self.cursor_path.with_extension("tmp");
        let saved = std::fs::write(&tmp, serde_json::to_vec(cursor).expect("serializes"))
            .and_then(|()| std::fs::rename(&tmp, &self.cursor_path));
        if let Err(e) = saved {
            // Not fatal: records after the last saved position are sent again.
            tracing::warn!(error = %e, "cannot save the audit shipping position");
        }
    }
}

/// Up to `max` whole lines of `path` from `offset`: the body and its record count. `None` if
/// the file no longer begins with record `first` (rotated away since it was listed).
fn read_batch(
    path: &Path,
    first: u64,
    offset: u64,
    max: usize,
) -> io::Result<Option<(Vec<u8>, usize)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    if serde_json::from_slice::<Seq>(&line).map(|s| s.seq).ok() != Some(first) {
        return Ok(None);
    }
    reader.seek(SeekFrom::Start(offset))?;
    let mut body = Vec::new();
    let mut records = 0;
    while records < max {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
            break;
        }
        body.extend_from_slice(&line);
        records += 1;
    }
    Ok(Some((body, records)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, dir: &Path) -> Result<Target, String> {
        let ca = dir.join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["c.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        Target::new(&AuditCollector {
            url: url.into(),
            ca_file: ca.display().to_string(),
            client_certificate_file: None,
            client_key_file: None,
            batch_records: None,
            source: Some("s".into()),
        })
    }

    #[test]
    fn a_collector_target_refuses_cleartext_and_a_ca_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let t = target("https://c.example:8443/v1/ingest", dir.path()).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("c.example", 8443, "/v1/ingest")
        );
        assert!(target("http://c.example/", dir.path()).is_err());
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let empty = Target::new(&AuditCollector {
            url: "https://c.example/".into(),
            ca_file: dir.path().join("ca.pem").display().to_string(),
            client_certificate_file: None,
            client_key_file: None,
            batch_records: None,
            source: None,
        });
        assert!(empty.is_err());
    }

    #[test]
    fn a_batch_is_whole_lines_of_the_file_it_was_listed_as() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.jsonl");
        std::fs::write(&f, "{\"seq\":7}\n{\"seq\":8}\n{\"seq\":9,\"torn").unwrap();
        let (body, n) = read_batch(&f, 7, 0, 10).unwrap().unwrap();
        assert_eq!(
            (body.as_slice(), n),
            (&b"{\"seq\":7}\n{\"seq\":8}\n"[..], 2)
        );
        let (body, n) = read_batch(&f, 7, 10, 1).unwrap().unwrap();
        assert_eq!((body.as_slice(), n), (&b"{\"seq\":8}\n"[..], 1));
        // Rotated away and a new file in its place: not read at the old offset.
        assert!(read_batch(&f, 3, 10, 10).unwrap().is_none());
    }
}
