//! Logging in on the control connection: `USER`, `PASS` and client certificates, through the
//! shared login rules (attempt limits, rejection delay, audit).

use portcullis_ftp_proto::Identified;

use crate::{
    auth::{Method, Progress},
    login::reason,
    runtime::UserEntry,
};

use super::Conn;

impl Conn {
    pub(super) fn max_attempts(&self) -> usize {
        self.shared.runtime.load().config.limits.max_auth_attempts
    }

    /// `USER`: a verified client certificate naming the user counts as the method
    /// `certificate`; it completes the login or a password must follow.
    pub(super) async fn identify(&mut self, user: &str) -> Identified {
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
            Progress::Complete if self.start_session(&u).await => Identified::Complete,
            _ => Identified::NeedPassword,
        }
    }

    pub(super) async fn authenticate(&mut self, user: &str, password: String) -> bool {
        let u = match self.attempt.check_password(user, password).await {
            Ok(u) => u,
            Err(why) => {
                self.fail(Method::Password, why).await;
                return false;
            }
        };
        match u.chains.advance(&mut self.attempt.done, Method::Password) {
            Progress::Complete => self.start_session(&u).await,
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
    pub(super) async fn fail(&mut self, method: Method, reason: &str) {
        self.failures += 1;
        self.attempt.fail(method, reason).await;
        self.attempt.done.clear();
    }

    /// Starts the session; false if the login was refused (`refused_login` says why).
    pub(super) async fn start_session(&mut self, u: &UserEntry) -> bool {
        match self.attempt.start_session(u, self.channel.clone()).await {
            Ok(session) => {
                self.session = Some(session);
                true
            }
            Err(why) => {
                self.refused_login = Some(why);
                false
            }
        }
    }
}
