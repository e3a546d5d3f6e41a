//! Process-wide state shared by listeners, sessions and the admin port.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, Weak},
};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::{
    audit::Auditor, auth::TotpLedger, defender::Defender, metrics::Metrics, runtime::Runtime,
    session::Session,
};

pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub runtime: ArcSwap<Runtime>,
    pub audit: Auditor,
    pub metrics: Arc<Metrics>,
    pub totp: TotpLedger,
    /// Turns true once on SIGTERM.
    pub shutdown: watch::Sender<bool>,
    /// Counts the configs installed since start: sessions watch it to learn at once when a
    /// reload withdrew their user's access.
    pub reloads: watch::Sender<u64>,
    pub conns: ConnTracker,
    pub password_checks: PasswordChecks,
    pub defender: Defender,
    /// The last config on disk that a reload refused, while it is still the one on disk; the
    /// admin port's `/config` reports it.
    pub refused: Mutex<Option<RefusedConfig>>,
    /// Every session started, weakly: at the end of the shutdown grace the ones still open are
    /// ended here, so that their transfers and the sessions themselves get end records.
    sessions: Mutex<Vec<Weak<Session>>>,
}

/// A config the gateway refused to put in force.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedConfig {
    pub config_hash: String,
    pub errors: Vec<String>,
}

impl Shared {
    /// Why a new `what` (`login`, `transfer`) is refused now, if it is: the audit trail cannot
    /// be made durable. Counted; the login and open paths ask here.
    pub fn audit_refusal(&self, what: &'static str) -> Option<Arc<String>> {
        let why = self.audit.refusal()?;
        self.metrics
            .audit_refusals
            .get_or_create(&vec![("refused", what.to_owned())])
            .inc();
        Some(why)
    }

    pub fn new(runtime: Runtime, audit: Auditor, metrics: Arc<Metrics>) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            audit,
            metrics,
            totp: TotpLedger::default(),
            shutdown: watch::Sender::new(false),
            reloads: watch::Sender::new(0),
            conns: ConnTracker::default(),
            password_checks: PasswordChecks::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                PASSWORD_QUEUE,
            ),
            defender: Defender::default(),
            refused: Mutex::new(None),
            sessions: Mutex::new(Vec::new()),
        })
    }

    /// Registers a started session (dropping the entries of sessions gone since).
    pub fn track_session(&self, session: &Arc<Session>) {
        let mut all = self.sessions.lock().expect("session list poisoned");
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(session));
    }

    /// The sessions still alive.
    pub fn live_sessions(&self) -> Vec<Arc<Session>> {
        let all = self.sessions.lock().expect("session list poisoned");
        all.iter().filter_map(Weak::upgrade).collect()
    }

    /// Puts a reloaded config in force and tells the sessions.
    pub fn install(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
        *self.refused.lock().expect("not poisoned") = None;
        self.reloads.send_modify(|n| *n += 1);
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Counts open connections, globally and per source IP, and hands out slots within limits;
/// connections not yet logged in are also counted per IP, against a smaller limit, so that
/// idle unauthenticated sockets cannot take all of an address's places.
#[derive(Default)]
pub struct ConnTracker {
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    pre_auth: Mutex<HashMap<IpAddr, usize>>,
    changed: Notify,
}

/// A connection's place in the count; released on drop.
pub struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// The connection's place among those not yet logged in: taken by the login, which drops
    /// it when a session starts.
    pub pre_auth: Option<PreAuth>,
}

/// A place among an address's connections not yet logged in; released on drop.
pub struct PreAuth {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut m = self
            .shared
            .conns
            .pre_auth
            .lock()
            .expect("conn lock poisoned");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl ConnTracker {
    /// A slot for a new connection from `ip`, or the reason there is none.
    pub fn acquire(
        shared: &Arc<Shared>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
        max_pre_auth_per_ip: usize,
    ) -> Result<Slot, &'static str> {
        let mut c = shared.conns.counts.lock().expect("conn lock poisoned");
        if c.0 >= max {
            return Err("global session limit reached");
        }
        if c.1.get(&ip).is_some_and(|n| *n >= max_per_ip) {
            return Err("per-IP session limit reached");
        }
        let mut pre = shared.conns.pre_auth.lock().expect("conn lock poisoned");
        let waiting = pre.entry(ip).or_default();
        if *waiting >= max_pre_auth_per_ip {
            if *waiting == 0 {
                pre.remove(&ip);
            }
            return Err("per-IP limit of connections not logged in reached");
        }
        *waiting += 1;
        *c.1.entry(ip).or_default() += 1;
        c.0 += 1;
        Ok(Slot {
            shared: shared.clone(),
            ip,
            pre_auth: Some(PreAuth {
                shared: shared.clone(),
                ip,
            }),
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

/// Password checks that may wait for a turn; past this a login is refused at once.
const PASSWORD_QUEUE: usize = 64;

/// Bounds the argon2id checks running at once. Each takes about 19 MiB and a core for tens of
/// milliseconds, so a storm of wrong passwords, unbounded, took the gateway's memory into
/// gigabytes. As many run as there are cores; a short queue waits its turn; beyond it a login
/// is refused at once (audited like any failure), before any hashing.
pub struct PasswordChecks {
    running: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    queue: usize,
}

/// A turn to check a password; the next one starts when it is dropped.
pub struct PasswordTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl PasswordChecks {
    pub fn new(at_once: usize, queue: usize) -> PasswordChecks {
        PasswordChecks {
            running: tokio::sync::Semaphore::new(at_once.max(1)),
            waiting: Default::default(),
            queue,
        }
    }

    /// Waits for a turn, or refuses when `queue` checks are already waiting.
    pub async fn turn(&self) -> Result<PasswordTurn<'_>, &'static str> {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.running.try_acquire() {
            return Ok(PasswordTurn { _permit: p });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(crate::login::reason::TOO_MANY_LOGINS);
        }
        let permit = self.running.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        permit
            .map(|p| PasswordTurn { _permit: p })
            .map_err(|_| "password checks stopped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_checks_run_a_few_at_a_time_and_refuse_past_the_queue() {
        let checks = std::sync::Arc::new(PasswordChecks::new(2, 3));
        let a = checks.turn().await.unwrap();
        let b = checks.turn().await.unwrap();
        // Three may wait...
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = checks.clone();
                tokio::spawn(async move { c.turn().await.map(drop) })
            })
            .collect();
        while checks.waiting.load(std::sync::atomic::Ordering::Acquire) < 3 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once.
        assert_eq!(
            checks.turn().await.err(),
            Some("too many logins in progress")
        );
        drop((a, b));
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert!(checks.turn().await.is_ok());
    }
}
