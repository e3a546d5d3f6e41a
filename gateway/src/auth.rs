//! Credentials and method chains: PHC password hashes, OpenSSH public keys, TOTP with replay
//! refusal, and OpenSSH-style `AuthenticationMethods` chains for MFA.
//!
//! Protocol-neutral: a front end reports which method succeeded for which user and asks what
//! comes next.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use russh::keys::PublicKey;
use totp_rs::{Algorithm, TOTP};

use portcullis_config::AuthChain;
/// An authentication method: the config's type ([`portcullis_config::AuthMethod`]).
pub use portcullis_config::AuthMethod as Method;

/// What to tell the client after a method succeeded.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every method of some chain is done.
    Complete,
    /// This method counted; these may come next.
    Partial(Vec<Method>),
    /// The method succeeded but no chain starts this way.
    NotAllowed,
}

/// The methods a user must pass, as alternative ordered chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chains(pub Vec<Vec<Method>>);

impl Chains {
    /// Chains as configured, or, when none are configured, each single method the user has a
    /// credential for, followed by a one-time code when the user has a TOTP secret
    /// ([`AuthChain::effective`]).
    pub fn new(
        configured: &[AuthChain],
        has_password: bool,
        has_keys: bool,
        has_certificate: bool,
        has_totp: bool,
    ) -> Chains {
        Chains(
            AuthChain::effective(
                configured,
                has_password,
                has_keys,
                has_certificate,
                has_totp,
            )
            .into_iter()
            .map(|c| c.0)
            .collect(),
        )
    }

    /// The methods that may come after `done`.
    pub fn next(&self, done: &[Method]) -> Vec<Method> {
        let mut out = Vec::new();
        for chain in &self.0 {
            if chain.len() > done.len()
                && chain.starts_with(done)
                && !out.contains(&chain[done.len()])
            {
                out.push(chain[done.len()]);
            }
        }
        out
    }

    /// Records that `method` succeeded after `done`.
    pub fn advance(&self, done: &mut Vec<Method>, method: Method) -> Progress {
        if !self.next(done).contains(&method) {
            return Progress::NotAllowed;
        }
        done.push(method);
        if self.0.iter().any(|c| c == done) {
            Progress::Complete
        } else {
            Progress::Partial(self.next(done))
        }
    }
}

/// Checks a password against a PHC hash (argon2id, argon2i/d, or bcrypt). Slow by design: call
/// it off the async threads.
pub fn verify_password(phc: &str, password: &str) -> bool {
    if phc.starts_with("$2") {
        return bcrypt::verify(password, phc).unwrap_or(false);
    }
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash that verification of an unknown user runs against, so that unknown and known users
/// cost the same time. Made per process from a random password nobody knows.
pub static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&format!("{:x}", rand::random::<u128>())));

/// A hash's cost class: its algorithm and parameters without salt or digest, e.g. `$2b$12$` or
/// `argon2id$v=19$m=19456,t=2,p=1`. Two hashes of one class take the same time to check.
pub fn cost_class(phc: &str) -> Option<String> {
    if phc.starts_with("$2") {
        return phc.get(..7).map(str::to_owned);
    }
    let h = PasswordHash::new(phc).ok()?;
    Some(format!(
        "{}$v={}${}",
        h.algorithm,
        h.version.unwrap_or_default(),
        h.params
    ))
}

/// What checking a password of one cost class costs here: a hash of that class nobody knows
/// the password of, and the time one check of it took.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub dummy: std::sync::Arc<String>,
    pub took: std::time::Duration,
}

/// Calibrates the class of `phc` once per process (a bcrypt class at cost 14 takes a second).
pub fn calibrate(phc: &str) -> Option<Calibration> {
    use std::sync::{Arc, LazyLock};
    static DONE: LazyLock<Mutex<HashMap<String, Calibration>>> = LazyLock::new(Default::default);
    let class = cost_class(phc)?;
    if let Some(c) = DONE.lock().expect("calibration lock poisoned").get(&class) {
        return Some(c.clone());
    }
    let secret = format!("{:x}", rand::random::<u128>());
    let dummy = if phc.starts_with("$2") {
        let cost = class.get(4..6)?.parse().ok()?;
        bcrypt::hash(&secret, cost).ok()?
    } else {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let h = PasswordHash::new(phc).ok()?;
        let argon = Argon2::new(
            h.algorithm.try_into().ok()?,
            h.version.unwrap_or_default().try_into().ok()?,
            argon2::Params::try_from(&h).ok()?,
        );
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).ok()?;
        argon
            .hash_password(secret.as_bytes(), &salt)
            .ok()?
            .to_string()
    };
    // The slower of two checks: the first may pay for cold caches, the second for a busy core.
    let took = (0..2)
        .map(|_| {
            let t = std::time::Instant::now();
            verify_password(&dummy, "");
            t.elapsed()
        })
        .max()
        .unwrap_or_default();
    let c = Calibration {
        dummy: Arc::new(dummy),
        took,
    };
    DONE.lock()
        .expect("calibration lock poisoned")
        .insert(class, c.clone());
    Some(c)
}

/// How long every failed secret check takes, whoever the user and whatever their hash: at
/// least `minimum`, and half as long again as the slowest class's check, so that neither a
/// user's existence nor their hash kind shows in the time a refusal takes.
pub fn failure_floor(minimum: std::time::Duration, classes: &[Calibration]) -> std::time::Duration {
    let slowest = classes.iter().map(|c| c.took).max().unwrap_or_default();
    minimum.max(slowest * 3 / 2)
}

/// The time a failure is held until: the first multiple of `floor` past `elapsed`, so that a
/// check slower than its calibration still ends on the same beat as every other refusal.
pub fn failure_deadline(
    floor: std::time::Duration,
    elapsed: std::time::Duration,
) -> std::time::Duration {
    if floor.is_zero() {
        return elapsed;
    }
    let beats = elapsed.as_nanos() / floor.as_nanos() + 1;
    floor * u32::try_from(beats).unwrap_or(u32::MAX)
}

/// Hashes a password as argon2id with a random salt, for `portcullis-gateway hash-password`.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt =
        SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

pub fn key_matches(keys: &[PublicKey], offered: &PublicKey) -> bool {
    keys.iter().any(|k| k.key_data() == offered.key_data())
}

/// A TOTP verifier (RFC 6238, SHA-1, 6 digits, 30 s, ±1 step).
pub struct Totp(TOTP);

impl Totp {
    pub fn from_base32(secret: &str) -> Result<Totp, String> {
        let bytes = totp_rs::Secret::Encoded(secret.trim().replace(' ', "").to_uppercase())
            .to_bytes()
            .map_err(|e| format!("TOTP secret is not base32: {e:?}"))?;
        TOTP::new(Algorithm::SHA1, 6, 0, 30, bytes)
            .map(Totp)
            .map_err(|e| format!("TOTP secret unusable: {e}"))
    }

    /// The time step the code is valid for, within one step either side of `now`.
    fn matching_step(&self, code: &str, now: u64) -> Option<u64> {
        [now.saturating_sub(30), now, now + 30]
            .into_iter()
            .find(|t| self.0.check(code, *t))
            .map(|t| t / 30)
    }

    pub fn generate(&self, time: u64) -> String {
        self.0.generate(time)
    }
}

/// Remembers the last accepted TOTP step per user, so that a code is good once. Lives for the
/// process, across config reloads.
#[derive(Default)]
pub struct TotpLedger(Mutex<HashMap<String, u64>>);

#[derive(Debug, PartialEq, Eq)]
pub enum TotpOutcome {
    Accepted,
    Wrong,
    Replayed,
}

impl TotpLedger {
    pub fn check(&self, user: &str, totp: &Totp, code: &str) -> TotpOutcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.check_at(user, totp, code, now)
    }

    pub fn check_at(&self, user: &str, totp: &Totp, code: &str, now: u64) -> TotpOutcome {
        let Some(step) = totp.matching_step(code.trim(), now) else {
            return TotpOutcome::Wrong;
        };
        let mut used = self.0.lock().expect("ledger lock poisoned");
        match used.get(user) {
            Some(last) if *last >= step => TotpOutcome::Replayed,
            _ => {
                used.insert(user.to_owned(), step);
                TotpOutcome::Accepted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_require_every_method_in_order() {
        let c = Chains::new(
            &[
                "publickey,password".parse().unwrap(),
                "publickey,keyboard-interactive".parse().unwrap(),
            ],
            true,
            true,
            false,
            false,
        );
        let mut done = vec![];
        assert_eq!(c.advance(&mut done, Method::Password), Progress::NotAllowed);
        assert_eq!(
            c.advance(&mut done, Method::PublicKey),
            Progress::Partial(vec![Method::Password, Method::KeyboardInteractive])
        );
        assert_eq!(
            c.advance(&mut done, Method::KeyboardInteractive),
            Progress::Complete
        );
    }

    #[test]
    fn default_chains_are_single_methods_with_credentials() {
        let c = Chains::new(&[], true, false, false, false);
        assert_eq!(c.0, vec![vec![Method::Password]]);
        let cert = Chains::new(&[], true, false, true, false);
        assert_eq!(
            cert.0,
            vec![vec![Method::Certificate], vec![Method::Password]]
        );
        assert_eq!(
            c.advance(&mut vec![], Method::PublicKey),
            Progress::NotAllowed
        );
        assert_eq!(c.advance(&mut vec![], Method::Password), Progress::Complete);
    }

    #[test]
    fn a_totp_secret_without_chains_makes_the_code_a_required_second_step() {
        let c = Chains::new(&[], true, true, false, true);
        assert_eq!(
            c.0,
            vec![
                vec![Method::PublicKey, Method::KeyboardInteractive],
                vec![Method::Password, Method::KeyboardInteractive]
            ]
        );
        let mut done = vec![];
        assert_eq!(
            c.advance(&mut done, Method::Password),
            Progress::Partial(vec![Method::KeyboardInteractive])
        );
        assert_eq!(
            c.advance(&mut done, Method::KeyboardInteractive),
            Progress::Complete
        );
    }

    #[test]
    fn passwords_verify_against_argon2_and_bcrypt() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3creT"));
        let b = bcrypt::hash("pw", 4).unwrap();
        assert!(verify_password(&b, "pw"));
        assert!(!verify_password(&b, "px"));
        assert!(!verify_password("garbage", "pw"));
        assert!(!verify_password(&DUMMY_HASH, ""));
    }

    #[test]
    fn cost_classes_ignore_salt_and_digest_and_calibrate_to_a_matching_dummy() {
        let a = hash_password("one");
        let b = hash_password("two");
        assert_eq!(cost_class(&a), cost_class(&b));
        assert_eq!(cost_class(&a).unwrap(), "argon2id$v=19$m=19456,t=2,p=1");
        let cheap = bcrypt::hash("pw", 4).unwrap();
        let dearer = bcrypt::hash("pw", 6).unwrap();
        assert_eq!(cost_class(&cheap).unwrap(), "$2b$04$");
        assert_ne!(cost_class(&cheap), cost_class(&dearer));
        assert_eq!(cost_class("garbage"), None);
        let c = calibrate(&dearer).unwrap();
        assert_eq!(cost_class(&c.dummy), cost_class(&dearer));
        assert!(!verify_password(&c.dummy, "pw"));
        let c2 = calibrate(&a).unwrap();
        assert_eq!(cost_class(&c2.dummy), cost_class(&a));
        // Cached: the same dummy the second time.
        assert_eq!(calibrate(&b).unwrap().dummy, c2.dummy);
    }

    #[test]
    fn failures_end_on_the_floor_or_a_multiple_of_it() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let cal = |t| Calibration {
            dummy: Default::default(),
            took: ms(t),
        };
        assert_eq!(failure_floor(ms(1000), &[cal(100), cal(300)]), ms(1000));
        assert_eq!(failure_floor(ms(1000), &[cal(100), cal(1800)]), ms(2700));
        assert_eq!(failure_deadline(ms(1000), ms(130)), ms(1000));
        assert_eq!(failure_deadline(ms(1000), ms(1000)), ms(2000));
        assert_eq!(failure_deadline(ms(1000), ms(2500)), ms(3000));
        assert_eq!(failure_deadline(Duration::ZERO, ms(7)), ms(7));
    }

    #[test]
    fn a_totp_code_is_good_once() {
        let totp = Totp::from_base32("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP").unwrap();
        let ledger = TotpLedger::default();
        let now = 1_700_000_000;
        let code = totp.generate(now);
        assert_eq!(
            ledger.check_at("u", &totp, &code, now),
            TotpOutcome::Accepted
        );
        assert_eq!(
            ledger.check_at("u", &totp, &code, now + 1),
            TotpOutcome::Replayed
        );
        assert_eq!(
            ledger.check_at("u", &totp, "000000", now),
            TotpOutcome::Wrong
        );
        // An older code than the last used one is refused too.
        let old = totp.generate(now - 30);
        assert_eq!(
            ledger.check_at("u", &totp, &old, now),
            TotpOutcome::Replayed
        );
        // Another user has their own ledger entry.
        assert_eq!(
            ledger.check_at("v", &totp, &code, now),
            TotpOutcome::Accepted
        );
        let next = totp.generate(now + 30);
        assert_eq!(
            ledger.check_at("u", &totp, &next, now + 30),
            TotpOutcome::Accepted
        );
    }
}
