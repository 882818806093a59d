//! Images: root file systems cached under `<data-dir>/images/<name>/rootfs`, used read-only as the
//! lower layer of every instance's overlay.
//!
//! `build_debian` makes the default image with `debootstrap` from the Debian mirror apt is
//! configured with (Debian 12 with openssh-server, sudo, python3, curl, ca-certificates, iproute2,
//! so that `apt-get`, `sudo` and `python3` work inside as orchestrators expect). Progress is
//! reported from debootstrap's own `I:` lines. The build goes to a temporary directory that is
//! renamed into place only when complete, so a crash never leaves a half image in the cache.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Tool(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

/// Packages the default image has on top of debootstrap's minbase.
pub const DEFAULT_PACKAGES: &[&str] =
    &["openssh-server", "sudo", "python3", "curl", "ca-certificates", "iproute2", "procps", "less", "rsync", "lsof", "tini"];

/// What an image of `name` holds on top of [`DEFAULT_PACKAGES`]: the `-docker` variant (e.g.
/// `debian-12-docker`) comes with Docker's engine, as dstack's jobs expect on a Lambda instance
/// (docs/security.md: Docker inside an unprivileged instance).
pub fn extra_packages(name: &str) -> &'static [&'static str] {
    if name.ends_with("-docker") {
        &["docker.io", "iptables"]
    } else {
        &[]
    }
}

/// The rootfs directory of image `name` under `images_dir`.
pub fn rootfs(images_dir: &Path, name: &str) -> PathBuf {
    images_dir.join(name).join("rootfs")
}

pub fn exists(images_dir: &Path, name: &str) -> bool {
    rootfs(images_dir, name).join("etc/os-release").exists()
}

/// The first Debian mirror in apt's configuration (deb822 `.sources` or one-line `sources.list`).
pub fn debian_mirror(apt_dir: &Path) -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "sources" || e == "list")) {
            texts.extend(std::fs::read_to_string(f).ok());
        }
    }
    texts.extend(std::fs::read_to_string(apt_dir.join("sources.list")).ok());
    for t in &texts {
        for stanza in t.split("\n\n") {
            let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()));
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) {
                if suites.split_whitespace().any(|s| s == "bookworm") {
                    return uris.split_whitespace().next().map(str::to_owned);
                }
            }
            for l in stanza.lines() {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.first() == Some(&"deb") {
                    let rest: Vec<&str> = w.iter().skip(1).filter(|x| !x.starts_with('[')).copied().collect();
                    if rest.get(1) == Some(&"bookworm") {
                        return rest.first().map(|s| (*s).to_owned());
                    }
                }
            }
        }
    }
    None
}

/// A step of debootstrap's progress: `(done, total)` packages as far as its `I:` lines tell.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub retrieved: usize,
    pub unpacked: usize,
    pub configured: usize,
}

impl Progress {
    /// Folds one line of debootstrap output into the counts.
    pub fn feed(&mut self, line: &str) {
        if line.starts_with("I: Retrieving ") && !line.contains("Release") && !line.contains("Packages") {
            self.retrieved += 1;
        } else if line.starts_with("I: Unpacking ") && !line.contains("base system") {
            self.unpacked += 1;
        } else if line.starts_with("I: Configuring ") && !line.contains("base system") {
            self.configured += 1;
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd.status().map_err(|e| ImageError::Tool(format!("{what}: cannot start: {e}")))?;
    if st.success() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!("{what} failed: {st}")))
    }
}

/// Builds the default Debian 12 image `name` under `images_dir` unless it exists. `on_progress`
/// sees every debootstrap line with the running counts (the CLI draws a bar from them).
pub fn build_debian(images_dir: &Path, name: &str, mirror: &str, mut on_progress: impl FnMut(&str, Progress)) -> Result<PathBuf> {
    let dest = rootfs(images_dir, name);
    if exists(images_dir, name) {
        return Ok(dest);
    }
    let dir = images_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io { path: dir.clone(), source })?;
    let tmp = dir.join("rootfs.partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|source| ImageError::Io { path: tmp.clone(), source })?;
    }
    let packages: Vec<&str> = DEFAULT_PACKAGES.iter().chain(extra_packages(name)).copied().collect();
    let mut child = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", packages.join(",")), "bookworm"])
        .arg(&tmp)
        .arg(mirror)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| ImageError::Tool(format!("debootstrap: cannot start ({e}); install Debian's debootstrap package")))?;
    let mut p = Progress::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            p.feed(&line);
            on_progress(&line, p);
        }
    }
    let st = child.wait().map_err(|e| ImageError::Tool(format!("debootstrap: {e}")))?;
    if !st.success() {
        return Err(ImageError::Tool(format!("debootstrap failed: {st}")));
    }
    customize(&tmp)?;
    std::fs::rename(&tmp, &dest).map_err(|source| ImageError::Io { path: dest.clone(), source })?;
    Ok(dest)
}

/// Makes a debootstrapped tree an instance image: the `ubuntu` user with passwordless sudo, no
/// baked-in SSH host keys (each instance makes its own), no apt cache.
fn customize(root: &Path) -> Result<()> {
    run(
        Command::new("chroot").arg(root).args(["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "ubuntu"]),
        "useradd ubuntu",
    )?;
    // A locked password ("!") makes sshd refuse even key logins when PAM is off; "*" means
    // "no password" without locking the account.
    run(Command::new("chroot").arg(root).args(["usermod", "--password", "*", "ubuntu"]), "usermod ubuntu")?;
    let sudoers = root.join("etc/sudoers.d/90-nimbus-ubuntu");
    std::fs::write(&sudoers, "ubuntu ALL=(ALL) NOPASSWD:ALL\n").map_err(|source| ImageError::Io { path: sudoers.clone(), source })?;
    for entry in std::fs::read_dir(root.join("etc/ssh")).map_err(|source| ImageError::Io { path: root.join("etc/ssh"), source })? {
        let p = entry.map_err(|source| ImageError::Io { path: root.join("etc/ssh"), source })?.path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ssh_host_")) {
            let _ = std::fs::remove_file(p);
        }
    }
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    let _ = std::fs::create_dir_all(root.join("var/cache/apt/archives/partial"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_and_one_line_formats() {
        let d = std::env::temp_dir().join(format!("nimbus-apt-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sources.list.d")).unwrap();
        std::fs::write(
            d.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
             Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n",
        )
        .unwrap();
        assert_eq!(debian_mirror(&d).as_deref(), Some("http://mirror.example/debian"));
        std::fs::remove_file(d.join("sources.list.d/debian.sources")).unwrap();
        std::fs::write(d.join("sources.list"), "# c\ndeb [arch=amd64] http://other.example/debian bookworm main\n").unwrap();
        assert_eq!(debian_mirror(&d).as_deref(), Some("http://other.example/debian"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn progress_counts_debootstrap_lines() {
        let mut p = Progress::default();
        for l in [
            "I: Retrieving InRelease",
            "I: Retrieving Packages",
            "I: Retrieving adduser 3.134",
            "I: Retrieving apt 2.6.1",
            "I: Unpacking the base system...",
            "I: Unpacking adduser...",
            "I: Configuring adduser...",
        ] {
            p.feed(l);
        }
        assert_eq!(p, Progress { retrieved: 2, unpacked: 1, configured: 1 });
    }
}
