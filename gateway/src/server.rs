//! The connection loop shared by every listener: zone admission before any byte is sent,
//! global and per-IP connection limits, then a hand-off to the protocol's front end.

use std::{net::SocketAddr, sync::Arc};

use portcullis_config::{Listener, Protocol};
use tokio::net::TcpListener;

use crate::{
    audit::Event,
    defender, frontends,
    state::{ConnTracker, Shared},
};

/// Accepts on one listener until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: Listener, tcp: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    let ftps = listener
        .protocol
        .is_ftps()
        .then(|| frontends::ftps::ListenerCtx::new(listener.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let rt = shared.runtime.load();
        // Listener zones come from the config in force, so a reload that narrows them applies
        // to the next connection.
        let zones = rt
            .config
            .listeners
            .iter()
            .find(|l| l.name == listener.name)
            .map(|l| l.zones.clone())
            .unwrap_or_default();
        let Some(zone) = rt.zone_of(peer.ip(), &zones).map(str::to_owned) else {
            refuse(
                &shared,
                &listener.name,
                peer,
                "peer outside every admitted zone",
            )
            .await;
            continue;
        };
        if let Some(ban) = defender::banned(&shared, &rt, peer.ip()) {
            let reason = "banned by the defender";
            if shared.defender.audit_refusal(peer.ip()) {
                refuse(&shared, &listener.name, peer, reason).await;
            } else {
                // Counted, not audited again within the minute: a banned client looping on
                // connect must not flood the trail.
                count_refusal(&shared, reason);
            }
            tracing::debug!(%peer, until = ban.until, "refused: banned");
            continue;
        }
        let limits = &rt.config.limits;
        let slot = match ConnTracker::acquire(
            &shared,
            peer.ip(),
            limits.max_sessions,
            limits.max_sessions_per_ip,
            limits.max_unauthenticated_per_ip,
        ) {
            Ok(s) => s,
            Err(why) => {
                refuse(&shared, &listener.name, peer, why).await;
                continue;
            }
        };
        drop(rt);
        stream.set_nodelay(true).ok();
        let shared = shared.clone();
        let name = listener.name.clone();
        match listener.protocol {
            Protocol::Sftp => {
                tokio::spawn(frontends::sftp::serve_connection(
                    shared, stream, peer, name, zone, slot,
                ));
            }
            Protocol::Ftps | Protocol::FtpsImplicit => {
                let ctx = ftps.clone().expect("made above for FTPS listeners");
                tokio::spawn(frontends::ftps::serve_connection(
                    shared, stream, peer, ctx, zone, slot,
                ));
            }
        }
    }
    tracing::info!(listener = %listener.name, "stopped accepting");
}

/// Closes a connection before the banner (dropping the socket), and audits why.
async fn refuse(shared: &Shared, listener: &str, peer: SocketAddr, reason: &str) {
    count_refusal(shared, reason);
    shared
        .audit
        .emit(Event::ConnectionRefused {
            listener: listener.to_owned(),
            peer,
            reason: reason.to_owned(),
        })
        .await;
}

/// Counts a connection closed before the banner, by reason.
fn count_refusal(shared: &Shared, reason: &str) {
    shared
        .metrics
        .connections_refused
        .get_or_create(&vec![("reason", reason.to_owned())])
        .inc();
}
