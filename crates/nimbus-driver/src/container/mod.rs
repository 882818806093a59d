//! The container driver (in progress): instances as Linux containers built from overlayfs over a
//! cached image, namespaces, cgroups and a real sshd. This module grows piece by piece; each
//! piece is tested on the real kernel facility it drives.

pub mod cgroup;
pub mod driver;
pub mod firewall;
pub mod image;
pub mod inventory;
pub mod metrics;
pub mod net;
pub mod runtime;
pub mod storage;
pub mod vpn;
