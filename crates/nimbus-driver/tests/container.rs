//! The container driver on the real kernel: an unprivileged instance boots with real sshd,
//! its limits and namespaces are what they should be from both sides, its disk survives a
//! restart, and nothing of it is left after destroy. Needs root and the debian-12 image
//! (scripts/test builds it); otherwise says why and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::Host;
use nimbus_driver::container::runtime::Weaken;
use nimbus_driver::Driver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_instance_boots_is_fenced_and_leaves_nothing() {
    let Some(h) = Host::new("boot", 241, Weaken::default()) else { return };
    let spec = h.spec("org-a", "box-1");
    let t = std::time::Instant::now();
    let ip = h.launch(&spec).await;
    eprintln!("ensure -> SSH banner: {:?}", t.elapsed());
    let (ok, out) = h.ssh(&ip, "hostname; whoami; sudo -n id -u; cat /proc/1/comm");
    assert!(ok, "{out}\n{}", h.console(&spec.id));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["box-1", "ubuntu", "0", "tini"]);
    let out = h.root(&ip, "cat /proc/self/uid_map; grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status");
    eprintln!("{out}");
    let base = std::fs::metadata(h.instance_dir(&spec.id).join("upper")).unwrap().uid();
    // The ledger holds the tenant's user_data and keys: no other host user may read it.
    let ledger = std::fs::metadata(h.instance_dir(&spec.id).join("ledger.json")).unwrap();
    assert_eq!(ledger.permissions().mode() & 0o777, 0o600, "ledger.json is private");
    let window = nimbus_driver::container::idmap::host_window(&std::fs::read_to_string("/etc/subuid").unwrap_or_default());
    assert!(base >= window.0 && base > 0, "the disk belongs to the tenant's range, not host root: {base}");
    let map: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(map, ["0", &base.to_string(), "65536"], "root inside is {base} on the host: {out}");
    assert!(out.contains("Seccomp:\t2") && out.contains("NoNewPrivs:\t0"), "{out}");
    let bnd = out.lines().find_map(|l| l.strip_prefix("CapBnd:\t")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap();
    assert_eq!(bnd & (1 << 16), 0, "no CAP_SYS_MODULE");
    assert_ne!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN stays (in its own namespace, for Docker inside)");
    // Package management works as root inside (dpkg chowns, runs maintainer scripts): a local
    // package, since no mirror is reachable from here.
    let out = h.root(
        &ip,
        "set -e; d=$(mktemp -d); mkdir -p $d/p/DEBIAN $d/p/opt/t; echo from-a-package > $d/p/opt/t/hello; \
         printf 'Package: nimbus-t\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.com>\\nDescription: t\\n' > $d/p/DEBIAN/control; \
         printf '#!/bin/sh\\nchown nobody /opt/t/hello\\n' > $d/p/DEBIAN/postinst; chmod 755 $d/p/DEBIAN/postinst; \
         dpkg-deb --build --root-owner-group $d/p $d/t.deb >/dev/null; apt-get install -y -q $d/t.deb >/dev/null 2>&1; \
         cat /opt/t/hello; stat -c %U /opt/t/hello; dpkg-query -W -f='${Status}' nimbus-t",
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["from-a-package", "nobody", "install ok installed"], "{out}");
    // Host side: the instance's processes run as its range, never as host root.
    let pids = h.cgroups().pids(&spec.id);
    let launcher_uid = 0;
    let mut inside = 0;
    for p in &pids {
        let uid = std::fs::metadata(format!("/proc/{p}")).map(|m| m.uid()).unwrap_or(base);
        if uid != launcher_uid {
            assert!(uid >= base, "process {p} runs as host uid {uid}");
            inside += 1;
        }
    }
    assert!(inside >= 3, "tini, sh, sshd at least: {pids:?}");

    // The cgroup subtree is the instance's own: on the v2 hierarchy (the unified part of a hybrid
    // host, or all of a v2 one) its root makes children and moves itself into them.
    let v2 = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/unified" };
    let out = h.root(&ip, &format!("mkdir {v2}/nested && echo $$ > {v2}/nested/cgroup.procs && grep '^0::' /proc/self/cgroup"));
    assert_eq!(out.trim(), "0::/nested", "{out}");

    // Files it writes to a file system belong to its tenant's range on the host; another
    // instance of the same tenant shares the range (and may write there), another tenant's does not.
    let fs =
        nimbus_proto::MountSpec { file_system_id: "fedcba9876543210fedcba9876543210".into(), mount_point: "/lambda/nfs/shared".into() };
    let mut spec = spec;
    spec.file_system_mounts = vec![fs.clone()];
    h.driver.restart(&spec).await.unwrap();
    assert!(h.driver.wait_ready(&spec.id).await, "{}", h.console(&spec.id));
    assert!(h.ssh(&ip, "echo one > /lambda/nfs/shared/note.txt").0);
    let host_fs = h.cfg.data_dir.join("file-systems").join(&fs.file_system_id);
    assert_eq!(std::fs::metadata(host_fs.join("note.txt")).unwrap().uid(), base + 1000);
    let mut sibling = h.spec("org-a", "box-2");
    sibling.file_system_mounts = vec![fs.clone()];
    let sip = h.launch(&sibling).await;
    assert!(h.ssh(&sip, "echo two >> /lambda/nfs/shared/note.txt && cat /lambda/nfs/shared/note.txt").1.contains("one\ntwo"));
    let stranger = h.spec("org-b", "box-3");
    h.launch(&stranger).await;
    let other = std::fs::metadata(h.instance_dir(&stranger.id).join("upper")).unwrap().uid();
    assert!(other >= base + 65536 || other + 65536 <= base, "disjoint ranges: {base} and {other}");
    h.driver.destroy(&sibling.id).await.unwrap();
    h.driver.destroy(&stranger.id).await.unwrap();

    // The disk survives a restart.
    assert!(h.ssh(&ip, "echo kept > ~/state.txt").0);
    h.driver.restart(&spec).await.unwrap();
    assert!(h.driver.wait_ready(&spec.id).await, "{}", h.console(&spec.id));
    assert_eq!(h.ssh(&ip, "cat ~/state.txt").1.trim(), "kept");

    let t = std::time::Instant::now();
    h.driver.destroy(&spec.id).await.unwrap();
    eprintln!("destroy: {:?}", t.elapsed());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(h.instance_dir(&spec.id).to_str().unwrap()), "a mount of the instance leaked into the host");
    assert!(!h.cgroups().exists(&spec.id));
    assert!(!h.instance_dir(&spec.id).exists());
    assert!(h.driver.list().await.unwrap().is_empty());
}

/// A disk made under one id range (here: a privileged instance's, host root's) is re-owned
/// once when its instance starts under another, as LXD remaps a container whose idmap
/// changed; the default user still logs in and owns its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_is_re_owned_when_its_range_changes() {
    let Some(h) = Host::new("mig", 240, Weaken::default()) else { return };
    let mut spec = h.spec("org-m", "mig");
    spec.privileged = true;
    let ip = h.launch(&spec).await;
    assert!(h.ssh(&ip, "echo mine > ~/file").0);
    let file = h.instance_dir(&spec.id).join("upper/home/ubuntu/file");
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 1000, "privileged: ids are the host's");
    spec.privileged = false;
    h.driver.restart(&spec).await.unwrap();
    assert!(h.driver.wait_ready(&spec.id).await, "{}", h.console(&spec.id));
    let base = std::fs::metadata(h.instance_dir(&spec.id).join("upper")).unwrap().uid();
    assert!(base > 0);
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), base + 1000);
    let (ok, out) = h.ssh(&ip, "cat ~/file && echo more >> ~/file && cat /proc/self/uid_map");
    assert!(ok && out.starts_with("mine\n"), "{out}");
}
