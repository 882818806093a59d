//! Docker inside an unprivileged instance (LXD calls it nesting): the `debian-12-docker` image
//! variant, `dockerd` started by hand (the image has no systemd), an image imported from a local
//! tarball (no registry is reachable from here), and a container that runs and prints. Needs
//! root and the debian-12-docker image (scripts/test builds it); otherwise says why and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Host;
use nimbus_driver::container::image;
use nimbus_driver::container::runtime::Weaken;

const DOCKER_IMAGE: &str = "debian-12-docker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runs_a_container_inside_an_unprivileged_instance() {
    let Some(images) = common::images_dir() else { return };
    if !image::exists(&images, DOCKER_IMAGE) {
        eprintln!("SKIPPED: no {DOCKER_IMAGE} image in {} (scripts/test builds it)", images.display());
        return;
    }
    let Some(h) = Host::new("dock", 242, Weaken::default()) else { return };
    let mut spec = h.spec("org-d", "dind");
    spec.image = DOCKER_IMAGE.into();
    spec.memory_mib = 2048;
    spec.vcpus = 2;
    let ip = h.launch(&spec).await;
    let start = "dockerd > /var/log/dockerd.log 2>&1 & \
                 for i in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done; \
                 docker info --format '{{.Driver}} {{.CgroupDriver}} {{.SecurityOptions}}' 2>&1 || tail -n 30 /var/log/dockerd.log";
    let out = h.root(&ip, start);
    eprintln!("docker info: {out}");
    // vfs: the instance's disk is itself an overlay, which overlayfs does not take as an upper
    // layer (docs/security.md); cgroupfs: Docker makes its cgroups in the delegated subtree.
    assert!(out.starts_with("vfs cgroupfs") && out.contains("seccomp"), "{out}");
    let build = "set -e; rm -rf /tmp/img; mkdir -p /tmp/img/bin; cp /bin/dash /tmp/img/bin/sh; \
                 for l in $(ldd /bin/dash | grep -o '/[^ ]*'); do mkdir -p /tmp/img$(dirname $l); cp $l /tmp/img$l; done; \
                 tar -C /tmp/img -cf /tmp/img.tar .; docker import /tmp/img.tar nimbus-test:1 >/dev/null; \
                 docker run --rm nimbus-test:1 /bin/sh -c 'echo hello-from-docker-inside'";
    let out = h.root(&ip, build);
    assert!(out.contains("hello-from-docker-inside"), "{out}\n--- dockerd.log ---\n{}", h.root(&ip, "tail -n 40 /var/log/dockerd.log"));

    // A detached container lives in a cgroup below the instance's own, in the subtree the
    // instance was delegated; the host sees it there, and destroy takes it along.
    let cid = h.root(&ip, "docker run -d nimbus-test:1 /bin/sh -c 'while :; do sleep 1; done' 2>&1").trim().to_owned();
    assert_eq!(cid.len(), 64, "{cid}");
    let mem = h.cgroups().hierarchies().iter().any(|x| x.options == "memory");
    if mem {
        let nested = std::path::Path::new("/sys/fs/cgroup/memory").join(&h.cfg.cgroup_parent).join(&spec.id).join("docker").join(&cid);
        assert!(nested.is_dir(), "{} is missing", nested.display());
    }
    nimbus_driver::Driver::destroy(&h.driver, &spec.id).await.unwrap();
    assert!(!h.cgroups().exists(&spec.id), "the nested cgroups went with the instance");
}
