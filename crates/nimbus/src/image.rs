//! `nimbus image`: build and list the root file systems instances boot from.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use nimbus_driver::container::image;

#[derive(clap::Args, Debug, Clone)]
pub struct ImagesDir {
    /// Image cache (shared by the agents of this machine).
    #[arg(long, env = "NIMBUS_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
}

impl ImagesDir {
    pub fn path(&self) -> PathBuf {
        self.images_dir.clone().unwrap_or_else(|| crate::common::default_data_dir("images"))
    }
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Builds the default Debian 12 image with debootstrap (about 200 MiB, a minute or two).
    Build {
        #[command(flatten)]
        dir: ImagesDir,
        #[arg(long, default_value = "debian-12")]
        name: String,
        /// Debian mirror; default: the one apt is configured with.
        #[arg(long)]
        mirror: Option<String>,
        /// Also make the image bootable as a VM: the guest kernel and initramfs (Debian's cloud
        /// kernel and busybox-static, by apt-get download) and the image's qcow2 base disk.
        #[arg(long)]
        vm: bool,
    },
    /// Lists cached images.
    List {
        #[command(flatten)]
        dir: ImagesDir,
    },
}

/// Host tools the container driver runs, with the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    // VPN gateways: wg configures them; wireguard-go serves them where the kernel lacks WireGuard.
    ("wg", "wireguard-tools"),
    ("wireguard-go", "wireguard-go"),
];

fn have(tool: &str) -> bool {
    std::process::Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Installs missing host tools from Debian's packages (root, apt-get), showing apt's output, so
/// that `nimbus dev` on a fresh Debian machine needs nothing installed by hand.
pub fn ensure_host_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = HOST_TOOLS.iter().filter(|(t, _)| !have(t)).map(|(_, p)| *p).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        anyhow::bail!("missing host tools; install the packages {} with your package manager", missing.join(", "));
    }
    eprintln!("installing the container driver's host tools: {}", missing.join(" "));
    let install = |update: bool| -> anyhow::Result<bool> {
        if update {
            std::process::Command::new("apt-get").args(["update", "-q"]).status()?;
        }
        Ok(std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success())
    };
    if !install(false)? && !install(true)? {
        anyhow::bail!("apt-get could not install {}", missing.join(" "));
    }
    Ok(())
}

/// Builds `name` if missing, drawing a progress line on stderr.
pub fn ensure_default(dir: &std::path::Path, name: &str, mirror: Option<String>) -> anyhow::Result<PathBuf> {
    if image::exists(dir, name) {
        return Ok(image::rootfs(dir, name));
    }
    let mirror = mirror
        .or_else(|| image::debian_mirror(std::path::Path::new("/etc/apt")))
        .context("no Debian bookworm mirror in /etc/apt; pass --mirror")?;
    eprintln!("building image {name} with debootstrap from {mirror} (cached in {})", dir.display());
    // minbase plus our packages is about 130 .debs; the bar is an estimate until debootstrap ends.
    const ESTIMATE: usize = 130;
    let started = std::time::Instant::now();
    let path = image::build_debian(dir, name, &mirror, |line, p| {
        let done = (p.retrieved + p.unpacked + p.configured).min(3 * ESTIMATE);
        let width = 30;
        let filled = done * width / (3 * ESTIMATE);
        let what: String = line.trim_start_matches("I: ").chars().take(40).collect();
        eprint!("\r[{}{}] {:>3}s  {:<40}", "#".repeat(filled), ".".repeat(width - filled), started.elapsed().as_secs(), what);
        let _ = std::io::stderr().flush();
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("\rimage {name} ready in {:.0} s: {}{}", started.elapsed().as_secs_f64(), path.display(), " ".repeat(30));
    Ok(path)
}

/// The guest kernel and `name`'s VM base disk, made if missing.
pub fn ensure_vm(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    for (tool, pkg) in [("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils"), ("genisoimage", "genisoimage")] {
        if !have(tool) {
            anyhow::bail!("VMs need {tool}: apt-get install {pkg}");
        }
    }
    let boot = nimbus_driver::vm::guest::prepare(dir, |l| eprintln!("{l}")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = std::time::Instant::now();
    let base = nimbus_driver::vm::disk::ensure_base(dir, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("VM boot files: {} and {}", boot.kernel.display(), boot.initrd.display());
    eprintln!("VM base disk of {name}: {} ({:.1} s)", base.display(), started.elapsed().as_secs_f64());
    Ok(())
}

pub async fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Build { dir, name, mirror, vm } => {
            let d = dir.path();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                ensure_default(&d, &name, mirror)?;
                if vm {
                    ensure_vm(&d, &name)?;
                }
                Ok(())
            })
            .await??;
        }
        ImageCmd::List { dir } => {
            let d = dir.path();
            for e in std::fs::read_dir(&d).map(|rd| rd.filter_map(|e| e.ok()).collect::<Vec<_>>()).unwrap_or_default() {
                let name = e.file_name().to_string_lossy().into_owned();
                if image::exists(&d, &name) {
                    println!("{name}\t{}", image::rootfs(&d, &name).display());
                }
            }
        }
    }
    Ok(())
}
