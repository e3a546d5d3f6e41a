//! One replica's share of the FTPS passive ports.
//!
//! Behind a Kubernetes Service, `ClientIP` session affinity is kept per Service port
//! (kube-proxy keys it by port and endpoint), so it does not carry a client from its control
//! connection's pod to the same pod on a data port. With more than one replica the operator
//! therefore gives each replica a disjoint slice of every passive range, and routes each
//! passive port of the Service to the one replica that offers it. This module is the one
//! definition of the slices, used by the gateway (`run --passive-slice K/N`) and the operator.

use std::{fmt, str::FromStr};

use crate::{GatewayConfig, PortRange};

/// Replica `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PassiveSlice {
    pub index: u16,
    pub count: u16,
}

impl FromStr for PassiveSlice {
    type Err = String;

    /// `K/N`, with `0 <= K < N`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected K/N with 0 <= K < N, e.g. 0/2");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.parse::<u16>().map_err(|_| bad())?,
            n.parse::<u16>().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(PassiveSlice { index, count })
    }
}

impl fmt::Display for PassiveSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl PortRange {
    /// The ports of `slice`: the range cut into `count` runs as even as can be (the first
    /// `len % count` runs have one port more). `None` when the range has fewer ports than
    /// there are replicas.
    pub fn slice(self, slice: PassiveSlice) -> Option<PortRange> {
        let len = u32::from(self.max) - u32::from(self.min) + 1;
        let (n, k) = (u32::from(slice.count), u32::from(slice.index));
        if n == 0 || k >= n || len < n {
            return None;
        }
        let (base, extra) = (len / n, len % n);
        let start = u32::from(self.min) + k * base + k.min(extra);
        let size = base + u32::from(k < extra);
        Some(PortRange {
            min: u16::try_from(start).ok()?,
            max: u16::try_from(start + size - 1).ok()?,
        })
    }
}

impl GatewayConfig {
    /// Narrows every FTPS listener's passive range to `slice`; an error names a listener
    /// whose range has fewer ports than there are replicas.
    pub fn slice_passive(&mut self, slice: PassiveSlice) -> Result<(), String> {
        for l in &mut self.listeners {
            if let Some(r) = l.passive_ports {
                l.passive_ports = Some(r.slice(slice).ok_or_else(|| {
                    format!(
                        "listener {}: passivePorts {}-{} has fewer ports than the {} replicas",
                        l.name, r.min, r.max, slice.count
                    )
                })?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u16, max: u16) -> PortRange {
        PortRange { min, max }
    }

    #[test]
    fn slices_cover_the_range_once_and_in_order() {
        for (min, max) in [(30000, 30009), (30000, 30000), (1024, 1030), (65500, 65535)] {
            for count in 1..=8u16 {
                let r = range(min, max);
                let slices: Vec<_> = (0..count)
                    .map(|index| r.slice(PassiveSlice { index, count }))
                    .collect();
                if u32::from(max - min) + 1 < u32::from(count) {
                    assert!(slices.iter().all(Option::is_none), "{min}-{max} / {count}");
                    continue;
                }
                let ports: Vec<u16> = slices
                    .iter()
                    .flat_map(|s| {
                        let s = s.expect("enough ports");
                        s.min..=s.max
                    })
                    .collect();
                assert_eq!(
                    ports,
                    (min..=max).collect::<Vec<_>>(),
                    "{min}-{max} / {count}"
                );
                let sizes: Vec<u16> = slices
                    .iter()
                    .map(|s| s.unwrap().max - s.unwrap().min + 1)
                    .collect();
                assert!(
                    sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                    "{sizes:?}"
                );
            }
        }
        let s = |index| range(30000, 30009).slice(PassiveSlice { index, count: 3 });
        assert_eq!(s(0), Some(range(30000, 30003)));
        assert_eq!(s(1), Some(range(30004, 30006)));
        assert_eq!(s(2), Some(range(30007, 30009)));
    }

    #[test]
    fn a_slice_is_k_of_n() {
        assert_eq!("1/2".parse(), Ok(PassiveSlice { index: 1, count: 2 }));
        for bad in ["2/2", "0/0", "1", "a/2", "-1/2", "1/2/3", ""] {
            assert!(bad.parse::<PassiveSlice>().is_err(), "{bad}");
        }
        assert_eq!(PassiveSlice { index: 0, count: 3 }.to_string(), "0/3");
    }
}
