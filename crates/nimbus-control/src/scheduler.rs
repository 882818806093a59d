//! Placement as pure functions: given hosts with their free capacity and a request, choose a
//! host and the GPU indices to reserve. No IO here; the caller claims the choice in the store with
//! conditional updates and retries on a lost race.
//!
//! Policy: among hosts that fit, prefer the one whose free GPUs of the requested model are
//! fewest (best fit, so that large contiguous GPU sets stay free for large requests), then the one
//! with the least free vCPU, then the oldest host (stable order).

use nimbus_core::catalog::{gpu_model_matches, InstanceType, Resources};
use nimbus_core::model::{Host, HostStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub region: &'a str,
    pub resources: Resources,
    pub gpus: i64,
    pub gpu_model: &'a str,
}

impl<'a> Request<'a> {
    pub fn for_type(region: &'a str, t: &'a InstanceType) -> Self {
        Request { region, resources: t.resources(), gpus: t.gpus, gpu_model: &t.gpu_model }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub host_index: usize,
    pub gpu_indices: Vec<i64>,
}

/// Free GPU indices on `host` that match `model`, in index order.
fn free_matching_gpus(host: &Host, model: &str) -> Vec<i64> {
    host.gpus.iter().filter(|g| g.instance_id.is_none() && gpu_model_matches(model, &g.model)).map(|g| g.index).collect()
}

/// A host nothing runs on, with exactly `gpus` GPUs (of `model` when there are any), for a
/// whole-host instance: the placement takes all its GPUs and the resources are its total. The
/// oldest such host first, so that whole-host rentals fill hosts in a stable order.
pub fn place_whole(hosts: &[Host], region: &str, gpus: i64, model: &str) -> Option<(Placement, Resources)> {
    let empty = |h: &Host| h.used == Resources::default() && h.gpus.iter().all(|g| g.instance_id.is_none());
    let (i, h) = hosts.iter().enumerate().find(|(_, h)| {
        h.status == HostStatus::Up
            && h.region == region
            && empty(h)
            && i64::try_from(h.gpus.len()).is_ok_and(|n| n == gpus)
            && h.gpus.iter().all(|g| gpu_model_matches(model, &g.model))
    })?;
    Some((Placement { host_index: i, gpu_indices: h.gpus.iter().map(|g| g.index).collect() }, h.total))
}

/// Chooses where `req` goes, or `None` when no host can take it.
pub fn place(hosts: &[Host], req: &Request<'_>) -> Option<Placement> {
    let mut best: Option<(usize, (usize, i64), Vec<i64>)> = None;
    for (i, h) in hosts.iter().enumerate() {
        if h.status != HostStatus::Up || h.region != req.region || !req.resources.fits_in(&h.free()) {
            continue;
        }
        let gpus = if req.gpus > 0 {
            let free = free_matching_gpus(h, req.gpu_model);
            if (free.len() as i64) < req.gpus {
                continue;
            }
            free
        } else {
            Vec::new()
        };
        let score = (gpus.len(), h.free().vcpus);
        if best.as_ref().is_none_or(|(_, s, _)| score < *s) {
            best = Some((i, score, gpus));
        }
    }
    best.map(|(i, _, free)| Placement {
        host_index: i,
        gpu_indices: free.into_iter().take(usize::try_from(req.gpus).unwrap_or(0)).collect(),
    })
}

/// Like [`place`], but on a host none of `avoid` names while one fits (nodes of a cluster go to
/// different hosts, as far as there are hosts: one host's loss takes one node, and the
/// placement exercises the network between hosts); on any host otherwise.
pub fn place_spread(hosts: &[Host], req: &Request<'_>, avoid: &[nimbus_core::ids::HostId]) -> Option<Placement> {
    let others: Vec<usize> = (0..hosts.len()).filter(|&i| !avoid.contains(&hosts[i].id)).collect();
    let subset: Vec<Host> = others.iter().map(|&i| hosts[i].clone()).collect();
    match place(&subset, req) {
        Some(p) => Some(Placement { host_index: others[p.host_index], gpu_indices: p.gpu_indices }),
        None => place(hosts, req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::ids::{HostId, InstanceId};
    use nimbus_core::model::Gpu;

    fn host(region: &str, vcpus: i64, gpus: &[(&str, bool)]) -> Host {
        Host {
            id: HostId::generate(),
            name: "h".into(),
            region: region.into(),
            driver: "sim".into(),
            cpu_model: "cpu".into(),
            total: Resources { vcpus, memory_mib: 1 << 20, disk_gib: 10_000 },
            used: Resources::default(),
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, (m, busy))| Gpu {
                    index: i as i64,
                    model: (*m).into(),
                    memory_mib: 81_920,
                    uuid: format!("GPU-{i}"),
                    instance_id: busy.then(InstanceId::generate),
                })
                .collect(),
            status: HostStatus::Up,
            last_seen_at: 0,
            desired_generation: 1,
            created_at: 0,
            public_ip: None,
            underlay: None,
            instance_subnet: None,
        }
    }

    #[test]
    fn whole_hosts_are_empty_hosts_of_the_exact_shape() {
        let busy_gpu = host("r", 8, &[("H100", true), ("H100", false)]);
        let free = host("r", 8, &[("H100", false), ("H100", false)]);
        let three = host("r", 8, &[("H100", false), ("H100", false), ("H100", false)]);
        let mut cpu_used = host("r", 8, &[("H100", false), ("H100", false)]);
        cpu_used.used.vcpus = 1;
        let hosts = vec![busy_gpu, three, cpu_used, free];
        let (p, res) = place_whole(&hosts, "r", 2, "H100").expect("one host fits");
        assert_eq!((p.host_index, p.gpu_indices, res), (3, vec![0, 1], hosts[3].total));
        assert!(place_whole(&hosts, "other", 2, "H100").is_none());
        assert!(place_whole(&hosts, "r", 2, "A100").is_none());
        assert!(place_whole(&[host("r", 4, &[])], "r", 0, "").is_some(), "GPU-less hosts rent whole too");
    }

    fn req(gpus: i64, model: &'static str, vcpus: i64) -> Request<'static> {
        Request { region: "us-east-1", resources: Resources { vcpus, memory_mib: 1024, disk_gib: 10 }, gpus, gpu_model: model }
    }

    #[test]
    fn respects_region_model_and_busy_gpus() {
        let hosts = vec![
            host("us-west-1", 64, &[("NVIDIA H100 80GB HBM3", false)]),
            host("us-east-1", 64, &[("NVIDIA A100-SXM4-40GB", false)]),
            host("us-east-1", 64, &[("NVIDIA H100 80GB HBM3", true), ("NVIDIA H100 80GB HBM3", false)]),
        ];
        let p = place(&hosts, &req(1, "H100 HBM3", 8)).expect("fits host 2");
        assert_eq!(p, Placement { host_index: 2, gpu_indices: vec![1] });
        assert!(place(&hosts, &req(2, "H100 HBM3", 8)).is_none());
        assert!(place(&hosts, &req(1, "GH200", 8)).is_none());
    }

    #[test]
    fn best_fit_keeps_big_gpu_sets_free() {
        let eight = [("NVIDIA H100 80GB HBM3", false); 8];
        let hosts = vec![host("us-east-1", 208, &eight), host("us-east-1", 208, &eight[..2])];
        let p = place(&hosts, &req(1, "H100 HBM3", 8)).expect("fits");
        assert_eq!(p.host_index, 1, "the small host takes the small request");
        let p = place(&hosts, &req(8, "H100 HBM3", 8)).expect("fits");
        assert_eq!(p, Placement { host_index: 0, gpu_indices: (0..8).collect() });
    }

    #[test]
    fn cpu_limits_and_down_hosts() {
        let mut hosts = vec![host("us-east-1", 2, &[]), host("us-east-1", 4, &[])];
        assert_eq!(place(&hosts, &req(0, "", 3)).map(|p| p.host_index), Some(1));
        hosts[1].status = HostStatus::Down;
        assert!(place(&hosts, &req(0, "", 3)).is_none());
        assert_eq!(place(&hosts, &req(0, "", 2)).map(|p| p.host_index), Some(0));
    }

    #[test]
    fn spread_avoids_used_hosts_while_one_fits() {
        let hosts = vec![host("us-east-1", 8, &[]), host("us-east-1", 4, &[]), host("us-east-1", 2, &[])];
        // Best fit alone packs onto the fullest host that fits (index 2)...
        assert_eq!(place(&hosts, &req(0, "", 1)).map(|p| p.host_index), Some(2));
        // ...spread goes elsewhere, then back to best fit when every host is used.
        let avoid = vec![hosts[2].id.clone()];
        assert_eq!(place_spread(&hosts, &req(0, "", 1), &avoid).map(|p| p.host_index), Some(1));
        let all: Vec<_> = hosts.iter().map(|h| h.id.clone()).collect();
        assert_eq!(place_spread(&hosts, &req(0, "", 1), &all).map(|p| p.host_index), Some(2));
        assert_eq!(place_spread(&hosts, &req(0, "", 5), &[]).map(|p| p.host_index), Some(0));
    }
}
