//! The guest kernel and initramfs every VM boots directly (no firmware wait, no bootloader):
//! Debian's cloud kernel (`linux-image-cloud-amd64`, fetched with `apt-get download` from the
//! package mirror the host already uses, never built), and an initramfs made here of
//! `busybox-static` plus the few kernel modules a guest needs (virtio PCI, disk, network,
//! ISO 9660 for the seed, virtiofs for shared file systems), with their dependencies read from
//! each module's own `depends=`.
//!
//! The initramfs's `/init` loads the modules, mounts the instance's disk (`/dev/vda`) as the
//! root, copies the seed (`/dev/vdb`, see `seed.rs`) to a tmpfs `/run/nimbus`, and switches to
//! the image's `tini` running the seed's boot script. With `nimbus.probe` on the command line
//! it only prints [`PROBE_MARKER`] and powers off: the boot test that decides whether KVM works.
//!
//! Everything lands under `<images-dir>/vm-kernel/` through a temporary directory renamed into
//! place, so a crash never leaves half a kernel there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a guest boots: the kernel image and the initramfs (an uncompressed newc cpio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub const PROBE_MARKER: &str = "NIMBUS-PROBE-OK";

/// The modules the guest loads, by name; their dependencies come first, found by the loader.
pub const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "virtio_net", "isofs", "virtiofs"];

const INIT: &str = r#"#!/bin/busybox sh
# The Nimbus VM initramfs: load the virtio modules, mount the disk and the seed, hand over to
# the image's tini running the seed's boot script.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || echo "nimbus-initramfs: insmod $m failed"
done
if grep -qw nimbus.probe /proc/cmdline; then
  echo NIMBUS-PROBE-OK
  poweroff -f
fi
n=0; while [ ! -b /dev/vda ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done
mount -o rw /dev/vda /newroot || { echo "nimbus-initramfs: the disk /dev/vda does not mount"; poweroff -f; }
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
mkdir -p /newroot/run/nimbus /seed
if mount -t iso9660 -o ro /dev/vdb /seed; then
  cp -a /seed/nimbus/. /newroot/run/nimbus/
  umount /seed
else
  echo "nimbus-initramfs: no seed disk"
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /usr/bin/tini -s -g -- /bin/sh /run/nimbus/boot.sh
"#;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    Tool(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

type Result<T> = std::result::Result<T, GuestError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuestError + '_ {
    move |source| GuestError::Io { path: path.to_owned(), source }
}

pub fn dir(images_dir: &Path) -> PathBuf {
    images_dir.join("vm-kernel")
}

/// The prepared kernel and initramfs, if there are.
pub fn prepared(images_dir: &Path) -> Option<Boot> {
    let d = dir(images_dir);
    let b = Boot { kernel: d.join("vmlinuz"), initrd: d.join("initrd.cpio") };
    (b.kernel.is_file() && b.initrd.is_file()).then_some(b)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| GuestError::Tool(format!("{:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(GuestError::Tool(format!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fetches and unpacks the kernel and busybox packages and builds the initramfs; does nothing
/// when they are there already. `say` gets a line per step.
pub fn prepare(images_dir: &Path, mut say: impl FnMut(&str)) -> Result<Boot> {
    if let Some(b) = prepared(images_dir) {
        return Ok(b);
    }
    let final_dir = dir(images_dir);
    let tmp = images_dir.join(format!(".vm-kernel.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("debs")).map_err(io(&tmp))?;
    let pkg = kernel_package()?;
    say(&format!("downloading {pkg} and busybox-static (apt-get download)"));
    // `_apt` cannot write to root's temporary directories; download as root, unsandboxed.
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", &pkg, "busybox-static"])
        .current_dir(tmp.join("debs")))?;
    let unpacked = tmp.join("root");
    for deb in std::fs::read_dir(tmp.join("debs")).map_err(io(&tmp))? {
        let deb = deb.map_err(io(&tmp))?.path();
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let kernel = find_named(&unpacked.join("boot"), |n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| GuestError::Missing(format!("{pkg} has no /boot/vmlinuz-*")))?;
    let busybox = unpacked.join("bin/busybox");
    if !busybox.is_file() {
        return Err(GuestError::Missing("busybox-static has no /bin/busybox".into()));
    }
    let version = kernel.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")).unwrap_or_default().to_owned();
    let modules = unpacked.join("lib/modules").join(&version).join("kernel");
    say(&format!("building the initramfs for {version}"));
    let initrd = initramfs(&busybox, &modules)?;
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    std::fs::copy(&kernel, out.join("vmlinuz")).map_err(io(&kernel))?;
    std::fs::write(out.join("initrd.cpio"), initrd).map_err(io(&out))?;
    std::fs::write(out.join("version"), format!("{version}\n")).map_err(io(&out))?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&out, &final_dir).map_err(io(&final_dir))?;
    let _ = std::fs::remove_dir_all(&tmp);
    say(&format!("guest kernel {version} ready in {}", final_dir.display()));
    prepared(images_dir).ok_or_else(|| GuestError::Missing(format!("{} after preparing it", final_dir.display())))
}

/// The versioned package `linux-image-cloud-amd64` depends on (`apt-get download` wants a
/// real package, not the meta one).
fn kernel_package() -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .ok_or_else(|| GuestError::Missing("apt knows no linux-image-cloud-amd64 (is the Debian mirror configured?)".into()))
}

fn find_named(dir: &Path, want: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(&want))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// Every `.ko` under `dir`, by module name (`-` and `_` are the same to the kernel).
fn module_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                out.insert(name.replace('-', "_"), p);
            }
        }
    }
    out
}

/// The module names a module's `.modinfo` says it needs (`depends=a,b`).
pub fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else { return Vec::new() };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').map(|s| s.trim().replace('-', "_")).filter(|s| !s.is_empty()).collect()
}

/// `wanted` and everything they depend on, dependencies first.
pub fn load_order(wanted: &[&str], deps_of: &dyn Fn(&str) -> Option<Vec<String>>) -> Result<Vec<String>> {
    fn visit(m: &str, deps_of: &dyn Fn(&str) -> Option<Vec<String>>, seen: &mut Vec<String>, path: &mut Vec<String>) -> Result<()> {
        if seen.iter().any(|s| s == m) {
            return Ok(());
        }
        if path.iter().any(|s| s == m) {
            return Err(GuestError::Missing(format!("module dependency cycle through {m}")));
        }
        let deps = deps_of(m).ok_or_else(|| GuestError::Missing(format!("the kernel package has no module {m}")))?;
        path.push(m.to_owned());
        for d in &deps {
            visit(d, deps_of, seen, path)?;
        }
        path.pop();
        seen.push(m.to_owned());
        Ok(())
    }
    let mut seen = Vec::new();
    for m in wanted {
        visit(m, deps_of, &mut seen, &mut Vec::new())?;
    }
    Ok(seen)
}

/// The initramfs: busybox, `/init`, the modules and their load order.
fn initramfs(busybox: &Path, modules_dir: &Path) -> Result<Vec<u8>> {
    let files = module_files(modules_dir);
    let deps_of = |m: &str| files.get(m).map(|p| std::fs::read(p).map(|b| depends(&b)).unwrap_or_default());
    let order = load_order(MODULES, &deps_of)?;
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "seed", "lib", "lib/modules"] {
        c.dir(d);
    }
    c.file("bin/busybox", 0o755, &std::fs::read(busybox).map_err(io(busybox))?);
    c.file("init", 0o755, INIT.as_bytes());
    for m in &order {
        let p = &files[m];
        c.file(&format!("lib/modules/{m}.ko"), 0o644, &std::fs::read(p).map_err(io(p))?);
    }
    c.file("lib/modules/order", 0o644, format!("{}\n", order.join(" ")).as_bytes());
    Ok(c.finish())
}

/// A newc (`070701`) cpio archive, the format the kernel unpacks an initramfs from.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, b"");
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, b"");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_reads_the_modinfo_string() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net-failover\0vermagic=6.1\0";
        assert_eq!(depends(ko), ["virtio_ring", "virtio", "net_failover"]);
        assert!(depends(b"\0depends=\0name=fuse\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn modules_load_after_their_dependencies() {
        let graph: BTreeMap<&str, Vec<&str>> = [
            ("virtio_net", vec!["virtio_ring", "virtio", "net_failover"]),
            ("net_failover", vec!["failover"]),
            ("failover", vec![]),
            ("virtio", vec!["virtio_ring"]),
            ("virtio_ring", vec![]),
            ("isofs", vec!["cdrom"]),
            ("cdrom", vec![]),
        ]
        .into_iter()
        .collect();
        let deps_of = |m: &str| graph.get(m).map(|d| d.iter().map(|s| s.to_string()).collect());
        let order = load_order(&["virtio_net", "isofs", "virtio"], &deps_of).unwrap();
        assert_eq!(order, ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "cdrom", "isofs"]);
        let e = load_order(&["nope"], &deps_of).unwrap_err().to_string();
        assert!(e.contains("no module nope"), "{e}");
        let cyclic: BTreeMap<&str, Vec<&str>> = [("a", vec!["b"]), ("b", vec!["a"])].into_iter().collect();
        let deps_of = |m: &str| cyclic.get(m).map(|d| d.iter().map(|s| s.to_string()).collect());
        assert!(load_order(&["a"], &deps_of).unwrap_err().to_string().contains("cycle"));
    }

    /// The archive is what the kernel's newc reader expects: aligned headers, sizes in hex,
    /// NUL-terminated names, and the trailer. Read back with busybox's cpio where the host has it.
    #[test]
    fn cpio_is_newc() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        c.file("odd", 0o644, b"x");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        assert_eq!(&a[6..14], b"00000001", "ino");
        assert_eq!(&a[14..22], b"000041ed", "dir mode");
        let hello = a.windows(9).position(|w| w == b"bin/hello").unwrap();
        let hdr = &a[hello - 110..hello];
        assert_eq!(&hdr[54..62], b"00000012", "file size 18");
        assert_eq!(&hdr[94..102], b"0000000a", "name size incl. NUL");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
        let bb = Path::new("/bin/busybox");
        if bb.is_file() {
            let t = crate::container::TempDir::new();
            let mut child = Command::new(bb)
                .args(["cpio", "-i", "-d"])
                .current_dir(&t.0)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &a).unwrap();
            assert!(child.wait().unwrap().success());
            assert_eq!(std::fs::read_to_string(t.0.join("bin/hello")).unwrap(), "#!/bin/sh\necho hi\n");
            assert_eq!(std::fs::read_to_string(t.0.join("odd")).unwrap(), "x");
        }
    }
}
