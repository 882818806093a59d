//! The VM side of the host driver: instances as QEMU virtual machines (KVM where a probe guest
//! boots, TCG otherwise), on the same bridge, firewall, private network and storage as the
//! host's containers. The container driver (`container::driver`) runs both kinds; this module
//! owns what only VMs need.

pub mod vfio;
