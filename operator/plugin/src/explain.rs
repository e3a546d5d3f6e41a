//! `policy explain`: the decision a gateway compiled from these files makes for one request,
//! and why, step by step as the gateway takes them: listener admission by zone, the user, the
//! user's zones, the account, the login methods the protocol offers, then the path decision of
//! the gateway's own policy engine (`portcullis_gateway::policy`).

use std::{fmt, net::IpAddr};

use portcullis_config::{EndpointBackend, GatewayConfig, Protocol, Verb};
use portcullis_gateway::{
    auth::{Chains, Method},
    policy::{Location, Tree, VPath},
    runtime::{Zones, account_refusal},
};

/// The front end the request arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Front {
    Sftp,
    Ftps,
}

/// One request to explain.
pub struct Request<'a> {
    pub user: &'a str,
    pub from: IpAddr,
    pub front: Front,
    pub verb: Verb,
    pub path: &'a str,
}

/// The decision and everything that led to it.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub allow: bool,
    /// The rule that decides: the allowing role and mount, or the reason for the denial.
    pub rule: String,
    /// The step that decided a denial (`listener`, `user`, `zone`, `account`, `login`, `path`).
    pub step: &'static str,
    pub listener: Option<String>,
    pub zone: Option<String>,
    pub endpoint: Option<String>,
    pub backend: Option<String>,
    pub backend_path: Option<String>,
}

impl Decision {
    fn deny(step: &'static str, rule: String) -> Decision {
        Decision {
            allow: false,
            rule,
            step,
            listener: None,
            zone: None,
            endpoint: None,
            backend: None,
            backend_path: None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", if self.allow { "ALLOW" } else { "DENY" })?;
        writeln!(f, "rule:     {}", self.rule)?;
        if !self.allow {
            writeln!(f, "step:     {}", self.step)?;
        }
        let rows = [
            ("listener", &self.listener),
            ("zone", &self.zone),
            ("endpoint", &self.endpoint),
            ("backend", &self.backend),
            ("path", &self.backend_path),
        ];
        for (k, v) in rows {
            if let Some(v) = v {
                writeln!(f, "{k:<9} {v}")?;
            }
        }
        Ok(())
    }
}

/// The decision `config` makes for `req`, at `now`.
pub fn explain(
    config: &GatewayConfig,
    req: &Request,
    now: chrono::DateTime<chrono::Utc>,
) -> Decision {
    let zones = Zones::new(&config.zones);
    let offered = |p: Protocol| match req.front {
        Front::Sftp => p == Protocol::Sftp,
        Front::Ftps => matches!(p, Protocol::Ftps | Protocol::FtpsImplicit),
    };
    // Admission happens before any byte is sent: the first listener of the protocol whose
    // zones hold the peer.
    let Some((listener, zone)) = config
        .listeners
        .iter()
        .filter(|l| offered(l.protocol))
        .find_map(|l| Some((l, zones.zone_of(req.from, &l.zones)?)))
    else {
        let names: Vec<&str> = config
            .listeners
            .iter()
            .filter(|l| offered(l.protocol))
            .map(|l| l.name.as_str())
            .collect();
        return Decision::deny(
            "listener",
            if names.is_empty() {
                format!(
                    "the gateway has no {} listener",
                    match req.front {
                        Front::Sftp => "SFTP",
                        Front::Ftps => "FTPS",
                    }
                )
            } else {
                format!(
                    "{} is in no zone of listener(s) {}; the connection is closed before any byte is sent",
                    req.from,
                    names.join(", ")
                )
            },
        );
    };
    let mut d = Decision::deny("user", String::new());
    d.listener = Some(format!("{} ({})", listener.name, listener.address));
    let Some(user) = config.users.iter().find(|u| u.name == req.user) else {
        d.rule = format!("no user {} (a login name)", req.user);
        return d;
    };
    let Some(user_zone) = zones.zone_of(req.from, &user.zones) else {
        d.step = "zone";
        d.rule = format!(
            "{} is outside the user's zones ({})",
            req.from,
            user.zones.join(", ")
        );
        return d;
    };
    d.zone = Some(if user_zone == zone {
        zone.to_owned()
    } else {
        format!("{user_zone} (listener admitted by {zone})")
    });
    let expires = user
        .expires_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    if let Some(why) = account_refusal(user.disabled, expires, now) {
        d.step = "account";
        d.rule = why.to_owned();
        return d;
    }
    let chains = Chains::new(
        &user.auth_methods,
        user.password_hash.is_some(),
        !user.public_keys.is_empty(),
        !user.certificate_names.is_empty(),
        user.totp_secret_file.is_some(),
    );
    if req.front == Front::Ftps
        && !chains.0.iter().any(|c| {
            c.iter()
                .all(|m| matches!(m, Method::Password | Method::Certificate))
        })
    {
        d.step = "login";
        d.rule = "no authentication chain of this user can be completed over FTPS (password and certificate only)".into();
        return d;
    }
    let path = match VPath::parse(req.path) {
        Ok(p) => p,
        Err(e) => {
            d.step = "path";
            d.rule = e.to_string();
            return d;
        }
    };
    let tree = Tree::build(&user.roles, &config.roles);
    d.step = "path";
    // The gateway lists a directory above the mounts itself, without a rule (the session's
    // `list`).
    if req.verb == Verb::List
        && let Location::Virtual { children } = tree.locate(&path)
    {
        d.allow = true;
        d.rule = format!(
            "virtual directory: lists the mounts below it ({})",
            children.into_iter().collect::<Vec<_>>().join(", ")
        );
        return d;
    }
    match tree.authorize(req.verb, &path) {
        Ok(a) => {
            d.allow = true;
            d.rule = a.rule;
            d.endpoint = Some(a.mount.endpoint.clone());
            d.backend = config
                .endpoints
                .iter()
                .find(|e| e.name == a.mount.endpoint)
                .map(|e| match &e.backend {
                    EndpointBackend::Sftp(s) => {
                        format!("sftp://{}@{}", s.username, s.addresses.join(","))
                    }
                    EndpointBackend::Ftps(f) => {
                        format!("ftps://{}@{}", f.username, f.addresses.join(","))
                    }
                    EndpointBackend::Local(l) => format!("local {}", l.root),
                });
            d.backend_path = Some(a.backend_path);
        }
        Err(denied) => d.rule = denied.0,
    }
    d
}
