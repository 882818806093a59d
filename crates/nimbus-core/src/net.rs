//! IPv4 prefixes as the network code of every crate reads them: instance subnets, the
//! hosts' underlay, public address pools.

use std::net::Ipv4Addr;

/// Where the sim driver's instances get their public addresses: the upper half of RFC 2544's
/// benchmarking range, never routed and never given to a real instance (the server refuses it in
/// address pools), so a client seeing one knows that the instance is simulated and that nothing
/// will ever answer SSH there.
pub const SIMULATED: Subnet = Subnet { addr: Ipv4Addr::new(198, 19, 0, 0), len: 16 };

/// Whether `ip` is a sim driver's address (see [`SIMULATED`]).
pub fn is_simulated(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>().is_ok_and(|a| SIMULATED.contains(a))
}

/// An IPv4 subnet `addr/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Subnet {
    /// An instance subnet: `/8` to `/30`.
    pub fn parse(s: &str) -> Option<Subnet> {
        Self::parse_any(s).filter(|s| (8..=30).contains(&s.len))
    }

    /// Any prefix `/0` to `/32` with no host bits set.
    pub fn parse_any(s: &str) -> Option<Subnet> {
        let (a, l) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        if u32::from(addr) & !Self::mask(len) != 0 {
            return None;
        }
        Some(Subnet { addr, len })
    }

    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        let m = Self::mask(self.len.min(o.len));
        u32::from(self.addr) & m == u32::from(o.addr) & m
    }

    /// The `/len` network that holds `addr` (e.g. a bridge's from its gateway address).
    pub fn containing(addr: Ipv4Addr, len: u8) -> Subnet {
        let len = len.min(32);
        Subnet { addr: Ipv4Addr::from(u32::from(addr) & Self::mask(len)), len }
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask(self.len) == u32::from(self.addr)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_overlap_and_contain() {
        let a = Subnet::parse("10.210.1.0/24").expect("a");
        let b = Subnet::parse("10.210.0.0/16").expect("b");
        let c = Subnet::parse("10.210.2.0/24").expect("c");
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        assert!(a.contains(Ipv4Addr::new(10, 210, 1, 77)) && !a.contains(Ipv4Addr::new(10, 210, 2, 1)));
        for bad in ["10.210.1.1/24", "10.210.1.0", "10.210.1.0/31", "10.0.0.0/7", "fd00::/64", "x/24"] {
            assert!(Subnet::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(Subnet::parse_any("203.0.113.70/32").map(|s| s.len), Some(32));
        assert_eq!(Subnet::parse_any("0.0.0.0/0").map(|s| s.len), Some(0));
        assert_eq!(Subnet::containing(Ipv4Addr::new(10, 200, 3, 1), 16), Subnet { addr: Ipv4Addr::new(10, 200, 0, 0), len: 16 });
        assert_eq!(Subnet::containing(Ipv4Addr::new(10, 210, 1, 1), 24).to_string(), "10.210.1.0/24");
    }
}
