//! VM disks: one qcow2 base per image, made from the same debootstrap root file system the
//! containers use (`mkfs.ext4 -d` + `qemu-img convert`: no loop device, no download), and a
//! qcow2 overlay per instance on top of it. The base is read-only to every VM; an instance's
//! writes go to its overlay, which stop/start keeps and terminate deletes.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The file system the base holds, before the guest grows it to the instance's disk size.
const BASE_GIB: u64 = 4;

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn base_path(images_dir: &Path, image: &str) -> PathBuf {
    images_dir.join(image).join("vm").join("disk.qcow2")
}

/// The image's VM base disk, built from its root file system when missing.
pub fn ensure_base(images_dir: &Path, image: &str) -> Result<PathBuf, String> {
    let base = base_path(images_dir, image);
    if base.is_file() {
        return Ok(base);
    }
    let rootfs = crate::container::image::rootfs(images_dir, image);
    if !rootfs.join("etc/os-release").exists() {
        return Err(format!("image {image:?} is not built on this host (nimbus image build --name {image})"));
    }
    let dir = base.parent().ok_or("no parent")?.to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let raw = dir.join(format!(".disk.raw.{}", std::process::id()));
    let tmp = dir.join(format!(".disk.qcow2.{}", std::process::id()));
    let made = (|| {
        std::fs::File::create(&raw).and_then(|f| f.set_len(BASE_GIB << 30)).map_err(|e| format!("{}: {e}", raw.display()))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "root", "-d"]).arg(&rootfs).arg(&raw))?;
        run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&tmp))?;
        std::fs::rename(&tmp, &base).map_err(|e| format!("{}: {e}", base.display()))
    })();
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&tmp);
    made.map(|()| base)
}

/// The virtual size of a qcow2 disk, in bytes.
pub fn virtual_size(disk: &Path) -> Result<u64, String> {
    let out = Command::new("qemu-img").args(["info", "--output=json", "-U"]).arg(disk).output().map_err(|e| format!("qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!("qemu-img info {}: {}", disk.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))?;
    v["virtual-size"].as_u64().ok_or_else(|| "qemu-img info without virtual-size".into())
}

/// Creates the instance's overlay on `base` with `size_gib` of virtual size; a disk that exists
/// (a stopped instance keeps its disk) is kept, and grown when its type now has a bigger one
/// (a resize; the guest grows its file system on the next boot). Never shrunk.
pub fn ensure_overlay(base: &Path, disk: &Path, size_gib: i64) -> Result<(), String> {
    let want = u64::try_from(size_gib.max(BASE_GIB as i64)).unwrap_or(BASE_GIB) << 30;
    if disk.is_file() {
        if virtual_size(disk)? < want {
            run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(disk).arg(want.to_string()))?;
        }
        return Ok(());
    }
    let size = want.to_string();
    let tmp = disk.with_extension("qcow2.tmp");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(base).arg(&tmp).arg(&size))?;
    std::fs::rename(&tmp, disk).map_err(|e| format!("{}: {e}", disk.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An overlay is made at the type's size, kept as it is, grown on a bigger type, never shrunk.
    #[test]
    fn overlays_are_made_kept_and_grown() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let t = crate::container::TempDir::new();
        let base = t.0.join("base.qcow2");
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("1G")).unwrap();
        let disk = t.0.join("disk.qcow2");
        ensure_overlay(&base, &disk, 10).unwrap();
        assert_eq!(virtual_size(&disk).unwrap(), 10 << 30);
        std::fs::write(t.0.join("marker"), "").unwrap();
        let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
        ensure_overlay(&base, &disk, 10).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), before, "kept as it was");
        ensure_overlay(&base, &disk, 20).unwrap();
        assert_eq!(virtual_size(&disk).unwrap(), 20 << 30, "grown for a bigger type");
        ensure_overlay(&base, &disk, 10).unwrap();
        assert_eq!(virtual_size(&disk).unwrap(), 20 << 30, "never shrunk");
        ensure_overlay(&base, &t.0.join("small.qcow2"), 1).unwrap();
        assert_eq!(virtual_size(&t.0.join("small.qcow2")).unwrap(), BASE_GIB << 30, "at least the base's file system");
    }
}
