//! Data-connection rules that need no socket: passive port allocation, the replies that
//! advertise a port, and the checks that stop FTP bounce attacks (a `PORT` that points at a
//! third host, a passive port that a stranger connects to first).

use std::net::{IpAddr, Ipv4Addr};

use crate::{HostPort, Reply};

/// Why an active-mode target is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveRefusal {
    /// Active mode is off for this listener (the default: it cannot cross NAT and firewalls
    /// anyway, and it makes the gateway open connections into client networks).
    Disabled,
    /// The target is not the control connection's peer (the bounce attack).
    ThirdParty,
    /// A privileged port on the client (another classic bounce target).
    PrivilegedPort,
}

impl ActiveRefusal {
    pub fn reply(self) -> Reply {
        match self {
            ActiveRefusal::Disabled => Reply::new(502, "Active mode is disabled: use EPSV or PASV"),
            ActiveRefusal::ThirdParty => Reply::new(
                504,
                "PORT/EPRT must name the address this connection comes from",
            ),
            ActiveRefusal::PrivilegedPort => {
                Reply::new(504, "PORT/EPRT to a port below 1024 is refused")
            }
        }
    }
}

/// What a listener allows of active mode, with z/OS `FTP.DATA` semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivePolicy {
    /// `PORT`/`EPRT` are accepted at all.
    pub enabled: bool,
    /// `NOLOWPORTS`: targets below port 1024 are refused.
    pub no_low_ports: bool,
    /// `NOREDIRECT`: targets other than the client's own address are refused.
    pub no_redirect: bool,
}

impl ActivePolicy {
    /// Off: the default.
    pub const DISABLED: ActivePolicy = ActivePolicy {
        enabled: false,
        no_low_ports: true,
        no_redirect: true,
    };
}

/// Checks a `PORT`/`EPRT` target against the control connection's peer.
pub fn check_active(
    peer: IpAddr,
    target: HostPort,
    policy: ActivePolicy,
) -> Result<(), ActiveRefusal> {
    if !policy.enabled {
        return Err(ActiveRefusal::Disabled);
    }
    if policy.no_redirect && canonical(target.ip) != canonical(peer) {
        return Err(ActiveRefusal::ThirdParty);
    }
    if policy.no_low_ports && target.port < 1024 {
        return Err(ActiveRefusal::PrivilegedPort);
    }
    Ok(())
}

/// Whether a connection to a passive port may be the data connection: only from the control
/// connection's own address (no port stealing).
pub fn passive_peer_ok(control_peer: IpAddr, data_peer: IpAddr) -> bool {
    canonical(control_peer) == canonical(data_peer)
}

/// An IPv4-mapped IPv6 address as IPv4, so a dual-stack socket compares equal.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The configured passive range, handed out round-robin so a port just released is not
/// reused at once (a late connection from the last transfer cannot land in the next one).
#[derive(Debug)]
pub struct PassivePorts {
    min: u16,
    max: u16,
    next: u16,
    in_use: std::collections::BTreeSet<u16>,
}

impl PassivePorts {
    pub fn new(min: u16, max: u16) -> PassivePorts {
        assert!(min <= max, "the CRD and config validation keep min <= max");
        PassivePorts {
            min,
            max,
            next: min,
            in_use: Default::default(),
        }
    }

    /// A free port, or `None` when every port of the range is in use (reply 425).
    pub fn allocate(&mut self) -> Option<u16> {
        let span = u32::from(self.max - self.min) + 1;
        for _ in 0..span {
            let p = self.next;
            self.next = if p == self.max { self.min } else { p + 1 };
            if self.in_use.insert(p) {
                return Some(p);
            }
        }
        None
    }

    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` with the advertised address.
pub fn pasv_reply(advertised: Ipv4Addr, port: u16) -> Reply {
    let [a, b, c, d] = advertised.octets();
    Reply::new(
        227,
        format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{})",
            port >> 8,
            port & 0xff
        ),
    )
}

/// `229 Entering Extended Passive Mode (|||port|)`.
pub fn epsv_reply(port: u16) -> Reply {
    Reply::new(229, format!("Entering Extended Passive Mode (|||{port}|)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(ip: &str, port: u16) -> HostPort {
        HostPort {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    const STRICT: ActivePolicy = ActivePolicy {
        enabled: true,
        no_low_ports: true,
        no_redirect: true,
    };

    #[test]
    fn bounce_targets_are_refused() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(check_active(peer, hp("203.0.113.9", 40000), STRICT), Ok(()));
        assert_eq!(
            check_active(peer, hp("10.0.0.5", 40000), STRICT),
            Err(ActiveRefusal::ThirdParty)
        );
        assert_eq!(
            check_active(peer, hp("203.0.113.9", 25), STRICT),
            Err(ActiveRefusal::PrivilegedPort)
        );
        assert_eq!(
            check_active(peer, hp("203.0.113.9", 40000), ActivePolicy::DISABLED),
            Err(ActiveRefusal::Disabled)
        );
        // Each z/OS option on its own.
        let redirect_ok = ActivePolicy {
            no_redirect: false,
            ..STRICT
        };
        assert_eq!(
            check_active(peer, hp("10.0.0.5", 40000), redirect_ok),
            Ok(())
        );
        let low_ok = ActivePolicy {
            no_low_ports: false,
            ..STRICT
        };
        assert_eq!(check_active(peer, hp("203.0.113.9", 22), low_ok), Ok(()));
        // Dual-stack sockets see IPv4 peers as mapped IPv6.
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(
            check_active(mapped, hp("203.0.113.9", 40000), STRICT),
            Ok(())
        );
        assert!(passive_peer_ok(mapped, peer));
        assert!(!passive_peer_ok(peer, "203.0.113.10".parse().unwrap()));
    }

    #[test]
    fn passive_ports_round_robin_and_run_out() {
        let mut p = PassivePorts::new(30000, 30002);
        assert_eq!(p.allocate(), Some(30000));
        assert_eq!(p.allocate(), Some(30001));
        p.release(30000);
        // The released port is not reused at once.
        assert_eq!(p.allocate(), Some(30002));
        assert_eq!(p.allocate(), Some(30000));
        assert_eq!(p.allocate(), None);
        let mut one = PassivePorts::new(65535, 65535);
        assert_eq!(one.allocate(), Some(65535));
        assert_eq!(one.allocate(), None);
    }

    #[test]
    fn passive_replies() {
        assert_eq!(
            pasv_reply("192.0.2.1".parse().unwrap(), 30001).encode(),
            b"227 Entering Passive Mode (192,0,2,1,117,49)\r\n"
        );
        assert_eq!(
            epsv_reply(30001).encode(),
            b"229 Entering Extended Passive Mode (|||30001|)\r\n"
        );
    }
}
