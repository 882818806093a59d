//! The agent ⇄ server protocol (`/internal/agent/...`), versioned.
//!
//! The agent initiates every exchange, so hosts behind NAT work and the server keeps no
//! connection state it could not rebuild. Every request carries its credential in
//! `Authorization: Bearer …`, which the server checks before it reads the body:
//! 1. `POST register` with a host token (first registration) or the host secret (every later
//!    one) and the inventory → a host id and a host secret (the agent keeps both in its data dir,
//!    `agent.json`, mode 0600). Host tokens expire and have a number of uses; a token only
//!    enrols a machine id no host has yet, so a registered host re-registers with its secret
//!    (which it keeps) or, when that is lost, with a re-enrolment token an operator minted for
//!    it (`nimbus admin hosts re-enrol HOST`), which gives it a new secret.
//! 2. `POST report` with the host secret: heartbeat plus the actual state of every instance the
//!    driver knows. Sent on a timer and whenever something changes.
//! 3. `POST desired` (long-poll): "what should I run, given I have seen generation N?" Answers
//!    at once when the host's desired generation differs from N, otherwise waits up to
//!    `wait_ms` for a change. The agent lists the instances whose `user_data` it keeps
//!    (`user_data_held`); the answer leaves those out (`user_data_omitted`), so each instance's
//!    user data crosses the wire once, not on every generation bump.

use serde::{Deserialize, Serialize};

/// The version this build speaks. A server accepts agents of this version and of the one
/// before (`OLDEST_PROTOCOL_VERSION`), so servers are upgraded first and agents after, host by
/// host (docs/operations.md). Every field a version adds has a serde default, so each side
/// reads the other's older messages; an agent ignores fields it does not know.
///
/// - 1: registration, reports, desired-state long-polls, volumes, snapshots, VPN gateways.
/// - 2: the host network (`Inventory::network`, `DesiredResponse::fabric`) and per-instance
///   port forwards and public addresses (`DesiredInstance::port_forwards`, `public_address`).
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest agent protocol a server accepts (tested with version 1's own types, frozen in
/// nimbus-test-utils' tests/api/proto_v1.rs).
pub const OLDEST_PROTOCOL_VERSION: u32 = PROTOCOL_VERSION - 1;

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
    /// The MIG devices an operator created on this GPU (MIG mode on); empty when MIG is off.
    /// Nimbus never changes MIG mode or the partitioning itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_devices: Vec<MigInfo>,
    /// Its PCI address as NVML gives it (`00000000:17:00.0`); the VM driver passes the GPU
    /// through by it. Empty from agents that do not read it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pci_bus_id: String,
}

/// One MIG device (a GPU instance plus compute instance) of a GPU, as NVML lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInfo {
    /// NVML's MIG device UUID (`MIG-…`).
    pub uuid: String,
    /// The profile, e.g. `1g.18gb` (from the MIG device's name, `NVIDIA H200 MIG 1g.18gb`).
    pub profile: String,
    pub memory_mib: i64,
    /// GPU instance and compute instance ids: they name the `nvidia-caps` access nodes.
    pub gpu_instance_id: i64,
    pub compute_instance_id: i64,
}

/// A MIG device given to an instance: the parent GPU's NVML index and the MIG device's ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDeviceRef {
    pub parent_index: i64,
    pub uuid: String,
    pub gpu_instance_id: i64,
    pub compute_instance_id: i64,
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
    /// Where this host's instances live and how other hosts reach them (`--underlay`); none
    /// for a host that takes no part in the region's private network (sim, or a lone host).
    #[serde(default)]
    pub network: Option<HostNetwork>,
    /// What kinds of instance this host can run. Empty (an older agent) means containers only.
    /// `vm` is listed only where a probe guest actually booted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<Machine>,
}

/// What an instance is on its host: a Linux container, or a QEMU virtual machine (the
/// instance type's `machine` in the server's catalog).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    #[default]
    Container,
    Vm,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Container => "container",
            Machine::Vm => "vm",
        }
    }
}

/// A host's place in its region's private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetwork {
    /// The host's own address on the network between hosts (its VXLAN endpoint).
    pub underlay: String,
    /// The subnet its instances' private addresses come from (`A.B.C.D/N`); the first address
    /// is the host's gateway on its bridge. Subnets of one region never overlap.
    pub instance_subnet: String,
    /// More private subnets routed to this host (the tunnels of the VPN gateways it serves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// The region's private network as one host needs it (see docs/architecture.md, "Network").
///
/// Every host of a region has a subnet for its instances; instances on different hosts reach
/// each other through a VXLAN tunnel between the hosts' underlay addresses (one VNI per region),
/// routed by subnet. Which instance may reach which is decided by the org: an instance accepts
/// traffic from a private address only when that address belongs to an instance of its own org
/// (`orgs`), and the port checks of every host guarantee that a private source address is the
/// instance's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fabric {
    /// VXLAN network identifier of the region.
    pub vni: u32,
    /// The other hosts of the region that have a network (complete set).
    pub peers: Vec<HostNetwork>,
    /// Every private subnet of the region (instance subnets, VPN tunnels), this host's too: a
    /// source in one of them is an instance or a VPN client, and must be a member.
    #[serde(default)]
    pub private: Vec<String>,
    /// For every org with an instance on this host: the private addresses of all its instances
    /// in the region, on every host (complete set; this host's own instances included).
    pub orgs: Vec<OrgMembers>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgMembers {
    /// The org, as `DesiredInstance::tenant` names it.
    pub tenant: String,
    pub addrs: Vec<String>,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// The health of every GPU (see `nimbus_core::gpu_health`). `None` from agents that do
    /// not report it (protocol 1): the server leaves what it knows unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<GpuHealthReport>>,
}

/// One GPU's health, as its agent assessed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHealthReport {
    pub index: i64,
    pub uuid: String,
    pub condition: nimbus_core::gpu_health::Condition,
    /// Why, most important first (`Xid 79: GPU has fallen off the bus`).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Checked idle (and reset, where the host allows) since an instance last used it: it
    /// may be given to the next tenant.
    pub clean: bool,
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
    /// MIG devices it gets (GPU slices), besides or instead of whole GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_devices: Vec<MigDeviceRef>,
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
    /// More host ports forwarded (TCP) to ports of the instance: `(host port, instance port)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<(u16, u16)>,
    /// Its public address (from the region's pool): the host holds it and NATs it 1:1 to the
    /// instance's private address; the instance's reported `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
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
    /// Container or VM; absent from older servers, which only ran containers.
    #[serde(default, skip_serializing_if = "is_container")]
    pub machine: Machine,
}

fn is_container(m: &Machine) -> bool {
    *m == Machine::Container
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
    /// The region's private network; `None` from a server that predates it (the agent then
    /// keeps what it has).
    #[serde(default)]
    pub fabric: Option<Fabric>,
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
