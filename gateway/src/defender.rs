//! The defender: failed logins score points against their source address and user name; a
//! score that reaches its threshold within the observation window bans the address or locks
//! the user, for a time that doubles with each repeat. Bans are shared with the other replicas
//! over authenticated UDP, so an attacker cannot go on at the next pod.
//!
//! One enforcement point each: the accept loop closes a banned address before the banner
//! (`server.rs`), and `login::Attempt::admissible` refuses a banned address's or locked user's
//! next method. Addresses in the safe zones are never scored or banned.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use portcullis_config::DefenderSettings;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::{net::UdpSocket, sync::Notify};

use crate::{audit::Event, auth::Method, login::reason, runtime::Runtime, state::Shared};

/// Points for one failed login.
const FAILED_LOGIN: u32 = 1;
/// Points for a failed login under a user name that does not exist (guessing names).
const UNKNOWN_USER: u32 = 2;
/// Points for a connection closed for abuse before any login (e.g. a command flood).
const ABUSE: u32 = 5;
/// Scored addresses and users kept at most; past it, stale entries are dropped first and then
/// new ones are not scored (memory stays bounded under a spray from many addresses).
const MAX_TRACKED: usize = 100_000;
/// How often every ban in force is sent to the peers again (a lost datagram or a restarted
/// pod catches up within this).
const SHARE_EVERY: Duration = Duration::from_secs(3);
/// Bans per datagram; each is well under 100 bytes of JSON.
const BANS_PER_DATAGRAM: usize = 200;
/// A datagram older or newer than this is dropped (replay window).
const FRESH_FOR: u64 = 60;
/// A banned address's refused connections are audited at most once per this.
const QUIET_FOR: Duration = Duration::from_secs(60);

/// What a score or ban is held against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "key", rename_all = "lowercase")]
pub enum Target {
    Address(IpAddr),
    User(String),
}

impl Target {
    /// An address as bans hold it: IPv4-mapped IPv6 as IPv4, other IPv6 by its /64 (one host
    /// commonly holds a whole /64).
    pub fn address(ip: IpAddr) -> Target {
        Target::Address(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Target::Address(_) => "address",
            Target::User(_) => "user",
        }
    }

    pub fn key(&self) -> String {
        match self {
            Target::Address(IpAddr::V6(v6)) => format!("{v6}/64"),
            Target::Address(ip) => ip.to_string(),
            Target::User(u) => u.clone(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.key())
    }
}

/// A ban in force until `until` (seconds since the epoch; replicas share wall-clock time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    #[serde(flatten)]
    pub target: Target,
    pub until: u64,
    /// 1 for a first ban, 2 for the next within `maxBanSeconds`, and so on.
    pub level: u32,
    pub reason: String,
    /// The replica that made it.
    pub origin: String,
}

pub struct Defender {
    /// This process's name among the replicas (random per start).
    node: String,
    inner: Mutex<Inner>,
    /// Wakes the sharing task when a ban is made here.
    fresh: Notify,
}

#[derive(Default)]
struct Inner {
    scores: HashMap<Target, VecDeque<(Instant, u32)>>,
    bans: HashMap<Target, Ban>,
    /// The last ban's level and end per target, so that a repeat lasts longer.
    history: HashMap<Target, (u32, u64)>,
    /// When a banned address's refusal was last audited.
    quiet: HashMap<IpAddr, Instant>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for Defender {
    fn default() -> Self {
        Defender {
            node: format!("{:016x}", rand::random::<u64>()),
            inner: Mutex::default(),
            fresh: Notify::new(),
        }
    }
}

impl Defender {
    pub fn node(&self) -> &str {
        &self.node
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("defender lock poisoned")
    }

    /// The ban in force on `target`, if any.
    pub fn ban_on(&self, target: &Target) -> Option<Ban> {
        let now = now_secs();
        self.inner()
            .bans
            .get(target)
            .filter(|b| b.until > now)
            .cloned()
    }

    /// Adds `points` against `target` at `at`; the ban this made, if it made one. A target
    /// already banned is not scored further (a ban is not prolonged by the attempts it stops).
    pub fn score(
        &self,
        s: &DefenderSettings,
        target: Target,
        points: u32,
        reason: &str,
        at: Instant,
    ) -> Option<Ban> {
        if !s.enabled {
            return None;
        }
        let threshold = match target {
            Target::Address(_) => s.threshold,
            Target::User(_) => s.user_threshold,
        };
        let window = Duration::from_secs(s.observation_seconds);
        let now = now_secs();
        // One lock from the ban check to the new ban: two failures at once make one ban.
        let mut inner = self.inner();
        if inner.bans.get(&target).is_some_and(|b| b.until > now) {
            return None;
        }
        if inner.scores.len() >= MAX_TRACKED && !inner.scores.contains_key(&target) {
            inner.scores.retain(|_, ev| {
                ev.back()
                    .is_some_and(|(t, _)| at.saturating_duration_since(*t) < window)
            });
            if inner.scores.len() >= MAX_TRACKED {
                return None;
            }
        }
        let events = inner.scores.entry(target.clone()).or_default();
        while events
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= window)
        {
            events.pop_front();
        }
        events.push_back((at, points));
        let total: u32 = events.iter().map(|(_, p)| p).sum();
        if total < threshold {
            return None;
        }
        inner.scores.remove(&target);
        let level = match inner.history.get(&target) {
            Some((level, end)) if now.saturating_sub(*end) < s.max_ban_seconds => level + 1,
            _ => 1,
        };
        let seconds = s
            .ban_seconds
            .saturating_mul(1u64 << (level - 1).min(32))
            .min(s.max_ban_seconds);
        let ban = Ban {
            target: target.clone(),
            until: now + seconds,
            level,
            reason: reason.to_owned(),
            origin: self.node.clone(),
        };
        inner.history.insert(target.clone(), (level, ban.until));
        inner.bans.insert(target, ban.clone());
        drop(inner);
        self.fresh.notify_one();
        Some(ban)
    }

    /// Takes in a ban a peer made, no longer than `max_seconds` from now; returns it when it
    /// is news here.
    pub fn merge(&self, mut ban: Ban, max_seconds: u64) -> Option<Ban> {
        let now = now_secs();
        ban.until = ban.until.min(now.saturating_add(max_seconds));
        if ban.until <= now {
            return None;
        }
        let mut inner = self.inner();
        if inner
            .bans
            .get(&ban.target)
            .is_some_and(|b| b.until >= ban.until)
        {
            return None;
        }
        inner.scores.remove(&ban.target);
        let level = inner.history.get(&ban.target).map_or(0, |h| h.0);
        inner
            .history
            .insert(ban.target.clone(), (level.max(ban.level), ban.until));
        inner.bans.insert(ban.target.clone(), ban.clone());
        Some(ban)
    }

    /// Every ban in force (expired ones are dropped on the way).
    pub fn active(&self) -> Vec<Ban> {
        let now = now_secs();
        let mut inner = self.inner();
        inner.bans.retain(|_, b| b.until > now);
        inner.quiet.retain(|_, t| t.elapsed() < QUIET_FOR);
        let mut v: Vec<Ban> = inner.bans.values().cloned().collect();
        v.sort_by_key(|b| b.target.key());
        v
    }

    /// Whether a banned address's refused connection is audited now: the first of each
    /// minute is, the rest are only counted (a banned client reconnecting in a loop must not
    /// flood the trail).
    pub fn audit_refusal(&self, ip: IpAddr) -> bool {
        let mut inner = self.inner();
        match inner.quiet.get(&ip) {
            Some(t) if t.elapsed() < QUIET_FOR => false,
            _ => {
                inner.quiet.insert(ip, Instant::now());
                true
            }
        }
    }
}

/// Whether `ip` is in the defender's safe zones.
pub fn is_safe(rt: &Runtime, ip: IpAddr) -> bool {
    rt.zone_of(ip, &rt.config.defender.safe_zones).is_some()
}

/// The ban that keeps `ip` out now, unless it is in a safe zone.
pub fn banned(shared: &Shared, rt: &Runtime, ip: IpAddr) -> Option<Ban> {
    if !rt.config.defender.enabled || is_safe(rt, ip) {
        return None;
    }
    shared.defender.ban_on(&Target::address(ip))
}

/// The lock that refuses `user`'s password and code logins from `ip`, unless it is safe.
pub fn locked(shared: &Shared, rt: &Runtime, ip: IpAddr, user: &str) -> Option<Ban> {
    if !rt.config.defender.enabled || is_safe(rt, ip) {
        return None;
    }
    shared.defender.ban_on(&Target::User(user.to_owned()))
}

/// Points a failed method scores against its address: only guesses count. A public key the
/// user does not have, or a method out of chain order, is what a legitimate client with
/// several keys does on every login, and a key cannot be guessed anyway.
fn points(method: Method, why: &str) -> u32 {
    let secret = matches!(method, Method::Password | Method::KeyboardInteractive);
    match why {
        reason::UNKNOWN_USER if secret => UNKNOWN_USER,
        reason::WRONG_PASSWORD
        | reason::WRONG_CODE
        | reason::CODE_REUSED
        | reason::TOO_MANY_LOGINS
        | reason::LOCKED
        | reason::CERTIFICATE_NOT_THE_USER => FAILED_LOGIN,
        _ => 0,
    }
}

/// A failed login: scores the address (and the user name, for a guessed secret), and audits
/// any ban that makes.
pub async fn failed_login(shared: &Shared, ip: IpAddr, user: &str, method: Method, why: &str) {
    let points = points(method, why);
    let rt = shared.runtime.load_full();
    if points == 0 || !rt.config.defender.enabled || is_safe(&rt, ip) {
        return;
    }
    let s = &rt.config.defender;
    let at = Instant::now();
    let because = format!("failed logins ({why})");
    let mut bans = Vec::new();
    bans.extend(
        shared
            .defender
            .score(s, Target::address(ip), points, &because, at),
    );
    if matches!(why, reason::WRONG_PASSWORD | reason::WRONG_CODE) {
        bans.extend(
            shared
                .defender
                .score(s, Target::User(user.to_owned()), 1, &because, at),
        );
    }
    for b in bans {
        announce(shared, &b, true).await;
    }
}

/// A connection closed for abuse before a login.
pub async fn abuse(shared: &Shared, ip: IpAddr, reason: &str) {
    let rt = shared.runtime.load_full();
    if !rt.config.defender.enabled || is_safe(&rt, ip) {
        return;
    }
    let ban = shared.defender.score(
        &rt.config.defender,
        Target::address(ip),
        ABUSE,
        reason,
        Instant::now(),
    );
    if let Some(b) = ban {
        announce(shared, &b, true).await;
    }
}

/// Audits and counts a ban that now applies here.
async fn announce(shared: &Shared, b: &Ban, local: bool) {
    let origin = if local { "local" } else { "peer" };
    shared
        .metrics
        .defender_bans
        .get_or_create(&vec![
            ("kind", b.target.kind().to_owned()),
            ("origin", origin.to_owned()),
        ])
        .inc();
    tracing::warn!(target = %b.target, until = b.until, level = b.level, origin, "defender ban");
    shared
        .audit
        .emit(Event::DefenderBan {
            kind: b.target.kind(),
            key: b.target.key(),
            until: chrono::DateTime::from_timestamp(b.until as i64, 0)
                .unwrap_or_default()
                .to_rfc3339(),
            seconds: b.until.saturating_sub(now_secs()),
            level: b.level,
            reason: b.reason.clone(),
            origin: b.origin.clone(),
            shared_by_peer: !local,
        })
        .await;
}

/// What replicas send each other.
#[derive(Serialize, Deserialize)]
struct Gossip {
    node: String,
    /// Seconds since the epoch when sent.
    sent: u64,
    bans: Vec<Ban>,
}

type HmacSha256 = Hmac<Sha256>;

/// A datagram: HMAC-SHA256 (32 bytes) of the JSON that follows it.
fn seal(key: &[u8], g: &Gossip) -> Vec<u8> {
    let body = serde_json::to_vec(g).expect("gossip serializes");
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&body);
    let mut out = mac.finalize().into_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The gossip in a datagram, if its MAC is right under `key` and it is fresh.
fn open(key: &[u8], datagram: &[u8], now: u64) -> Result<Gossip, &'static str> {
    if datagram.len() <= 32 {
        return Err("too short");
    }
    let (tag, body) = datagram.split_at(32);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| "bad MAC")?;
    let g: Gossip = serde_json::from_slice(body).map_err(|_| "not gossip")?;
    if g.sent.abs_diff(now) > FRESH_FOR {
        return Err("stale");
    }
    Ok(g)
}

/// Shares bans with the peers until shutdown: each new ban at once, all of them every few
/// seconds; takes in theirs.
pub async fn share(shared: Arc<Shared>, socket: UdpSocket) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(SHARE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => receive(&shared, &buf[..n], from).await,
                Err(e) => {
                    tracing::warn!(error = %e, "defender receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick() => send(&shared, &socket).await,
            _ = shared.defender.fresh.notified() => send(&shared, &socket).await,
            _ = shutdown.changed() => break,
        }
    }
}

async fn send(shared: &Shared, socket: &UdpSocket) {
    let rt = shared.runtime.load_full();
    let (Some(peers), Some(key)) = (&rt.config.defender.peers, &rt.defender_key) else {
        return;
    };
    let bans = shared.defender.active();
    if bans.is_empty() {
        return;
    }
    let datagrams: Vec<Vec<u8>> = bans
        .chunks(BANS_PER_DATAGRAM)
        .map(|c| {
            seal(
                key,
                &Gossip {
                    node: shared.defender.node.clone(),
                    sent: now_secs(),
                    bans: c.to_vec(),
                },
            )
        })
        .collect();
    for name in &peers.addresses {
        let addrs =
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(name)).await
            {
                Ok(Ok(a)) => a.collect::<Vec<SocketAddr>>(),
                _ => {
                    tracing::debug!(peer = %name, "defender peer does not resolve");
                    continue;
                }
            };
        for to in addrs {
            for d in &datagrams {
                if let Err(e) = socket.send_to(d, to).await {
                    tracing::debug!(peer = %to, error = %e, "defender send failed");
                }
            }
        }
    }
}

async fn receive(shared: &Shared, datagram: &[u8], from: SocketAddr) {
    let rt = shared.runtime.load_full();
    let Some(key) = &rt.defender_key else {
        return;
    };
    let g = match open(key, datagram, now_secs()) {
        Ok(g) => g,
        Err(why) => {
            shared
                .metrics
                .defender_dropped
                .get_or_create(&vec![("reason", why.to_owned())])
                .inc();
            tracing::debug!(%from, why, "defender datagram dropped");
            return;
        }
    };
    if g.node == shared.defender.node || !rt.config.defender.enabled {
        return;
    }
    for b in g.bans {
        if let Some(b) = shared.defender.merge(b, rt.config.defender.max_ban_seconds) {
            announce(shared, &b, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DefenderSettings {
        DefenderSettings {
            threshold: 4,
            user_threshold: 3,
            observation_seconds: 60,
            ban_seconds: 100,
            max_ban_seconds: 350,
            ..Default::default()
        }
    }

    #[test]
    fn a_score_past_the_threshold_bans_and_repeats_ban_longer() {
        let d = Defender::default();
        let s = settings();
        let ip = Target::address("198.18.0.7".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(d.score(&s, ip.clone(), 1, "x", t0), None);
        }
        let ban = d.score(&s, ip.clone(), 1, "x", t0).expect("banned at 4");
        assert_eq!(ban.level, 1);
        assert!((99..=101).contains(&(ban.until - now_secs())));
        assert_eq!(d.ban_on(&ip), Some(ban.clone()));
        // Banned: no more scoring, so no prolonging.
        assert_eq!(d.score(&s, ip.clone(), 10, "x", t0), None);
        // The ban ends; the next one lasts twice as long, and the third is capped.
        d.inner().bans.get_mut(&ip).unwrap().until = now_secs();
        assert_eq!(d.ban_on(&ip), None);
        let second = d.score(&s, ip.clone(), 4, "x", t0).unwrap();
        assert_eq!(second.level, 2);
        assert!((199..=201).contains(&(second.until - now_secs())));
        d.inner().bans.get_mut(&ip).unwrap().until = now_secs();
        let third = d.score(&s, ip.clone(), 4, "x", t0).unwrap();
        assert_eq!(third.level, 3);
        assert!((349..=351).contains(&(third.until - now_secs())));
    }

    #[test]
    fn points_older_than_the_window_do_not_count() {
        let d = Defender::default();
        let s = settings();
        let user = Target::User("alice".into());
        let t0 = Instant::now();
        assert_eq!(d.score(&s, user.clone(), 2, "x", t0), None);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(d.score(&s, user.clone(), 2, "x", later), None);
        assert!(d.score(&s, user.clone(), 1, "x", later).is_some());
        // Disabled: nothing is scored.
        let off = DefenderSettings {
            enabled: false,
            ..settings()
        };
        let other = Target::User("bob".into());
        assert_eq!(d.score(&off, other.clone(), 100, "x", t0), None);
        assert_eq!(d.ban_on(&other), None);
    }

    #[test]
    fn ipv6_is_banned_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a = Target::address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Target::address("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.key(), "2001:db8:1:2::/64");
        assert_ne!(a, Target::address("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(
            Target::address("::ffff:198.18.0.1".parse().unwrap()),
            Target::address("198.18.0.1".parse().unwrap())
        );
    }

    #[test]
    fn merged_bans_are_news_once_and_capped_to_the_local_maximum() {
        let d = Defender::default();
        let now = now_secs();
        let ban = Ban {
            target: Target::User("alice".into()),
            until: now + 10_000,
            level: 1,
            reason: "x".into(),
            origin: "peer".into(),
        };
        let got = d.merge(ban.clone(), 300).expect("news");
        assert!(got.until <= now_secs() + 300);
        assert_eq!(d.merge(got.clone(), 300), None, "not news twice");
        let expired = Ban {
            until: now - 1,
            target: Target::User("bob".into()),
            ..ban
        };
        assert_eq!(d.merge(expired, 300), None);
        assert_eq!(d.active().len(), 1);
    }

    #[test]
    fn gossip_opens_only_under_the_key_and_while_fresh() {
        let key = [7u8; 32];
        let g = Gossip {
            node: "n".into(),
            sent: 1_000,
            bans: vec![Ban {
                target: Target::address("198.18.0.1".parse().unwrap()),
                until: 2_000,
                level: 1,
                reason: "r".into(),
                origin: "n".into(),
            }],
        };
        let d = seal(&key, &g);
        assert_eq!(open(&key, &d, 1_030).unwrap().bans, g.bans);
        assert_eq!(open(&[8u8; 32], &d, 1_030).err(), Some("bad MAC"));
        assert_eq!(open(&key, &d, 1_100).err(), Some("stale"));
        let mut tampered = d.clone();
        let last = tampered.len() - 3;
        tampered[last] ^= 1;
        assert_eq!(open(&key, &tampered, 1_030).err(), Some("bad MAC"));
        assert_eq!(open(&key, &d[..20], 1_030).err(), Some("too short"));
    }

    #[test]
    fn a_refused_address_is_audited_once_a_minute() {
        let d = Defender::default();
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        assert!(d.audit_refusal(ip));
        assert!(!d.audit_refusal(ip));
        assert!(d.audit_refusal("198.18.0.10".parse().unwrap()));
    }
}
