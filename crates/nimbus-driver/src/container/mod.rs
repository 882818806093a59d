//! The container driver: instances as unprivileged Linux system containers built from
//! overlayfs over a cached image, user and other namespaces, cgroups, a seccomp filter and a
//! real sshd. Each piece is tested on the real kernel facility it drives; the isolation model
//! is in docs/security.md.

pub mod cdi;
pub mod cgroup;
pub mod devices;
pub mod driver;
pub mod fabric;
pub mod firewall;
pub mod gpu;
pub mod health;
pub mod idmap;
pub mod image;
pub mod inventory;
pub mod launch;
pub mod metrics;
pub mod net;
pub mod public;
pub mod runtime;
pub mod seccomp;
pub mod storage;
pub(crate) mod sys;
pub mod vpn;

/// Runs host tool `cmd` (iproute2, nft, wg, …) with `args`, feeding it `stdin`: its stdout, or
/// an error naming the command and what it printed on stderr.
pub(crate) fn tool(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().map_err(|e| format!("{cmd}: cannot start ({e})"))?;
    if let (Some(input), Some(mut s)) = (stdin, child.stdin.take()) {
        s.write_all(input.as_bytes()).map_err(|e| format!("{cmd}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A directory for a test's fake trees, removed when dropped.
#[cfg(test)]
pub(crate) struct TempDir(pub std::path::PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("nimbus-driver-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
