//! A VM's seed disk: a cloud-init NoCloud ISO 9660 volume labelled `cidata`, with the standard
//! `meta-data`, `user-data` and `network-config` at its root (so that an image with real
//! cloud-init configures itself from it), plus `nimbus/`: the same seed files a container gets
//! (keys, host key, the first-boot script made from the user data by `nimbus-core::cloudinit`)
//! and the VM boot script [`BOOT`], which the initramfs starts under `tini`.
//!
//! The seed is made afresh on every start from the desired spec, host-side, from files the
//! host wrote; nothing of the tenant's disk is read.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The guest's first program (under tini), as root inside the VM: what the container's
/// launcher and boot script do, for a machine with its own kernel.
pub const BOOT: &str = r#"#!/bin/sh
# Written by the Nimbus VM driver; runs under tini as the guest's first program.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
S=/run/nimbus
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
chmod 600 $S/ssh_host_ed25519_key
[ -f $S/user-data ] && chmod 600 $S/user-data
H=$(cat $S/hostname); hostname "$H"; echo "$H" > /etc/hostname
[ -f $S/hosts ] && cp $S/hosts /etc/hosts
[ -f $S/resolv.conf ] && cp $S/resolv.conf /etc/resolv.conf
ip link set lo up
ip link set eth0 up
ip addr add "$(cat $S/address)" dev eth0
ip route add default via "$(cat $S/gateway)"
# Once per instance on this disk (a snapshot's copy is another instance), as cloud-init does.
ID=$(cat $S/instance-id)
mkdir -p /var/lib/nimbus
if [ "$(cat /var/lib/nimbus/instance-id 2>/dev/null)" != "$ID" ]; then
  if id ubuntu >/dev/null 2>&1; then
    HOME_U=$(getent passwd ubuntu | cut -d: -f6)
    [ -e "$HOME_U/.ssh" ] && [ ! -d "$HOME_U/.ssh" ] && mv "$HOME_U/.ssh" "$HOME_U/.ssh.moved-by-nimbus"
    mkdir -p "$HOME_U/.ssh"
    install -m 600 -o ubuntu -g ubuntu $S/authorized_keys "$HOME_U/.ssh/authorized_keys"
    chown ubuntu:ubuntu "$HOME_U/.ssh"; chmod 700 "$HOME_U/.ssh"
  fi
  if [ -f $S/user-data ]; then
    install -m 700 $S/user-data /var/lib/nimbus/first-boot
    touch /var/lib/nimbus/run-first-boot
  fi
  echo "$ID" > /var/lib/nimbus/instance-id
  touch /var/lib/nimbus/first-boot.done
fi
# The disk is bigger than the image's file system: grow it (online) to the instance's size.
resize2fs /dev/vda >/dev/null 2>&1 &
# Shared file systems (virtiofs): "<tag> <mount point>" a line.
if [ -f $S/mounts ]; then
  while read -r tag at; do
    mkdir -p "$at" && mount -t virtiofs "$tag" "$at" || echo "nimbus: mounting $tag at $at failed" >&2
  done < $S/mounts
fi
mkdir -p /run/sshd
PW=no; [ -e $S/password-ssh ] && PW=yes
/usr/sbin/sshd -D -e -o UsePAM=no -o PasswordAuthentication=$PW -o HostKey=$S/ssh_host_ed25519_key &
if [ -e /var/lib/nimbus/run-first-boot ]; then
  rm -f /var/lib/nimbus/run-first-boot
  (sleep 0.2; /var/lib/nimbus/first-boot >> /var/log/cloud-init-output.log 2>&1) &
fi
exec sleep infinity
"#;

/// What the seed says about the instance, beyond the container seed directory.
pub struct SeedSpec<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: &'a str,
    /// The launch's `user_data` as the tenant gave it (NoCloud's `user-data`).
    pub user_data: Option<&'a str>,
    /// `(virtiofs tag, mount point)` of each shared file system.
    pub mounts: &'a [(String, String)],
}

/// NoCloud `meta-data`.
pub fn meta_data(s: &SeedSpec<'_>) -> String {
    format!("instance-id: {}\nlocal-hostname: {}\n", s.instance_id, s.hostname)
}

/// NoCloud `network-config` (version 2): the static address on the NIC with the instance's MAC.
pub fn network_config(s: &SeedSpec<'_>) -> String {
    format!(
        "version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: \"{}\"\n    set-name: eth0\n    addresses: [\"{}/{}\"]\n    routes:\n      - to: default\n        via: \"{}\"\n",
        s.mac, s.address, s.prefix_len, s.gateway
    )
}

/// Writes the ISO at `iso` from the container seed directory `seed_dir` (made by
/// `runtime::write_seed`) and `s`. The staging directory next to it is removed afterwards.
pub fn write(seed_dir: &Path, s: &SeedSpec<'_>, hosts: Option<&Path>, iso: &Path) -> Result<(), String> {
    let stage = iso.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    let nimbus = stage.join("nimbus");
    let e = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&nimbus).map_err(|x| e(&nimbus, x))?;
    for f in std::fs::read_dir(seed_dir).map_err(|x| e(seed_dir, x))? {
        let f = f.map_err(|x| e(seed_dir, x))?;
        let name = f.file_name();
        if name.to_string_lossy().starts_with('.') || !f.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        std::fs::copy(f.path(), nimbus.join(&name)).map_err(|x| e(&f.path(), x))?;
    }
    let put = |name: &str, body: &str| std::fs::write(nimbus.join(name), body).map_err(|x| e(&nimbus.join(name), x));
    put("boot.sh", BOOT)?;
    put("address", &format!("{}/{}\n", s.address, s.prefix_len))?;
    put("gateway", &format!("{}\n", s.gateway))?;
    if let Some(h) = hosts.filter(|h| h.is_file()) {
        std::fs::copy(h, nimbus.join("hosts")).map_err(|x| e(h, x))?;
    }
    if let Ok(r) = std::fs::read_to_string("/etc/resolv.conf") {
        // The host's resolver on loopback is not the guest's.
        if !r.lines().any(|l| l.trim_start().starts_with("nameserver 127.")) {
            put("resolv.conf", &r)?;
        }
    }
    if !s.mounts.is_empty() {
        put("mounts", &s.mounts.iter().map(|(t, at)| format!("{t} {at}\n")).collect::<String>())?;
    }
    let top = |name: &str, body: &str| std::fs::write(stage.join(name), body).map_err(|x| e(&stage.join(name), x));
    top("meta-data", &meta_data(s))?;
    top("network-config", &network_config(s))?;
    top("user-data", s.user_data.unwrap_or("#cloud-config\n{}\n"))?;
    let tmp = iso.with_extension("iso.tmp");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-V", "cidata", "-J", "-r", "-o"])
        .arg(&tmp)
        .arg(&stage)
        .output()
        .map_err(|x| format!("genisoimage: {x} (apt-get install genisoimage)"))?;
    let _ = std::fs::remove_dir_all(&stage);
    if !out.status.success() {
        return Err(format!("genisoimage failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    std::fs::rename(&tmp, iso).map_err(|x| e(iso, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(mounts: &'a [(String, String)]) -> SeedSpec<'a> {
        SeedSpec {
            instance_id: "0123abcd",
            hostname: "vm-1",
            address: Ipv4Addr::new(10, 9, 0, 5),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 9, 0, 1),
            mac: "52:54:00:0a:09:05",
            user_data: None,
            mounts,
        }
    }

    #[test]
    fn nocloud_documents_say_who_and_where() {
        let s = spec(&[]);
        assert_eq!(meta_data(&s), "instance-id: 0123abcd\nlocal-hostname: vm-1\n");
        let n: serde_json::Value = serde_norway::from_str(&network_config(&s)).unwrap();
        assert_eq!(n["version"], 2);
        assert_eq!(n["ethernets"]["eth0"]["match"]["macaddress"], "52:54:00:0a:09:05");
        assert_eq!(n["ethernets"]["eth0"]["addresses"][0], "10.9.0.5/24");
        assert_eq!(n["ethernets"]["eth0"]["routes"][0]["via"], "10.9.0.1");
    }

    /// The ISO holds the NoCloud files at its root and the seed under nimbus/, and is labelled
    /// `cidata` (read back with isoinfo where the host has it).
    #[test]
    fn the_iso_is_a_nocloud_seed() {
        if Command::new("genisoimage").arg("--version").output().is_err() {
            eprintln!("skipped: no genisoimage");
            return;
        }
        let t = crate::container::TempDir::new();
        let seed = t.0.join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        std::fs::write(seed.join("authorized_keys"), "ssh-ed25519 AAAA k\n").unwrap();
        std::fs::write(seed.join(".tmpfile"), "x").unwrap();
        let mounts = [("fs0".to_owned(), "/lambda/nfs/shared".to_owned())];
        let iso = t.0.join("seed.iso");
        write(&seed, &spec(&mounts), None, &iso).unwrap();
        let b = std::fs::read(&iso).unwrap();
        assert_eq!(&b[0x8001..0x8006], b"CD001", "an ISO 9660 volume");
        assert_eq!(&b[0x8028..0x802e], b"cidata");
        assert!(!t.0.join("seed.d").exists(), "the staging directory is gone");
        if Command::new("isoinfo").arg("-version").output().is_ok() {
            let out = Command::new("isoinfo").args(["-R", "-f", "-i"]).arg(&iso).output().unwrap();
            let list = String::from_utf8_lossy(&out.stdout);
            for f in ["/meta-data", "/user-data", "/network-config", "/nimbus/boot.sh", "/nimbus/authorized_keys", "/nimbus/mounts"] {
                assert!(list.lines().any(|l| l == f), "{f} in {list}");
            }
            assert!(!list.contains(".tmpfile"), "{list}");
        }
    }
}
