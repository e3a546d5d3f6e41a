//! Transfers over a data connection: the copy between the client and the backend, with
//! `ABOR` and the idle watch on the control connection, and TYPE A line ends.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::FuturesOrdered, stream::FuturesUnordered};
use portcullis_ftp_proto::{Command, Reply, list_line, mlsd_line};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use super::{
    Conn, Flow,
    commands::fs_reply,
    wire::{Wire, clean},
};
use crate::{
    fs::{FileOp, FsError, OpOutput, OpenMode},
    session::Session,
};

/// Control lines held during a transfer, at most.
pub(super) const MAX_HELD_LINES: usize = 32;

/// Bytes per backend read or write on the data path.
pub(super) const CHUNK: usize = 128 * 1024;
/// Backend operations a transfer keeps in flight.
pub(super) const DEPTH: usize = 16;

impl Conn {
    /// A data command: authorize and open first (no data connection for a refusal), then the
    /// data connection, `150`, TLS, the copy (watching the control connection for `ABOR`), and
    /// `226` only once the backend has confirmed the file.
    pub(super) async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cmd: Command,
        rest: u64,
        binary: bool,
        wire: &mut Wire<S>,
    ) -> Flow {
        let session = self.session();
        let (job, what) = match self.prepare(cmd, rest).await {
            Ok(j) => j,
            Err(r) => {
                self.data = None;
                return self.reply_flow(wire, r).await;
            }
        };
        let deadline = tokio::time::Instant::now() + self.data_timeout();
        let (tcp, passive) = match self.open_data(deadline).await {
            Ok(t) => t,
            Err(r) => {
                job.abandon(&session, "no data connection").await;
                return self.reply_flow(wire, r).await;
            }
        };
        let mode = if binary { "BINARY" } else { "ASCII" };
        if self
            .reply(
                wire,
                Reply::new(
                    150,
                    format!("Opening {mode} mode data connection for {what}"),
                ),
            )
            .await
            .is_err()
        {
            job.abandon(&session, "control connection lost").await;
            return Flow::End("client closed");
        }
        let upload = matches!(job, Job::Stor { .. });
        let secured = self
            .secure_data(tcp, passive.as_ref().map(|p| &p.0), upload, deadline)
            .await;
        // The port closes: nothing else can connect to this transfer.
        drop(passive);
        let data = match secured {
            Ok(d) => d,
            Err(why) => {
                job.abandon(&session, &why).await;
                return self.reply_flow(wire, Reply::new(425, why)).await;
            }
        };
        let work = job
            .clone()
            .run(session.clone(), data, binary, self.data_timeout());
        tokio::pin!(work);
        // Commands other than ABOR that arrive during the transfer (NOOP keep-alives, the
        // next command pipelined early) are answered after its reply, as RFC 959 allows; past
        // MAX_HELD_LINES the control connection is not read until the transfer ends.
        let outcome = loop {
            tokio::select! {
                r = &mut work => break Some(r),
                line = wire.fresh_line(), if wire.backlog.len() < MAX_HELD_LINES => match line {
                    Ok(Some(Ok(l))) if clean(&l).eq_ignore_ascii_case("ABOR") => break None,
                    Ok(Some(l)) => wire.backlog.push_back(l),
                    Ok(None) | Err(_) => {
                        job.abandon(&session, "control connection lost during the transfer").await;
                        return Flow::End("client closed");
                    }
                },
            }
        };
        let r = match outcome {
            None => {
                job.abandon(&session, "aborted by the client (ABOR)").await;
                if self
                    .reply(
                        wire,
                        Reply::new(426, "Transfer aborted; data connection closed"),
                    )
                    .await
                    .is_err()
                {
                    return Flow::End("client closed");
                }
                self.audit_command("ABOR".into(), None).await;
                Reply::new(226, "ABOR successful")
            }
            Some(Err(Failed { code, why })) => {
                job.abandon(&session, &why).await;
                Reply::new(code, format!("Transfer failed: {why}"))
            }
            Some(Ok(())) => match job.finish(&session).await {
                Ok(()) => Reply::new(226, "Transfer complete"),
                Err(e) => Reply::new(451, format!("The endpoint did not confirm the file: {e}")),
            },
        };
        self.reply_flow(wire, r).await
    }

    pub(super) async fn reply_flow<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        r: Reply,
    ) -> Flow {
        match self.reply(wire, r).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::End("client closed"),
        }
    }

    /// Authorizes and opens what a data command needs, before any data connection.
    pub(super) async fn prepare(&self, cmd: Command, rest: u64) -> Result<(Job, String), Reply> {
        let session = self.session();
        let cmd_kind = match &cmd {
            Command::Appe(_) => Kind::Appe,
            Command::Mlsd(_) => Kind::Mlsd,
            Command::List(_) => Kind::List,
            _ => Kind::Other,
        };
        let open = |path: String, mode: OpenMode| {
            let session = session.clone();
            async move {
                match session.execute(FileOp::Open { path, mode }).await {
                    Ok(OpOutput::Handle(h)) => Ok(h),
                    Ok(_) => Err(Reply::new(451, "unexpected answer")),
                    Err(e) => Err(fs_reply(&e)),
                }
            }
        };
        match cmd {
            Command::Retr(p) => {
                let path = self.resolve(&p);
                let mode = OpenMode {
                    read: true,
                    ..Default::default()
                };
                let handle = open(path.clone(), mode).await?;
                session.resume_at(handle, rest);
                Ok((
                    Job::Retr {
                        handle,
                        offset: rest,
                    },
                    path,
                ))
            }
            Command::Stor(p) | Command::Appe(p) => {
                let append = matches!(cmd_kind, Kind::Appe);
                let path = self.resolve(&p);
                let mode = OpenMode {
                    write: true,
                    create: true,
                    truncate: !append && rest == 0,
                    append,
                    ..Default::default()
                };
                let handle = open(path.clone(), mode).await?;
                let offset = if append { 0 } else { rest };
                session.resume_at(handle, offset);
                Ok((Job::Stor { handle, offset }, path))
            }
            Command::List(p) | Command::Nlst(p) | Command::Mlsd(p) => {
                // `LIST -la dir`: options are accepted and ignored.
                let arg = p.unwrap_or_default();
                let arg: Vec<&str> = arg.split(' ').filter(|a| !a.starts_with('-')).collect();
                let path = self.resolve(&arg.join(" "));
                let entries = self.list(&path).await.map_err(|e| fs_reply(&e))?;
                let mut out = String::new();
                for e in &entries {
                    let line = match cmd_kind {
                        Kind::Mlsd => mlsd_line(e),
                        Kind::List => list_line(e),
                        _ => (!e.name.contains(['\r', '\n'])).then(|| e.name.clone()),
                    };
                    if let Some(l) = line {
                        out.push_str(&l);
                        out.push_str("\r\n");
                    }
                }
                // Names go out as the bytes they stand for.
                let out = portcullis_names::unescape(&out).into_owned();
                Ok((Job::Listing(Bytes::from(out)), path))
            }
            _ => Err(Reply::new(502, "not a data command")),
        }
    }
}

pub(super) enum Kind {
    Appe,
    Mlsd,
    List,
    Other,
}

/// What a data command does once the data connection is up.
#[derive(Clone)]
pub(super) enum Job {
    Retr { handle: u64, offset: u64 },
    Stor { handle: u64, offset: u64 },
    Listing(Bytes),
}

impl Job {
    /// Moves the bytes over the (TLS) data connection. A client that neither sends nor takes
    /// a byte for `idle` fails the transfer (a stalled transfer would hold its file, its
    /// backend connection and its slot for ever).
    pub(super) async fn run(
        self,
        session: Arc<Session>,
        mut data: TlsStream<TcpStream>,
        binary: bool,
        idle: Duration,
    ) -> Result<(), Failed> {
        match self {
            Job::Listing(bytes) => {
                write_watched(&mut data, &bytes, idle).await?;
            }
            Job::Retr { handle, offset } => {
                send_file(session, handle, offset, binary, &mut data, idle).await?;
            }
            Job::Stor { handle, offset } => {
                receive_file(session, handle, offset, binary, &mut data, idle).await?;
                // The client closed first, with close_notify; ours is a courtesy it may no
                // longer read.
                let _ = data.shutdown().await;
                return Ok(());
            }
        }
        // close_notify, then FIN: the client knows the data is complete. Flushing what is
        // still buffered needs the client to read, so it is watched too.
        stalled(idle, data.shutdown())
            .await?
            .map_err(|e| Failed::from(format!("data connection: {e}")))
    }

    pub(super) async fn abandon(&self, session: &Session, why: &str) {
        if let Job::Retr { handle, .. } | Job::Stor { handle, .. } = self {
            session.abandon(*handle, why).await;
        }
    }

    /// Closes the file at the backend: only a confirmed close earns the client a `226`.
    pub(super) async fn finish(&self, session: &Session) -> Result<(), FsError> {
        match self {
            Job::Retr { handle, .. } | Job::Stor { handle, .. } => session
                .execute(FileOp::Close { handle: *handle })
                .await
                .map(drop),
            Job::Listing(_) => Ok(()),
        }
    }
}

/// Writes all of `data`, failing only when the client takes no byte for `idle`: each `write`
/// returns once some bytes are taken, so a slow client that keeps reading is never cut off
/// (a timeout on the whole write would have been a minimum speed).
pub(super) async fn write_watched(
    out: &mut (impl AsyncWrite + Unpin),
    mut data: &[u8],
    idle: Duration,
) -> Result<(), String> {
    while !data.is_empty() {
        match stalled(idle, out.write(data)).await? {
            Ok(0) => return Err("data connection: closed by the client".to_owned()),
            Ok(n) => data = &data[n..],
            Err(e) => return Err(format!("data connection: {e}")),
        }
    }
    Ok(())
}

/// `io`, unless it makes no progress for `idle`.
pub(super) async fn stalled<T>(
    idle: Duration,
    io: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(idle, io).await.map_err(|_| {
        format!(
            "data connection idle for {} s; the transfer is abandoned",
            idle.as_secs()
        )
    })
}

/// Aborts a spawned task when dropped (an `ABOR` drops the transfer future).
pub(super) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the file onto the data connection (bare LF as CRLF in `TYPE A`) while a task of its
/// own reads ahead from the backend, so that the two legs overlap.
pub(super) async fn send_file(
    session: Arc<Session>,
    handle: u64,
    offset: u64,
    binary: bool,
    out: &mut TlsStream<TcpStream>,
    idle: Duration,
) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(DEPTH);
    let _reader = AbortOnDrop(tokio::spawn(read_ahead(session, handle, offset, tx)));
    let mut last = 0u8;
    while let Some(chunk) = rx.recv().await {
        let d: Bytes = chunk?;
        let d = if binary {
            d
        } else {
            Bytes::from(to_crlf(&d, &mut last))
        };
        write_watched(out, &d, idle).await?;
    }
    Ok(())
}

/// Reads the file from the backend with `DEPTH` reads in flight, in order, into `tx`; the
/// channel closes at end of file (or after an error, which it carries).
pub(super) async fn read_ahead(
    session: Arc<Session>,
    handle: u64,
    offset: u64,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
) {
    let session = &session;
    let mut next = offset;
    let mut inflight = FuturesOrdered::new();
    let mut eof = false;
    loop {
        while !eof && inflight.len() < DEPTH {
            let off = next;
            next += CHUNK as u64;
            inflight.push_back(async move {
                let r = session
                    .execute(FileOp::Read {
                        handle,
                        offset: off,
                        len: CHUNK as u32,
                    })
                    .await;
                (off, r)
            });
        }
        let Some((off, r)) = inflight.next().await else {
            return;
        };
        let chunk = match r {
            Ok(OpOutput::Data(d)) => {
                if d.len() < CHUNK {
                    // A short read: reads issued past it are at the wrong offsets.
                    inflight = FuturesOrdered::new();
                    next = off + d.len() as u64;
                }
                Ok(d)
            }
            Ok(OpOutput::Eof) => {
                eof = true;
                inflight = FuturesOrdered::new();
                continue;
            }
            Ok(_) => Err("unexpected answer from the session".to_owned()),
            Err(e) => Err(format!("endpoint: {e}")),
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// Reads the data connection to its TLS close (CRLF as LF in `TYPE A`) while a task of its own
/// writes behind to the backend. A connection closed without TLS `close_notify` may have been
/// cut short, so it fails the upload.
pub(super) async fn receive_file(
    session: Arc<Session>,
    handle: u64,
    offset: u64,
    binary: bool,
    input: &mut TlsStream<TcpStream>,
    idle: Duration,
) -> Result<(), Failed> {
    let (tx, rx) = tokio::sync::mpsc::channel(DEPTH);
    let mut writer = AbortOnDrop(tokio::spawn(write_behind(session, handle, rx)));
    let mut off = offset;
    let mut held_cr = false;
    let read = async {
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let mut eof = false;
            while buf.len() < CHUNK {
                match stalled(idle, input.read_buf(&mut buf)).await? {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Err("data connection closed without TLS close_notify; the upload may be truncated".to_owned());
                    }
                    Err(e) => return Err(format!("data connection: {e}")),
                }
            }
            let chunk = if binary {
                buf.freeze()
            } else {
                Bytes::from(from_crlf(&buf, &mut held_cr, eof))
            };
            if !chunk.is_empty() {
                let len = chunk.len() as u64;
                if tx.send((off, chunk)).await.is_err() {
                    return Ok(()); // the writer failed; its error is the one to report
                }
                off += len;
            }
            if eof {
                return Ok(());
            }
        }
    };
    let read = read.await;
    drop(tx);
    let written = (&mut writer.0)
        .await
        .unwrap_or_else(|e| Err(format!("writer task: {e}").into()));
    // The writer's failure comes first: a refused write (552) often ends the read as well.
    match (read, written) {
        (_, Err(w)) => Err(w),
        (Err(r), Ok(())) => Err(r.into()),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Why a transfer failed, and the reply code that says so (`426` unless more is known).
pub(super) struct Failed {
    code: u16,
    why: String,
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed { code: 426, why }
    }
}

/// Writes chunks to the backend in order of arrival with up to `DEPTH` writes in flight.
pub(super) async fn write_behind(
    session: Arc<Session>,
    handle: u64,
    mut rx: tokio::sync::mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), Failed> {
    let session = &session;
    let mut writes = FuturesUnordered::new();
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            chunk = rx.recv(), if open && writes.len() < DEPTH => match chunk {
                Some((offset, data)) => writes.push(async move {
                    session.execute(FileOp::Write { handle, offset, data }).await
                }),
                None => open = false,
            },
            Some(r) = writes.next(), if !writes.is_empty() => {
                if let Err(e) = r {
                    // A file past its mount's size limit is RFC 959's 552.
                    let code = if matches!(e, FsError::Quota(_)) { 552 } else { 426 };
                    return Err(Failed { code, why: format!("endpoint: {e}") });
                }
            }
        }
    }
    Ok(())
}

/// Bare LF as CRLF; `last` carries the previous chunk's last byte.
pub(super) fn to_crlf(data: &[u8], last: &mut u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32);
    for &b in data {
        if b == b'\n' && *last != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        *last = b;
    }
    out
}

/// CRLF as LF; a CR at a chunk's end waits for the next chunk (`held`).
pub(super) fn from_crlf(data: &[u8], held: &mut bool, eof: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    let mut bytes = data.iter().copied().peekable();
    if std::mem::take(held) && data.first() != Some(&b'\n') {
        out.push(b'\r');
    }
    while let Some(b) = bytes.next() {
        if b == b'\r' {
            match bytes.peek() {
                Some(b'\n') => continue,
                None if !eof => {
                    *held = true;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(super) async fn a_slow_reader_is_not_cut_off_but_a_stalled_one_is() {
        let idle = Duration::from_millis(300);
        let data = vec![7u8; 8 * 1024];
        // 512 bytes every 100 ms: 1.6 s in all, far past `idle`, but never idle that long.
        let (mut w, mut r) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while got.len() < 8 * 1024 {
                let n = r.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got
        });
        write_watched(&mut w, &data, idle).await.unwrap();
        assert_eq!(reader.await.unwrap(), data);
        // A reader that takes nothing: the write fails after `idle`.
        let (mut w, _r) = tokio::io::duplex(1024);
        let t = tokio::time::Instant::now();
        let e = write_watched(&mut w, &data, idle).await.unwrap_err();
        assert!(e.contains("idle"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    pub(super) fn type_a_line_ends_survive_chunk_boundaries() {
        let mut last = 0;
        let mut out = to_crlf(b"a\nb\r", &mut last);
        out.extend(to_crlf(b"\nc\n", &mut last));
        assert_eq!(out, b"a\r\nb\r\nc\r\n");

        let mut held = false;
        let mut back = from_crlf(b"a\r\nb\r", &mut held, false);
        assert!(held);
        back.extend(from_crlf(b"\nc\rd", &mut held, false));
        back.extend(from_crlf(b"\r", &mut held, true));
        assert_eq!(back, b"a\nb\nc\rd\r");
    }
}
