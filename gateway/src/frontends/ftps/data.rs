//! Data connections: passive offers and active targets, and the TLS handshake that must resume
//! the control connection's session.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt, stream::FuturesUnordered};
use portcullis_ftp_proto::{
    ActivePolicy, HostPort, Reply, check_active, epsv_reply, passive_peer_ok, pasv_reply,
};
use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{Conn, ListenerCtx};
use crate::audit::Event;

/// TLS handshakes on one passive port at once, while waiting for the client's own.
pub(super) const MAX_DATA_HANDSHAKES: usize = 4;
/// How long a passive port waits for another connection after one failed to resume.
pub(super) const RACE_GRACE: Duration = Duration::from_secs(2);

pub(super) enum DataPlan {
    Passive { tcp: TcpListener, _port: PortGuard },
    Active(SocketAddr),
}

pub(super) struct PortGuard {
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

impl Conn {
    /// `PASV`/`EPSV`: a port from the listener's range, bound on the control connection's
    /// local address; the old offer, if any, is withdrawn.
    pub(super) fn passive(&mut self, extended: bool) -> Reply {
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

    pub(super) async fn active(&mut self, hp: HostPort) -> Reply {
        self.data = None;
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

    pub(super) async fn refuse_data(&self, from: Option<SocketAddr>, reason: &str) {
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

    pub(super) fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.config.data_timeout_seconds)
    }

    /// The TCP data connection: the passive port's first connection from the client's own
    /// address (others are refused and audited), or the active target. A passive port stays
    /// open (returned with the stream) until a connection has proved it belongs to this
    /// control connection by resuming its TLS session.
    pub(super) async fn open_data(
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
    pub(super) async fn accept_passive(
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
    pub(super) async fn secure_data(
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
    pub(super) async fn handshake_data(
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
}
