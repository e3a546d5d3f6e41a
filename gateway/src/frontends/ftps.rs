//! The FTPS front end: sockets and TLS around the sans-IO control machine of
//! `portcullis-ftp-proto`. Explicit (`AUTH TLS`) and implicit listeners; every file operation
//! goes through [`Session::execute`], the one enforcement point.
//!
//! Data connections are always TLS, must come from the control connection's address, and must
//! resume *this* control connection's TLS session: each connection gets a session store of its
//! own, so a resumed data handshake proves which control session it belongs to (vsftpd's
//! `require_ssl_reuse`, checked on the handshake kind).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream::FuturesOrdered, stream::FuturesUnordered};
use portcullis_config::{ClientCertificates, Listener, Protocol, TlsVersion};
use portcullis_ftp_proto::{
    Action, ActivePolicy, Command, Control, Entry, HostPort, Identified, LineError, LineReader,
    PassivePorts, Reply, Start, check_active, epsv_reply, list_line, mlsd_line, parse,
    passive_peer_ok, pasv_reply, split_command, timeval,
};
use rustls::{
    HandshakeKind, ServerConfig,
    server::{StoresServerSessions, WebPkiClientVerifier},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::{
    audit::Event,
    auth::{Method, Progress},
    fs::{FileAttrs, FileOp, FsError, OpOutput, OpenMode},
    login::{Attempt, reason},
    runtime::UserEntry,
    session::Session,
    state::{Shared, Slot},
    tls::{self, LiveCert},
};

/// Per-listener state that outlives connections: the passive port pool.
pub struct ListenerCtx {
    pub config: Listener,
    passive: Mutex<PassivePorts>,
}

impl ListenerCtx {
    pub fn new(config: Listener) -> Arc<ListenerCtx> {
        let range = config
            .passive_ports
            .expect("validated: FTPS listeners have a range");
        Arc::new(ListenerCtx {
            passive: Mutex::new(PassivePorts::new(range.min, range.max)),
            config,
        })
    }
}

/// Control lines held during a transfer, at most.
const MAX_HELD_LINES: usize = 32;

/// Bytes per backend read or write on the data path.
const CHUNK: usize = 128 * 1024;
/// Backend operations a transfer keeps in flight.
const DEPTH: usize = 16;

/// TLS sessions of one control connection only. Tickets stay valid for the connection's life
/// (clients resume the same control session for every data connection), and nothing outside
/// this connection can resume from them.
#[derive(Debug, Default)]
struct ConnectionSessions(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

impl StoresServerSessions for ConnectionSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut m = self.0.lock().expect("session store poisoned");
        if m.len() >= 64 {
            return false;
        }
        m.insert(key, value);
        true
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0
            .lock()
            .expect("session store poisoned")
            .get(key)
            .cloned()
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// The TLS config for one connection, from the config in force: the key ring's certificate
/// (resolved per handshake, so renewals reach new handshakes), version floor, cipher suites,
/// client certificate policy, and a session store of the connection's own.
fn connection_tls(shared: &Arc<Shared>, listener: &str) -> Result<Arc<ServerConfig>, String> {
    let rt = shared.runtime.load();
    let l = rt
        .config
        .listeners
        .iter()
        .find(|l| l.name == listener)
        .ok_or_else(|| format!("listener {listener} is no longer configured"))?;
    let t = l.tls.as_ref().ok_or("no TLS settings")?;
    let ring = rt
        .certificates
        .get(&t.key_ring)
        .ok_or_else(|| format!("key ring {} is not loaded", t.key_ring))?
        .clone();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !t.cipher_suites.is_empty() {
        provider.cipher_suites.retain(|s| {
            let name = format!("{:?}", s.suite());
            t.cipher_suites
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&name))
        });
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?;
    let builder = match t.client_certificates {
        ClientCertificates::None => builder.with_no_client_auth(),
        mode => {
            let mut roots = rustls::RootCertStore::empty();
            for c in &ring.client_cas {
                roots.add(c.clone()).map_err(|e| e.to_string())?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if mode == ClientCertificates::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| format!("key ring {}: client CAs: {e}", t.key_ring))?,
            )
        }
    };
    let name = t.key_ring.clone();
    let s = shared.clone();
    let mut config = builder.with_cert_resolver(Arc::new(LiveCert::new(move || {
        s.runtime
            .load()
            .certificates
            .get(&name)
            .map(|c| c.certified.clone())
    })));
    config.session_storage = Arc::new(ConnectionSessions::default());
    config.send_tls13_tickets = 4;
    Ok(Arc::new(config))
}

/// The control connection's stream with a line reader and pushed-back lines.
struct Wire<S> {
    io: S,
    reader: LineReader,
    backlog: VecDeque<Result<String, LineError>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn new(io: S) -> Wire<S> {
        Wire {
            io,
            reader: LineReader::new(),
            backlog: VecDeque::new(),
        }
    }

    /// The next line; `None` when the peer closed. Cancel-safe: the only await is one read,
    /// whose bytes are buffered before anything else happens.
    async fn next_line(&mut self) -> std::io::Result<Option<Result<String, LineError>>> {
        if let Some(l) = self.backlog.pop_front() {
            return Ok(Some(l));
        }
        self.fresh_line().await
    }

    /// The next line from the connection, leaving the backlog alone (what a running transfer
    /// reads: lines it does not act on go to the backlog, and must not come straight back).
    async fn fresh_line(&mut self) -> std::io::Result<Option<Result<String, LineError>>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(l) = self.reader.next_line() {
                return Ok(Some(l));
            }
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.push(&buf[..n]);
        }
    }

    async fn send(&mut self, r: &Reply) -> std::io::Result<()> {
        self.io.write_all(&r.encode()).await?;
        self.io.flush().await
    }
}

/// Telnet IP/DM bytes some clients put before `ABOR` show up as replacement characters.
fn clean(line: &str) -> &str {
    line.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
}

/// `verb` and argument as the audit records them: never what follows `PASS` or `ACCT`,
/// however it is separated (`PASS<TAB>x`, or `PASSx` with none at all).
fn audit_parts(line: &str) -> (String, Option<String>) {
    let (verb, arg) = split_command(line);
    let upper = verb.to_ascii_uppercase();
    for secret in ["PASS", "ACCT"] {
        if upper.starts_with(secret) {
            let hidden = (arg.is_some() || upper.len() > secret.len()).then(|| "********".into());
            return (secret.to_owned(), hidden);
        }
    }
    let verb: String = upper.chars().take(16).collect();
    (verb, arg.map(|a| a.chars().take(512).collect()))
}

/// What a step of the loop tells the caller.
enum Flow {
    Continue,
    /// Switch the control connection to TLS (explicit FTPS after `234`).
    StartTls,
    /// Close the connection, for this reason.
    End(&'static str),
}

/// TLS handshakes on one passive port at once, while waiting for the client's own.
const MAX_DATA_HANDSHAKES: usize = 4;
/// How long a passive port waits for another connection after one failed to resume.
const RACE_GRACE: Duration = Duration::from_secs(2);

enum DataPlan {
    Passive { tcp: TcpListener, _port: PortGuard },
    Active(SocketAddr),
}

struct PortGuard {
    ctx: Arc<ListenerCtx>,
    port: u16,
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        self.ctx
            .passive
            .lock()
            .expect("passive pool poisoned")
            .release(self.port);
    }
}

/// Before a login a client needs about a dozen commands (AUTH, PBSZ, PROT, FEAT, OPTS, USER,
/// PASS...); a connection past these bounds is closed with `421`, so an unauthenticated peer
/// cannot make the audit trail grow without bound (20,000 blank lines were 20,000 records).
const PRE_LOGIN_COMMANDS: usize = 64;
const PRE_LOGIN_ERRORS: usize = 16;

/// One control connection.
struct Conn {
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    peer: SocketAddr,
    local: SocketAddr,
    attempt: Attempt,
    tls: Arc<ServerConfig>,
    /// The same, for data connections that carry a download or a listing: the same session
    /// store (they resume a session of this connection's), and one new ticket each, as
    /// OpenSSL servers (vsftpd) send after a resumption. Under TLS 1.3 curl keeps only the
    /// newest ticket and does not offer a used one again, so its next transfer on this control
    /// connection (`--next`) resumes from the ticket of the last data connection.
    data_tls: Arc<ServerConfig>,
    /// For data connections that carry an upload: no ticket. A TLS 1.3 ticket is sent after
    /// the client's Finished, while an uploading client is already writing; one that reaches
    /// a client after its last read (curl 7.88 reads once, just before close_notify) is unread
    /// data at its close(), the close becomes a TCP reset, and the reset discards what this
    /// side had not yet read of the upload (curl issue 6149). Seen in 1 upload of 4 on
    /// loopback; the upload failed with 426 instead of arriving. A client that needs a fresh
    /// ticket for a transfer after an upload gets one from any download or listing.
    data_tls_upload: Arc<ServerConfig>,
    control: Control,
    session: Option<Arc<Session>>,
    /// Identities of the verified client certificate, if one was presented.
    cert_names: Vec<String>,
    /// e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    channel: Option<String>,
    failures: usize,
    /// Commands before a login, and how many of them were refused (see `PRE_LOGIN_*`).
    pre_login: (usize, usize),
    cwd: String,
    binary: bool,
    rest: u64,
    rnfr: Option<String>,
    data: Option<DataPlan>,
    epsv_all: bool,
    last_reply: (u16, String),
    accepted: Instant,
}

/// Serves one accepted FTPS connection until it ends.
pub async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    zone: String,
    mut slot: Slot,
) {
    let pre_auth = slot.pre_auth.take();
    let _slot = slot;
    let tls = match connection_tls(&shared, &ctx.config.name) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(listener = %ctx.config.name, error = %e, "no TLS config; closing");
            return;
        }
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let implicit = ctx.config.protocol == Protocol::FtpsImplicit;
    let mut attempt = Attempt::new(shared.clone(), peer, zone, ctx.config.name.clone(), "ftps");
    attempt.pre_auth = pre_auth;
    let mut conn = Conn {
        shared: shared.clone(),
        ctx,
        peer,
        local,
        attempt,
        data_tls: {
            let mut data = (*tls).clone();
            data.send_tls13_tickets = 1;
            Arc::new(data)
        },
        data_tls_upload: {
            let mut data = (*tls).clone();
            data.send_tls13_tickets = 0;
            Arc::new(data)
        },
        tls,
        control: Control::new(if implicit {
            Start::Implicit
        } else {
            Start::Explicit
        }),
        session: None,
        cert_names: Vec::new(),
        channel: None,
        failures: 0,
        pre_login: (0, 0),
        cwd: "/".into(),
        binary: true,
        rest: 0,
        rnfr: None,
        data: None,
        epsv_all: false,
        last_reply: (0, String::new()),
        accepted: Instant::now(),
    };
    let reason = conn.serve(stream, implicit).await;
    if let Some(s) = conn.session.take() {
        s.finish(reason).await;
    }
}

impl Conn {
    async fn serve(&mut self, stream: TcpStream, implicit: bool) -> &'static str {
        let tcp = if implicit {
            stream
        } else {
            let mut wire = Wire::new(stream);
            let greeting = self.control.greeting();
            if wire.send(&greeting).await.is_err() {
                return "client closed";
            }
            match self.run(&mut wire).await {
                Flow::StartTls => {
                    if !wire.backlog.is_empty() || wire.reader.pending() > 0 {
                        tracing::info!(peer = %self.peer, "discarded cleartext sent after AUTH TLS");
                    }
                    wire.reader.discard();
                    wire.io
                }
                Flow::End(why) => return why,
                Flow::Continue => unreachable!("run returns only to switch or end"),
            }
        };
        let grace = self.grace_left();
        let accepted =
            tokio::time::timeout(grace, TlsAcceptor::from(self.tls.clone()).accept(tcp)).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "control TLS handshake failed");
                return "TLS handshake failed";
            }
            Err(_) => return "login grace time exceeded",
        };
        self.secured(&stream);
        let mut wire = Wire::new(stream);
        if implicit {
            let greeting = self.control.greeting();
            if wire.send(&greeting).await.is_err() {
                return "client closed";
            }
        }
        match self.run(&mut wire).await {
            Flow::End(why) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wire.io.shutdown()).await;
                why
            }
            _ => "protocol error",
        }
    }

    /// Records what the control handshake established: channel, client certificate names.
    fn secured(&mut self, s: &TlsStream<TcpStream>) {
        self.control.tls_established();
        let c = s.get_ref().1;
        self.channel = Some(format!(
            "{} {}",
            c.protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS"),
            c.negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("?")
        ));
        if let Some(leaf) = c.peer_certificates().and_then(|c| c.first()) {
            self.cert_names = tls::certificate_names(leaf);
        }
    }

    fn grace_left(&self) -> Duration {
        let grace =
            Duration::from_secs(self.shared.runtime.load().config.limits.login_grace_seconds);
        grace.saturating_sub(self.accepted.elapsed())
    }

    /// The command loop, until the connection ends or (in cleartext) switches to TLS.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, wire: &mut Wire<S>) -> Flow {
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            let wait = if self.session.is_some() {
                Duration::from_secs(
                    self.shared
                        .runtime
                        .load()
                        .config
                        .limits
                        .idle_timeout_seconds,
                )
            } else {
                self.grace_left()
            };
            let session = self.session.clone();
            let line = tokio::select! {
                l = tokio::time::timeout(wait, wire.next_line()) => l,
                _ = async { shutdown.wait_for(|v| *v).await.map(drop) } => {
                    let _ = wire.send(&Reply::new(421, "Service shutting down")).await;
                    return Flow::End("gateway shutting down");
                }
                () = async {
                    match &session {
                        Some(s) => s.withdrawn().await,
                        None => std::future::pending().await,
                    }
                } => return withdraw(wire).await,
            };
            let line = match line {
                Err(_) => {
                    let (why, text) = if self.session.is_some() {
                        ("idle timeout", "Idle timeout: closing control connection")
                    } else {
                        ("login grace time exceeded", "Login grace time exceeded")
                    };
                    let _ = wire.send(&Reply::new(421, text)).await;
                    return Flow::End(why);
                }
                Ok(Err(_)) | Ok(Ok(None)) => return Flow::End("client closed"),
                Ok(Ok(Some(l))) => l,
            };
            if self.session.as_ref().is_some_and(|s| s.revoked()) {
                return withdraw(wire).await;
            }
            let (verb, argument, actions) = match &line {
                Ok(text) => {
                    let text = clean(text);
                    let (verb, argument) = audit_parts(text);
                    let actions = match parse(text) {
                        Ok(cmd) => self.control.on_command(cmd),
                        Err(e) => self.control.on_parse_error(&e),
                    };
                    (verb, argument, actions)
                }
                Err(e) => ("?".to_owned(), None, self.control.on_line_error(*e)),
            };
            let flow = self.perform(actions, wire).await;
            self.audit_command(verb, argument).await;
            match flow {
                Flow::Continue => {}
                other => return other,
            }
            if self.session.is_none() {
                self.pre_login.0 += 1;
                self.pre_login.1 += usize::from(self.last_reply.0 >= 500);
                if self.pre_login.0 > PRE_LOGIN_COMMANDS || self.pre_login.1 > PRE_LOGIN_ERRORS {
                    let why = "too many commands before a login";
                    let _ = self.reply(wire, Reply::new(421, why)).await;
                    self.shared
                        .audit
                        .emit(Event::ConnectionRefused {
                            listener: self.ctx.config.name.clone(),
                            peer: self.peer,
                            reason: format!(
                                "{why}: {} commands, {} refused",
                                self.pre_login.0, self.pre_login.1
                            ),
                        })
                        .await;
                    crate::defender::abuse(&self.shared, self.peer.ip(), why).await;
                    return Flow::End(why);
                }
            }
        }
    }

    async fn audit_command(&self, verb: String, argument: Option<String>) {
        self.shared
            .audit
            .emit(Event::FtpCommand {
                peer: self.peer,
                listener: self.ctx.config.name.clone(),
                session: self.session.as_ref().map(|s| s.id.clone()),
                user: (!self.attempt.user.is_empty()).then(|| self.attempt.user.clone()),
                verb,
                argument,
                reply: self.last_reply.0,
                text: self.last_reply.1.clone(),
            })
            .await;
    }

    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        r: Reply,
    ) -> Result<(), ()> {
        self.last_reply = (r.code, r.lines.last().cloned().unwrap_or_default());
        wire.send(&r).await.map_err(drop)
    }

    async fn perform<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        actions: Vec<Action>,
        wire: &mut Wire<S>,
    ) -> Flow {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let sent = match a {
                Action::Reply(r) => self.reply(wire, r).await,
                Action::Close(r) => {
                    let _ = self.reply(wire, r).await;
                    return Flow::End("client quit");
                }
                Action::StartTls(r) => {
                    if self.reply(wire, r).await.is_err() {
                        return Flow::End("client closed");
                    }
                    return Flow::StartTls;
                }
                Action::Identify { user } => {
                    let outcome = self.identify(&user).await;
                    queue.extend(self.control.identified(outcome));
                    Ok(())
                }
                Action::Authenticate { user, password } => {
                    let ok = self.authenticate(&user, password).await;
                    queue.extend(self.control.login_result(ok));
                    if !ok && self.failures >= self.max_attempts() {
                        while let Some(Action::Reply(r)) = queue.pop_front() {
                            let _ = self.reply(wire, r).await;
                        }
                        let _ = self
                            .reply(wire, Reply::new(421, "Too many failed logins"))
                            .await;
                        return Flow::End("too many failed logins");
                    }
                    Ok(())
                }
                Action::Refused { verb, code } => {
                    tracing::info!(peer = %self.peer, verb, code, "command refused");
                    self.shared
                        .metrics
                        .op("ftp_refused", if code == 530 { "denied" } else { "error" });
                    Ok(())
                }
                Action::Forward(cmd) => match self.forward(cmd, wire).await {
                    Flow::Continue => Ok(()),
                    other => return other,
                },
            };
            if sent.is_err() {
                return Flow::End("client closed");
            }
        }
        Flow::Continue
    }

    fn max_attempts(&self) -> usize {
        self.shared.runtime.load().config.limits.max_auth_attempts
    }

    /// `USER`: a verified client certificate naming the user counts as the method
    /// `certificate`; it completes the login or a password must follow.
    async fn identify(&mut self, user: &str) -> Identified {
        self.attempt.user = user.to_owned();
        self.attempt.done.clear();
        if self.cert_names.is_empty() {
            return Identified::NeedPassword;
        }
        let rt = self.shared.runtime.load_full();
        let u = match self.attempt.admissible(&rt, user, Method::Certificate) {
            Ok(u) => u,
            Err(_) => return Identified::NeedPassword,
        };
        if !u
            .certificate_names
            .iter()
            .any(|n| self.cert_names.iter().any(|c| c == n))
        {
            self.fail(Method::Certificate, reason::CERTIFICATE_NOT_THE_USER)
                .await;
            return Identified::NeedPassword;
        }
        match u
            .chains
            .advance(&mut self.attempt.done, Method::Certificate)
        {
            Progress::Complete => {
                self.start_session(&u).await;
                Identified::Complete
            }
            _ => Identified::NeedPassword,
        }
    }

    async fn authenticate(&mut self, user: &str, password: String) -> bool {
        let u = match self.attempt.check_password(user, password).await {
            Ok(u) => u,
            Err(why) => {
                self.fail(Method::Password, why).await;
                return false;
            }
        };
        match u.chains.advance(&mut self.attempt.done, Method::Password) {
            Progress::Complete => {
                self.start_session(&u).await;
                true
            }
            Progress::Partial(_) => {
                self.fail(
                    Method::Password,
                    "the user's method chain needs a method FTP cannot offer",
                )
                .await;
                false
            }
            Progress::NotAllowed => {
                self.fail(Method::Password, "method not allowed at this step")
                    .await;
                false
            }
        }
    }

    /// A failed method: audited, counted against the attempt limit, and the chain restarts.
    async fn fail(&mut self, method: Method, reason: &str) {
        self.failures += 1;
        self.attempt.fail(method, reason).await;
        self.attempt.done.clear();
    }

    async fn start_session(&mut self, u: &UserEntry) {
        let session = self.attempt.start_session(u, self.channel.clone()).await;
        self.session = Some(session);
    }

    /// A directory's entries as listing facts.
    async fn list(&self, path: &str) -> Result<Vec<Entry>, FsError> {
        let session = self.session();
        let handle = match session
            .execute(FileOp::OpenDir {
                path: path.to_owned(),
            })
            .await?
        {
            OpOutput::Handle(h) => h,
            _ => return Err(FsError::Failure("unexpected answer".into())),
        };
        let mut out = Vec::new();
        loop {
            match session.execute(FileOp::ReadDir { handle }).await {
                Ok(OpOutput::Entries(es)) => {
                    out.extend(es.iter().map(|e| entry(&e.name, &e.attrs)))
                }
                Ok(_) => break,
                Err(e) => {
                    let _ = session.execute(FileOp::Close { handle }).await;
                    return Err(e);
                }
            }
        }
        let _ = session.execute(FileOp::Close { handle }).await;
        Ok(out)
    }

    fn session(&self) -> Arc<Session> {
        self.session
            .clone()
            .expect("the control machine forwards only after login")
    }

    /// A path from the client, absolute, with `.` and `..` resolved against the cwd.
    fn resolve(&self, arg: &str) -> String {
        crate::policy::join(&self.cwd, arg)
    }

    async fn stat(&self, path: &str) -> Result<FileAttrs, FsError> {
        match self
            .session()
            .execute(FileOp::Stat {
                path: path.to_owned(),
                follow: true,
            })
            .await?
        {
            OpOutput::Attrs(a) => Ok(a),
            _ => Err(FsError::Failure("unexpected answer".into())),
        }
    }

    /// A logged-in, protected command: everything that touches files goes to the session.
    async fn forward<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cmd: Command,
        wire: &mut Wire<S>,
    ) -> Flow {
        use Command::*;
        let r = match cmd {
            Pwd => Reply::new(
                257,
                format!("{} is the current directory", quote(&self.cwd)),
            ),
            Cwd(p) => self.cwd_to(&p).await,
            Cdup => self.cwd_to("..").await,
            Type { binary } => {
                self.binary = binary;
                Reply::new(
                    200,
                    if binary {
                        "Type set to I"
                    } else {
                        "Type set to A"
                    },
                )
            }
            Mode(c) if c.eq_ignore_ascii_case(&'S') => Reply::new(200, "Mode set to S"),
            Mode(_) => Reply::new(504, "Only MODE S is supported"),
            Stru(c) if c.eq_ignore_ascii_case(&'F') => Reply::new(200, "Structure set to F"),
            Stru(_) => Reply::new(504, "Only STRU F is supported"),
            Allo => Reply::new(202, "No storage allocation necessary"),
            Acct(_) => Reply::new(202, "No account necessary"),
            Rein => Reply::new(502, "REIN is not implemented"),
            Stou => Reply::new(502, "STOU is not implemented: name the file with STOR"),
            Opts(o) if o.to_ascii_uppercase().starts_with("UTF8") => {
                Reply::new(200, "UTF-8 is always on")
            }
            Opts(_) => Reply::new(501, "Unknown option"),
            Rest(n) => {
                self.rest = n;
                Reply::new(350, format!("Restarting at {n}; send RETR or STOR"))
            }
            Pasv => self.passive(false),
            Epsv { all: true, .. } => {
                self.epsv_all = true;
                Reply::new(200, "EPSV ALL accepted")
            }
            Epsv {
                protocol: Some(p), ..
            } if p != 1 && p != 2 => Reply::new(522, "Network protocol not supported, use (1,2)"),
            Epsv { .. } => self.passive(true),
            Port(hp) | Eprt(hp) => self.active(hp).await,
            Size(p) => match self.stat(&self.resolve(&p)).await {
                Ok(a) if a.is_dir() => Reply::new(550, "Not a plain file"),
                Ok(a) => Reply::new(213, a.size.unwrap_or(0).to_string()),
                Err(e) => fs_reply(&e),
            },
            Mdtm(p) => match self.stat(&self.resolve(&p)).await {
                Ok(a) => Reply::new(213, timeval(i64::from(a.mtime.unwrap_or(0)))),
                Err(e) => fs_reply(&e),
            },
            Mfmt(t, p) => {
                let path = self.resolve(&p);
                match u32::try_from(t) {
                    Err(_) => Reply::new(501, "Time out of range"),
                    Ok(mtime) => {
                        let op = FileOp::SetStat {
                            path,
                            attrs: FileAttrs {
                                mtime: Some(mtime),
                                ..Default::default()
                            },
                        };
                        match self.session().execute(op).await {
                            Ok(_) => Reply::new(213, format!("Modify={}; {p}", timeval(t))),
                            Err(e) => fs_reply(&e),
                        }
                    }
                }
            }
            Mlst(p) => {
                let path = self.resolve(p.as_deref().unwrap_or(""));
                match self.stat(&path).await {
                    Ok(a) => match mlsd_line(&entry(&path, &a)) {
                        Some(facts) => {
                            Reply::multi(250, vec![format!("Listing {path}"), facts, "End".into()])
                        }
                        None => Reply::new(550, "Name not representable"),
                    },
                    Err(e) => fs_reply(&e),
                }
            }
            Dele(p) => {
                self.simple(
                    FileOp::Remove {
                        path: self.resolve(&p),
                    },
                    250,
                    "File deleted",
                )
                .await
            }
            Mkd(p) => {
                let path = self.resolve(&p);
                let r = self
                    .simple(
                        FileOp::Mkdir {
                            path: path.clone(),
                            attrs: FileAttrs::default(),
                        },
                        257,
                        "",
                    )
                    .await;
                if r.code == 257 {
                    Reply::new(257, format!("{} created", quote(&path)))
                } else {
                    r
                }
            }
            Rmd(p) => {
                self.simple(
                    FileOp::Rmdir {
                        path: self.resolve(&p),
                    },
                    250,
                    "Directory removed",
                )
                .await
            }
            Rnfr(p) => {
                let path = self.resolve(&p);
                match self.stat(&path).await {
                    Ok(_) => {
                        self.rnfr = Some(path);
                        Reply::new(350, "Ready for RNTO")
                    }
                    Err(e) => fs_reply(&e),
                }
            }
            Rnto(p) => match self.rnfr.take() {
                None => Reply::new(503, "Send RNFR first"),
                Some(from) => {
                    self.simple(
                        FileOp::Rename {
                            from,
                            to: self.resolve(&p),
                            // RNTO replaces, as on the FTP servers users know.
                            overwrite: true,
                        },
                        250,
                        "Renamed",
                    )
                    .await
                }
            },
            Site(s) if s.trim().eq_ignore_ascii_case("HELP") => Reply::new(
                214,
                "SITE subcommands are passed to the endpoint where a role allows them",
            ),
            Site(s) => match crate::session::site_chmod(s.trim()) {
                // A mode change like SETSTAT's on every backend: the verb `setattr`, the
                // mount's umask, confinement and audit all come from `Session::execute`.
                Some(Err(why)) => Reply::new(501, why),
                Some(Ok((_, mode))) if mode & !0o777 != 0 => Reply::new(
                    550,
                    "SITE refused: setuid, setgid and sticky bits are never honoured",
                ),
                Some(Ok((path, mode))) => {
                    let attrs = FileAttrs {
                        mode: Some(mode),
                        ..Default::default()
                    };
                    let op = FileOp::SetStat {
                        path: self.resolve(path),
                        attrs,
                    };
                    self.simple(op, 200, "SITE CHMOD command successful").await
                }
                None => match self
                    .session()
                    .execute(FileOp::Site {
                        cwd: self.cwd.clone(),
                        command: s.trim().to_owned(),
                    })
                    .await
                {
                    Ok(OpOutput::SiteReply { code, text }) if (200..600).contains(&code) => {
                        Reply::new(code, text)
                    }
                    Ok(OpOutput::SiteReply { code, .. }) => {
                        Reply::new(451, format!("The endpoint answered {code}"))
                    }
                    Ok(other) => Reply::new(451, format!("unexpected result {other:?}")),
                    Err(FsError::Denied(why)) => Reply::new(550, format!("SITE refused: {why}")),
                    Err(FsError::Unsupported(why)) => Reply::new(504, why),
                    Err(e) => fs_reply(&e),
                },
            },
            Stat(None) => Reply::multi(
                211,
                vec![
                    "Portcullis FTPS gateway status:".into(),
                    format!("Connected from {}", self.peer.ip()),
                    format!("Logged in as {}", self.attempt.user),
                    format!("TYPE: {}", if self.binary { "BINARY" } else { "ASCII" }),
                    format!(
                        "Control and data protected by {}",
                        self.channel.as_deref().unwrap_or("TLS")
                    ),
                    "End of status".into(),
                ],
            ),
            Stat(Some(_)) => Reply::new(502, "STAT with a path is not implemented: use MLST"),
            Abor => Reply::new(226, "No transfer to abort"),
            cmd @ (List(_) | Nlst(_) | Mlsd(_) | Retr(_) | Stor(_) | Appe(_)) => {
                return self.transfer(cmd, wire).await;
            }
            other => Reply::new(502, format!("{} is not implemented", other.verb())),
        };
        match self.reply(wire, r).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::End("client closed"),
        }
    }

    async fn simple(&self, op: FileOp, code: u16, text: &str) -> Reply {
        match self.session().execute(op).await {
            Ok(_) => Reply::new(code, text),
            Err(e) => fs_reply(&e),
        }
    }

    async fn cwd_to(&mut self, arg: &str) -> Reply {
        let path = self.resolve(arg);
        match self.stat(&path).await {
            Ok(a) if a.is_dir() => {
                self.cwd = path;
                Reply::new(250, format!("Directory changed to {}", self.cwd))
            }
            Ok(_) => Reply::new(550, "Not a directory"),
            Err(e) => fs_reply(&e),
        }
    }

    /// `PASV`/`EPSV`: a port from the listener's range, bound on the control connection's
    /// local address; the old offer, if any, is withdrawn.
    fn passive(&mut self, extended: bool) -> Reply {
        self.data = None;
        let span = {
            let r = self.ctx.config.passive_ports.expect("validated");
            usize::from(r.max - r.min) + 1
        };
        for _ in 0..span.min(64) {
            let Some(port) = self
                .ctx
                .passive
                .lock()
                .expect("passive pool poisoned")
                .allocate()
            else {
                break;
            };
            let guard = PortGuard {
                ctx: self.ctx.clone(),
                port,
            };
            let bound = std::net::TcpListener::bind(SocketAddr::new(self.local.ip(), port))
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)
                });
            let Ok(tcp) = bound else {
                continue; // in use by something else; the guard returns it to the pool
            };
            self.data = Some(DataPlan::Passive { tcp, _port: guard });
            if extended {
                return epsv_reply(port);
            }
            let advertised = self
                .ctx
                .config
                .advertised_address
                .as_deref()
                .and_then(|a| a.parse().ok())
                .or(match self.local.ip() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(v6) => v6.to_ipv4_mapped(),
                });
            return match advertised {
                Some(a) => pasv_reply(a, port),
                None => {
                    self.data = None;
                    Reply::new(522, "PASV carries IPv4 only; use EPSV")
                }
            };
        }
        Reply::new(425, "No passive port available; try again")
    }

    async fn active(&mut self, hp: HostPort) -> Reply {
        self.data = None;
        if self.epsv_all {
            return Reply::new(503, "EPSV ALL was sent: only EPSV is accepted");
        }
        let a = self.ctx.config.active_mode;
        let policy = ActivePolicy {
            enabled: a.enabled,
            no_low_ports: a.no_low_ports,
            no_redirect: a.no_redirect,
        };
        match check_active(self.peer.ip(), hp, policy) {
            Ok(()) => {
                self.data = Some(DataPlan::Active(SocketAddr::new(hp.ip, hp.port)));
                Reply::new(200, "Active data connection target accepted")
            }
            Err(refusal) => {
                self.refuse_data(
                    None,
                    &format!("active mode target {}:{}: {refusal:?}", hp.ip, hp.port),
                )
                .await;
                refusal.reply()
            }
        }
    }

    async fn refuse_data(&self, from: Option<SocketAddr>, reason: &str) {
        tracing::info!(peer = %self.peer, ?from, reason, "data connection refused");
        self.shared
            .audit
            .emit(Event::DataConnectionRefused {
                peer: self.peer,
                session: self.session.as_ref().map(|s| s.id.clone()),
                from,
                reason: reason.to_owned(),
            })
            .await;
    }

    fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.config.data_timeout_seconds)
    }

    /// The TCP data connection: the passive port's first connection from the client's own
    /// address (others are refused and audited), or the active target. A passive port stays
    /// open (returned with the stream) until a connection has proved it belongs to this
    /// control connection by resuming its TLS session.
    async fn open_data(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(TcpStream, Option<(TcpListener, PortGuard)>), Reply> {
        match self.data.take() {
            None => Err(Reply::new(425, "Use PASV or EPSV first")),
            Some(DataPlan::Active(addr)) => {
                match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => Ok((s, None)),
                    _ => Err(Reply::new(425, "Cannot open the active data connection")),
                }
            }
            Some(DataPlan::Passive { tcp, _port }) => {
                let s = self.accept_passive(&tcp, deadline).await?;
                Ok((s, Some((tcp, _port))))
            }
        }
    }

    /// The passive port's next connection from the client's own address; connections from
    /// elsewhere are dropped and audited.
    async fn accept_passive(
        &self,
        tcp: &TcpListener,
        deadline: tokio::time::Instant,
    ) -> Result<TcpStream, Reply> {
        loop {
            match tokio::time::timeout_at(deadline, tcp.accept()).await {
                Err(_) => return Err(Reply::new(425, "No data connection arrived in time")),
                Ok(Err(_)) => continue,
                Ok(Ok((s, from))) if passive_peer_ok(self.peer.ip(), from.ip()) => {
                    s.set_nodelay(true).ok();
                    return Ok(s);
                }
                Ok(Ok((s, from))) => {
                    drop(s);
                    self.refuse_data(
                        Some(from),
                        "data connection from an address other than the control connection's",
                    )
                    .await;
                }
            }
        }
    }

    /// TLS on the data connection, which must resume a session of this control connection's
    /// (from the control handshake or an earlier data connection's ticket).
    ///
    /// On a passive port the first connection does not win: another host behind the same
    /// address (NAT) could race the client to the port. Each connection from the client's
    /// address is handshaken, up to [`MAX_DATA_HANDSHAKES`] at once; the first that resumes
    /// this control connection's session is the data connection, and every other is refused
    /// and audited. The port closes once one is chosen, so a later connection meets a reset.
    async fn secure_data(
        &self,
        first: TcpStream,
        passive: Option<&TcpListener>,
        upload: bool,
        deadline: tokio::time::Instant,
    ) -> Result<TlsStream<TcpStream>, String> {
        let mut pending = FuturesUnordered::new();
        // Where each handshake still running comes from, by its number.
        let mut running: Vec<(usize, Option<SocketAddr>)> = Vec::new();
        let mut next_id = 0;
        let mut start = |tcp: TcpStream, running: &mut Vec<(usize, Option<SocketAddr>)>| {
            next_id += 1;
            running.push((next_id, tcp.peer_addr().ok()));
            self.handshake_data(next_id, tcp, upload, deadline)
        };
        pending.push(start(first, &mut running));
        let mut last = String::from(
            "no data connection resumed this control connection's TLS session in time",
        );
        // After a refused handshake the client's own connection, if it is coming, is already
        // queued; a client that cannot resume should hear 425 soon, not at the deadline.
        let mut give_up = deadline;
        let mut accepting = passive.is_some();
        loop {
            tokio::select! {
                Some((id, r)) = pending.next() => match r {
                    Ok(s) => {
                        // The others lose the port; each is audited.
                        for (_, other) in running.iter().filter(|(i, _)| *i != id) {
                            self.refuse_data(
                                *other,
                                "data connection superseded: another one resumed the control connection's TLS session",
                            )
                            .await;
                        }
                        return Ok(s);
                    }
                    Err(why) => {
                        let from = running.iter().find(|(i, _)| *i == id).and_then(|r| r.1);
                        running.retain(|(i, _)| *i != id);
                        self.refuse_data(from, &why).await;
                        last = why;
                        give_up = give_up.min(tokio::time::Instant::now() + RACE_GRACE);
                        if passive.is_none() {
                            return Err(last);
                        }
                    }
                },
                next = async {
                    match passive {
                        Some(l) => self.accept_passive(l, give_up).await,
                        None => std::future::pending().await,
                    }
                }, if accepting && pending.len() < MAX_DATA_HANDSHAKES => match next {
                    Ok(s) => pending.push(start(s, &mut running)),
                    Err(_) if pending.is_empty() => return Err(last),
                    // Past the time to accept; the handshakes still running end by the
                    // deadline too.
                    Err(_) => accepting = false,
                },
                else => return Err(last),
            }
        }
    }

    /// One data connection's TLS handshake (number `id`), by `deadline`; resumed, or why not.
    async fn handshake_data(
        &self,
        id: usize,
        tcp: TcpStream,
        upload: bool,
        deadline: tokio::time::Instant,
    ) -> (usize, Result<TlsStream<TcpStream>, String>) {
        let config = if upload {
            &self.data_tls_upload
        } else {
            &self.data_tls
        };
        let acceptor = TlsAcceptor::from(config.clone());
        let r = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(s)) if s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) => Ok(s),
            Ok(Ok(_)) => Err(
                "data connection TLS did not resume the control connection's TLS session"
                    .to_owned(),
            ),
            Ok(Err(e)) => Err(format!("data connection TLS handshake failed: {e}")),
            Err(_) => Err("data connection TLS handshake timed out".to_owned()),
        };
        (id, r)
    }

    /// A data command: authorize and open first (no data connection for a refusal), then the
    /// data connection, `150`, TLS, the copy (watching the control connection for `ABOR`), and
    /// `226` only once the backend has confirmed the file.
    async fn transfer<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cmd: Command,
        wire: &mut Wire<S>,
    ) -> Flow {
        let session = self.session();
        let rest = std::mem::take(&mut self.rest);
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
        let mode = if self.binary { "BINARY" } else { "ASCII" };
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
        let binary = self.binary;
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

    async fn reply_flow<S: AsyncRead + AsyncWrite + Unpin>(
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
    async fn prepare(&self, cmd: Command, rest: u64) -> Result<(Job, String), Reply> {
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
                Ok((Job::Listing(Bytes::from(out)), path))
            }
            _ => Err(Reply::new(502, "not a data command")),
        }
    }
}

enum Kind {
    Appe,
    Mlsd,
    List,
    Other,
}

/// What a data command does once the data connection is up.
#[derive(Clone)]
enum Job {
    Retr { handle: u64, offset: u64 },
    Stor { handle: u64, offset: u64 },
    Listing(Bytes),
}

impl Job {
    /// Moves the bytes over the (TLS) data connection. A client that neither sends nor takes
    /// a byte for `idle` fails the transfer (a stalled transfer would hold its file, its
    /// backend connection and its slot for ever).
    async fn run(
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

    async fn abandon(&self, session: &Session, why: &str) {
        if let Job::Retr { handle, .. } | Job::Stor { handle, .. } = self {
            session.abandon(*handle, why).await;
        }
    }

    /// Closes the file at the backend: only a confirmed close earns the client a `226`.
    async fn finish(&self, session: &Session) -> Result<(), FsError> {
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
async fn write_watched(
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
async fn stalled<T>(idle: Duration, io: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(idle, io).await.map_err(|_| {
        format!(
            "data connection idle for {} s; the transfer is abandoned",
            idle.as_secs()
        )
    })
}

/// Aborts a spawned task when dropped (an `ABOR` drops the transfer future).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the file onto the data connection (bare LF as CRLF in `TYPE A`) while a task of its
/// own reads ahead from the backend, so that the two legs overlap.
async fn send_file(
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
async fn read_ahead(
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
async fn receive_file(
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
struct Failed {
    code: u16,
    why: String,
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed { code: 426, why }
    }
}

/// Writes chunks to the backend in order of arrival with up to `DEPTH` writes in flight.
async fn write_behind(
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
fn to_crlf(data: &[u8], last: &mut u8) -> Vec<u8> {
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
fn from_crlf(data: &[u8], held: &mut bool, eof: bool) -> Vec<u8> {
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

fn quote(path: &str) -> String {
    format!("\"{}\"", path.replace('"', "\"\""))
}

/// Ends a control connection whose user's access was withdrawn.
async fn withdraw<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>) -> Flow {
    let text = "Access withdrawn: closing control connection";
    let _ = wire.send(&Reply::new(421, text)).await;
    Flow::End("access withdrawn")
}

/// Listing facts for `name` (an entry's name, or the full path for `MLST`).
pub(crate) fn entry(name: &str, a: &FileAttrs) -> Entry {
    Entry {
        name: name.to_owned(),
        dir: a.is_dir(),
        size: a.size.unwrap_or(0),
        mtime: i64::from(a.mtime.unwrap_or(0)),
        perms: a.mode.map(|m| m & 0o777),
    }
}

/// A backend error as an FTP reply.
fn fs_reply(e: &FsError) -> Reply {
    match e {
        FsError::NotFound => Reply::new(550, "No such file or directory"),
        FsError::Denied(why) => Reply::new(550, format!("Permission denied: {why}")),
        FsError::AlreadyExists => Reply::new(550, "File exists"),
        FsError::BadPath(why) => Reply::new(553, format!("File name not allowed: {why}")),
        FsError::Unsupported(why) => Reply::new(504, why.clone()),
        FsError::Unavailable(why) => Reply::new(451, format!("Endpoint unavailable: {why}")),
        FsError::Quota(why) => Reply::new(552, format!("Exceeded storage allocation: {why}")),
        FsError::BadHandle | FsError::Failure(_) => {
            Reply::new(451, format!("Local error in processing: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_reader_is_not_cut_off_but_a_stalled_one_is() {
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
    fn type_a_line_ends_survive_chunk_boundaries() {
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

    #[test]
    fn audit_never_records_a_password() {
        assert_eq!(
            audit_parts("pass hunter2"),
            ("PASS".to_owned(), Some("********".to_owned()))
        );
        assert_eq!(
            audit_parts("RETR /in/a b.txt"),
            ("RETR".to_owned(), Some("/in/a b.txt".to_owned()))
        );
        assert_eq!(audit_parts("PWD"), ("PWD".to_owned(), None));
        let hidden = ("PASS".to_owned(), Some("********".to_owned()));
        assert_eq!(audit_parts("PASS\tSecret"), hidden);
        assert_eq!(audit_parts("PASS\u{3000}Secret"), hidden);
        assert_eq!(audit_parts("passSecret"), hidden);
        assert_eq!(audit_parts("PASS"), ("PASS".to_owned(), None));
        assert_eq!(
            audit_parts("ACCT\tk"),
            ("ACCT".to_owned(), Some("********".to_owned()))
        );
        // Telnet IP/DM before ABOR (as replacement characters).
        assert_eq!(clean("\u{fffd}\u{fffd}ABOR"), "ABOR");
    }

    #[test]
    fn pwd_quotes_are_doubled() {
        assert_eq!(quote("/a\"b"), "\"/a\"\"b\"");
    }
}
