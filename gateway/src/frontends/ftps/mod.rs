//! The FTPS front end: sockets and TLS around the sans-IO control machine of
//! `portcullis-ftp-proto`. Explicit (`AUTH TLS`) and implicit listeners; every file operation
//! goes through [`Session::execute`], the one enforcement point.
//!
//! Data connections are always TLS, must come from the control connection's address, and must
//! resume *this* control connection's TLS session: each connection gets a session store of its
//! own, so a resumed data handshake proves which control session it belongs to (vsftpd's
//! `require_ssl_reuse`, checked on the handshake kind).

mod commands;
pub(crate) use commands::entry;
mod data;
mod login;
mod tls_config;
mod transfer;
mod wire;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portcullis_config::{Listener, Protocol};
use portcullis_ftp_proto::{Action, Control, PassivePorts, Reply, Start, parse};
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use self::{
    data::DataPlan,
    tls_config::ListenerTls,
    wire::{Wire, audit_parts, clean},
};
use crate::{
    audit::Event,
    login::Attempt,
    session::Session,
    state::{Shared, Slot},
    tls,
};

/// Per-listener state that outlives connections: the passive port pool and the TLS config.
pub struct ListenerCtx {
    pub config: Listener,
    passive: Mutex<PassivePorts>,
    tls: ListenerTls,
}

impl ListenerCtx {
    pub fn new(config: Listener) -> Arc<ListenerCtx> {
        let range = config
            .passive_ports
            .expect("validated: FTPS listeners have a range");
        Arc::new(ListenerCtx {
            passive: Mutex::new(PassivePorts::new(range.min, range.max)),
            tls: ListenerTls::default(),
            config,
        })
    }
}

/// What a step of the loop tells the caller.
enum Flow {
    Continue,
    /// Switch the control connection to TLS (explicit FTPS after `234`).
    StartTls,
    /// Close the connection, for this reason.
    End(&'static str),
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
    /// A login refused because the audit trail cannot be made durable: the reply is 421, and
    /// the connection ends.
    refused_login: Option<Arc<String>>,
    /// Commands before a login, and how many of them were refused (see `PRE_LOGIN_*`).
    pre_login: (usize, usize),
    cwd: String,
    data: Option<DataPlan>,
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
    let tls = match ctx.tls.for_connection(&shared, &ctx.config.name) {
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
        refused_login: None,
        pre_login: (0, 0),
        cwd: "/".into(),
        data: None,
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

    /// 421 for a login refused while the audit trail cannot be made durable, and the end.
    async fn unavailable<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<S>,
        why: &str,
    ) -> Flow {
        let _ = self
            .reply(
                wire,
                Reply::new(421, format!("Service not available, login refused: {why}")),
            )
            .await;
        Flow::End("login refused: audit unavailable")
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
                    if let Some(why) = self.refused_login.take() {
                        return self.unavailable(wire, &why).await;
                    }
                    queue.extend(self.control.identified(outcome));
                    Ok(())
                }
                Action::Authenticate { user, password } => {
                    let ok = self.authenticate(&user, password).await;
                    if let Some(why) = self.refused_login.take() {
                        return self.unavailable(wire, &why).await;
                    }
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
                Action::Transfer {
                    command,
                    rest,
                    binary,
                } => match self.transfer(command, rest, binary, wire).await {
                    Flow::Continue => Ok(()),
                    other => return other,
                },
                Action::Rename { from, to } => {
                    let r = self.rename(from, &to).await;
                    self.reply(wire, r).await
                }
            };
            if sent.is_err() {
                return Flow::End("client closed");
            }
        }
        Flow::Continue
    }
}

/// Ends a control connection whose user's access was withdrawn.
async fn withdraw<S: AsyncRead + AsyncWrite + Unpin>(wire: &mut Wire<S>) -> Flow {
    let text = "Access withdrawn: closing control connection";
    let _ = wire.send(&Reply::new(421, text)).await;
    Flow::End("access withdrawn")
}
