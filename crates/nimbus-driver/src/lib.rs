//! Instance drivers: the `Driver` trait the agent reconciles through, and its implementations.
//! `sim` is a test and benchmark double and never the default; the container driver (namespaces,
//! overlayfs, cgroups, sshd) and the VM driver implement the same trait.
//!
//! Contract every driver keeps:
//! - `ensure` is idempotent: calling it for an instance that already runs as specified changes
//!   nothing; calling it twice equals calling it once.
//! - `list` reports everything the driver has on this host, including instances created by a
//!   previous agent process, so a restarted agent adopts instead of duplicating or killing them.
//! - `destroy` is idempotent and leaves nothing behind (processes, mounts, cgroups, links).

pub mod container;
pub mod files;
pub mod sim;
pub mod vm;

use async_trait::async_trait;
use nimbus_proto::{DesiredInstance, HostSnapshot, HostVolume, InstanceReport, Inventory, MetricSample, SnapshotReport, VolumeReport};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("instance {id}: {message}")]
    Instance { id: String, message: String },
    #[error("driver failure: {0}")]
    Host(String),
}

pub type Result<T> = std::result::Result<T, DriverError>;

/// What a host has of volumes and snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageReport {
    pub volumes: Vec<VolumeReport>,
    pub snapshots: Vec<SnapshotReport>,
}

#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// `container`, `vm` or `sim`.
    fn name(&self) -> &'static str;

    /// What this host offers. Drivers that do not virtualise hardware report the real machine.
    async fn inventory(&self) -> Result<Inventory>;

    /// Every instance this driver has on the host, with its observed state.
    async fn list(&self) -> Result<Vec<InstanceReport>>;

    /// Makes the instance exist and run as specified (creating or starting it as needed).
    async fn ensure(&self, spec: &DesiredInstance) -> Result<InstanceReport>;

    /// Restarts a running instance; the instance's disk survives.
    async fn restart(&self, spec: &DesiredInstance) -> Result<InstanceReport>;

    /// Stops the instance, keeping its disk.
    async fn stop(&self, id: &str) -> Result<()>;

    /// Waits (up to the driver's own grace period) until a just-started instance is reachable,
    /// and says whether it became so, so that the agent can report `running` the moment it is
    /// instead of at its next heartbeat. Drivers that start instances ready wait for nothing.
    async fn wait_ready(&self, _id: &str) -> bool {
        true
    }

    /// Removes the instance and everything it owns on the host. Unknown ids are fine.
    async fn destroy(&self, id: &str) -> Result<()>;

    /// One resource-use sample per running instance, covering the time since the previous call
    /// (the first call after a start primes the counters and may return nothing).
    async fn sample(&self) -> Result<Vec<MetricSample>>;

    /// Makes the host's WireGuard gateways match the complete desired set; returns each listed
    /// gateway's state.
    async fn sync_vpns(&self, vpns: &[nimbus_proto::VpnGateway]) -> Result<Vec<nimbus_proto::VpnReport>>;

    /// Makes the host's part of the region's private network match `fabric` (tunnels to the
    /// other hosts, and who may reach each instance). Drivers without networks do nothing.
    async fn sync_fabric(&self, _fabric: &nimbus_proto::Fabric) -> Result<()> {
        Ok(())
    }

    /// Makes the host's volumes and snapshots match the complete desired sets: creates (or
    /// grows) listed volumes, makes listed snapshots that do not exist yet, and deletes volumes
    /// and snapshots that are no longer listed (a volume still mounted in an instance is kept
    /// until it is unmounted). Returns what the host has afterwards.
    async fn sync_storage(&self, volumes: &[HostVolume], snapshots: &[HostSnapshot]) -> Result<StorageReport>;

    /// `(volume id, bytes in use)` of the volumes whose file systems the host can measure now
    /// (mounted ones); cheap enough for every report. Drivers without file systems measure
    /// nothing.
    async fn volume_usage(&self) -> Result<Vec<(String, i64)>> {
        Ok(Vec::new())
    }

    /// One look at every GPU of the host (Xid events since the previous call, ECC, row
    /// remaps, throttling, processes); the agent keeps the state and decides what it means
    /// (`nimbus_core::gpu_health`). Hosts without GPUs see nothing.
    async fn gpu_signals(&self) -> Result<Vec<nimbus_core::gpu_health::Signals>> {
        Ok(Vec::new())
    }

    /// Whether this host resets idle GPUs (between tenants, and to clear a condition a reset
    /// clears); an operator may turn it off (`--gpu-reset never`). Off: an idle GPU with no
    /// processes left counts as checked.
    fn gpu_resets(&self) -> bool {
        false
    }

    /// Resets one idle GPU (no process uses it). The agent calls it only between tenants and
    /// for conditions a reset clears, and only where the operator allows resets.
    async fn reset_gpu(&self, index: i64) -> Result<()> {
        Err(DriverError::Host(format!("this driver cannot reset GPU {index}")))
    }
}
