//! The SFTP front end: a russh server handler for authentication and channels, and a
//! concurrent SFTP v3 dispatcher over russh-sftp's packet codec.
//!
//! This module only decodes and encodes. Credentials are checked through `auth`, and every file
//! operation goes to `Session::execute`; `FsError`s become SFTP status codes here, at the edge.
//!
//! The dispatcher keeps up to `maxInFlightRequests` requests running at once, and answers them
//! in the order they came. SFTP allows any reply order, but real clients do not: paramiko
//! keeps 100+ WRITEs in flight and then waits for their replies one by one in request order,
//! and a reply that arrives for a request it is not yet waiting for is consumed and lost, so
//! it waits forever (uploads over 3.2 MB hung). OpenSSH's sftp-server is serial and Go's
//! pkg/sftp orders its responses for the same reason. The requests still run concurrently;
//! only the replies wait for their turn. A dedicated task reads packets so that the
//! dispatcher's `select!` never cancels a half-read packet.
//!
//! Flow control: russh opens the SSH window as data *arrives*, not as it is consumed, and its
//! one session loop both delivers inbound data and sends outbound data. While it waits to
//! deliver to a full channel it sends nothing, so any wait of ours on the inbound side that
//! depends on our replies going out closes a cycle (paramiko's download prefetch, which sends
//! every READ of a file at once, hung that way). So the reader always drains the channel into
//! the dispatcher's queue, and memory is bounded by counting instead of waiting: requests
//! waiting for the dispatcher are capped at [`REQUEST_QUEUE_LIMIT`] bytes (past it the session
//! is closed as a protocol error), requests in flight at `maxInFlightRequests`, and replies not
//! yet sent at [`REPLY_BUDGET`] bytes, past which no new request is taken; with the session
//! loop never held by us, that only happens when the client stops reading.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{StreamExt, stream::FuturesOrdered};
use russh::{
    Channel, ChannelId, ChannelReadHalf, ChannelWriteHalf, Disconnect, MethodKind, MethodSet,
    keys::Algorithm,
    server::{
        Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Response, Session as SshSession,
        VerifiedPublicKey,
    },
};
use russh_sftp::protocol::{
    File, FileAttributes, Handle as HandleReply, Name, OpenFlags, Packet, Status, StatusCode,
    Version,
};
use tokio::{io::AsyncReadExt, net::TcpStream, sync::mpsc};

use crate::{
    audit::Event,
    auth::{self, Method, Progress, TotpOutcome},
    fs::{FileOp, FsError, OpOutput, OpenMode},
    login::{Attempt, reason},
    runtime::{Runtime, UserEntry},
    session::Session,
    sftp_wire::{from_wire, to_wire},
    state::{Shared, Slot},
};

/// Largest SFTP packet accepted from a client, as in OpenSSH's sftp-server.
pub const MAX_PACKET: u32 = 256 * 1024;
/// Queued replies are joined into one channel write up to this size.
const COALESCE_LIMIT: usize = 128 * 1024;
/// Largest READ served at once.
const MAX_READ: u32 = MAX_PACKET - 1024;
/// Reply bytes queued for the channel past which no new request is taken. Since nothing of
/// ours ever stops russh's session loop, this binds only when the client stops reading.
const REPLY_BUDGET: usize = 32 * 1024 * 1024;
/// Request bytes waiting for the dispatcher past which the session is closed. Real clients
/// bound what they keep outstanding (OpenSSH 64 requests, paramiko 100+ WRITEs or a prefetch
/// of every READ of a file: about 100 KiB for 64 MiB); only a client that sends without ever
/// reading replies gets near it.
const REQUEST_QUEUE_LIMIT: usize = 64 * 1024 * 1024;

/// Runs one accepted TCP connection to its end. The caller has already admitted the peer's
/// zone and taken a connection slot.
pub async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: String,
    zone: String,
    mut slot: Slot,
) {
    let rt = shared.runtime.load_full();
    let grace = Duration::from_secs(rt.config.limits.login_grace_seconds);
    let conn = Arc::new(ConnState::default());
    let mut attempt = Attempt::new(shared.clone(), peer, zone, listener, "sftp");
    attempt.pre_auth = slot.pre_auth.take();
    let handler = SshHandler {
        shared: shared.clone(),
        attempt,
        conn: conn.clone(),
        channels: HashMap::new(),
        serving: false,
        held: None,
        pending_login: None,
    };
    // A second handle on the socket lets the watchdog close it from outside the SSH session.
    let (killer, stream) = match stream
        .into_std()
        .and_then(|s| Ok((s.try_clone().ok(), TcpStream::from_std(s)?)))
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "socket setup failed");
            return;
        }
    };
    let running = match tokio::time::timeout(
        grace,
        russh::server::run_stream(rt.ssh.clone(), stream, handler),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "ssh handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no ssh identification within the login grace time");
            return;
        }
    };
    let handle = running.handle();
    let _ = conn.handle.set(handle.clone());
    let watchdog_conn = conn.clone();
    let watchdog = tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !watchdog_conn.authenticated.load(Ordering::SeqCst) {
            tracing::info!(%peer, "login grace time exceeded; closing");
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                handle.disconnect(
                    Disconnect::ByApplication,
                    "login grace time exceeded".into(),
                    String::new(),
                ),
            )
            .await;
            // A session stuck before key exchange does not act on the disconnect; closing the
            // socket ends it whatever state it is in.
            if let Some(sock) = killer {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
    });
    let outcome = running.await;
    watchdog.abort();
    let session = conn.session.lock().expect("conn lock poisoned").take();
    if let Some(session) = session {
        let reason = match outcome {
            Ok(()) => "client disconnected".to_owned(),
            Err(e) => format!("connection ended: {e}"),
        };
        session.finish(&reason).await;
    }
    drop(slot);
}

#[derive(Default)]
struct ConnState {
    authenticated: AtomicBool,
    session: Mutex<Option<Arc<Session>>>,
    /// The connection's handle, to disconnect with a reason from inside the handler.
    handle: std::sync::OnceLock<russh::server::Handle>,
    /// A login refused after its methods passed (the audit trail cannot be made durable):
    /// the disconnect message.
    refused: Mutex<Option<String>>,
}

async fn disconnect_refused(handle: &russh::server::Handle, message: String) {
    let _ = handle
        .disconnect(Disconnect::ServiceNotAvailable, message, String::new())
        .await;
}

struct SshHandler {
    shared: Arc<Shared>,
    attempt: Attempt,
    conn: Arc<ConnState>,
    /// The session channel not yet given a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// An SFTP subsystem is running: the connection's one channel is taken for good (each
    /// would have its own in-flight requests and handles otherwise).
    serving: bool,
    /// A channel open held unanswered while a refused login is disconnected.
    held: Option<ChannelOpenHandle>,
    /// A login whose methods all passed, started once russh reports the success.
    pending_login: Option<Arc<UserEntry>>,
}

fn method_set(methods: &[Method]) -> MethodSet {
    // A TLS client certificate cannot be offered over SSH; chains needing one never complete.
    let kinds: Vec<MethodKind> = methods
        .iter()
        .filter_map(|m| match m {
            Method::Password => Some(MethodKind::Password),
            Method::PublicKey => Some(MethodKind::PublicKey),
            Method::KeyboardInteractive => Some(MethodKind::KeyboardInteractive),
            Method::Certificate => None,
        })
        .collect();
    MethodSet::from(&kinds[..])
}

impl SshHandler {
    async fn fail(&mut self, method: Method, reason: &str) -> Result<Auth, anyhow::Error> {
        self.attempt.fail(method, reason).await;
        Ok(Auth::Reject {
            proceed_with_methods: Some(self.remaining_methods()),
            partial_success: false,
        })
    }

    /// A refused secret: held to the failure floor first, so its timing tells nothing.
    async fn fail_held(
        &mut self,
        method: Method,
        rt: &Runtime,
        started: tokio::time::Instant,
        reason: &str,
    ) -> Result<Auth, anyhow::Error> {
        self.attempt.hold_failure(rt, started).await;
        self.fail(method, reason).await
    }

    /// The methods a failure reply lists: what can still succeed. Left to itself russh drops
    /// the method that just failed, so a mistyped password could not be retried and paramiko,
    /// seeing `password` gone, falls back to keyboard-interactive and waits out its timeout.
    /// Before any method has passed this is the server's whole set, the same for every user
    /// name, so the reply never tells whether a user exists; after a partial success it is the
    /// next step of the user's chains.
    fn remaining_methods(&self) -> MethodSet {
        if !self.attempt.done.is_empty() {
            let rt = self.shared.runtime.load();
            if let Some(u) = rt.users.get(&self.attempt.user) {
                return method_set(&u.chains.next(&self.attempt.done));
            }
        }
        self.shared.runtime.load().ssh.methods.clone()
    }

    /// A method succeeded: complete the login, or ask for the next method of the chain.
    async fn passed(&mut self, u: &Arc<UserEntry>, method: Method) -> Result<Auth, anyhow::Error> {
        match u.chains.advance(&mut self.attempt.done, method) {
            Progress::NotAllowed => self.fail(method, "method not allowed at this step").await,
            Progress::Partial(next) => Ok(Auth::Reject {
                proceed_with_methods: Some(method_set(&next)),
                partial_success: true,
            }),
            Progress::Complete => {
                // The session starts in `auth_succeeded`, where the key exchange's algorithms
                // are known, for its records; the client's USERAUTH_SUCCESS leaves only after
                // that, so they are durable before it is told.
                self.pending_login = Some(u.clone());
                Ok(Auth::Accept)
            }
        }
    }

    /// Starts the session of a login whose methods all passed, or refuses it (the audit
    /// trail cannot be made durable).
    async fn start(&mut self, u: &UserEntry, channel: Option<String>) {
        match self.attempt.start_session(u, channel).await {
            Ok(session) => {
                *self.conn.session.lock().expect("conn lock poisoned") = Some(session);
                self.conn.authenticated.store(true, Ordering::SeqCst);
            }
            Err(why) => {
                // SSH has no reply text for a refused login, and a client told
                // USERAUTH_FAILURE gives up and closes before a disconnect sent after it
                // arrives. So the method is accepted at the protocol level, but no session
                // exists; the client's next message, opening its session channel, is held
                // unanswered and the disconnect that carries the reason follows (OpenSSH
                // prints "Received disconnect ...: 7: login refused: ..."). The client is then
                // waiting, with nothing of its in flight, so it reads it.
                let message = format!("login refused: {why}");
                *self.conn.refused.lock().expect("conn lock poisoned") = Some(message.clone());
                // A client that opens no channel is disconnected all the same.
                if let Some(handle) = self.conn.handle.get().cloned() {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        disconnect_refused(&handle, message).await;
                    });
                }
            }
        }
    }

    /// Audits a refused SSH request; before a login there is no session to record it under
    /// (russh refuses channels until then).
    async fn refuse(&self, request: String, reason: &str) {
        if let Some(s) = self.session() {
            s.refused(request, reason).await;
        }
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.conn
            .session
            .lock()
            .expect("conn lock poisoned")
            .clone()
    }
}

impl Handler for SshHandler {
    type Error = anyhow::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.attempt.begin(user);
        Ok(Auth::reject())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        match self.attempt.check_password(user, password.to_owned()).await {
            Err(why) => self.fail(Method::Password, why).await,
            Ok(u) => self.passed(&u, Method::Password).await,
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.attempt.begin(user);
        let rt = self.shared.runtime.load_full();
        let sha1 = matches!(offer.algorithm, Algorithm::Rsa { hash: None });
        match self.attempt.admissible(&rt, user, Method::PublicKey) {
            Ok(u) if !sha1 && auth::key_matches(&u.public_keys, offer.public_key) => {
                Ok(Auth::Accept)
            }
            _ => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.attempt.begin(user);
        let rt = self.shared.runtime.load_full();
        if matches!(key.algorithm, Algorithm::Rsa { hash: None }) {
            return self
                .fail(Method::PublicKey, "ssh-rsa (SHA-1) signatures are refused")
                .await;
        }
        match self.attempt.admissible(&rt, user, Method::PublicKey) {
            Err(why) => self.fail(Method::PublicKey, why).await,
            Ok(u) if !auth::key_matches(&u.public_keys, key.public_key) => {
                self.fail(Method::PublicKey, "key not authorized").await
            }
            Ok(u) => self.passed(&u, Method::PublicKey).await,
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.attempt.begin(user);
        let rt = self.shared.runtime.load_full();
        let Some(mut response) = response else {
            // Only prompt where a one-time code can be the next step; clients then fall
            // through to the password method without a prompt they cannot answer.
            if self
                .attempt
                .admissible(&rt, user, Method::KeyboardInteractive)
                .is_err()
            {
                return Ok(Auth::reject());
            }
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![("Verification code: ".into(), false)].into(),
            });
        };
        let started = tokio::time::Instant::now();
        let code = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let u = match self
            .attempt
            .admissible(&rt, user, Method::KeyboardInteractive)
        {
            Ok(u) => u,
            Err(why) => {
                return self
                    .fail_held(Method::KeyboardInteractive, &rt, started, why)
                    .await;
            }
        };
        let Some(totp) = &u.totp else {
            return self
                .fail_held(
                    Method::KeyboardInteractive,
                    &rt,
                    started,
                    "no TOTP secret for user",
                )
                .await;
        };
        match self.shared.totp.check(&u.name, totp, &code) {
            TotpOutcome::Accepted => self.passed(&u, Method::KeyboardInteractive).await,
            TotpOutcome::Wrong => {
                self.fail_held(
                    Method::KeyboardInteractive,
                    &rt,
                    started,
                    reason::WRONG_CODE,
                )
                .await
            }
            TotpOutcome::Replayed => {
                self.fail_held(
                    Method::KeyboardInteractive,
                    &rt,
                    started,
                    reason::CODE_REUSED,
                )
                .await
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut SshSession) -> Result<(), Self::Error> {
        if let Some(u) = self.pending_login.take() {
            let channel = session.negotiated().map(str::to_owned);
            self.start(&u, channel).await;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let refused = self.conn.refused.lock().expect("conn lock poisoned").take();
        if let (Some(message), Some(handle)) = (refused, self.conn.handle.get().cloned()) {
            // Held, not answered: the disconnect is the answer.
            self.held = Some(reply);
            disconnect_refused(&handle, message).await;
            return Ok(());
        }
        if self.session().is_none() || self.serving {
            // One SFTP channel per connection keeps limits per connection meaningful.
            self.refuse(
                "a second session channel".into(),
                "one session channel per connection",
            )
            .await;
            return Ok(());
        }
        // At most one channel waits for its subsystem: a newer one replaces it (a client
        // that tried exec on one and closed it may race its close with the next open).
        self.channels.clear();
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    /// A session channel closed before its subsystem started (a refused exec, say) no longer
    /// counts as the connection's one channel.
    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let (Some(s), true) = (self.session(), name == "sftp") else {
            let name = clip(name, 64);
            self.refuse(
                format!("subsystem {name}"),
                "only the sftp subsystem is served",
            )
            .await;
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&channel_id) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        if let Some(algorithms) = session.negotiated() {
            s.set_channel(algorithms.to_owned());
        }
        session.channel_success(channel_id)?;
        self.serving = true;
        let shared = self.shared.clone();
        let max = shared.runtime.load().config.limits.max_in_flight_requests;
        let ssh = session.handle();
        tokio::spawn(async move {
            let (input, output) = channel.split();
            serve_sftp(input, output, s.clone(), shared, max).await;
            // A user disabled or removed while connected: the connection ends, not only the
            // channel.
            if s.revoked() {
                let _ = ssh
                    .disconnect(
                        Disconnect::ByApplication,
                        "access withdrawn".into(),
                        String::new(),
                    )
                    .await;
            }
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("shell".into(), NO_SHELL).await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        // The program's name only: the rest of a command line may carry a secret.
        let program = clip(
            String::from_utf8_lossy(data)
                .split_whitespace()
                .next()
                .unwrap_or_default(),
            32,
        );
        self.refuse(format!("exec {program}"), NO_SHELL).await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("pty".into(), NO_SHELL).await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("x11 forwarding".into(), NO_FORWARDING).await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent forwarding".into(), NO_FORWARDING).await;
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let host = clip(host_to_connect, 255);
        self.refuse(
            format!("direct-tcpip to {host}:{port_to_connect}"),
            NO_FORWARDING,
        )
        .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        _reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let path = clip(socket_path, 255);
        self.refuse(format!("direct-streamlocal to {path}"), NO_FORWARDING)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.refuse("x11 channel".into(), NO_FORWARDING).await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        let address = clip(address, 255);
        self.refuse(format!("tcpip-forward {address}:{port}"), NO_FORWARDING)
            .await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        let path = clip(socket_path, 255);
        self.refuse(format!("streamlocal-forward {path}"), NO_FORWARDING)
            .await;
        Ok(false)
    }
}

/// A peer-chosen string as an audit record may carry it: at most `n` characters.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

const NO_SHELL: &str = "this gateway serves SFTP only; no shell or command";
const NO_FORWARDING: &str = "no forwarding through the gateway";

/// What the reader task hands the dispatcher.
enum Incoming {
    Packet(Bytes),
    Oversized(u32),
    /// More than [`REQUEST_QUEUE_LIMIT`] bytes of requests are waiting: the reader stopped.
    Overflow,
}

/// Request bytes read from the channel and not yet taken by the dispatcher.
#[derive(Default)]
struct RequestQueue(std::sync::atomic::AtomicUsize);

impl RequestQueue {
    /// The dispatcher takes a packet off the queue, and decodes it.
    fn take(&self, packet: Bytes) -> Decoded {
        self.0.fetch_sub(queued_cost(&packet), Ordering::AcqRel);
        decode(packet)
    }
}

/// What a queued packet counts against [`REQUEST_QUEUE_LIMIT`]: its bytes and our overhead.
fn queued_cost(b: &Bytes) -> usize {
    b.len() + 64
}

/// Moves packets from the channel to the dispatcher's queue, never waiting on the dispatcher:
/// russh's session loop waits while a channel is full, and then sends nothing either (see the
/// module comment).
async fn read_packets(
    mut input: ChannelReadHalf,
    tx: mpsc::UnboundedSender<Incoming>,
    queued: Arc<RequestQueue>,
) {
    let mut rd = input.make_reader();
    loop {
        let len = match rd.read_u32().await {
            Ok(l) => l,
            Err(_) => return,
        };
        if len > MAX_PACKET || len == 0 {
            let _ = tx.send(Incoming::Oversized(len));
            return;
        }
        // Read into uninitialised capacity: zeroing each packet first cost a memset per byte.
        let mut buf = BytesMut::with_capacity(len as usize);
        while buf.len() < len as usize {
            let left = (len as usize - buf.len()) as u64;
            match (&mut rd).take(left).read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let b = buf.freeze();
        let cost = queued_cost(&b);
        if queued.0.fetch_add(cost, Ordering::AcqRel) + cost > REQUEST_QUEUE_LIMIT {
            let _ = tx.send(Incoming::Overflow);
            return;
        }
        if tx.send(Incoming::Packet(b)).is_err() {
            return;
        }
    }
}

/// Serves the SFTP subsystem on a channel until the client closes it, a packet is malformed,
/// or the gateway drains for shutdown.
pub async fn serve_sftp(
    input: ChannelReadHalf,
    output: ChannelWriteHalf<Msg>,
    session: Arc<Session>,
    shared: Arc<Shared>,
    max_in_flight: usize,
) {
    let (in_tx, mut incoming) = mpsc::unbounded_channel();
    let queued = Arc::new(RequestQueue::default());
    let reader = tokio::spawn(read_packets(input, in_tx, queued.clone()));
    let replies = Arc::new(ReplyQueue::default());
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    let out = ReplySender {
        tx: out_tx,
        queue: replies.clone(),
    };
    let queue = replies.clone();
    let writer = tokio::spawn(async move {
        // Replies go to the channel as owned bytes. Replies already queued are joined into
        // one message up to COALESCE_LIMIT, so a burst of small status replies costs one
        // channel write, not one each; a reply that would pass the limit goes on its own,
        // uncopied (DATA replies are most of a download's bytes).
        let mut held: Option<Bytes> = None;
        loop {
            let first = match held.take() {
                Some(b) => b,
                None => match out_rx.recv().await {
                    Some(b) => b,
                    None => break,
                },
            };
            let mut joined: Option<BytesMut> = None;
            loop {
                let len = joined.as_ref().map_or(first.len(), BytesMut::len);
                if len >= COALESCE_LIMIT {
                    break;
                }
                let Ok(b) = out_rx.try_recv() else { break };
                if len + b.len() > COALESCE_LIMIT {
                    held = Some(b);
                    break;
                }
                joined
                    .get_or_insert_with(|| {
                        let mut j = BytesMut::with_capacity(COALESCE_LIMIT);
                        j.extend_from_slice(&first);
                        j
                    })
                    .extend_from_slice(&b);
            }
            let batch = joined.map_or(first, BytesMut::freeze);
            let n = batch.len();
            let sent = output.data_bytes(batch).await;
            queue.release(n);
            if sent.is_err() {
                return;
            }
        }
        let _ = output.eof().await;
        let _ = output.close().await;
    });

    let protocol_error = |detail: String| {
        let (shared, session) = (shared.clone(), session.clone());
        async move {
            tracing::warn!(session = %session.id, %detail, "sftp protocol error; closing the session");
            shared
                .audit
                .emit(Event::ProtocolError {
                    session: session.id.clone(),
                    user: session.user.clone(),
                    detail,
                })
                .await;
        }
    };

    // The first packet must be INIT.
    match incoming.recv().await {
        Some(Incoming::Packet(mut b)) => match Packet::try_from(&mut b) {
            Ok(Packet::Init(_)) => {
                let v = version();
                if let Ok(bytes) = Bytes::try_from(v) {
                    out.send(bytes);
                }
            }
            _ => {
                protocol_error("first packet is not SSH_FXP_INIT".into()).await;
                reader.abort();
                return;
            }
        },
        Some(Incoming::Oversized(n)) => {
            protocol_error(format!(
                "packet length {n} exceeds the limit of {MAX_PACKET}"
            ))
            .await;
            return;
        }
        Some(Incoming::Overflow) | None => return,
    }

    let mut inflight = FuturesOrdered::new();
    let mut shutdown = shared.shutdown.subscribe();
    let withdrawn = {
        let s = session.clone();
        async move { s.withdrawn().await }
    };
    tokio::pin!(withdrawn);
    loop {
        if shared.shutting_down() && session.open_files() == 0 && inflight.is_empty() {
            break;
        }
        let over_budget = replies.over_budget();
        let taking = inflight.len() < max_in_flight && !over_budget;
        tokio::select! {
            Some(reply) = inflight.next(), if !inflight.is_empty() => {
                if !out.send(reply) {
                    break;
                }
            }
            _ = replies.drained(), if over_budget => {}
            // An idle client learns at once, not at its next request.
            () = &mut withdrawn => {
                protocol_error("the user's access was withdrawn".into()).await;
                break;
            }
            msg = incoming.recv(), if taking => match msg {
                None => break,
                Some(Incoming::Oversized(n)) => {
                    protocol_error(format!("packet length {n} exceeds the limit of {MAX_PACKET}")).await;
                    break;
                }
                Some(Incoming::Overflow) => {
                    protocol_error(format!(
                        "more than {} MiB of requests outstanding",
                        REQUEST_QUEUE_LIMIT >> 20
                    ))
                    .await;
                    break;
                }
                Some(Incoming::Packet(_)) if session.revoked() => {
                    protocol_error("the user's access was withdrawn".into()).await;
                    break;
                }
                Some(Incoming::Packet(bytes)) => match queued.take(bytes) {
                    Decoded::Op(id, kind, op) => {
                        let s = session.clone();
                        inflight.push_back(Box::pin(async move {
                            let result = s.execute(op).await;
                            encode(id, kind, result)
                        }) as ReplyFuture);
                    }
                    Decoded::Reply(p) => {
                        // Answered without the session, but in its turn like any other.
                        let b = Bytes::try_from(p).unwrap_or_default();
                        inflight.push_back(Box::pin(async move { b }) as ReplyFuture);
                    }
                    Decoded::Refused(p, request, reason) => {
                        let s = session.clone();
                        let b = Bytes::try_from(p).unwrap_or_default();
                        inflight.push_back(Box::pin(async move {
                            s.refused(request, reason).await;
                            b
                        }) as ReplyFuture);
                    }
                    Decoded::Malformed(detail) => {
                        protocol_error(detail).await;
                        break;
                    }
                },
            },
            _ = shutdown.changed() => {}
        }
    }
    // Answer what is already running, then close.
    while let Some(reply) = inflight.next().await {
        out.send(reply);
    }
    reader.abort();
    drop(out);
    let _ = writer.await;
}

/// A request on its way to its reply.
type ReplyFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send>>;

/// Reply bytes handed to the writer and not yet accepted by the channel.
#[derive(Default)]
struct ReplyQueue {
    bytes: std::sync::atomic::AtomicUsize,
    below_budget: tokio::sync::Notify,
}

impl ReplyQueue {
    fn over_budget(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > REPLY_BUDGET
    }

    fn release(&self, n: usize) {
        let before = self.bytes.fetch_sub(n, Ordering::AcqRel);
        if before > REPLY_BUDGET && before - n <= REPLY_BUDGET {
            self.below_budget.notify_one();
        }
    }

    /// Resolves once the queue may have dropped below the budget.
    async fn drained(&self) {
        if self.over_budget() {
            self.below_budget.notified().await;
        }
    }
}

/// The dispatcher's side of the reply queue: sending never waits.
struct ReplySender {
    tx: mpsc::UnboundedSender<Bytes>,
    queue: Arc<ReplyQueue>,
}

impl ReplySender {
    /// Queues a reply; false once the writer is gone.
    fn send(&self, reply: Bytes) -> bool {
        let n = reply.len();
        self.queue.bytes.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(reply).is_err() {
            self.queue.release(n);
            return false;
        }
        true
    }
}

/// The reply shape a request expects.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Handle,
    Data,
    Attrs,
    Name,
    Status,
    /// An `SSH_FXP_EXTENDED_REPLY`.
    Extended,
}

pub(crate) enum Decoded {
    Op(u32, Kind, FileOp),
    Reply(Packet),
    /// A request the gateway does not serve: the reply, and what to audit (request, reason).
    Refused(Packet, String, &'static str),
    Malformed(String),
}

/// `OP_UNSUPPORTED` for request `id`, audited as `request`.
fn refuse(id: u32, request: String, reason: &'static str) -> Decoded {
    Decoded::Refused(
        status(id, StatusCode::OpUnsupported, reason),
        request,
        reason,
    )
}

fn handle_id(h: &str) -> u64 {
    // An unknown or garbled handle maps to 0, which is never issued.
    u64::from_str_radix(h, 16).unwrap_or(0)
}

pub(crate) fn decode(mut bytes: Bytes) -> Decoded {
    let raw = bytes.clone();
    let packet = match Packet::try_from(&mut bytes) {
        Ok(p) => p,
        Err(e) => {
            // A well-formed request of a type we do not know gets OP_UNSUPPORTED; anything
            // else is a broken stream.
            let mut r = raw;
            if r.len() >= 5 {
                let t = r.get_u8();
                let id = r.get_u32();
                if !(1..=20).contains(&t) && t != 200 {
                    return refuse(id, format!("sftp type {t}"), "unsupported request type");
                }
            }
            return Decoded::Malformed(format!("undecodable packet: {e}"));
        }
    };
    use Kind::*;
    let (id, kind, op) = match packet {
        Packet::Open(o) => {
            let f = o.pflags;
            let mode = OpenMode {
                read: f.contains(OpenFlags::READ),
                write: f.contains(OpenFlags::WRITE),
                append: f.contains(OpenFlags::APPEND),
                create: f.contains(OpenFlags::CREATE),
                truncate: f.contains(OpenFlags::TRUNCATE),
                exclusive: f.contains(OpenFlags::EXCLUDE),
            };
            (
                o.id,
                Handle,
                FileOp::Open {
                    path: o.filename,
                    mode,
                },
            )
        }
        Packet::Close(c) => (
            c.id,
            Status,
            FileOp::Close {
                handle: handle_id(&c.handle),
            },
        ),
        Packet::Read(r) => (
            r.id,
            Data,
            FileOp::Read {
                handle: handle_id(&r.handle),
                offset: r.offset,
                len: r.len.min(MAX_READ),
            },
        ),
        Packet::Write(w) => (
            w.id,
            Status,
            FileOp::Write {
                handle: handle_id(&w.handle),
                offset: w.offset,
                data: w.data,
            },
        ),
        Packet::Lstat(s) => (
            s.id,
            Attrs,
            FileOp::Stat {
                path: s.path,
                follow: false,
            },
        ),
        Packet::Stat(s) => (
            s.id,
            Attrs,
            FileOp::Stat {
                path: s.path,
                follow: true,
            },
        ),
        Packet::Fstat(s) => (
            s.id,
            Attrs,
            FileOp::FStat {
                handle: handle_id(&s.handle),
            },
        ),
        Packet::SetStat(s) => (
            s.id,
            Status,
            FileOp::SetStat {
                path: s.path,
                attrs: from_wire(&s.attrs),
            },
        ),
        Packet::FSetStat(s) => (
            s.id,
            Status,
            FileOp::FSetStat {
                handle: handle_id(&s.handle),
                attrs: from_wire(&s.attrs),
            },
        ),
        Packet::OpenDir(d) => (d.id, Handle, FileOp::OpenDir { path: d.path }),
        Packet::ReadDir(d) => (
            d.id,
            Name,
            FileOp::ReadDir {
                handle: handle_id(&d.handle),
            },
        ),
        Packet::Remove(r) => (r.id, Status, FileOp::Remove { path: r.filename }),
        Packet::MkDir(m) => (
            m.id,
            Status,
            FileOp::Mkdir {
                path: m.path,
                attrs: from_wire(&m.attrs),
            },
        ),
        Packet::RmDir(r) => (r.id, Status, FileOp::Rmdir { path: r.path }),
        Packet::RealPath(r) => (r.id, Name, FileOp::RealPath { path: r.path }),
        Packet::Rename(r) => (
            r.id,
            Status,
            FileOp::Rename {
                from: r.oldpath,
                to: r.newpath,
                overwrite: false,
            },
        ),
        Packet::ReadLink(r) => {
            return refuse(
                r.id,
                format!("sftp readlink {}", r.path),
                "symlinks are not exposed",
            );
        }
        Packet::Symlink(s) => {
            // OpenSSH's order, which clients follow: the target first, then the new link.
            return refuse(
                s.id,
                format!("sftp symlink {} -> {}", s.targetpath, s.linkpath),
                "symlinks are not exposed",
            );
        }
        Packet::Extended(e) => return decode_extended(e),
        other => return Decoded::Malformed(format!("unexpected packet from a client: {other:?}")),
    };
    Decoded::Op(id, kind, op)
}

/// The `@openssh.com` extensions offered in `SSH_FXP_VERSION`, with their versions.
const EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fsync@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("hardlink@openssh.com", "1"),
];

/// The server's `SSH_FXP_VERSION`: version 3 and the extensions above.
fn version() -> Packet {
    let mut v = Version::new();
    for (name, ver) in EXTENSIONS {
        v.extensions.insert((*name).to_owned(), (*ver).to_owned());
    }
    Packet::Version(v)
}

/// Reads an SSH string from an extension's request data: a name, kept byte for byte as the
/// codec keeps the names of the other requests (`portcullis_names`).
fn ext_string(data: &mut Bytes) -> Option<String> {
    if data.remaining() < 4 {
        return None;
    }
    let n = data.get_u32() as usize;
    if data.remaining() < n {
        return None;
    }
    Some(portcullis_names::escape(&data.split_to(n)).into_owned())
}

fn decode_extended(e: russh_sftp::protocol::Extended) -> Decoded {
    let mut data = Bytes::from(e.data);
    let malformed = |what: &str| {
        Decoded::Reply(status(
            e.id,
            StatusCode::BadMessage,
            &format!("malformed {what} request"),
        ))
    };
    let op = match e.request.as_str() {
        "posix-rename@openssh.com" => match (ext_string(&mut data), ext_string(&mut data)) {
            (Some(from), Some(to)) => (
                Kind::Status,
                FileOp::Rename {
                    from,
                    to,
                    overwrite: true,
                },
            ),
            _ => return malformed("posix-rename"),
        },
        "hardlink@openssh.com" => match (ext_string(&mut data), ext_string(&mut data)) {
            (Some(from), Some(to)) => (Kind::Status, FileOp::Hardlink { from, to }),
            _ => return malformed("hardlink"),
        },
        "statvfs@openssh.com" => match ext_string(&mut data) {
            Some(path) => (Kind::Extended, FileOp::StatVfs { path }),
            None => return malformed("statvfs"),
        },
        "fsync@openssh.com" => match ext_string(&mut data) {
            Some(h) => (
                Kind::Status,
                FileOp::Fsync {
                    handle: handle_id(&h),
                },
            ),
            None => return malformed("fsync"),
        },
        // Protocol limits, not a file operation: answered here.
        "limits@openssh.com" => {
            let mut out = BytesMut::with_capacity(32);
            for v in [
                MAX_PACKET as u64,
                MAX_READ as u64,
                (MAX_PACKET - 1024) as u64,
                crate::session::MAX_OPEN_HANDLES as u64,
            ] {
                out.put_u64(v);
            }
            return Decoded::Reply(Packet::ExtendedReply(russh_sftp::protocol::ExtendedReply {
                id: e.id,
                data: out.to_vec(),
            }));
        }
        other => {
            let name = clip(other, 64);
            return refuse(
                e.id,
                format!("sftp extension {name}"),
                "extension not offered",
            );
        }
    };
    Decoded::Op(e.id, op.0, op.1)
}

fn status(id: u32, code: StatusCode, msg: &str) -> Packet {
    Packet::Status(Status {
        id,
        status_code: code,
        error_message: msg.to_owned(),
        language_tag: "en-US".to_owned(),
    })
}

/// The SFTP status for a gateway error: the one place file errors become SFTP codes.
pub struct SftpStatus(pub StatusCode, pub String);

impl From<&FsError> for SftpStatus {
    fn from(e: &FsError) -> Self {
        let code = match e {
            FsError::NotFound => StatusCode::NoSuchFile,
            FsError::Denied(_) => StatusCode::PermissionDenied,
            FsError::Unsupported(_) => StatusCode::OpUnsupported,
            FsError::Unavailable(_) => StatusCode::NoConnection,
            FsError::BadPath(_) => StatusCode::NoSuchFile,
            // SFTP v3 has no quota code (SSH_FX_QUOTA_EXCEEDED is v5): the message says it.
            FsError::AlreadyExists
            | FsError::BadHandle
            | FsError::Failure(_)
            | FsError::Quota(_) => StatusCode::Failure,
        };
        SftpStatus(code, e.to_string())
    }
}

/// `SSH_FXP_DATA` on the wire.
const FXP_DATA: u8 = 103;

/// An `SSH_FXP_DATA` reply, built with one copy of the payload: the codec would copy it twice
/// (into its `Vec`, then into the packet), and this is most of the bytes a download moves.
fn data_reply(id: u32, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(13 + payload.len());
    out.put_u32(9 + payload.len() as u32);
    out.put_u8(FXP_DATA);
    out.put_u32(id);
    out.put_u32(payload.len() as u32);
    out.extend_from_slice(payload);
    out.freeze()
}

pub(crate) fn encode(id: u32, kind: Kind, result: Result<OpOutput, FsError>) -> Bytes {
    let packet = match result {
        Err(e) => {
            let SftpStatus(code, msg) = SftpStatus::from(&e);
            status(id, code, &msg)
        }
        Ok(out) => match (kind, out) {
            (_, OpOutput::Eof) => status(id, StatusCode::Eof, "end of file"),
            (Kind::Handle, OpOutput::Handle(h)) => Packet::Handle(HandleReply {
                id,
                handle: format!("{h:x}"),
            }),
            (Kind::Data, OpOutput::Data(d)) => return data_reply(id, &d),
            (Kind::Attrs, OpOutput::Attrs(a)) => Packet::Attrs(russh_sftp::protocol::Attrs {
                id,
                attrs: to_wire(&a),
            }),
            (Kind::Name, OpOutput::Entries(es)) => Packet::Name(Name {
                id,
                files: es
                    .iter()
                    .map(|e| File::new(e.name.clone(), to_wire(&e.attrs)))
                    .collect(),
            }),
            (Kind::Name, OpOutput::Path(p)) => Packet::Name(Name {
                id,
                files: vec![File {
                    filename: p.clone(),
                    longname: p,
                    attrs: FileAttributes::empty(),
                }],
            }),
            (Kind::Extended, OpOutput::VfsStats(v)) => {
                let mut out = BytesMut::with_capacity(88);
                for n in [
                    v.block_size,
                    v.fragment_size,
                    v.blocks,
                    v.blocks_free,
                    v.blocks_avail,
                    v.inodes,
                    v.inodes_free,
                    v.inodes_avail,
                    v.fs_id,
                    v.flags,
                    v.name_max,
                ] {
                    out.put_u64(n);
                }
                Packet::ExtendedReply(russh_sftp::protocol::ExtendedReply {
                    id,
                    data: out.to_vec(),
                })
            }
            (_, OpOutput::Done) => status(id, StatusCode::Ok, "ok"),
            _ => status(
                id,
                StatusCode::Failure,
                "internal: reply does not fit the request",
            ),
        },
    };
    Bytes::try_from(packet).unwrap_or_else(|_| Bytes::new())
}

#[cfg(test)]
mod tests {
    use russh_sftp::protocol::{Data, Open};

    use crate::fs::{DirEntry, FileAttrs};

    use super::*;

    fn open_packet() -> Bytes {
        let p = Packet::Open(Open {
            id: 7,
            filename: "/files/a.txt".into(),
            pflags: OpenFlags::READ,
            attrs: FileAttributes::empty(),
        });
        // Strip the length prefix: the reader hands `decode` the packet body.
        Bytes::try_from(p).unwrap().slice(4..)
    }

    /// WRITE and DATA payloads are slices of the packet they came in (the vendored codec's
    /// patch), and a payload longer than its packet is an error, not a panic.
    #[test]
    fn write_and_data_payloads_are_decoded_without_a_copy() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        let mut write = BytesMut::new();
        write.put_u8(6); // SSH_FXP_WRITE
        write.put_u32(9);
        write.put_u32(2);
        write.put_slice(b"1f");
        write.put_u64(1 << 33);
        write.put_u32(payload.len() as u32);
        write.put_slice(&payload);
        let write = write.freeze();
        let range = write.as_ptr_range();
        match decode(write.clone()) {
            Decoded::Op(
                9,
                Kind::Status,
                FileOp::Write {
                    handle,
                    offset,
                    data,
                },
            ) => {
                assert_eq!((handle, offset), (0x1f, 1 << 33));
                assert_eq!(&data[..], &payload[..]);
                assert!(range.contains(&data.as_ptr()), "the payload was copied");
            }
            _ => panic!("not decoded as a write"),
        }
        let reply = data_reply(4, &payload).slice(4..); // the codec reads past the length
        let range = reply.as_ptr_range();
        match Packet::try_from(&mut reply.clone()) {
            Ok(Packet::Data(d)) => {
                assert_eq!((d.id, &d.data[..]), (4, &payload[..]));
                assert!(range.contains(&d.data.as_ptr()), "the payload was copied");
            }
            other => panic!("not decoded as data: {other:?}"),
        }
        for cut in [1, 100, payload.len()] {
            let mut short = reply.slice(..reply.len() - cut);
            assert!(Packet::try_from(&mut short).is_err(), "cut {cut}");
            assert!(matches!(
                decode(write.slice(..write.len() - cut)),
                Decoded::Malformed(_)
            ));
        }
    }

    #[test]
    fn data_replies_are_what_the_codec_would_encode() {
        for payload in [
            Vec::new(),
            b"x".to_vec(),
            (0..=255u8).cycle().take(70_000).collect(),
        ] {
            let ours = encode(
                7,
                Kind::Data,
                Ok(OpOutput::Data(Bytes::from(payload.clone()))),
            );
            let codec = Bytes::try_from(Packet::Data(Data {
                id: 7,
                data: payload.into(),
            }))
            .unwrap();
            assert_eq!(ours, codec);
        }
    }

    #[test]
    fn a_valid_request_decodes() {
        match decode(open_packet()) {
            Decoded::Op(7, Kind::Handle, FileOp::Open { path, mode }) => {
                assert_eq!(path, "/files/a.txt");
                assert!(mode.read && !mode.writes());
            }
            _ => panic!("not an open"),
        }
    }

    #[test]
    fn every_prefix_of_a_valid_request_is_refused_or_read_the_same_never_a_panic() {
        let full = open_packet();
        // type(1) id(4) filename(4+12) pflags(4) attrs-flags(4). The codec reads wholly absent
        // trailing attributes as empty; every other prefix must be refused.
        let through_pflags = 1 + 4 + 4 + 12 + 4;
        for n in 0..full.len() {
            match decode(full.slice(..n)) {
                Decoded::Malformed(_) => {
                    assert_ne!(n, through_pflags, "prefix of {n} bytes refused")
                }
                Decoded::Op(7, _, FileOp::Open { path, .. }) => {
                    assert_eq!(n, through_pflags, "prefix of {n} bytes accepted");
                    assert_eq!(path, "/files/a.txt");
                }
                _ => panic!("prefix of {n} bytes read as something else"),
            }
        }
    }

    #[test]
    fn names_are_kept_byte_for_byte_in_requests_and_replies() {
        // RENAME "/a" -> "/b\xfe": a lossy decode made it "/b\u{FFFD}", a name the client
        // never sent.
        let body = Bytes::from_static(&[
            18, 0, 0, 0, 9, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 3, b'/', b'b', 0xfe,
        ]);
        let Decoded::Op(9, _, FileOp::Rename { from, to, .. }) = decode(body) else {
            panic!("expected a rename");
        };
        assert_eq!(
            (&*from, &*portcullis_names::unescape(&to)),
            ("/a", &b"/b\xfe"[..])
        );
        // U+FFFD itself, sent as UTF-8, is a name like any other, and not the same one.
        let body = Bytes::from_static(&[17, 0, 0, 0, 4, 0, 0, 0, 4, b'/', 0xef, 0xbf, 0xbd]);
        let Decoded::Op(4, Kind::Attrs, FileOp::Stat { path, .. }) = decode(body) else {
            panic!("expected a stat");
        };
        assert_eq!(path, "/\u{FFFD}");
        // An extension's names too.
        let mut body = BytesMut::new();
        body.put_u8(200);
        body.put_u32(5);
        for s in [&b"hardlink@openssh.com"[..], b"/x\xe9", b"/y"] {
            body.put_u32(s.len() as u32);
            body.put_slice(s);
        }
        let Decoded::Op(5, _, FileOp::Hardlink { from, .. }) = decode(body.freeze()) else {
            panic!("expected a hardlink");
        };
        assert_eq!(&*portcullis_names::unescape(&from), b"/x\xe9");
        // A listed name goes back out as the bytes it was read as.
        let name = portcullis_names::escape(b"caf\xe9").into_owned();
        let entry = DirEntry {
            name,
            attrs: FileAttrs::default(),
        };
        let reply = encode(1, Kind::Name, Ok(OpOutput::Entries(vec![entry])));
        let needle: &[u8] = b"\0\0\0\x04caf\xe9";
        assert!(
            reply.windows(needle.len()).any(|w| w == needle),
            "{reply:x?}"
        );
    }

    #[test]
    fn an_unknown_request_type_gets_op_unsupported_with_its_id() {
        let body = Bytes::from_static(&[99, 0, 0, 0, 42, 1, 2, 3]);
        match decode(body) {
            Decoded::Refused(Packet::Status(s), request, _) => {
                assert_eq!((s.id, s.status_code), (42, StatusCode::OpUnsupported));
                assert_eq!(request, "sftp type 99", "audited as what it was");
            }
            _ => panic!("expected a refusal"),
        }
    }

    #[test]
    fn errors_map_to_sftp_codes_at_the_edge() {
        for (e, code) in [
            (FsError::NotFound, StatusCode::NoSuchFile),
            (FsError::Denied("x".into()), StatusCode::PermissionDenied),
            (FsError::Unsupported("x".into()), StatusCode::OpUnsupported),
            (FsError::Unavailable("x".into()), StatusCode::NoConnection),
            (FsError::AlreadyExists, StatusCode::Failure),
        ] {
            assert_eq!(SftpStatus::from(&e).0, code, "{e:?}");
        }
    }
}
