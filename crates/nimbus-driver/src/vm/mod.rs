//! The VM side of the host driver: instances as QEMU virtual machines (KVM where a probe guest
//! boots, TCG otherwise), on the same bridge, firewall, private network and storage as the
//! host's containers. The container driver (`container::driver`) runs both kinds; this module
//! owns what only VMs need:
//!
//! - `guest`: the guest kernel and initramfs (direct kernel boot);
//! - `disk`: the per-image qcow2 base and per-instance overlays;
//! - `seed`: the cloud-init NoCloud seed ISO and the guest's boot script;
//! - `qemu`: the QEMU command line, process, QMP, and the KVM boot probe;
//! - `vfio`: GPU passthrough.

pub mod disk;
pub mod guest;
pub mod qemu;
pub mod seed;
pub mod vfio;
