//! Placement as pure functions: given hosts with their free capacity and a request, choose a
//! host and the GPU indices to reserve. No IO here; the caller claims the choice in the store with
//! conditional updates and retries on a lost race.
//!
//! Policy: among hosts that fit, prefer the one whose free GPUs of the requested model are
//! fewest (best fit, so that large contiguous GPU sets stay free for large requests), then the one
//! with the least free vCPU, then the oldest host (stable order). A host is considered at all only
//! when it runs what the request is (`Host::runs`: a VM type only where the agent reported VMs).

use nimbus_core::catalog::{GpuWant, InstanceType, Machine, Resources};
use nimbus_core::model::{Host, HostStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub region: &'a str,
    pub resources: Resources,
    /// Whole GPUs, or MIG devices when `mig_profile` is set.
    pub gpus: i64,
    pub gpu: GpuWant<'a>,
    pub mig_profile: &'a str,
    /// Container or VM: only hosts that run it are candidates.
    pub machine: Machine,
}

impl<'a> Request<'a> {
    pub fn for_type(region: &'a str, t: &'a InstanceType) -> Self {
        Request { region, resources: t.resources(), gpus: t.gpus, gpu: t.gpu_want(), mig_profile: &t.mig_profile, machine: t.machine }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub host_index: usize,
    pub gpu_indices: Vec<i64>,
    /// UUIDs of the MIG devices it gets.
    pub mig_devices: Vec<String>,
}

/// Whole GPUs of `host` a new instance may get (free, healthy, checked since their last
/// tenant, not in MIG mode) that are what `want` asks, in index order.
pub fn free_gpus(host: &Host, want: GpuWant<'_>) -> Vec<i64> {
    host.gpus.iter().filter(|g| g.placeable() && want.accepts(&g.model, g.memory_mib)).map(|g| g.index).collect()
}

/// Free MIG devices of `profile` on healthy GPUs that are what `want` asks, as UUIDs, in GPU
/// then device order. A MIG device is not checked between tenants the way a whole GPU is
/// (its parent stays in use by the other slices; docs/gpu.md, "MIG devices").
pub fn free_mig_devices(host: &Host, want: GpuWant<'_>, profile: &str) -> Vec<String> {
    host.gpus
        .iter()
        .filter(|g| g.health.placeable() && want.accepts(&g.model, g.memory_mib))
        .flat_map(|g| g.mig_devices.iter().filter(|m| m.instance_id.is_none() && m.profile == profile).map(|m| m.uuid.clone()))
        .collect()
}

/// A host nothing runs on, with exactly `gpus` GPUs (of `model` when there are any), for a
/// whole-host instance: the placement takes all its GPUs and the resources are its total. The
/// oldest such host first, so that whole-host rentals fill hosts in a stable order. Whole-host
/// instances are containers, so the host must run containers.
pub fn place_whole(hosts: &[Host], region: &str, gpus: i64, model: &str) -> Option<(Placement, Resources)> {
    let want = GpuWant { model, min_memory_mib: 0 };
    let (i, h) = hosts.iter().enumerate().find(|(_, h)| {
        h.status == HostStatus::Up
            && h.region == region
            && h.runs(Machine::Container)
            && h.used == Resources::default()
            && i64::try_from(h.gpus.len()).is_ok_and(|n| n == gpus)
            && h.gpus.iter().all(|g| g.placeable() && want.accepts(&g.model, g.memory_mib))
    })?;
    Some((Placement { host_index: i, gpu_indices: h.gpus.iter().map(|g| g.index).collect(), mig_devices: Vec::new() }, h.total))
}

/// Chooses where `req` goes, or `None` when no host can take it.
pub fn place(hosts: &[Host], req: &Request<'_>) -> Option<Placement> {
    let want = usize::try_from(req.gpus).unwrap_or(0);
    let mut best: Option<(usize, (usize, i64), Placement)> = None;
    for (i, h) in hosts.iter().enumerate() {
        if h.status != HostStatus::Up || h.region != req.region || !h.runs(req.machine) || !req.resources.fits_in(&h.free()) {
            continue;
        }
        let (free, placement) = if req.gpus <= 0 {
            (0, Placement { host_index: i, ..Placement::default() })
        } else if req.mig_profile.is_empty() {
            let free = free_gpus(h, req.gpu);
            (free.len(), Placement { host_index: i, gpu_indices: free.into_iter().take(want).collect(), mig_devices: Vec::new() })
        } else {
            let free = free_mig_devices(h, req.gpu, req.mig_profile);
            (free.len(), Placement { host_index: i, gpu_indices: Vec::new(), mig_devices: free.into_iter().take(want).collect() })
        };
        if free < want {
            continue;
        }
        let score = (free, h.free().vcpus);
        if best.as_ref().is_none_or(|(_, s, _)| score < *s) {
            best = Some((i, score, placement));
        }
    }
    best.map(|(_, _, p)| p)
}

/// Like [`place`], but on a host none of `avoid` names while one fits (nodes of a cluster go to
/// different hosts, as far as there are hosts: one host's loss takes one node, and the
/// placement exercises the network between hosts); on any host otherwise.
pub fn place_spread(hosts: &[Host], req: &Request<'_>, avoid: &[nimbus_core::ids::HostId]) -> Option<Placement> {
    let others: Vec<usize> = (0..hosts.len()).filter(|&i| !avoid.contains(&hosts[i].id)).collect();
    let subset: Vec<Host> = others.iter().map(|&i| hosts[i].clone()).collect();
    match place(&subset, req) {
        Some(p) => Some(Placement { host_index: others[p.host_index], ..p }),
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
                    instance_id: busy.then(InstanceId::generate),
                    ..Gpu::new(i as i64, m, 81_920, &format!("GPU-{i}"))
                })
                .collect(),
            status: HostStatus::Up,
            last_seen_at: 0,
            desired_generation: 1,
            created_at: 0,
            public_ip: None,
            underlay: None,
            instance_subnet: None,
            machines: vec![Machine::Container],
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
        Request {
            region: "us-east-1",
            resources: Resources { vcpus, memory_mib: 1024, disk_gib: 10 },
            gpus,
            gpu: GpuWant { model, min_memory_mib: 0 },
            mig_profile: "",
            machine: Machine::Container,
        }
    }

    fn vm(mut r: Request<'static>) -> Request<'static> {
        r.machine = Machine::Vm;
        r
    }

    #[test]
    fn vm_requests_go_only_to_hosts_that_run_vms() {
        let container_only = host("us-east-1", 64, &[("NVIDIA H100 80GB HBM3", false)]);
        let mut older = container_only.clone();
        older.machines = vec![];
        let mut both = host("us-east-1", 128, &[("NVIDIA H100 80GB HBM3", false)]);
        both.machines = vec![Machine::Container, Machine::Vm];
        let mut vm_only = host("us-east-1", 256, &[]);
        vm_only.machines = vec![Machine::Vm];

        assert!(place(std::slice::from_ref(&container_only), &vm(req(0, "", 1))).is_none(), "a container-only host takes no VM");
        assert!(place(std::slice::from_ref(&older), &vm(req(0, "", 1))).is_none(), "an agent that lists nothing runs containers only");
        assert!(place(std::slice::from_ref(&container_only), &vm(req(1, "H100", 1))).is_none(), "GPU VMs neither");
        assert!(place(std::slice::from_ref(&older), &req(0, "", 1)).is_some(), "it does run containers");

        // Best fit would pick the smaller container hosts; the VM request skips them.
        let hosts = vec![container_only.clone(), older.clone(), both.clone(), vm_only.clone()];
        assert_eq!(place(&hosts, &vm(req(1, "H100", 1))).map(|p| p.host_index), Some(2));
        assert_eq!(place(&hosts, &vm(req(0, "", 1))).map(|p| p.host_index), Some(2), "the fuller VM host first");
        assert_eq!(place(&hosts, &req(0, "", 1)).map(|p| p.host_index), Some(0));
        assert_eq!(place(std::slice::from_ref(&vm_only), &req(0, "", 1)), None, "a host that lists only VMs takes no container");
        assert_eq!(place(std::slice::from_ref(&vm_only), &vm(req(0, "", 1))).map(|p| p.host_index), Some(0));

        // Spread falls back to any host, but only among those that run VMs.
        let avoid = vec![both.id.clone(), vm_only.id.clone()];
        assert_eq!(place_spread(&hosts, &vm(req(0, "", 1)), &avoid).map(|p| p.host_index), Some(2));
        assert!(place_spread(&hosts[..2], &vm(req(0, "", 1)), &[]).is_none());

        // Whole hosts are containers.
        let mut empty_vm = host("us-east-1", 8, &[]);
        empty_vm.machines = vec![Machine::Vm];
        assert!(place_whole(&[empty_vm.clone()], "us-east-1", 0, "").is_none());
        empty_vm.machines.push(Machine::Container);
        assert!(place_whole(&[empty_vm], "us-east-1", 0, "").is_some());
    }

    #[test]
    fn requests_for_a_type_carry_its_machine() {
        let t = InstanceType {
            name: "x".into(),
            description: String::new(),
            gpu_description: String::new(),
            price_cents_per_hour: 1,
            vcpus: 1,
            memory_gib: 1,
            storage_gib: 1,
            gpus: 0,
            gpu_model: String::new(),
            gpu_memory_gib: 0,
            mig_profile: String::new(),
            privileged: false,
            machine: Machine::Vm,
        };
        assert_eq!(Request::for_type("us-east-1", &t).machine, Machine::Vm);
        assert!(place(&[host("us-east-1", 8, &[])], &Request::for_type("us-east-1", &t)).is_none());
    }

    #[test]
    fn respects_region_model_and_busy_gpus() {
        let hosts = vec![
            host("us-west-1", 64, &[("NVIDIA H100 80GB HBM3", false)]),
            host("us-east-1", 64, &[("NVIDIA A100-SXM4-40GB", false)]),
            host("us-east-1", 64, &[("NVIDIA H100 80GB HBM3", true), ("NVIDIA H100 80GB HBM3", false)]),
        ];
        let p = place(&hosts, &req(1, "H100 HBM3", 8)).expect("fits host 2");
        assert_eq!(p, Placement { host_index: 2, gpu_indices: vec![1], mig_devices: vec![] });
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
        assert_eq!(p, Placement { host_index: 0, gpu_indices: (0..8).collect(), mig_devices: vec![] });
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

    #[test]
    fn unhealthy_unchecked_and_mig_gpus_are_not_placed_whole() {
        use nimbus_core::gpu_health::Condition;
        let mut h = host("us-east-1", 64, &[("NVIDIA H200", false); 5]);
        h.gpus[0].health = Condition::ResetRequired;
        h.gpus[1].health = Condition::Drain;
        h.gpus[2].clean = false;
        h.gpus[3].mig_devices = vec![mig("MIG-a", "1g.18gb")];
        h.gpus[4].health = Condition::Degraded;
        let hosts = vec![h];
        let p = place(&hosts, &req(1, "H200", 8)).expect("the degraded GPU is still placeable");
        assert_eq!(p.gpu_indices, vec![4]);
        assert!(place(&hosts, &req(2, "H200", 8)).is_none(), "only one GPU is fit for a tenant");
        assert!(place_whole(&hosts, "us-east-1", 5, "H200").is_none(), "a whole host needs every GPU fit");
    }

    #[test]
    fn gpu_memory_is_part_of_the_match() {
        let mut hosts = vec![host("us-east-1", 64, &[("NVIDIA H200", false)])];
        let mut r = req(1, "H200", 8);
        r.gpu.min_memory_mib = 130 * 1024;
        assert!(place(&hosts, &r).is_none(), "81,920 MiB is not an H200's memory");
        hosts[0].gpus[0].memory_mib = 143_771;
        assert!(place(&hosts, &r).is_some());
    }

    fn mig(uuid: &str, profile: &str) -> nimbus_core::model::MigDevice {
        nimbus_core::model::MigDevice {
            uuid: uuid.into(),
            profile: profile.into(),
            memory_mib: 16_384,
            gpu_instance_id: 1,
            compute_instance_id: 0,
            instance_id: None,
        }
    }

    #[test]
    fn mig_requests_get_free_devices_of_their_profile_on_healthy_gpus() {
        use nimbus_core::gpu_health::Condition;
        let mut a = host("us-east-1", 64, &[("NVIDIA H200", false), ("NVIDIA H200", false)]);
        a.gpus[0].mig_devices = vec![mig("MIG-0a", "1g.18gb"), mig("MIG-0b", "1g.18gb"), mig("MIG-0c", "3g.71gb")];
        a.gpus[0].mig_devices[0].instance_id = Some(InstanceId::generate());
        a.gpus[1].mig_devices = vec![mig("MIG-1a", "1g.18gb")];
        a.gpus[1].health = Condition::ResetRequired;
        let hosts = vec![a];
        let mut r = req(1, "H200", 8);
        r.mig_profile = "1g.18gb";
        let p = place(&hosts, &r).expect("one free 1g slice on a healthy GPU");
        assert_eq!((p.gpu_indices.clone(), p.mig_devices.clone()), (vec![], vec!["MIG-0b".to_owned()]));
        r.gpus = 2;
        assert!(place(&hosts, &r).is_none(), "the slice on the unhealthy GPU does not count");
        r.gpus = 1;
        r.mig_profile = "7g.141gb";
        assert!(place(&hosts, &r).is_none(), "no device of that profile");
        assert!(place(&hosts, &req(1, "H200", 8)).is_none(), "whole-GPU requests never take a MIG-mode GPU");
    }
}
