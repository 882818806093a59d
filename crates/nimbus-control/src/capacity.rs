//! Which regions can take one more instance of each type right now, computed from the live
//! hosts' free capacity with the same placement function the launch path uses, so the answer
//! and the launch never disagree.

use std::collections::BTreeMap;

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::catalog::{InstanceType, Region};
use nimbus_core::model::Host;
use nimbus_core::Error;

use crate::scheduler::{place, Request};
use crate::Control;

/// For every configured type (in configuration order), the regions with capacity for it.
pub async fn by_type(c: &Control, actor: &Actor) -> Result<Vec<(InstanceType, Vec<Region>)>, Error> {
    actor.require(Permission::Read)?;
    let hosts = c.store().host_list(None, true).await?;
    let cfg = c.config();
    let mut out = Vec::with_capacity(cfg.instance_types.len());
    for t in &cfg.instance_types {
        let regions = cfg.regions.iter().filter(|r| place(&hosts, &Request::for_type(&r.name, t)).is_some()).cloned().collect();
        out.push((t.clone(), regions));
    }
    Ok(out)
}

/// The hosts (only those up, with `up_only`) and, for each, its host ports not yet forwarded to
/// an instance: what the Voltage Park dialect shows as locations and hostnodes (READ).
pub async fn hostnodes(c: &Control, actor: &Actor, up_only: bool) -> Result<Vec<(Host, Vec<i64>)>, Error> {
    actor.require(Permission::Read)?;
    let hosts = c.store().host_list(None, up_only).await?;
    let mut out = Vec::with_capacity(hosts.len());
    let mut conn = c.store().reader().await?;
    for h in hosts {
        let used = nimbus_store::Store::network_used_ports_in(&mut conn, &h.id).await?;
        let free = c.config().port_forwards.ports().filter(|p| !used.contains(p)).collect();
        out.push((h, free));
    }
    Ok(out)
}

/// Regions that have at least one live host, for listings that are per region (images).
pub async fn live_regions(c: &Control) -> Result<Vec<Region>, Error> {
    let hosts = c.store().host_list(None, true).await?;
    let present: BTreeMap<&str, ()> = hosts.iter().map(|h| (h.region.as_str(), ())).collect();
    Ok(c.config().regions.iter().filter(|r| present.contains_key(r.name.as_str())).cloned().collect())
}
