//! A connection's way through a user's method chain, shared by every front end: who may try
//! which method from where, the audit record of each failure, and the session a completed
//! chain starts. The protocols differ only in how they ask for the next method.

use std::{net::SocketAddr, sync::Arc};

use crate::{
    audit::Event,
    auth::{self, Method},
    defender,
    runtime::{Runtime, UserEntry},
    session::{Login, Session},
    state::Shared,
};

/// Why a method failed, as audited (`logonFailure.reason`) and as the defender scores it: one
/// spelling shared by the places that refuse and the defender that counts.
pub mod reason {
    pub const UNKNOWN_USER: &str = "unknown user";
    pub const WRONG_PASSWORD: &str = "wrong password";
    pub const WRONG_CODE: &str = "wrong verification code";
    pub const CODE_REUSED: &str = "verification code already used";
    pub const CERTIFICATE_NOT_THE_USER: &str = "client certificate does not name the user";
    pub const TOO_MANY_LOGINS: &str = "too many logins in progress";
    pub const BANNED: &str = "source address banned by the defender";
    pub const LOCKED: &str = "user locked by the defender";
    pub const AUDIT_UNAVAILABLE: &str = "the audit trail cannot be made durable (failClosed)";
}

pub struct Attempt {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The listener's zone the peer was admitted by.
    pub zone: String,
    pub listener: String,
    pub protocol: &'static str,
    /// The user the methods in `done` were passed for.
    pub user: String,
    pub done: Vec<Method>,
    /// The connection's place among its address's connections not yet logged in; given up
    /// when the session starts.
    pub pre_auth: Option<crate::state::PreAuth>,
}

impl Attempt {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        zone: String,
        listener: String,
        protocol: &'static str,
    ) -> Attempt {
        Attempt {
            shared,
            peer,
            zone,
            listener,
            protocol,
            user: String::new(),
            done: Vec::new(),
            pre_auth: None,
        }
    }

    /// Starts over when the client switches user names between attempts.
    pub fn begin(&mut self, user: &str) {
        if self.user != user {
            self.user = user.to_owned();
            self.done.clear();
        }
    }

    /// The user, if it exists and may log in from here now with `method` next; otherwise the
    /// refusal reason.
    pub fn admissible(
        &self,
        rt: &Runtime,
        user: &str,
        method: Method,
    ) -> Result<Arc<UserEntry>, &'static str> {
        if defender::banned(&self.shared, rt, self.peer.ip()).is_some() {
            return Err(reason::BANNED);
        }
        if matches!(method, Method::Password | Method::KeyboardInteractive)
            && defender::locked(&self.shared, rt, self.peer.ip(), user).is_some()
        {
            return Err(reason::LOCKED);
        }
        let u = rt.users.get(user).ok_or(reason::UNKNOWN_USER)?;
        if rt.zone_of(self.peer.ip(), &u.zones).is_none() {
            return Err("source address outside the user's zones");
        }
        if let Some(why) = u.refusal(chrono::Utc::now()) {
            return Err(why);
        }
        if !u.chains.next(&self.done).contains(&method) {
            return Err("method not allowed at this step");
        }
        Ok(u.clone())
    }

    /// Checks a password for `user`: the user as it stands if it may use a password now and
    /// the password is right, else why not. A refusal takes the same time whoever the user:
    /// unknown and refused users are checked against a hash of the dearest configured class,
    /// and every refusal is held to the runtime's failure floor.
    pub async fn check_password(
        &mut self,
        user: &str,
        password: String,
    ) -> Result<Arc<UserEntry>, &'static str> {
        let started = tokio::time::Instant::now();
        self.begin(user);
        let rt = self.shared.runtime.load_full();
        let admitted = self.admissible(&rt, user, Method::Password);
        let hash = match &admitted {
            Ok(u) => u.password_hash.clone(),
            Err(_) => None,
        }
        .unwrap_or_else(|| rt.failure.dummy.as_str().to_owned());
        let outcome = match self.shared.password_checks.turn().await {
            Err(why) => Err(why),
            Ok(_turn) => {
                let ok =
                    tokio::task::spawn_blocking(move || auth::verify_password(&hash, &password))
                        .await
                        .unwrap_or(false);
                match admitted {
                    Ok(_) if !ok => Err(reason::WRONG_PASSWORD),
                    other => other,
                }
            }
        };
        if outcome.is_err() {
            self.hold_failure(&rt, started).await;
        }
        outcome
    }

    /// Holds a refused secret (password, verification code) until the failure floor, so
    /// that its timing tells nothing.
    pub async fn hold_failure(&self, rt: &Runtime, started: tokio::time::Instant) {
        let until = auth::failure_deadline(rt.failure.floor, started.elapsed());
        tokio::time::sleep_until(started + until).await;
    }

    /// The record of a failed login.
    fn failure(&self, method: String, reason: String) -> Event {
        Event::LogonFailure {
            user: self.user.clone(),
            peer: self.peer,
            zone: Some(self.zone.clone()),
            listener: self.listener.clone(),
            protocol: self.protocol.to_owned(),
            method,
            reason,
        }
    }

    /// Counts and audits a failed method.
    pub async fn fail(&self, method: Method, reason: &str) {
        self.shared.metrics.auth_failure(reason);
        self.shared
            .audit
            .record(self.failure(method.to_string(), reason.to_owned()))
            .await;
        defender::failed_login(&self.shared, self.peer.ip(), &self.user, method, reason).await;
    }

    /// The chain is complete: the session starts (audited as logon and session start), unless
    /// the audit trail cannot be made durable now: then the login is refused, audited as a
    /// failure (not counted by the defender: it is not the client's doing), and the error
    /// says why, for the reply.
    pub async fn start_session(
        &mut self,
        u: &UserEntry,
        channel: Option<String>,
    ) -> Result<Arc<Session>, Arc<String>> {
        if let Some(why) = self.shared.audit_refusal("login") {
            self.shared
                .audit
                .emit(self.failure(
                    self.done.last().map(|m| m.to_string()).unwrap_or_default(),
                    format!("{}: {why}", reason::AUDIT_UNAVAILABLE),
                ))
                .await;
            self.done.clear();
            return Err(why);
        }
        self.pre_auth = None;
        Ok(Session::start(
            self.shared.clone(),
            Login {
                user: &u.name,
                peer: self.peer,
                zone: &self.zone,
                listener: &self.listener,
                protocol: self.protocol,
                methods: self.done.iter().map(|m| m.to_string()).collect(),
                channel,
            },
        )
        .await)
    }
}
