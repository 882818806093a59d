//! The VM side of the host driver on the real thing: QEMU (TCG here; KVM where the probe boots
//! a guest), a tap on the host's bridge, the seed ISO, sshd inside the guest. One VM, through
//! its whole life: start, SSH in, user data ran, restart, stop with the disk kept, start again,
//! an agent restart that adopts the running VM, destroy leaving nothing.
//!
//! Skips (and says why) without root, the debian-12 image, QEMU or the guest kernel
//! (`nimbus image build --vm`, which scripts/test runs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nimbus_driver::container::driver::ContainerDriver;
use nimbus_driver::Driver;
use nimbus_proto::{ActualState, Machine, Power};

fn vm_ready(h: &Host) -> bool {
    if nimbus_driver::vm::guest::prepared(&h.cfg.images_dir).is_none() {
        eprintln!("SKIPPED: no guest kernel in {} (nimbus image build --vm)", h.cfg.images_dir.display());
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_answers_ssh_restarts_stops_and_leaves_nothing() {
    let Some(h) = Host::with("vm", 247, |c| c.sshd_grace = std::time::Duration::from_secs(90)) else { return };
    if !vm_ready(&h) {
        return;
    }
    let inv = h.driver.inventory().await.unwrap();
    assert!(inv.machines.contains(&Machine::Vm), "a host with QEMU and a guest kernel offers VMs: {:?}", inv.machines);

    let mut spec = h.spec("tenant-a", "vm-one");
    spec.machine = Machine::Vm;
    spec.file_system_mounts =
        vec![nimbus_proto::MountSpec { file_system_id: "fs-shared".into(), mount_point: "/lambda/nfs/shared".into() }];
    spec.user_data = Some("#cloud-config\nruncmd:\n  - echo ran-in-vm > /tmp/ud.txt\n".into());
    let t = std::time::Instant::now();
    let ip = h.launch(&spec).await;
    let boot = t.elapsed();
    let (ok, out) = h.ssh(&ip, "hostname; whoami; uname -r; sudo -n true && echo sudo-ok; cut -d\" \" -f1 /proc/uptime");
    eprintln!("VM start -> sshd: {boot:?}, first ssh at {:?}; guest uptime then {} s", t.elapsed(), out.lines().last().unwrap_or(""));
    assert!(ok, "{out}\n{}", h.console(&spec.id));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "vm-one");
    assert_eq!(lines[1], "ubuntu");
    assert!(lines[2].contains("cloud-amd64"), "the guest runs its own kernel: {out}");
    assert_ne!(lines[2], String::from_utf8_lossy(&std::process::Command::new("uname").arg("-r").output().unwrap().stdout).trim());
    assert!(out.contains("sudo-ok"), "{out}");
    assert!(eventually(30, || h.ssh(&ip, "cat /tmp/ud.txt").1.trim() == "ran-in-vm"), "user data ran once on first boot");

    // QEMU runs unprivileged, in the instance's cgroup.
    let cg = h.cgroups();
    let pids = cg.pids(&spec.id);
    assert!(!pids.is_empty(), "QEMU is in the instance's cgroup");
    let uids: Vec<String> = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned()))
        .collect();
    assert!(!uids.is_empty() && uids.iter().all(|u| u != "0"), "QEMU dropped root (effective uids {uids:?})");

    // A file system shared with a container of the same tenant, both ways, as the same user.
    let shared = |s: &mut nimbus_proto::DesiredInstance| {
        s.file_system_mounts =
            vec![nimbus_proto::MountSpec { file_system_id: "fs-shared".into(), mount_point: "/lambda/nfs/shared".into() }]
    };
    let mut ct = h.spec("tenant-a", "ct-one");
    shared(&mut ct);
    let ct_ip = h.launch(&ct).await;
    assert!(h.ssh(&ct_ip, "echo from-container > /lambda/nfs/shared/c.txt").0);
    let (ok, out) =
        h.ssh(&ip, "cat /lambda/nfs/shared/c.txt && echo from-vm > /lambda/nfs/shared/v.txt && stat -c %U /lambda/nfs/shared/c.txt");
    assert!(
        ok && out.lines().collect::<Vec<_>>() == ["from-container", "ubuntu"],
        "the VM reads the container's file as its ubuntu's: {out}"
    );
    let (ok, out) = h.ssh(&ct_ip, "cat /lambda/nfs/shared/v.txt; stat -c %U /lambda/nfs/shared/v.txt");
    assert!(
        ok && out.lines().collect::<Vec<_>>() == ["from-vm", "ubuntu"],
        "the container reads the VM's file, owned by its ubuntu: {out}"
    );
    let fs_dir = h.cfg.data_dir.join("file-systems").join("fs-shared");
    let owner = |f: &str| std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(fs_dir.join(f)).unwrap());
    assert_eq!(owner("v.txt"), owner("c.txt"), "one host uid for the tenant's ubuntu, VM or container");
    assert_ne!(owner("v.txt"), 0, "never host root");
    let vfsd: Vec<String> = cg
        .pids(&spec.id)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter(|s| s.lines().next().is_some_and(|l| l.contains("virtiofsd")))
        .filter_map(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .collect();
    assert!(
        !vfsd.is_empty() && vfsd.iter().all(|u| !u.split_whitespace().skip(1).any(|x| x == "0")),
        "virtiofsd is not host root: {vfsd:?}"
    );
    h.driver.destroy(&ct.id).await.unwrap();

    // Disk survives restart and stop/start; a file written before is there after.
    assert!(h.ssh(&ip, "echo kept > ~/note && sync").0);
    let r = h.driver.restart(&spec).await.unwrap();
    assert_ne!(r.state, ActualState::Failed);
    assert!(h.driver.wait_ready(&spec.id).await, "{}", h.console(&spec.id));
    assert!(eventually(30, || h.ssh(&ip, "cat ~/note").1.trim() == "kept"), "the disk survived the restart");
    assert!(h.ssh(&ip, "test ! -e /tmp/ud.txt || cat /var/lib/nimbus/instance-id").0);
    h.driver.stop(&spec.id).await.unwrap();
    let st = h.driver.list().await.unwrap().into_iter().find(|r| r.id == spec.id).unwrap().state;
    assert_eq!(st, ActualState::Stopped);
    assert!(cg.pids(&spec.id).is_empty(), "no QEMU left after stop");
    let mut again = spec.clone();
    again.power = Power::Running;
    h.launch(&again).await;
    assert!(eventually(30, || h.ssh(&ip, "cat ~/note").1.trim() == "kept"), "the disk survived stop/start");

    // A snapshot of the running VM's disk (the guest paused meanwhile) boots a new VM with the
    // file in it and the new instance's own keys and hostname; a container cannot start from it.
    let snap = nimbus_proto::HostSnapshot { id: common::new_id(), source: nimbus_proto::SnapshotSource::Instance { id: spec.id.clone() } };
    let rep = h.driver.sync_storage(&[], std::slice::from_ref(&snap)).await.unwrap();
    assert!(rep.snapshots.iter().any(|r| r.id == snap.id && r.state == nimbus_proto::SnapshotState::Ready), "{:?}", rep.snapshots);
    assert!(h.ssh(&ip, "true").0, "the VM runs on after the snapshot (resumed)");
    let mut copy = h.spec("tenant-a", "vm-copy");
    copy.machine = Machine::Vm;
    copy.source_snapshot = Some(snap.id.clone());
    let copy_ip = h.launch(&copy).await;
    let (ok, out) = h.ssh(&copy_ip, "cat ~/note; hostname");
    assert!(ok && out.lines().collect::<Vec<_>>() == ["kept", "vm-copy"], "the copy has the disk and its own name: {out}");
    h.driver.destroy(&copy.id).await.unwrap();
    let mut ct_copy = h.spec("tenant-a", "ct-copy");
    ct_copy.source_snapshot = Some(snap.id.clone());
    let e = h.driver.ensure(&ct_copy).await.expect_err("a VM's disk starts no container").to_string();
    assert!(e.contains("VM's disk"), "{e}");
    h.driver.destroy(&ct_copy.id).await.unwrap();
    h.driver.sync_storage(&[], &[]).await.unwrap();

    // A new agent process (a new driver on the same data dir) adopts the running VM.
    let adopted = ContainerDriver::new(h.cfg.clone()).unwrap();
    let listed = adopted.list().await.unwrap();
    let me = listed.iter().find(|r| r.id == spec.id).expect("the VM is listed by a new driver");
    // Within its start grace a new driver has not probed it yet: `creating` until it has.
    assert!(matches!(me.state, ActualState::Running | ActualState::Creating), "adopted: {:?}", me.state);
    let qemu_before = cg.pids(&spec.id);
    assert!(adopted.wait_ready(&spec.id).await);
    let me = adopted.list().await.unwrap().into_iter().find(|r| r.id == spec.id).unwrap();
    assert_eq!(me.state, ActualState::Running, "adopted, still running");
    assert_eq!(cg.pids(&spec.id), qemu_before, "the same QEMU: adopting started nothing");
    assert!(h.ssh(&ip, "true").0);

    // Destroy: no process, no cgroup, no tap, no directory.
    adopted.destroy(&spec.id).await.unwrap();
    assert!(cg.pids(&spec.id).is_empty());
    assert!(!cg.exists(&spec.id), "no cgroup left");
    assert!(!nimbus_driver::container::net::link_exists(&format!("nh{}", &spec.id[..12])), "no tap left");
    assert!(!h.instance_dir(&spec.id).exists(), "no instance directory left");
    assert!(!std::path::Path::new("/run/nimbus-vm").join(&spec.id).exists(), "no socket directory left");
}

/// A VM with a GPU on a host whose IOMMU is off is refused before anything is touched, with a
/// message that says what to do; nothing of it is left. (Binding, restoring and QEMU's VFIO
/// arguments are unit-tested on fake sysfs trees in `vm::vfio`; no GPU here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_vm_is_refused_clearly_where_the_iommu_is_off() {
    let Some(h) = Host::new("vmg", 250, Default::default()) else { return };
    if !vm_ready(&h) {
        return;
    }
    if nimbus_driver::vm::vfio::iommu_enabled(std::path::Path::new("/sys")) {
        eprintln!("SKIPPED: this host's IOMMU is on");
        return;
    }
    let mut spec = h.spec("tenant-g", "gpu-vm");
    spec.machine = Machine::Vm;
    spec.gpu_indices = vec![0];
    let e = h.driver.ensure(&spec).await.expect_err("refused").to_string();
    assert!(e.contains("IOMMU is off") && e.contains("intel_iommu=on"), "{e}");
    assert!(h.cgroups().pids(&spec.id).is_empty(), "no QEMU started");
    h.driver.destroy(&spec.id).await.unwrap();
    assert!(!h.instance_dir(&spec.id).exists());
}

/// A VM gets its volumes at start, over virtiofs from the host's one mount of each: written
/// as the guest's ubuntu, the files belong to the tenant's ubuntu on the host, so a container
/// of the tenant reads them as its own; the storage pass keeps the host mount while the VM
/// runs and reports the volume in use by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_gets_its_volumes_at_start() {
    let Some(h) = Host::with("vmv", 251, |c| c.sshd_grace = std::time::Duration::from_secs(90)) else { return };
    if !vm_ready(&h) {
        return;
    }
    let vol = nimbus_proto::HostVolume { id: common::new_id(), size_gib: 1, tenant: "tenant-v".into(), source_snapshot: None };
    let vols = std::slice::from_ref(&vol);
    h.driver.sync_storage(vols, &[]).await.unwrap();
    let mut spec = h.spec("tenant-v", "vm-vol");
    spec.machine = Machine::Vm;
    spec.volumes = vec![nimbus_proto::VolumeMount { volume_id: vol.id.clone(), name: "data".into() }];
    let ip = h.launch(&spec).await;
    let (ok, out) =
        h.ssh(&ip, "echo in-volume > /mnt/volumes/data/v.txt && stat -c %U /mnt/volumes/data/v.txt && df -k /mnt/volumes/data | tail -1");
    assert!(ok && out.lines().next() == Some("ubuntu"), "the guest's ubuntu writes its volume: {out}");
    let rep = h.driver.sync_storage(vols, &[]).await.unwrap();
    let r = rep.volumes.iter().find(|r| r.id == vol.id).expect("reported");
    assert_eq!(r.mounted_in.as_deref(), Some(spec.id.as_str()), "in use by the running VM, so its host mount stays: {r:?}");
    assert!(h.ssh(&ip, "cat /mnt/volumes/data/v.txt").1.contains("in-volume"), "still there after the storage pass");
    h.driver.destroy(&spec.id).await.unwrap();
    let rep = h.driver.sync_storage(vols, &[]).await.unwrap();
    assert_eq!(rep.volumes.iter().find(|r| r.id == vol.id).and_then(|r| r.mounted_in.clone()), None, "released with the VM");

    let mut ct = h.spec("tenant-v", "ct-vol");
    ct.volumes = spec.volumes.clone();
    let cip = h.launch(&ct).await;
    let (ok, out) = h.ssh(&cip, "cat /mnt/volumes/data/v.txt; stat -c %U /mnt/volumes/data/v.txt");
    assert!(ok && out.lines().collect::<Vec<_>>() == ["in-volume", "ubuntu"], "a container of the tenant reads it as its ubuntu's: {out}");
    h.driver.destroy(&ct.id).await.unwrap();
    h.driver.sync_storage(&[], &[]).await.unwrap();
}
