//! Process-wide state shared by listeners, sessions and the admin port.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::{audit::Auditor, auth::TotpLedger, metrics::Metrics, runtime::Runtime};

pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub runtime: ArcSwap<Runtime>,
    pub audit: Auditor,
    pub metrics: Arc<Metrics>,
    pub totp: TotpLedger,
    /// Turns true once on SIGTERM.
    pub shutdown: watch::Sender<bool>,
    pub conns: ConnTracker,
}

impl Shared {
    pub fn new(runtime: Runtime, audit: Auditor, metrics: Arc<Metrics>) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            audit,
            metrics,
            totp: TotpLedger::default(),
            shutdown: watch::Sender::new(false),
            conns: ConnTracker::default(),
        })
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Counts open connections, globally and per source IP, and hands out slots within limits.
#[derive(Default)]
pub struct ConnTracker {
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    changed: Notify,
}

/// A connection's place in the count; released on drop.
pub struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl ConnTracker {
    /// A slot for a new connection from `ip`, or the reason there is none.
    pub fn acquire(
        shared: &Arc<Shared>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> Result<Slot, &'static str> {
        let mut c = shared.conns.counts.lock().expect("conn lock poisoned");
        if c.0 >= max {
            return Err("global session limit reached");
        }
        let per = c.1.entry(ip).or_default();
        if *per >= max_per_ip {
            return Err("per-IP session limit reached");
        }
        *per += 1;
        c.0 += 1;
        Ok(Slot {
            shared: shared.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.counts.lock().expect("conn lock poisoned").0
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let t = &self.shared.conns;
        let mut c = t.counts.lock().expect("conn lock poisoned");
        c.0 -= 1;
        if let Some(n) = c.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.1.remove(&self.ip);
            }
        }
        drop(c);
        t.changed.notify_waiters();
    }
}
