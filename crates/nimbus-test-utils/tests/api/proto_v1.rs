//! FROZEN: the agent protocol as of version 1 (nimbus-proto at commit 949c698, the last before
//! version 2 added the host network). The previous version's agents are built from exactly these
//! types, so the tests here send what such an agent sends and read answers as it reads them.
//! Never edit: when version 3 comes, freeze version 2 beside it and drop this file.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// Bumped on incompatible changes; the server refuses agents that speak another version.
pub const PROTOCOL_VERSION: u32 = 1;

pub const PATH_REGISTER: &str = "/internal/agent/v1/register";
pub const PATH_REPORT: &str = "/internal/agent/v1/report";
pub const PATH_DESIRED: &str = "/internal/agent/v1/desired";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: i64,
    /// As NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    pub memory_mib: i64,
    pub uuid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub hostname: String,
    pub cpu_model: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub gpus: Vec<GpuInfo>,
    /// Driver name (`container`, `vm`, `sim`).
    pub driver: String,
    /// The address clients reach this host's forwarded ports on (`--public-ip`).
    #[serde(default)]
    pub public_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub protocol_version: u32,
    /// The credential, which travels in `Authorization: Bearer …` (checked before the body is
    /// read); the server ignores this field on the wire and fills it from the header. In-process
    /// callers of `control::agents::register` set it directly. A host token (`nimbus admin
    /// host-token create`) or the host secret of the already registered host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Stable identity of this machine (e.g. from /etc/machine-id plus the data dir), so that a
    /// re-registering agent gets its host record back instead of a new one.
    pub machine_id: String,
    pub inventory: Inventory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub host_id: String,
    /// Credential for `report`, `desired` and later registrations; stored hashed. A
    /// registration with the host secret answers the same secret.
    pub host_secret: String,
    pub region: String,
    /// How often the agent must report, at least.
    pub heartbeat_interval_ms: u64,
}

/// What the driver observes of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActualState {
    /// Being created or started.
    Creating,
    Running,
    Stopped,
    /// The driver tried and failed; `message` says why.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
    pub state: ActualState,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    /// The restart generation the instance last (re)started at.
    pub restart_generation: i64,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Every instance the driver has, running or not. Desired instances that are absent here do
    /// not exist on the host (yet, or any more).
    pub instances: Vec<InstanceReport>,
    /// The desired generation the agent had applied when it took this snapshot. The server only
    /// concludes "absent, therefore gone" for instances the agent had already been told to remove.
    pub applied_generation: i64,
    /// Volumes present on the host.
    #[serde(default)]
    pub volumes: Vec<VolumeReport>,
    /// Snapshots present on the host (made, or failed to be made).
    #[serde(default)]
    pub snapshots: Vec<SnapshotReport>,
    /// VPN gateways the host serves.
    #[serde(default)]
    pub vpns: Vec<VpnReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub desired_generation: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DesiredRequest {
    pub known_generation: i64,
    pub wait_ms: u64,
    /// Instances whose `user_data` the agent keeps (from an earlier answer, persisted in its
    /// data dir): the answer leaves it out for these. User data never changes after launch.
    #[serde(default)]
    pub user_data_held: Vec<String>,
}

/// One instance the host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub id: String,
    pub hostname: String,
    pub image: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub gpu_indices: Vec<i64>,
    pub ssh_public_keys: Vec<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    /// `running` or `stopped`.
    pub power: Power,
    pub restart_generation: i64,
    pub file_system_mounts: Vec<MountSpec>,
    /// Inbound allow-list (the org's global rules plus the instance's rulesets); everything else
    /// to the instance is dropped by the host.
    #[serde(default)]
    pub firewall: Vec<FirewallRule>,
    /// Volumes attached to the instance, mounted at `/mnt/volumes/<name>` inside it. Changes
    /// apply to a running instance without a restart.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// When set, the instance's disk starts as a copy of this (instance-disk) snapshot. Only
    /// read when the instance's disk is first created.
    #[serde(default)]
    pub source_snapshot: Option<String>,
    /// Host port forwarded (TCP) to the instance's port 22, on every host address.
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// The other nodes of its cluster: in its `/etc/hosts` by name, and allowed to reach it on
    /// every port.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Opaque id of the organization that rents it: instances of one tenant share a uid range
    /// on the host, tenants never do.
    #[serde(default)]
    pub tenant: String,
    /// Run without a user namespace (root inside is root on the host): an operator's opt-in
    /// per instance type, for trusted tenants only.
    #[serde(default)]
    pub privileged: bool,
}

/// A node of the same cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub ip: String,
}

/// One volume attached to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume_id: String,
    /// Directory name under `/mnt/volumes` inside the instance.
    pub name: String,
}

/// A volume that lives on this host (attached or not). Its backing store is an ext4 image file
/// of exactly `size_gib`, so writes past the size fail with ENOSPC inside the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVolume {
    pub id: String,
    pub size_gib: i64,
    /// Opaque id of the organization that owns it (its files belong to that tenant's uid range).
    #[serde(default)]
    pub tenant: String,
    /// When set, a volume that does not exist yet starts as a copy of this (volume) snapshot.
    #[serde(default)]
    pub source_snapshot: Option<String>,
}

/// What a snapshot copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SnapshotSource {
    /// The instance's disk (its writable layer).
    Instance {
        id: String,
    },
    Volume {
        id: String,
    },
}

/// A snapshot that should exist on this host; the agent makes it once and keeps it until it is
/// no longer listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub id: String,
    pub source: SnapshotSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub id: String,
    pub size_gib: i64,
    /// The instance it is mounted in right now, if any (the first of `mounted_in_all`; kept for
    /// servers that predate shared volumes).
    #[serde(default)]
    pub mounted_in: Option<String>,
    /// Every instance it is mounted in right now (a volume may be shared by several instances
    /// on its host).
    #[serde(default)]
    pub mounted_in_all: Vec<String>,
    /// Bytes in use in its file system when the host measured it (mounted volumes: `df`'s
    /// "used" of the host's mount); `None` when it was not measured (not mounted anywhere), in
    /// which case the server keeps the last measurement.
    #[serde(default)]
    pub used_bytes: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub id: String,
    pub state: SnapshotState,
    /// Bytes the snapshot takes on the host (allocated, not apparent).
    pub size_bytes: i64,
    #[serde(default)]
    pub message: Option<String>,
}

/// One inbound allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    #[serde(default)]
    pub port_range: Option<(u16, u16)>,
    /// IPv4 CIDR.
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub file_system_id: String,
    pub mount_point: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DesiredResponse {
    pub generation: i64,
    /// Complete desired set: anything the host runs that is not listed here must go.
    pub instances: Vec<DesiredInstance>,
    /// Complete set of volumes that live on this host; any other volume file is deleted.
    #[serde(default)]
    pub volumes: Vec<HostVolume>,
    /// Complete set of snapshots that live on this host; any other snapshot is deleted.
    #[serde(default)]
    pub snapshots: Vec<HostSnapshot>,
    /// Complete set of WireGuard gateways this host serves; any other is taken down.
    #[serde(default)]
    pub vpns: Vec<VpnGateway>,
    /// Instances whose `user_data` was left out because the request listed them in
    /// `user_data_held`: the agent uses its own copy (their `user_data` here is `None`).
    #[serde(default)]
    pub user_data_omitted: Vec<String>,
}

/// A WireGuard gateway: an interface on the host, its peers, and where they may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnGateway {
    pub id: String,
    /// Interface name (at most 15 bytes).
    pub interface: String,
    /// Base64 Curve25519 private key.
    pub private_key: String,
    pub listen_port: u16,
    /// The gateway's tunnel address with prefix, e.g. `10.201.3.1/24`.
    pub address: String,
    pub peers: Vec<VpnPeer>,
    /// Instance addresses on this host that the peers may reach (the organization's); all other
    /// forwarding from the tunnel is dropped.
    pub reachable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnPeer {
    pub public_key: String,
    /// The peer's tunnel address, `/32`.
    pub allowed_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VpnReport {
    pub id: String,
    pub up: bool,
    /// `address:port` clients should connect to.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The instance network behind the gateway (CIDR).
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Error body of the agent endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    pub code: String,
    pub message: String,
}

pub const PATH_METRICS: &str = "/internal/agent/v1/metrics";

/// One instance's resource use over the last sampling interval, measured on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub instance_id: String,
    /// End of the interval, µs since the Unix epoch (UTC).
    pub at: i64,
    /// CPU used over the interval, in thousandths of a core (1,500 = one and a half cores).
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    /// Bytes the instance's disk (its writable layer) holds.
    pub disk_bytes: i64,
    /// Received and sent by the instance, bytes per second over the interval.
    pub net_rx_bps: i64,
    pub net_tx_bps: i64,
    /// Mean utilization of the instance's GPUs in per mille, when it has GPUs (NVML).
    #[serde(default)]
    pub gpu_util_permille: Option<i64>,
    #[serde(default)]
    pub gpu_memory_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsRequest {
    pub samples: Vec<MetricSample>,
}
