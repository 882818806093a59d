//! The cgroup v2 device program on the real kernel: loaded through the kernel's verifier,
//! attached to a fresh cgroup2 directory, and its verdicts seen by a process inside it. Runs
//! wherever a cgroup2 hierarchy is mounted — a pure v2 host, or the `unified` part of a hybrid
//! one like this project's machines, where the kernel consults the program even though the
//! hierarchy has no controllers (`devcgroup_check_permission` runs the cgroup2 BPF program
//! before the v1 whitelist). Needs root; otherwise says why and skips.

// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use nimbus_driver::container::devices;

fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .find(|l| l.split(" - ").nth(1).is_some_and(|p| p.starts_with("cgroup2 ")))
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
}

/// Runs `script` with `sh` inside `cgroup` (it joins before anything else runs).
fn run_in(cgroup: &std::path::Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(format!("echo $$ > {}/cgroup.procs && {script}", cgroup.display())).output().expect("sh");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_device_program_decides_for_a_process_in_its_cgroup() {
    if !Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false) {
        eprintln!("SKIPPED: loading eBPF programs needs root");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        eprintln!("SKIPPED: no cgroup2 hierarchy is mounted here");
        return;
    };
    let cg = mount.join(format!("nimbus-devices-test-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let dir = std::env::temp_dir().join(format!("nimbus-devices-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup(vec![cg.clone(), dir.clone()]);
    // Before: everything this test touches opens (kmsg write-only needs no privilege).
    let probe = "for d in null zero urandom kmsg; do if { true > /dev/$d; } 2>/dev/null; then echo $d:open; else echo $d:refused; fi; done";
    let before = run_in(&cg, probe);
    assert_eq!(before.lines().collect::<Vec<_>>(), ["null:open", "zero:open", "urandom:open", "kmsg:open"], "{before}");

    devices::attach(&cg, &devices::base_rules()).expect("the kernel's verifier accepts the program and it attaches");
    assert_eq!(devices::attached(&cg).unwrap(), 1);
    let after = run_in(&cg, probe);
    assert_eq!(after.lines().collect::<Vec<_>>(), ["null:open", "zero:open", "urandom:open", "kmsg:refused"], "{after}");
    // A node made on the spot fails the same way: the program judges numbers, not paths.
    let made = run_in(
        &cg,
        &format!(
            "mknod {d}/mem c 1 1 && echo made; cat {d}/mem 2>&1 | head -c 200; mknod {d}/full c 1 7 && true > {d}/full && echo full:open",
            d = dir.display()
        ),
    );
    assert!(made.contains("made") && made.contains("Operation not permitted") && made.contains("full:open"), "{made}");

    // A process outside the cgroup is not affected.
    let outside = Command::new("sh").arg("-c").arg(": > /dev/kmsg && echo open").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "open");
}

/// Removes the test's cgroup (empty once its shells are gone; the program goes with it) and
/// directory, also when an assertion failed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0[0]);
        let _ = std::fs::remove_dir_all(&self.0[1]);
    }
}
