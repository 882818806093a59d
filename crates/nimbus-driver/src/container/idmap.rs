//! Which host uids and gids an instance's user namespace maps to, and how the shared image is
//! presented to it.
//!
//! **One range per tenant (organization), disjoint between tenants.** Root inside an instance
//! is `base` on the host, uid 1000 is `base + 1000`, and so on for 65536 ids. All instances of
//! one organization share its range, so the file systems they share (Lambda file systems,
//! volumes) stay writable by all of them with plain ownership; instances of different
//! organizations never share a host uid, so even a process that escaped its namespaces could
//! not signal, trace or read another tenant's processes and files through uid equality. This is
//! LXD's `security.idmap.isolated` drawn at the tenant boundary rather than per container: the
//! boundary that matters on a rented host is between strangers. A range, once given to a
//! tenant on a host, is never given to another (files it left on the host keep its ids).
//!
//! The image stays one shared directory owned by host root. Where the kernel can idmap the
//! overlay's lower layer (Linux 5.19+, probed once per driver, not assumed), each launch mounts
//! it idmapped into the instance's namespace; elsewhere, a shifted copy of the image is made
//! once per (image, range) and reused — never a per-launch chown.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Ids per instance user namespace (uid 0..65535 inside).
pub const RANGE: u32 = 65536;
/// Where ranges start when `/etc/subuid` gives root none: above any host user, as LXD does.
pub const DEFAULT_FIRST: u32 = 1_000_000;
/// How many ranges the default window holds (LXD's default of a billion ids).
pub const DEFAULT_COUNT: u32 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host's id window ({first}+{count}) has no free 65536-id range left")]
    Exhausted { first: u32, count: u32 },
    #[error("idmap table {0}: {1}")]
    Table(PathBuf, String),
}

type Result<T> = std::result::Result<T, IdmapError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdmapError + '_ {
    move |source| IdmapError::Io { path: path.to_owned(), source }
}

/// The fewest ranges a `/etc/subuid` entry for root must hold to be used: Debian's `lxd`
/// package writes `root:100000:65536`, a single range, which would leave room for one tenant.
pub const MIN_RANGES: u32 = 16;

/// The window of host ids the driver hands out: root's entry of `/etc/subuid` when there is
/// one with room for [`MIN_RANGES`] tenants (as LXD reads it; e.g. `root:1000000:1000000000`),
/// else [`DEFAULT_FIRST`] + [`DEFAULT_COUNT`].
pub fn host_window(subuid: &str) -> (u32, u32) {
    subuid
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            (f.next()? == "root").then_some(())?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .find(|(_, count): &(u32, u32)| *count >= MIN_RANGES * RANGE)
        .unwrap_or((DEFAULT_FIRST, DEFAULT_COUNT))
}

/// The tenant → range table of one host, kept in `<data>/idmap.json`.
pub struct Ranges {
    path: PathBuf,
    first: u32,
    count: u32,
}

impl Ranges {
    pub fn new(data_dir: &Path, window: (u32, u32)) -> Ranges {
        Ranges { path: data_dir.join("idmap.json"), first: window.0, count: window.1 }
    }

    fn load(&self) -> Result<BTreeMap<String, u32>> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| IdmapError::Table(self.path.clone(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(IdmapError::Io { path: self.path.clone(), source: e }),
        }
    }

    /// The first host id of `tenant`'s range, allocating the next unused range for a new
    /// tenant (the caller serializes calls).
    pub fn base_for(&self, tenant: &str) -> Result<u32> {
        let mut table = self.load()?;
        let index = match table.get(tenant) {
            Some(i) => *i,
            None => {
                let next = table.values().max().map_or(0, |m| m + 1);
                if u64::from(next + 1) * u64::from(RANGE) > u64::from(self.count) {
                    return Err(IdmapError::Exhausted { first: self.first, count: self.count });
                }
                table.insert(tenant.to_owned(), next);
                let tmp = self.path.with_extension("json.tmp");
                let body = serde_json::to_vec_pretty(&table).map_err(|e| IdmapError::Table(self.path.clone(), e.to_string()))?;
                std::fs::write(&tmp, body).map_err(io(&tmp))?;
                std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
                next
            }
        };
        Ok(self.first + index * RANGE)
    }
}

/// How instances see the shared image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageMode {
    /// The lower layer is mounted idmapped at each launch.
    Idmapped,
    /// A shifted copy per (image, range), made once.
    ShiftedCopy,
}

/// Whether this kernel can build an instance's root file system from an idmapped lower layer:
/// tried for real in `scratch` (a throwaway user namespace held by a `sleep`, an idmapped clone
/// of a small tree, an overlay over it), not read from a version number.
pub fn probe(scratch: &Path) -> std::result::Result<(), String> {
    use std::os::unix::process::CommandExt;
    let _ = std::fs::remove_dir_all(scratch);
    for d in ["lower", "upper", "work"] {
        std::fs::create_dir_all(scratch.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::write(scratch.join("lower/probe"), "x").map_err(|e| e.to_string())?;
    let mut holder = std::process::Command::new("sleep");
    holder.arg("10").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    // SAFETY: between fork and exec the child makes one system call (unshare) and nothing else.
    #[allow(unsafe_code)]
    unsafe {
        holder.pre_exec(|| if libc::unshare(libc::CLONE_NEWUSER) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    }
    let mut child = holder.spawn().map_err(|e| format!("user namespace holder: {e}"))?;
    let result = (|| {
        let pid = child.id();
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{f}"), format!("0 {DEFAULT_FIRST} {RANGE}\n")).map_err(|e| format!("{f}: {e}"))?;
        }
        let userns: std::os::fd::OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())?.into();
        let r = super::launch::Rootfs {
            lower: scratch.join("lower"),
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            target: scratch.join("lower"),
            idmap_lower: true,
        };
        super::launch::overlay(&r, Some(&userns)).map(drop)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// The shifted copy of image root `lower` for the range at `base`: `<image dir>/shifted-<base>`,
/// made on first use (copied with `cp -a`, then every inode's owner moved up by `base`) and
/// reused by every later launch.
pub fn shifted_copy(lower: &Path, base: u32) -> Result<PathBuf> {
    let image_dir = lower.parent().unwrap_or(lower);
    let dest = image_dir.join(format!("shifted-{base}"));
    if dest.join("etc/os-release").exists() {
        return Ok(dest);
    }
    let tmp = image_dir.join(format!(".shifted-{base}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    let st = std::process::Command::new("cp").args(["-a", "--reflink=auto"]).arg(lower).arg(&tmp).status().map_err(io(&tmp))?;
    if !st.success() {
        return Err(IdmapError::Io { path: tmp, source: std::io::Error::other(format!("cp -a failed: {st}")) });
    }
    shift_tree(&tmp, base)?;
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// Moves the owner of every inode under `root` up by `base`, keeping set-uid/set-gid bits
/// (which `chown` clears) so `sudo` stays set-uid inside.
pub fn shift_tree(root: &Path, base: u32) -> Result<()> {
    shift_tree_between(root, 0, base)
}

/// Moves the owners of every inode under `root` from the range at `from` to the range at `to`
/// (ids outside the `from` range are left alone). A disk made before its instance had a user
/// namespace (from 0) or under another range is re-owned this way once, as LXD remaps a
/// container whose idmap changed. Links are not followed: the walk never leaves `root`.
pub fn shift_tree_between(root: &Path, from: u32, to: u32) -> Result<()> {
    let shift = |id: u32| if (from..from.saturating_add(RANGE)).contains(&id) { id - from + to } else { id };
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        std::os::unix::fs::lchown(&p, Some(shift(md.uid())), Some(shift(md.gid()))).map_err(io(&p))?;
        if md.file_type().is_file() && md.mode() & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(io(&p))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                stack.push(e.map_err(io(&p))?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_comes_from_roots_subuid_entry() {
        assert_eq!(host_window(""), (DEFAULT_FIRST, DEFAULT_COUNT));
        assert_eq!(host_window("alice:100000:65536\nroot:2000000:1048576\n"), (2_000_000, 1_048_576));
        assert_eq!(host_window("root:100000:65536\n"), (DEFAULT_FIRST, DEFAULT_COUNT), "Debian's lxd entry holds one tenant");
    }

    #[test]
    fn tenants_get_disjoint_stable_ranges_until_the_window_is_full() {
        let t = crate::container::TempDir::new();
        let r = Ranges::new(&t.0, (1_000_000, 3 * RANGE));
        let a = r.base_for("org-a").unwrap();
        let b = r.base_for("org-b").unwrap();
        assert_eq!((a, b), (1_000_000, 1_000_000 + RANGE));
        assert_eq!(r.base_for("org-a").unwrap(), a, "the same tenant keeps its range");
        let again = Ranges::new(&t.0, (1_000_000, 3 * RANGE));
        assert_eq!(again.base_for("org-b").unwrap(), b, "the table survives a restart");
        assert_eq!(again.base_for("org-c").unwrap(), 1_000_000 + 2 * RANGE);
        assert!(matches!(again.base_for("org-d"), Err(IdmapError::Exhausted { .. })));
    }

    #[test]
    fn a_shifted_copy_moves_owners_and_keeps_setuid() {
        if !super::super::inventory::is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let t = crate::container::TempDir::new();
        let lower = t.0.join("img/rootfs");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/os-release"), "ID=test\n").unwrap();
        std::fs::write(lower.join("sudo"), "").unwrap();
        std::fs::set_permissions(lower.join("sudo"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("etc/os-release", lower.join("link")).unwrap();
        std::os::unix::fs::chown(lower.join("etc"), Some(1000), Some(1000)).unwrap();
        let copy = shifted_copy(&lower, 2_000_000).unwrap();
        let md = |p: &str| std::fs::symlink_metadata(copy.join(p)).unwrap();
        assert_eq!((md("").uid(), md("etc").uid(), md("link").uid()), (2_000_000, 2_001_000, 2_000_000));
        assert_eq!(md("sudo").mode() & 0o7777, 0o4755, "set-uid survives the chown");
        assert_eq!(std::fs::symlink_metadata(lower.join("etc")).unwrap().uid(), 1000, "the image itself is untouched");
        let inode = md("").ino();
        assert_eq!(std::fs::metadata(shifted_copy(&lower, 2_000_000).unwrap()).unwrap().ino(), inode, "made once, then reused");
    }

    #[test]
    fn a_tree_moves_between_ranges_and_foreign_ids_stay() {
        if !super::super::inventory::is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let t = crate::container::TempDir::new();
        std::fs::create_dir_all(t.0.join("d/home")).unwrap();
        std::fs::write(t.0.join("d/home/f"), "").unwrap();
        std::os::unix::fs::chown(t.0.join("d/home"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(t.0.join("d/home/f"), Some(3_000_000), Some(3_000_000)).unwrap();
        shift_tree_between(&t.0.join("d"), 0, 2_000_000).unwrap();
        let uid = |p: &str| std::fs::symlink_metadata(t.0.join(p)).unwrap().uid();
        assert_eq!((uid("d"), uid("d/home"), uid("d/home/f")), (2_000_000, 2_001_000, 3_000_000));
        shift_tree_between(&t.0.join("d"), 2_000_000, 1_000_000).unwrap();
        assert_eq!((uid("d"), uid("d/home")), (1_000_000, 1_001_000));
    }

    #[test]
    fn this_kernel_is_probed_not_assumed() {
        if !super::super::inventory::is_root() {
            eprintln!("SKIPPED: user namespaces with foreign maps need root");
            return;
        }
        let t = crate::container::TempDir::new();
        // Either answer is legitimate on some kernel; what matters is that the probe runs and
        // cleans up after itself. This machine's kernel (6.x) supports it.
        let r = probe(&t.0.join("probe"));
        eprintln!("idmapped overlay lower layers: {r:?}");
        assert!(!t.0.join("probe").exists());
    }
}
