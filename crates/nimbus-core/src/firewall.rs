//! Firewall rules: the one model behind Lambda's firewall rules/rulesets and, later, the native
//! API's firewall. Inbound allow-rules only; the agent turns them into nftables rules.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            "all" => Some(Protocol::All),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    pub protocol: Protocol,
    /// Inclusive `[min, max]`; absent for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<(u16, u16)>,
    /// An IPv4 CIDR, normalised (`1.2.3.4` becomes `1.2.3.4/32`).
    pub source_network: String,
    pub description: String,
}

/// Normalises and validates an IPv4 CIDR; a bare address means `/32`.
pub fn parse_cidr(label: &str, s: &str) -> Result<String, Error> {
    let bad = || Error::invalid(label, format!("{s:?} is not an IPv4 address or CIDR block"));
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
        None => (s, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{addr}/{len}"))
}

impl FirewallRule {
    /// Builds a rule from loosely typed input, enforcing Lambda's rules: a port range is required
    /// unless the protocol is ICMP, and forbidden for ICMP.
    pub fn new(label: &str, protocol: &str, port_range: Option<&[i64]>, source_network: &str, description: &str) -> Result<Self, Error> {
        let protocol = Protocol::parse(protocol)
            .ok_or_else(|| Error::invalid(format!("{label}.protocol"), format!("{protocol:?} is not one of tcp, udp, icmp, all")))?;
        let port_range = match (protocol, port_range) {
            (Protocol::Icmp, Some(_)) => return Err(Error::invalid(format!("{label}.port_range"), "must be omitted for icmp")),
            (Protocol::Icmp, None) => None,
            (_, None) => return Err(Error::invalid(format!("{label}.port_range"), "is required unless protocol is icmp")),
            (_, Some(r)) => {
                let bad = || Error::invalid(format!("{label}.port_range"), "must be [min, max] with 1 <= min <= max <= 65535");
                if r.len() != 2 {
                    return Err(bad());
                }
                let lo = u16::try_from(r[0]).map_err(|_| bad())?;
                let hi = u16::try_from(r[1]).map_err(|_| bad())?;
                if lo == 0 || lo > hi {
                    return Err(bad());
                }
                Some((lo, hi))
            }
        };
        if description.chars().count() > 128 {
            return Err(Error::invalid(format!("{label}.description"), "must be at most 128 characters"));
        }
        Ok(FirewallRule {
            protocol,
            port_range,
            source_network: parse_cidr(&format!("{label}.source_network"), source_network)?,
            description: description.to_owned(),
        })
    }
}

impl FirewallRule {
    /// A stable id for the rule within its organization and scope (`global` or a ruleset id):
    /// rules are stored as a list without ids (Lambda's model), so the native API names each by
    /// a digest of what it allows. Two rules that allow the same thing have the same id, which
    /// is why adding a duplicate is refused.
    pub fn id_in(&self, org: &str, scope: &str) -> String {
        use sha2::{Digest, Sha256};
        let ports = self.port_range.map(|(a, b)| format!("{a}-{b}")).unwrap_or_default();
        let proto = serde_json::to_value(self.protocol).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let d = Sha256::digest(format!("nimbus-fw-rule\0{org}\0{scope}\0{proto}\0{ports}\0{}", self.source_network).as_bytes());
        hex::encode(&d[..16])
    }
}

/// The rules every new organization starts with: SSH from anywhere, so that a fresh instance is
/// reachable, as on Lambda.
pub fn default_global_rules() -> Vec<FirewallRule> {
    vec![FirewallRule {
        protocol: Protocol::Tcp,
        port_range: Some((22, 22)),
        source_network: "0.0.0.0/0".to_owned(),
        description: "Allow SSH from anywhere".to_owned(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_validate_like_lambda() {
        let r = FirewallRule::new("r", "tcp", Some(&[22, 22]), "10.0.0.1", "ssh").expect("valid");
        assert_eq!(r.source_network, "10.0.0.1/32");
        assert!(FirewallRule::new("r", "icmp", None, "0.0.0.0/0", "").is_ok());
        assert!(FirewallRule::new("r", "icmp", Some(&[1, 2]), "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "tcp", None, "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "tcp", Some(&[80, 22]), "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "tcp", Some(&[0, 22]), "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "tcp", Some(&[1, 70000]), "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "sctp", Some(&[1, 2]), "0.0.0.0/0", "").is_err());
        assert!(FirewallRule::new("r", "udp", Some(&[1, 2]), "10.0.0.0/33", "").is_err());
        assert!(FirewallRule::new("r", "udp", Some(&[1, 2]), "::1", "").is_err());
        assert!(FirewallRule::new("r", "udp", Some(&[1, 2]), "0.0.0.0/0", &"x".repeat(129)).is_err());
    }
}
