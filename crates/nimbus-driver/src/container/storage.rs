//! Volumes and snapshots on a container host.
//!
//! A volume is an ext4 file system in an image file of exactly its size,
//! `<data>/volumes/<id>.img`, so a write past the size fails with ENOSPC inside the instance.
//! Attached, it is loop-mounted once on the host at `<data>/volume-mounts/<id>` (never twice:
//! two ext4 mounts of one file system corrupt it) and bound from there to
//! `<instance dir>/volumes/<name>` of every instance it is attached to. That directory is a
//! shared mount which the container's mount namespace receives as a slave at `/mnt/volumes`, so
//! attaching and detaching take effect in a running instance without a restart. The host mount
//! is released by the storage pass once no instance binds it any more.
//!
//! Used bytes are measured on the host mount (`df`'s "used", one `df` for all mounted volumes
//! per report); a volume mounted nowhere is not measured.
//!
//! A snapshot is a copy in `<data>/snapshots/<id>/`: `upper/` for a container's disk (its writable
//! layer, copied file by file: consistent for a stopped instance, not point-in-time across files
//! for a running one), `disk.qcow2` for a VM's (its overlay, copied with the guest paused, so
//! crash-consistent) or `volume.img` for a volume (frozen with `fsfreeze` while it is copied
//! when mounted, so consistent even in use). It is written to a temporary name and renamed when
//! complete, so a crash never leaves a partial copy that looks complete.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nimbus_proto::{HostSnapshot, HostVolume, SnapshotReport, SnapshotSource, SnapshotState, VolumeMount, VolumeReport};

const GIB: u64 = 1 << 30;

/// A VM instance's disk in its directory, and in a snapshot of it.
pub const VM_DISK: &str = "disk.qcow2";

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output().map_err(|e| format!("{cmd}: cannot start ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Whether `path` is a mount point of this mount namespace (a bind of its own directory
/// included), from `/proc/self/mountinfo`: no process to start on a launch's path.
pub fn is_mount(path: &Path) -> bool {
    let Ok(want) = std::fs::canonicalize(path) else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|p| Path::new(&unescape_mountinfo(p)) == want)
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape_mountinfo(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push(b[i + 1].wrapping_sub(b'0') * 64 + b[i + 2].wrapping_sub(b'0') * 8 + b[i + 3].wrapping_sub(b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn volumes_dir(instance_dir: &Path) -> PathBuf {
    instance_dir.join("volumes")
}

/// Makes `<instance dir>/volumes` a shared mount (a bind of itself), once, before the container
/// starts, so the container's slave copy receives the volumes mounted under it later.
pub fn share_volumes_dir(instance_dir: &Path) -> Result<(), String> {
    use super::sys;
    let d = volumes_dir(instance_dir);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    let c = sys::cstr(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    if !is_mount(&d) {
        sys::mount(Some(&c), &c, None, libc::MS_BIND, None).map_err(|e| format!("binding {}: {e}", d.display()))?;
    }
    sys::mount(None, &c, None, libc::MS_SHARED, None).map_err(|e| format!("sharing {}: {e}", d.display()))?;
    Ok(())
}

/// Unmounts every volume's host mount under `data_dir` (test cleanup; the agent releases them
/// itself once no instance binds them).
pub fn unmount_host_mounts(data_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(data_dir.join("volume-mounts")) {
        for e in entries.flatten() {
            if is_mount(&e.path()) {
                let _ = run("umount", &["-l", &p(&e.path())]);
            }
        }
    }
}

/// Unmounts every volume of an instance and the shared directory itself (stop and destroy).
pub fn unmount_all(instance_dir: &Path) {
    let d = volumes_dir(instance_dir);
    if let Ok(entries) = std::fs::read_dir(&d) {
        for e in entries.flatten() {
            if is_mount(&e.path()) {
                let _ = run("umount", &["-l", &p(&e.path())]);
            }
        }
    }
    if is_mount(&d) {
        let _ = run("umount", &["-l", &p(&d)]);
    }
}

pub struct Storage {
    data: PathBuf,
}

impl Storage {
    pub fn new(data_dir: &Path) -> Self {
        Storage { data: data_dir.to_owned() }
    }

    pub fn volume_file(&self, id: &str) -> PathBuf {
        self.data.join("volumes").join(format!("{id}.img"))
    }

    /// Where the volume's file system is mounted on the host while any instance uses it.
    pub fn mount_dir(&self, id: &str) -> PathBuf {
        self.data.join("volume-mounts").join(id)
    }

    /// Mounts the volume's file system at its host mount (once), growing it first when its
    /// file has grown; returns the mount.
    pub(crate) fn host_mount(&self, id: &str) -> Result<PathBuf, String> {
        let m = self.mount_dir(id);
        if is_mount(&m) {
            return Ok(m);
        }
        let f = self.volume_file(id);
        if !f.exists() {
            return Err(format!("volume {id} is not on this host yet"));
        }
        // A lazy unmount that has not let go yet keeps its loop device; a later pass retries.
        if let Some(dev) = loop_device_of(&f) {
            return Err(format!("volume {id} is still attached to {dev} from an earlier mount; retrying"));
        }
        std::fs::create_dir_all(&m).map_err(|e| e.to_string())?;
        grow_offline(&f)?;
        // A tenant's file system: nothing in it acts as set-uid or as a device on the host.
        run("mount", &["-o", "loop,nosuid,nodev", &p(&f), &p(&m)])?;
        Ok(m)
    }

    /// Releases the host mounts no instance binds any more (`in_use` lists the volume ids that
    /// are bound somewhere).
    fn release_host_mounts(&self, in_use: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.data.join("volume-mounts")) else { return };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if in_use.contains(&id.as_str()) {
                continue;
            }
            if is_mount(&e.path()) {
                if let Err(err) = run("umount", &["-l", &p(&e.path())]) {
                    tracing::warn!(volume = %id, error = %err, "cannot release the volume's host mount");
                    continue;
                }
            }
            let _ = std::fs::remove_dir(e.path());
        }
    }

    /// `(volume id, bytes used)` of every volume mounted on this host now.
    pub fn usage(&self) -> Vec<(String, i64)> {
        let root = self.data.join("volume-mounts");
        let prefix = format!("{}/", root.display());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let targets: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|t| t.starts_with(&prefix) && !t[prefix.len()..].contains('/'))
            .collect();
        if targets.is_empty() {
            return Vec::new();
        }
        // Exit status 1 when one target vanished meanwhile; the others are still printed.
        let out = Command::new("df").args(["-B1", "--output=used,target"]).args(&targets).stdin(Stdio::null()).output();
        let Ok(out) = out else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (used, target) = l.trim().split_once(char::is_whitespace)?;
                let id = target.trim().strip_prefix(&prefix)?;
                Some((id.to_owned(), used.parse().ok()?))
            })
            .collect()
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.data.join("snapshots").join(id)
    }

    /// Creates or grows one volume's file system; a new one's root belongs to host uid `owner`
    /// (the default user of its organization's instances).
    fn ensure_volume(&self, v: &HostVolume, owner: u32) -> Result<(), String> {
        if !nimbus_core_is_id(&v.id) {
            return Err(format!("bad volume id {:?}", v.id));
        }
        let f = self.volume_file(&v.id);
        let want = u64::try_from(v.size_gib).map_err(|_| "negative size".to_owned())? * GIB;
        std::fs::create_dir_all(self.data.join("volumes")).map_err(|e| e.to_string())?;
        if !f.exists() {
            let tmp = f.with_extension("img.tmp");
            let _ = std::fs::remove_file(&tmp);
            match &v.source_snapshot {
                Some(s) => {
                    let src = self.snapshot_dir(s).join("volume.img");
                    run("cp", &["--reflink=auto", "--sparse=always", &p(&src), &p(&tmp)])?;
                }
                None => {
                    std::fs::File::create(&tmp).and_then(|fh| fh.set_len(want)).map_err(|e| e.to_string())?;
                    run("mkfs.ext4", &["-q", "-F", "-E", &format!("root_owner={owner}:{owner}"), &p(&tmp)])?;
                }
            }
            std::fs::rename(&tmp, &f).map_err(|e| e.to_string())?;
        }
        let have = std::fs::metadata(&f).map(|m| m.len()).map_err(|e| e.to_string())?;
        if want > have {
            std::fs::OpenOptions::new().write(true).open(&f).and_then(|fh| fh.set_len(want)).map_err(|e| e.to_string())?;
            match loop_device_of(&f) {
                // Mounted: refresh the loop device's size and grow the file system online. Some
                // hosts refuse the online-resize ioctl (this project's VMs: "Permission denied");
                // then the file system grows at its next mount (detach/attach or a start).
                Some(dev) => {
                    run("losetup", &["-c", &dev])?;
                    if let Err(e) = run("resize2fs", &[&dev]) {
                        return Err(format!(
                            "grown to {} GiB; the file system grows at the next attach or start (online resize refused: {e})",
                            v.size_gib
                        ));
                    }
                }
                None => grow_offline(&f)?,
            }
        }
        Ok(())
    }

    fn make_snapshot(&self, s: &HostSnapshot, instances_dir: &Path, mounted_at: &dyn Fn(&str) -> Option<PathBuf>) -> Result<(), String> {
        let dir = self.snapshot_dir(&s.id);
        if dir.exists() {
            return Ok(());
        }
        let tmp = self.data.join("snapshots").join(format!(".{}.tmp", s.id));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        match &s.source {
            SnapshotSource::Instance { id } if instances_dir.join(id).join(VM_DISK).exists() => {
                // A VM's disk: its qcow2 overlay (on the image's base, which stays), copied
                // with the guest paused, so the copy is crash-consistent even while it runs.
                let _paused = crate::vm::qemu::pause(id);
                run("cp", &["--reflink=auto", "--sparse=always", &p(&instances_dir.join(id).join(VM_DISK)), &p(&tmp.join(VM_DISK))])?;
            }
            SnapshotSource::Instance { id } => {
                let upper = instances_dir.join(id).join("upper");
                if !upper.exists() {
                    return Err(format!("instance {id} has no disk on this host"));
                }
                run("cp", &["-a", "--reflink=auto", &p(&upper), &p(&tmp.join("upper"))])?;
            }
            SnapshotSource::Volume { id } => {
                let f = self.volume_file(id);
                if !f.exists() {
                    return Err(format!("volume {id} has no data on this host"));
                }
                let frozen = mounted_at(id);
                if let Some(m) = &frozen {
                    run("fsfreeze", &["-f", &p(m)])?;
                }
                let r = run("cp", &["--reflink=auto", "--sparse=always", &p(&f), &p(&tmp.join("volume.img"))]);
                if let Some(m) = &frozen {
                    let _ = run("fsfreeze", &["-u", &p(m)]);
                }
                r?;
            }
        }
        std::fs::rename(&tmp, &dir).map_err(|e| e.to_string())
    }

    /// Makes the host's volumes and snapshots the desired sets and reports them.
    /// `mounts` lists `(volume id, instance id, mount path)` of what is bound into instances now;
    /// `owner_of` gives the host uid a new volume's root belongs to.
    pub fn sync(
        &self,
        volumes: &[HostVolume],
        snapshots: &[HostSnapshot],
        instances_dir: &Path,
        mounts: &[(String, String, PathBuf)],
        owner_of: &dyn Fn(&HostVolume) -> Result<u32, String>,
    ) -> (Vec<VolumeReport>, Vec<SnapshotReport>) {
        // Host mounts no instance binds any more go first, so a detached volume grows offline
        // at its next mount and a deleted one can go below.
        self.release_host_mounts(&mounts.iter().map(|m| m.0.as_str()).collect::<Vec<_>>());
        let mounted_at = |id: &str| Some(self.mount_dir(id)).filter(|m| is_mount(m));
        // Snapshots first: a restore may need one that this same pass makes.
        let mut snap_reports = Vec::new();
        for s in snapshots {
            let r = self.make_snapshot(s, instances_dir, &mounted_at);
            let size = du_bytes(&self.snapshot_dir(&s.id));
            snap_reports.push(SnapshotReport {
                id: s.id.clone(),
                state: if r.is_ok() { SnapshotState::Ready } else { SnapshotState::Failed },
                size_bytes: size,
                message: r.err(),
            });
        }
        if let Ok(entries) = std::fs::read_dir(self.data.join("snapshots")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !snapshots.iter().any(|s| s.id == name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let mut vol_reports = Vec::new();
        for v in volumes {
            let r = owner_of(v).and_then(|owner| self.ensure_volume(v, owner));
            let mounted_in_all: Vec<String> = mounts.iter().filter(|m| m.0 == v.id).map(|m| m.1.clone()).collect();
            vol_reports.push(VolumeReport {
                id: v.id.clone(),
                size_gib: v.size_gib,
                mounted_in: mounted_in_all.first().cloned(),
                mounted_in_all,
                used_bytes: None,
                message: r.err(),
            });
        }
        if let Ok(entries) = std::fs::read_dir(self.data.join("volumes")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.trim_end_matches(".img").trim_end_matches(".img.tmp").to_owned();
                // A volume still mounted somewhere is removed on a later pass, once unmounted.
                if !volumes.iter().any(|v| v.id == id) && !mounts.iter().any(|m| m.0 == id) && !is_mount(&self.mount_dir(&id)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        (vol_reports, snap_reports)
    }

    /// Mounts the desired volumes of an instance under its shared volumes directory and
    /// unmounts the others; works on a running instance.
    pub fn mount_for(&self, instance_dir: &Path, desired: &[VolumeMount]) -> Result<(), String> {
        let d = volumes_dir(instance_dir);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !desired.iter().any(|v| v.name == name) {
                    if is_mount(&e.path()) {
                        run("umount", &["-l", &p(&e.path())])?;
                    }
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        for v in desired {
            check_mount(v)?;
            let at = d.join(&v.name);
            if is_mount(&at) {
                continue;
            }
            let m = self.host_mount(&v.volume_id)?;
            std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
            run("mount", &["--bind", &p(&m), &p(&at)])?;
        }
        Ok(())
    }

    /// Seeds a new VM's disk from a snapshot of a VM's disk.
    pub fn restore_vm_disk(&self, snapshot: &str, disk: &Path) -> Result<(), String> {
        let dir = self.snapshot_dir(snapshot);
        let src = dir.join(VM_DISK);
        if !src.exists() {
            return Err(if dir.join("upper").exists() {
                format!("snapshot {snapshot} is of a container's disk; it cannot boot a VM")
            } else {
                format!("snapshot {snapshot} is not on this host")
            });
        }
        let tmp = disk.with_extension("restoring");
        run("cp", &["--reflink=auto", "--sparse=always", &p(&src), &p(&tmp)])?;
        std::fs::rename(&tmp, disk).map_err(|e| e.to_string())
    }

    /// Seeds a new instance's disk from an instance snapshot.
    pub fn restore_upper(&self, snapshot: &str, upper: &Path) -> Result<(), String> {
        let src = self.snapshot_dir(snapshot).join("upper");
        if !src.exists() {
            return Err(if self.snapshot_dir(snapshot).join(VM_DISK).exists() {
                format!("snapshot {snapshot} is of a VM's disk; it cannot start a container")
            } else {
                format!("snapshot {snapshot} is not on this host")
            });
        }
        if let Some(parent) = upper.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        // Into a temporary name, renamed when complete: an agent killed mid-copy leaves no
        // half disk that a restart would take for the restored one.
        let tmp = upper.with_extension("restoring");
        let _ = std::fs::remove_dir_all(&tmp);
        run("cp", &["-a", "--reflink=auto", &p(&src), &p(&tmp)])?;
        std::fs::rename(&tmp, upper).map_err(|e| e.to_string())
    }
}

/// Grows an unmounted volume's file system to its file's size, when it is smaller.
fn grow_offline(f: &Path) -> Result<(), String> {
    let info = run("dumpe2fs", &["-h", &p(f)]).unwrap_or_default();
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
    let fs_bytes = field("Block count:").zip(field("Block size:")).map(|(c, s)| c * s).unwrap_or(0);
    let file_bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    // Still attached to a loop device (a lazy unmount not finished): never check or resize a
    // file system that may be in use; a later mount grows it.
    if fs_bytes == 0 || fs_bytes >= file_bytes || loop_device_of(f).is_some() {
        return Ok(());
    }
    // e2fsck exits 1 when it corrected something, which is fine before a resize; resize2fs
    // itself says whether the file system is fit to grow.
    let _ = run("e2fsck", &["-f", "-y", &p(f)]);
    run("resize2fs", &[&p(f)])?;
    Ok(())
}

/// A volume mount from the server, before its name becomes a path (`/mnt/volumes/<name>`) and
/// its id a file name: both checked for anything that could leave their directory.
pub(crate) fn check_mount(v: &VolumeMount) -> Result<(), String> {
    if v.name.is_empty() || v.name.contains('/') || v.name.starts_with('.') {
        return Err(format!("bad volume name {:?}", v.name));
    }
    if !nimbus_core_is_id(&v.volume_id) {
        return Err(format!("bad volume id {:?}", v.volume_id));
    }
    Ok(())
}

fn nimbus_core_is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The loop device backing `file`, when it is attached.
fn loop_device_of(file: &Path) -> Option<String> {
    let out = run("losetup", &["-j", &p(file)]).ok()?;
    out.split(':').next().map(str::trim).filter(|s| s.starts_with("/dev/loop")).map(str::to_owned)
}

/// Allocated bytes under `path` (file or directory).
fn du_bytes(path: &Path) -> i64 {
    i64::try_from(super::metrics::disk_bytes(path)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone_and_mounts_found() {
        assert_eq!(super::unescape_mountinfo("/a\\040b/c\\134d"), "/a b/c\\d");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
        assert!(super::is_mount(std::path::Path::new("/proc")));
        assert!(!super::is_mount(std::path::Path::new("/proc/self")));
    }
}
