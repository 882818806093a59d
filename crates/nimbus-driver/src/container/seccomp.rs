//! The seccomp filter every unprivileged instance runs under, compiled with Firecracker's
//! `seccompiler` (no hand-written BPF): a deny list answered with `EPERM`, on top of the user
//! namespace, which already keeps every host-global capability check failing.
//!
//! What is denied, and why (Docker's and LXD's default profiles are the yardstick; a call is
//! here when either of them refuses it and nesting does not need it):
//! - kernel images and modules: `kexec_load`, `kexec_file_load`, `init_module`, `finit_module`,
//!   `delete_module` (the pre-2.6 module calls no longer exist in the kernel);
//! - the kernel keyring: `keyctl`, `add_key`, `request_key` — answered with `ENOSYS` rather than
//!   `EPERM`, as LXD does: runc (Docker inside) then runs its containers without a session
//!   keyring of their own, as on a kernel without keyrings, instead of failing;
//! - file handles (the "shocker" escape): `open_by_handle_at`;
//! - tracing and in-kernel programs: `perf_event_open`, `bpf`, `lookup_dcookie`;
//! - the clock: `settimeofday`, `clock_settime`, `clock_adjtime` (`adjtimex` stays: reading the
//!   clock's state needs no privilege and changing it fails on the capability check);
//! - the host's kernel log and accounting: `syslog`, `acct`;
//! - swap, raw I/O ports and legacy interfaces: `swapon`, `swapoff`, `iopl`, `ioperm`, `uselib`,
//!   `ustat`, `sysfs`, `_sysctl`;
//! - `userfaultfd` (a favourite of kernel exploits; Docker refuses it too) and `io_uring_*`
//!   (Docker's default since 25.0, for the same reason);
//! - every 32-bit (compat) system call: the filter is for `x86_64`/`aarch64` only and kills a
//!   process that enters the kernel through another ABI, as the compat layer has a long
//!   history of bugs.
//!
//! Deliberately allowed, unlike Docker's default: `mount`, `umount2`, `pivot_root`, `unshare`,
//! `setns` and namespace flags of `clone` (Docker inside an instance needs them; they act on
//! the instance's own namespaces only), and the NUMA calls (`mbind`, `set_mempolicy`,
//! `move_pages`), which GPU software uses to place memory near its GPU. `reboot` stays: in a PID
//! namespace it only ends the instance's own init.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// `(name, number)` of every denied system call on this architecture.
pub fn denied() -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("bpf", libc::SYS_bpf),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("syslog", libc::SYS_syslog),
        ("acct", libc::SYS_acct),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("uselib", libc::SYS_uselib),
        ("ustat", libc::SYS_ustat),
        ("sysfs", libc::SYS_sysfs),
        ("_sysctl", libc::SYS__sysctl),
    ]);
    v
}

/// `(name, number)` of the keyring calls, answered with `ENOSYS`.
pub fn keyring() -> Vec<(&'static str, i64)> {
    vec![("keyctl", libc::SYS_keyctl), ("add_key", libc::SYS_add_key), ("request_key", libc::SYS_request_key)]
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("no seccomp filter for {}: {e:?}", std::env::consts::ARCH))
}

fn compile(calls: Vec<(&'static str, i64)>, errno: i32) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = calls.into_iter().map(|(_, nr)| (nr, vec![])).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch()?)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| format!("seccomp filter: {e}"))
}

/// The compiled filters, installed one after the other (a call passes only if every filter
/// allows it): [`denied`] returns `EPERM`, [`keyring`] returns `ENOSYS`, everything else runs.
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    Ok(vec![compile(denied(), libc::EPERM)?, compile(keyring(), libc::ENOSYS)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn the_filter_compiles_and_covers_the_issue_list() {
        let progs = programs().expect("compiles");
        assert!(progs[0].len() > denied().len(), "one comparison per denied call at least");
        let names: Vec<&str> = denied().iter().chain(keyring().iter()).map(|(n, _)| *n).collect();
        for must in ["kexec_load", "init_module", "finit_module", "keyctl", "open_by_handle_at", "perf_event_open", "clock_settime", "bpf"]
        {
            assert!(names.contains(&must), "{must} must be denied");
        }
        for nesting in [libc::SYS_mount, libc::SYS_unshare, libc::SYS_setns, libc::SYS_pivot_root, libc::SYS_clone, libc::SYS_clone3] {
            assert!(denied().iter().all(|(_, nr)| *nr != nesting), "syscall {nesting} is needed for Docker inside");
        }
    }

    /// The filter on the real kernel: a child process installs it (as root, without
    /// no_new_privs) and then tries a denied call and an allowed one.
    #[test]
    fn the_kernel_refuses_denied_calls_with_their_errno() {
        if !super::super::inventory::is_root() {
            eprintln!("SKIPPED: installing a filter without no_new_privs needs CAP_SYS_ADMIN");
            return;
        }
        let progs = programs().unwrap();
        let script = "import ctypes, os\n\
                      libc = ctypes.CDLL(None, use_errno=True)\n\
                      r = libc.syscall(250, 0, -3, 0, 0, 0)\n\
                      print('keyctl', r, os.strerror(ctypes.get_errno()) if r < 0 else 'ok')\n\
                      r = libc.syscall(321, 5, 0, 0)\n\
                      print('bpf', r, os.strerror(ctypes.get_errno()) if r < 0 else 'ok')\n\
                      r = libc.syscall(39)\n\
                      print('getpid', 'ok' if r > 0 else 'failed')\n\
                      print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n";
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(script);
        // SAFETY: between fork and exec the child only makes the prctl system call on a program
        // compiled before the fork; nothing allocates.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || progs.iter().try_for_each(|p| super::super::sys::seccomp_install(p)));
        }
        let out = cmd.output().expect("python3");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec!["keyctl -1 Function not implemented", "bpf -1 Operation not permitted", "getpid ok", "0"],
            "{text}"
        );
    }
}
