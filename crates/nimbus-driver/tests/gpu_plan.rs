//! A GPU plan applied by the launcher to a real unprivileged container, with stand-ins for the
//! NVIDIA pieces (this machine has none): a host device node (`/dev/nimbus-gpu-standin-*`, the
//! numbers of `/dev/kmsg`, which opens for writing without privilege), a host library with a
//! soname link, and a host tool. Checks what needs no GPU: the node opens (the device filter
//! lets exactly the plan's nodes through), the library is read-only and first in the ld cache,
//! the tool runs, and what every container needs (`/dev/null`, ptys) still works. Needs root and
//! the debian-12 image; otherwise says why and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nimbus_driver::container::cgroup::{Cgroups, Limits};
use nimbus_driver::container::gpu::{self, DeviceNode, GpuPlan};
use nimbus_driver::container::net::Network;
use nimbus_driver::container::runtime::{self, Launcher, Weaken};
use nimbus_driver::container::{image, launch, storage};

struct Cleanup {
    node: PathBuf,
    dir: PathBuf,
    cg: Cgroups,
    net: Network,
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.cg.destroy(&self.id);
        self.cg.remove_parent();
        storage::unmount_all(&self.dir.join("inst"));
        self.net.destroy(&self.id, None);
        self.net.remove_bridge();
        let _ = std::fs::remove_file(&self.node);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_gpu_plan_is_applied_inside_an_unprivileged_container() {
    let Some(images) = common::images_dir() else { return };
    let lib = Path::new("/lib/x86_64-linux-gnu/libz.so.1");
    let Ok(real) = std::fs::canonicalize(lib) else {
        eprintln!("SKIPPED: no {} on this machine", lib.display());
        return;
    };
    let real_name = real.file_name().unwrap().to_str().unwrap().to_owned();
    let tag = std::process::id() % 10_000;
    let net = Network::new(&format!("ngp{tag}"), Ipv4Addr::new(10, 238, 0, 1), 24, &format!("ngp{tag}-"));
    let cg = Cgroups::detect(Path::new("/sys/fs/cgroup"), &format!("nimbus-gpu-test-{tag}")).expect("cgroups");
    let dir = std::env::temp_dir().join(format!("nimbus-gpu-plan-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let node = PathBuf::from(format!("/dev/nimbus-gpu-standin-{tag}"));
    let id = "9e0000009e0000009e0000009e000000".to_owned();
    let _cleanup = Cleanup { node: node.clone(), dir: dir.clone(), cg: cg.clone(), net: net.clone(), id: id.clone() };
    assert!(Command::new("mknod").arg(&node).args(["c", "1", "11"]).status().unwrap().success());
    assert!(Command::new("chmod").arg("666").arg(&node).status().unwrap().success());
    let key = dir.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    net.ensure_bridge().unwrap();
    let addr = net.address(1);
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1\tlocalhost\n127.0.1.1\tgpu-1\n").unwrap();
    let plan = GpuPlan {
        devices: vec![DeviceNode { path: node.to_string_lossy().into_owned(), major: 1, minor: 11 }],
        files: vec![
            (real.clone(), format!("{}/{real_name}", gpu::LIB_DIR)),
            (PathBuf::from("/bin/true"), "/usr/bin/nimbus-gpu-tool".into()),
        ],
        links: vec![(real_name.clone(), format!("{}/libz.so.1", gpu::LIB_DIR))],
        proc_entries: vec![],
        ld_conf: format!("{}\n", gpu::LIB_DIR),
        source: gpu::PlanSource::Discovery,
    };
    let spec = runtime::Spec {
        id: id.clone(),
        hostname: "gpu-1".into(),
        lower: image::rootfs(&images, "debian-12"),
        idmap_lower: true,
        dir: dir.join("inst"),
        limits: Limits { cpu_millis: 1000, memory_bytes: 256 << 20, pids: 256 },
        net: net.launch_spec(&id, addr),
        authorized_keys: vec![pubkey],
        mounts: vec![],
        userns: Some(launch::IdMap { host_base: 2_000_000, count: 65536 }),
        first_boot: None,
        password_ssh: false,
        hosts_file: Some(hosts),
        gpu: Some(plan),
        launcher: Launcher::binary(env!("CARGO_BIN_EXE_nimbus-launch")),
        weaken: Weaken::default(),
    };
    runtime::prepare(&spec).unwrap();
    runtime::start(&spec, &cg, || true).unwrap();
    assert!(common::eventually(20, || runtime::ssh_banner(addr, Duration::from_millis(200))), "no sshd");
    let ip = addr.to_string();
    let ssh = |cmd: &str| {
        let (_, out) = common::ssh_with(&key, &ip, cmd);
        out.trim().to_owned()
    };
    assert_eq!(ssh(&format!("stat -c '%F %t:%T' {}", node.display())), "character special file 1:b");
    assert_eq!(ssh(&format!("sudo -n sh -c 'true > {}' && echo opened", node.display())), "opened", "the plan's node opens");
    assert_eq!(ssh("test -e /dev/kmsg || echo absent"), "absent", "the host's own node is not there");
    assert_eq!(ssh("stat -L -c %s /usr/lib/nimbus-nvidia/libz.so.1"), std::fs::metadata(&real).unwrap().len().to_string());
    assert_eq!(ssh(&format!("sudo -n sh -c 'echo x >> /usr/lib/nimbus-nvidia/{real_name}' 2>/dev/null || echo read-only")), "read-only");
    assert_eq!(ssh("/usr/bin/nimbus-gpu-tool && echo ran"), "ran");
    assert_eq!(ssh("cat /etc/ld.so.conf.d/000-nimbus-nvidia.conf"), "/usr/lib/nimbus-nvidia");
    // The libraries of the plan come first in the instance's ld cache, ahead of the image's.
    let first = ssh("/sbin/ldconfig -p | grep -m1 'libz.so.1 '");
    assert!(first.ends_with("=> /usr/lib/nimbus-nvidia/libz.so.1"), "{first}");
    // What every container needs still works under the filter: /dev/null, ptys.
    assert_eq!(ssh("echo x > /dev/null && python3 -c 'import os; m, s = os.openpty(); print(os.ttyname(s)[:9])'"), "/dev/pts/");
    // The filter on the host side: v1 whitelist (where the controller exists) names the node.
    if let Some(devices) = cg.dirs(&id).iter().find(|d| d.starts_with("/sys/fs/cgroup/devices")) {
        let list = std::fs::read_to_string(devices.join("devices.list")).unwrap();
        assert!(list.contains("c 1:11 rwm") && !list.contains("a *:* rwm"), "{list}");
    }
}
