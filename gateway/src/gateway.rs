//! Process lifecycle: compile the config, bind, serve, reload, and drain on SIGTERM.

use std::{
    path::Path,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use portcullis_config::PassiveSlice;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::{
    admin,
    audit::{Auditor, Event, ListenerInfo},
    defender,
    metrics::Metrics,
    reload, runtime, server,
    state::Shared,
};

/// Runs the gateway from a config file (or a directory holding `config.yaml`) until SIGTERM or
/// SIGINT, then drains. `passive_slice`: this replica's share of the FTPS passive ports.
pub async fn run(config: &Path, passive_slice: Option<PassiveSlice>) -> anyhow::Result<()> {
    let path = reload::config_file(config);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rt =
        runtime::compile(&text, &reload::config_base(&path), passive_slice).map_err(|errs| {
            anyhow::anyhow!(
                "config {} is invalid:\n{}",
                path.display(),
                errs.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    let metrics = Arc::new(Metrics::default());
    let audit = Auditor::start(&rt.config.audit, rt.audit_signer.clone(), metrics.clone())
        .context("opening the audit sink")?;
    let shipper = crate::audit::ship::Shipper::start(&rt.config.audit, metrics.clone())
        .map_err(anyhow::Error::msg)
        .context("starting the audit collector")?;

    let mut bound = Vec::new();
    for l in &rt.config.listeners {
        let tcp = TcpListener::bind(&l.address)
            .await
            .with_context(|| format!("binding listener {} on {}", l.name, l.address))?;
        bound.push((l.clone(), tcp));
    }
    let admin_tcp = match &rt.config.admin {
        Some(a) => Some(
            TcpListener::bind(&a.address)
                .await
                .with_context(|| format!("binding the admin port on {}", a.address))?,
        ),
        None => None,
    };
    let defender_udp = match &rt.config.defender.peers {
        Some(p) => Some(
            tokio::net::UdpSocket::bind(&p.listen)
                .await
                .with_context(|| format!("binding the defender's peer port on {}", p.listen))?,
        ),
        None => None,
    };
    let grace = Duration::from_secs(rt.config.shutdown_grace_seconds);
    audit
        .emit(Event::DaemonStart {
            version: env!("CARGO_PKG_VERSION"),
            config_hash: rt.hash.clone(),
            listeners: rt
                .config
                .listeners
                .iter()
                .map(|l| ListenerInfo {
                    name: l.name.clone(),
                    protocol: l.protocol.to_string(),
                    address: l.address.clone(),
                    zones: l.zones.clone(),
                })
                .collect(),
            algorithms: rt.algorithms.clone(),
            certificates: rt.certificate_info(),
            plaintext_endpoints: rt.plaintext_endpoints(),
        })
        .await;
    let shared = Shared::new(rt, audit.clone(), metrics);

    let ready = Arc::new(AtomicBool::new(false));
    if let Some(tcp) = admin_tcp {
        tokio::spawn(admin::serve(shared.clone(), tcp, ready.clone()));
    }
    let mut accepting = Vec::new();
    for (l, tcp) in bound {
        tracing::info!(listener = %l.name, address = %l.address, protocol = %l.protocol, "listening");
        accepting.push(tokio::spawn(server::serve(shared.clone(), l, tcp)));
    }
    if let Some(udp) = defender_udp {
        tokio::spawn(defender::share(shared.clone(), udp));
    }
    reload::spawn(shared.clone(), path.clone()).context("watching the config")?;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let open = shared.conns.open();
    tracing::info!(open, grace_seconds = grace.as_secs(), "draining");
    audit
        .emit(Event::ShutdownStarted {
            sessions: open,
            grace_seconds: grace.as_secs(),
        })
        .await;
    shared.shutdown.send_replace(true);
    for a in accepting {
        let _ = a.await;
    }
    let _ = tokio::time::timeout(grace, shared.conns.drained()).await;
    let sessions_left = shared.conns.open();
    // Past the grace: the sessions still open are ended here, so that each open transfer gets
    // its end record (not complete) and each session its end, before the trail is sealed.
    let left = shared.live_sessions();
    if !left.is_empty() {
        tracing::warn!(
            sessions = left.len(),
            "shutdown grace over: ending the open sessions"
        );
        let ending = futures::future::join_all(left.iter().map(|s| s.finish("gateway shut down")));
        if tokio::time::timeout(Duration::from_secs(5), ending)
            .await
            .is_err()
        {
            tracing::warn!("sessions did not end within 5 s; their end records may be missing");
        }
    }
    audit.emit(Event::ShutdownComplete { sessions_left }).await;
    audit.seal().await;
    if let Some(shipper) = &shipper
        && !shipper.drain(Duration::from_secs(5)).await
    {
        tracing::warn!(
            "the audit collector has not taken every record; the rest go at the next start"
        );
    }
    Ok(())
}

/// Compiles a config and returns every error, for `portcullis-gateway check`.
pub fn check(config: &Path, passive_slice: Option<PassiveSlice>) -> Result<String, Vec<String>> {
    let path = reload::config_file(config);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    runtime::compile(&text, &reload::config_base(&path), passive_slice)
        .map(|rt| rt.hash)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect())
}
