//! The real `nimbus agent` process with the container driver, killed with SIGKILL in the middle
//! of a launch and started again: it adopts what runs (no duplicate, no restart), finishes the
//! interrupted launch, and after terminate nothing is left on the host. Root and the debian-12
//! image are needed (scripts/test provides both); otherwise the test says why and skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_driver::container::cgroup::Cgroups;
use nimbus_test_utils::TestServer;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

fn images() -> Option<PathBuf> {
    if !Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false) {
        eprintln!("SKIPPED: the container driver needs root");
        return None;
    }
    let d = std::env::var("NIMBUS_TEST_IMAGES_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/var/tmp/nimbus-images"));
    if !nimbus_driver::container::image::exists(&d, "debian-12") {
        eprintln!("SKIPPED: no debian-12 image in {}", d.display());
        return None;
    }
    Some(d)
}

/// This test's own bridge (and so its own namespaces, cgroup parent and nftables tables), never
/// the machine's default `nimbus0`.
fn bridge() -> String {
    format!("nk{}", std::process::id() % 100_000)
}

fn agent(url: &str, token: &str, dir: &std::path::Path, images: &std::path::Path) -> Child {
    let subnet = format!("10.233.{}.0/24", std::process::id() % 200);
    Command::new(BIN)
        .args(["agent", "--server", url, "--token", token, "--bridge", &bridge(), "--instance-subnet", &subnet, "--data-dir"])
        .arg(dir)
        .arg("--images-dir")
        .arg(images)
        .args(["--offer-vcpus", "8", "--offer-memory-gib", "8", "--offer-disk-gib", "100"])
        .env("NIMBUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nimbus agent")
}

fn count_ours(cg: &Cgroups, ids: &[String]) -> usize {
    cg.list().iter().filter(|n| ids.contains(n)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_launch_adopts_and_leaks_nothing() {
    let Some(images) = images() else { return };
    let s = TestServer::builder().start().await;
    let token = nimbus_control::admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    let dir = s.dir.0.join("agent");
    let mut a = agent(&s.url, &token, &dir, &images);
    s.wait_for("agent registration", || async { !s.control.store().host_list(None, true).await.unwrap().is_empty() }).await;
    let key = s.dir.0.join("id");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap().success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    s.expect("POST", "/ssh-keys", Some(json!({"name": "k", "public_key": public.trim()})), 200).await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});

    let v = s.expect("POST", "/instance-operations/launch", Some(launch.clone()), 200).await;
    let first = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    s.wait_status(&s.key, &first, "active").await;
    let cg = Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"), &format!("nimbus-{}", bridge())).unwrap();
    let pids_before = cg.pids(&first);

    // Launch a second instance and kill the agent while it is bringing it up.
    let v = s.expect("POST", "/instance-operations/launch", Some(launch.clone()), 200).await;
    let second = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let t = Instant::now();
    while !dir.join("container/instances").join(&second).exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();

    let mut a = agent(&s.url, &token, &dir, &images);
    s.wait_status(&s.key, &second, "active").await;
    s.wait_status(&s.key, &first, "active").await;
    // Its first process (the container's init) is the same one: adopted, not restarted. The
    // whole set is not compared, since short-lived processes (an sshd child serving the health
    // probe) come and go.
    let init = pids_before.iter().min().copied().expect("the first instance has processes");
    let after = cg.pids(&first);
    assert!(after.contains(&init), "the first instance was adopted, not restarted: {pids_before:?} then {after:?}");
    let ids = vec![first.clone(), second.clone()];
    assert_eq!(count_ours(&cg, &ids), 2, "exactly one container per instance");
    assert_eq!(s.control.store().host_list(None, false).await.unwrap().len(), 1, "the agent came back as the same host");

    // Instances reach each other on their private network (SSH is open by default).
    let ip = |v: serde_json::Value| v["ip"].as_str().unwrap().to_owned();
    let (ip1, ip2) = (ip(s.wait_status(&s.key, &first, "active").await), ip(s.wait_status(&s.key, &second, "active").await));
    let out = Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(format!("ubuntu@{ip2}"))
        .arg(format!("timeout 3 bash -c 'head -c 4 < /dev/tcp/{ip1}/22'"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SSH-", "instance 2 reaches instance 1's sshd: {out:?}");

    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": ids})), 200).await;
    for id in &ids {
        s.wait_status(&s.key, id, "terminated").await;
    }
    let t = Instant::now();
    while count_ours(&cg, &ids) > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count_ours(&cg, &ids), 0, "no cgroup left");
    for id in &ids {
        assert!(!std::path::Path::new(&format!("/run/netns/{}-{}", bridge(), &id[..12])).exists(), "netns of {id} left");
        assert!(!dir.join("container/instances").join(id).exists(), "instance dir of {id} left");
    }
    a.kill().unwrap();
    a.wait().unwrap();
    // What the agent keeps for the host's lifetime: its bridge, firewall tables, cgroup parent.
    let b = bridge();
    let _ = Command::new("ip").args(["link", "del", &b]).status();
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft").args(["delete", "table", family, &format!("nimbus_{b}")]).status();
    }
    for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(h.path().join(format!("nimbus-{b}")));
    }
    s.shutdown().await;
}
