//! Domain records: what the store persists and the services hand to the dialects for rendering.
//! Plain data; invariants are enforced by the services that create them.

use serde::{Deserialize, Serialize};

use crate::auth::Permissions;
use crate::catalog::{Machine, Resources};
use crate::firewall::FirewallRule;
use crate::ids::*;
use crate::instance::InstanceState;

#[derive(Debug, Clone)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub email: String,
    /// Rate-limit plan: `free`, `professional` or `enterprise`.
    pub plan: String,
    pub created_at: i64,
    /// Monthly spend limit in US cents; `None`: no limit.
    pub spend_limit_cents: Option<i64>,
    /// `stop` (stop running instances) or `notify` (an event only) when the limit is reached.
    pub spend_limit_action: String,
    /// The month (`YYYY-MM`) the limit was last reached and acted on.
    pub spend_limit_reached: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    /// The org's rate-limit plan (read with the key, for the native API's limits).
    pub plan: String,
    pub name: String,
    pub prefix: String,
    pub permissions: Permissions,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// After this instant (µs) the key no longer authenticates.
    pub expires_at: Option<i64>,
    /// The key that created this one through the API (`None`: created by an operator).
    pub created_by: Option<ApiKeyId>,
    /// The service account the key belongs to; its `permissions` are then the service
    /// account's (the store reads them through the account, so they follow its changes).
    pub service_account_id: Option<ServiceAccountId>,
}

/// A named, non-human principal of an organization (seed 003's service accounts). Its API keys
/// authenticate with its permissions, read at authentication time, so a change applies to every
/// key it has. Deleting it revokes its keys; its row stays (with `deleted_at`) so audit events
/// and keys can still name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub org_id: OrgId,
    /// Unique among the org's live service accounts.
    pub name: String,
    pub description: String,
    pub permissions: Permissions,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    Up,
    Down,
}

impl HostStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            HostStatus::Up => "up",
            HostStatus::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: i64,
    pub model: String,
    pub memory_mib: i64,
    pub uuid: String,
    /// The instance holding this GPU, if any.
    pub instance_id: Option<InstanceId>,
    /// As its agent last reported (`nimbus_core::gpu_health`).
    pub health: crate::gpu_health::Condition,
    pub health_reasons: Vec<String>,
    /// Checked idle (and reset) since its last instance let it go.
    pub clean: bool,
    /// MIG devices an operator made of it (MIG mode on): only those are placed, never the
    /// whole GPU.
    pub mig_devices: Vec<MigDevice>,
}

impl Gpu {
    /// A GPU straight from a host's inventory: free, healthy, clean.
    pub fn new(index: i64, model: &str, memory_mib: i64, uuid: &str) -> Gpu {
        Gpu {
            index,
            model: model.to_owned(),
            memory_mib,
            uuid: uuid.to_owned(),
            instance_id: None,
            health: crate::gpu_health::Condition::Ok,
            health_reasons: Vec::new(),
            clean: true,
            mig_devices: Vec::new(),
        }
    }

    /// A new instance may get it, whole.
    pub fn placeable(&self) -> bool {
        self.instance_id.is_none() && self.clean && self.health.placeable() && self.mig_devices.is_empty()
    }
}

/// One MIG device of a host GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigDevice {
    pub uuid: String,
    pub profile: String,
    pub memory_mib: i64,
    pub gpu_instance_id: i64,
    pub compute_instance_id: i64,
    pub instance_id: Option<InstanceId>,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    pub region: String,
    pub driver: String,
    pub cpu_model: String,
    pub total: Resources,
    pub used: Resources,
    pub gpus: Vec<Gpu>,
    pub status: HostStatus,
    pub last_seen_at: i64,
    pub desired_generation: i64,
    pub created_at: i64,
    /// Where clients reach this host's forwarded ports (the agent's `--public-ip`).
    pub public_ip: Option<String>,
    /// Its address between hosts (VXLAN endpoint) and its instances' subnet, when it takes
    /// part in the region's private network.
    pub underlay: Option<String>,
    pub instance_subnet: Option<String>,
    /// What kinds of instance its agent says it can run, as last registered. Empty (an agent
    /// older than VMs) means containers only.
    pub machines: Vec<Machine>,
}

impl Host {
    pub fn free(&self) -> Resources {
        self.total.minus(&self.used)
    }

    /// Whether instances that are `m` may be placed here.
    pub fn runs(&self, m: Machine) -> bool {
        if self.machines.is_empty() {
            m == Machine::Container
        } else {
            self.machines.contains(&m)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSystemMount {
    pub file_system_id: FileSystemId,
    pub mount_point: String,
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: InstanceId,
    pub org_id: OrgId,
    pub name: Option<String>,
    pub hostname: String,
    pub state: InstanceState,
    pub region: String,
    pub instance_type: String,
    pub host_id: Option<HostId>,
    pub resources: Resources,
    pub gpu_indices: Vec<i64>,
    pub image_id: ImageId,
    pub ssh_key_names: Vec<String>,
    /// The public keys as they were at launch; the agent installs exactly these.
    pub ssh_public_keys: Vec<String>,
    pub user_data: Option<String>,
    pub tags: Vec<(String, String)>,
    pub file_system_mounts: Vec<FileSystemMount>,
    pub firewall_ruleset_ids: Vec<FirewallRulesetId>,
    pub ip: Option<String>,
    pub private_ip: Option<String>,
    pub restart_generation: i64,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub terminated_at: Option<i64>,
    /// The instance-disk snapshot its disk was restored from, if any.
    pub source_snapshot_id: Option<SnapshotId>,
    /// Host port forwarded to the instance's port 22 (on the host's public address), if any.
    pub ssh_port: Option<i64>,
    /// What a stop costs while the instance keeps its reservation.
    pub stop_billing: crate::metering::StopBilling,
    /// A stopped instance whose processors, memory and GPUs went back to the host (its disk
    /// stays); starting it claims them again.
    pub compute_released: bool,
    /// The bare-metal rental this instance is a node of.
    pub rental_id: Option<String>,
    /// Hourly price fixed at launch (bare-metal nodes); `None`: the instance type's price.
    pub price_micros_per_hour: Option<i64>,
    /// The cluster this instance is a node of.
    pub cluster_id: Option<String>,
}

impl Instance {
    /// What it holds of its host's capacity: everything, or only its disk once its compute was
    /// released.
    pub fn held(&self) -> Resources {
        if self.compute_released {
            Resources { vcpus: 0, memory_mib: 0, disk_gib: self.resources.disk_gib }
        } else {
            self.resources
        }
    }
}

#[derive(Debug, Clone)]
pub struct SshKey {
    pub id: SshKeyId,
    pub org_id: OrgId,
    pub name: String,
    pub public_key: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct FileSystem {
    pub id: FileSystemId,
    pub org_id: OrgId,
    pub name: String,
    pub region: String,
    pub mount_point: String,
    pub created_at: i64,
    /// Whether a non-terminated instance mounts it.
    pub in_use: bool,
}

#[derive(Debug, Clone)]
pub struct FirewallRuleset {
    pub id: FirewallRulesetId,
    pub org_id: OrgId,
    pub name: String,
    pub region: String,
    pub rules: Vec<FirewallRule>,
    pub created_at: i64,
    /// Non-terminated instances that use it.
    pub instance_ids: Vec<InstanceId>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: ImageId,
    pub name: String,
    pub description: String,
    pub family: String,
    pub version: String,
    pub architecture: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of the outbox: every state change appends one in the same transaction.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub id: EventId,
    pub org_id: Option<OrgId>,
    /// `instance.created`, `ssh_key.deleted`, …
    pub kind: String,
    pub resource_type: String,
    pub resource_id: String,
    /// The API key id that caused it, or `None` for the system.
    pub actor_key_id: Option<ApiKeyId>,
    pub payload: serde_json::Value,
    pub created_at: i64,
}

/// A block volume: an ext4 file system of exactly `size_gib` on one host, mounted at
/// `/mnt/volumes/<name>` inside every instance it is attached to. All its attachments are on
/// its host (the file system is mounted once there and bound into each instance).
#[derive(Debug, Clone)]
pub struct Volume {
    pub id: VolumeId,
    pub org_id: OrgId,
    /// The internal name: letters, digits and '-', unique in the org; also the directory name
    /// under `/mnt/volumes` inside instances, so it never changes.
    pub name: String,
    /// A free-form name shown instead of `name` where a dialect allows one (Voltage Park's
    /// "My Storage Volume"); `None` for volumes made through the native API.
    pub display_name: Option<String>,
    pub region: String,
    pub size_gib: i64,
    /// The host that holds its data; `None` until it is first attached.
    pub host_id: Option<HostId>,
    /// The instances it is attached to, oldest attachment first.
    pub attachments: Vec<VolumeAttachment>,
    pub source_snapshot_id: Option<SnapshotId>,
    /// What the host last reported about the volume (see `VolumeHostState`).
    pub host_state: VolumeHostState,
    /// Bytes in use in its file system, as its host last measured them (0 before any
    /// measurement); kept while no host measures it (detached volumes are not mounted anywhere).
    pub used_bytes: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Volume {
    /// The first (oldest) attachment's instance: the one instance the native API shows.
    pub fn instance_id(&self) -> Option<&InstanceId> {
        self.attachments.first().map(|a| &a.instance_id)
    }

    /// Whether the host reports it mounted in every instance it is attached to.
    pub fn all_mounted(&self) -> bool {
        self.attachments.iter().all(|a| a.mounted)
    }

    /// The name a person chose for it: the display name when set, else the internal name.
    pub fn shown_name(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance_id: InstanceId,
    /// Whether the host reports the volume mounted inside this instance.
    pub mounted: bool,
    pub created_at: i64,
}

/// What a volume's host last said about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VolumeHostState {
    /// No host has reported it: not placed on a host yet, or placed and not reported yet.
    #[default]
    Unreported,
    /// Its host has it (created, or grown to its size).
    Ready,
    /// Its host could not make it match (creating, restoring or growing failed); the message
    /// is the host's.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSourceType {
    Instance,
    Volume,
}

impl SnapshotSourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotSourceType::Instance => "instance",
            SnapshotSourceType::Volume => "volume",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instance" => Some(SnapshotSourceType::Instance),
            "volume" => Some(SnapshotSourceType::Volume),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    Creating,
    Available,
    Failed,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Available => "available",
            SnapshotState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "creating" => Some(SnapshotState::Creating),
            "available" => Some(SnapshotState::Available),
            "failed" => Some(SnapshotState::Failed),
            _ => None,
        }
    }
}

/// A copy of an instance's disk or of a volume, kept on the source's host.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub org_id: OrgId,
    pub name: String,
    pub region: String,
    pub host_id: HostId,
    pub source_type: SnapshotSourceType,
    pub source_id: String,
    pub size_gib: i64,
    pub state: SnapshotState,
    pub size_bytes: i64,
    pub message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One instance's resource use over one sampling interval (or the mean over a query step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPoint {
    pub instance_id: InstanceId,
    /// µs since the Unix epoch, UTC.
    pub at: i64,
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    pub disk_bytes: i64,
    pub net_rx_bps: i64,
    pub net_tx_bps: i64,
    pub gpu_util_permille: Option<i64>,
    pub gpu_memory_bytes: Option<i64>,
}

/// A WireGuard tunnel into an organization's private network, served by one host's agent.
#[derive(Debug, Clone)]
pub struct Vpn {
    pub id: VpnId,
    pub org_id: OrgId,
    pub name: String,
    pub region: String,
    pub host_id: HostId,
    /// Which `/24` of the tunnel range (`10.201.<index>.0/24`) on its host.
    pub tunnel_index: i64,
    pub listen_port: i64,
    /// Held by the server and sent only to the agent of `host_id`.
    pub gateway_private_key: String,
    pub gateway_public_key: String,
    /// The client's private key is shown once at creation and never stored.
    pub client_public_key: String,
    /// `pending` (the host has not brought it up yet), `up` or `failed`.
    pub status: String,
    pub message: Option<String>,
    /// `address:port` clients connect to, as the host reports it.
    pub endpoint: Option<String>,
    /// The instance network behind the gateway, as the host reports it.
    pub network: Option<String>,
    /// Every instance subnet of the region the tunnel reaches (the client's AllowedIPs): filled
    /// when read (`control::vpn`), not stored; empty where the region has no private network
    /// across hosts (then `network` is all there is).
    pub networks: Vec<String>,
    pub created_at: i64,
}

impl Vpn {
    pub fn gateway_address(&self) -> String {
        format!("10.201.{}.1", self.tunnel_index)
    }

    pub fn client_address(&self) -> String {
        format!("10.201.{}.2", self.tunnel_index)
    }

    /// The tunnel's `/24`, which holds both addresses.
    pub fn tunnel_subnet(&self) -> String {
        format!("10.201.{}.0/24", self.tunnel_index)
    }
}

/// A span during which something is billed at a fixed rate: opened and closed by the state
/// changes that cause it, in their transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageInterval {
    pub id: String,
    pub org_id: OrgId,
    /// `instance` or `volume`.
    pub resource_type: String,
    pub resource_id: String,
    /// `compute` or `storage`.
    pub kind: String,
    /// What is billed: the instance type, or `storage`.
    pub sku: String,
    /// Units the rate applies to (1 for an instance type, GiB for storage), for line items.
    pub quantity: i64,
    pub rate_micros_per_hour: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

/// A bare-metal rental: whole hosts ("nodes"), each run as one instance that holds all of its
/// host, provisioned together or not at all.
#[derive(Debug, Clone)]
pub struct Rental {
    pub id: String,
    pub org_id: OrgId,
    pub name: String,
    pub region: String,
    /// `ethernet` or `infiniband`.
    pub network_type: String,
    pub sub_order: Option<String>,
    /// The storage (volume) attached to its nodes.
    pub storage_id: Option<String>,
    pub tags: Vec<String>,
    pub node_count: i64,
    pub gpus_per_node: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub terminated_at: Option<i64>,
}

/// A cluster: nodes (instances) of one machine type placed together, on one private network,
/// managed as one. `Serverless` clusters run one node per region under a monthly spend limit;
/// `Dedicated` ones have a fixed node count per region.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: String,
    pub org_id: OrgId,
    pub name: String,
    /// As the request named it (`GCP`, `AWS` or a configured provider name), upper case.
    pub provider: String,
    /// `SERVERLESS` or `DEDICATED`.
    pub plan: String,
    /// `CREATING`, `CREATED`, `FAILED` or `DELETED`.
    pub state: String,
    pub operation_status: String,
    /// `(region, node count)` in request order.
    pub region_nodes: Vec<(String, i64)>,
    pub machine_type: String,
    /// Monthly limit in US cents (serverless); 0 or `None`: no limit of its own.
    pub spend_limit_cents: Option<i64>,
    pub spend_limit_reached: Option<String>,
    /// Wait (stay `CREATING`) rather than fail when capacity for all nodes is missing.
    pub wait_for_capacity: bool,
    /// SSH key names put on every node.
    pub ssh_key_names: Vec<String>,
    /// The service account (or, without one, the API key) that created it.
    pub creator_id: String,
    /// Why it failed, or what it waits for.
    pub message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}
