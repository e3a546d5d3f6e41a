//! Authentication methods and the chains of them a user must pass, as in OpenSSH's
//! `AuthenticationMethods`: typed once here, for the gateway's config, the CRDs and the tools.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A way to prove who one is.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthMethod {
    /// A password checked against the user's argon2id or bcrypt hash.
    #[serde(rename = "password")]
    Password,
    /// An OpenSSH public key (SFTP).
    #[serde(rename = "publickey")]
    PublicKey,
    /// A one-time code (TOTP), asked for over SSH keyboard-interactive.
    #[serde(rename = "keyboard-interactive")]
    KeyboardInteractive,
    /// A verified TLS client certificate whose identity names the user (FTPS).
    #[serde(rename = "certificate")]
    Certificate,
}

impl AuthMethod {
    pub const ALL: [AuthMethod; 4] = [
        AuthMethod::Password,
        AuthMethod::PublicKey,
        AuthMethod::KeyboardInteractive,
        AuthMethod::Certificate,
    ];

    /// The method a name stands for, as config and SSH spell it.
    pub fn parse(s: &str) -> Option<AuthMethod> {
        AuthMethod::ALL.into_iter().find(|m| m.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::PublicKey => "publickey",
            AuthMethod::KeyboardInteractive => "keyboard-interactive",
            AuthMethod::Certificate => "certificate",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Methods that must all succeed, in order, written as in OpenSSH: `password,keyboard-interactive`.
///
/// Parsing refuses names that are no method (the CRD's pattern refuses them first). What a
/// list of known names may still get wrong (a method twice, a one-time code alone, a method
/// the user has no credential for) is left to validation, which says where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthChain(pub Vec<AuthMethod>);

/// The pattern an [`AuthChain`] matches: known names, comma-separated, spaces allowed around.
pub const AUTH_CHAIN_PATTERN: &str = r"^ *(password|publickey|keyboard-interactive|certificate)( *, *(password|publickey|keyboard-interactive|certificate))* *$";

impl AuthChain {
    /// The chains of a user who sets none: each credential alone, followed by a one-time code
    /// when the user has a TOTP secret (a secret set is a second factor required, never one
    /// silently skipped).
    pub fn defaults(password: bool, keys: bool, certificate: bool, totp: bool) -> Vec<AuthChain> {
        [
            (certificate, AuthMethod::Certificate),
            (keys, AuthMethod::PublicKey),
            (password, AuthMethod::Password),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .map(|(_, m)| {
            let mut c = vec![m];
            if totp {
                c.push(AuthMethod::KeyboardInteractive);
            }
            AuthChain(c)
        })
        .collect()
    }

    /// The chains in force: as configured, or [`AuthChain::defaults`] when none are.
    pub fn effective(
        configured: &[AuthChain],
        password: bool,
        keys: bool,
        certificate: bool,
        totp: bool,
    ) -> Vec<AuthChain> {
        if configured.is_empty() {
            AuthChain::defaults(password, keys, certificate, totp)
        } else {
            configured.to_vec()
        }
    }

    pub fn contains(&self, m: AuthMethod) -> bool {
        self.0.contains(&m)
    }
}

impl FromStr for AuthChain {
    type Err = String;

    fn from_str(s: &str) -> Result<AuthChain, String> {
        s.split(',')
            .map(|m| {
                let m = m.trim();
                AuthMethod::parse(m).ok_or_else(|| {
                    format!(
                        "unknown authentication method {m:?} in {s:?}; use {}",
                        AuthMethod::ALL.map(AuthMethod::as_str).join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(AuthChain)
    }
}

impl fmt::Display for AuthChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

impl Serialize for AuthChain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuthChain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AuthChain, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for AuthChain {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuthChain".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 128,
            "pattern": AUTH_CHAIN_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_read_and_write_as_openssh_spells_them() {
        let c: AuthChain = " publickey , keyboard-interactive".parse().unwrap();
        assert_eq!(
            c.0,
            [AuthMethod::PublicKey, AuthMethod::KeyboardInteractive]
        );
        assert_eq!(c.to_string(), "publickey,keyboard-interactive");
        let e = "password,otp".parse::<AuthChain>().unwrap_err();
        assert!(
            e.contains(r#""otp""#) && e.contains("keyboard-interactive"),
            "{e}"
        );
        assert!("".parse::<AuthChain>().is_err());
        // Known names twice parse: validation says what is wrong with them, and where.
        assert!("password,password".parse::<AuthChain>().is_ok());
        // The CRD's pattern admits exactly what parses.
        let re = regex::Regex::new(AUTH_CHAIN_PATTERN).unwrap();
        for ok in [
            "password",
            "publickey,keyboard-interactive",
            " certificate , password ",
        ] {
            assert!(re.is_match(ok) && ok.parse::<AuthChain>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "otp",
            "password,",
            ",password",
            "password;publickey",
            "Password",
        ] {
            assert!(
                !re.is_match(bad) && bad.parse::<AuthChain>().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_user_without_chains_gets_each_credential_alone_then_the_code() {
        let d = AuthChain::defaults(true, true, false, true);
        assert_eq!(
            d.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "publickey,keyboard-interactive",
                "password,keyboard-interactive"
            ]
        );
        assert_eq!(AuthChain::defaults(false, false, false, true), []);
    }
}
