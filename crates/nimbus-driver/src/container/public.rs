//! The public addresses of a host's instances, held by the host: each one `/32` on the host's
//! uplink (the interface with its `--public-ip` or `--underlay` address), so that the network
//! upstream finds it by ARP, and NATed 1:1 to its instance by the firewall. The addresses this
//! driver added are listed in `<data_dir>/public-addresses.json`, so it removes only its own.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::tool;

pub struct Publics {
    state: PathBuf,
    /// The address that names the uplink.
    uplink_addr: Option<IpAddr>,
}

impl Publics {
    pub fn new(data_dir: &Path, uplink_addr: Option<IpAddr>) -> Publics {
        Publics { state: data_dir.join("public-addresses.json"), uplink_addr }
    }

    fn ours(&self) -> BTreeSet<Ipv4Addr> {
        std::fs::read(&self.state).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Makes the host hold exactly `want` (of the addresses it added). An error names what
    /// could not be done; the firewall is programmed either way.
    pub fn sync(&self, want: &BTreeSet<Ipv4Addr>) -> Result<(), String> {
        let ours = self.ours();
        if want.is_empty() && ours.is_empty() {
            return Ok(());
        }
        let dev = self
            .uplink_addr
            .and_then(super::net::link_holding)
            .map(|(name, _)| name)
            .ok_or_else(|| "public addresses need the host's uplink: start the agent with --public-ip or --underlay".to_owned())?;
        let mut batch = String::new();
        for a in ours.difference(want) {
            batch += &format!("addr del {a}/32 dev {dev}\n");
        }
        for a in want {
            batch += &format!("addr replace {a}/32 dev {dev}\n");
        }
        // `-force`: an address already gone is no reason to stop.
        let r = tool("ip", &["-force", "-batch", "-"], Some(&batch));
        let body = serde_json::to_vec(want).map_err(|e| e.to_string())?;
        crate::files::write_private(&self.state, &body).map_err(|e| e.to_string())?;
        r.map(drop)
    }
}
