//! The container driver: instances as unprivileged Linux system containers built from
//! overlayfs over a cached image, user and other namespaces, cgroups, a seccomp filter and a
//! real sshd. Each piece is tested on the real kernel facility it drives; the isolation model
//! is in docs/security.md.

pub mod cgroup;
pub mod devices;
pub mod driver;
pub mod fabric;
pub mod firewall;
pub mod gpu;
pub mod idmap;
pub mod image;
pub mod inventory;
pub mod launch;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod seccomp;
pub mod storage;
pub(crate) mod sys;
pub mod vpn;

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
