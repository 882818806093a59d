//! Native API (`/v1`) wire types: the envelope of seed 001 and its resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Metadata {
    pub request_id: String,
    pub timestamp: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pagination {
    pub page: u32,
    pub limit: u32,
    pub total_items: u64,
    pub total_pages: u64,
    pub has_next: bool,
    pub has_prev: bool,
}

/// `{"success": true, "data": …, "metadata": …}` (and `pagination` on lists).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Envelope<T> {
    pub success: bool,
    pub data: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
    /// Seconds, on `rate_limit_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    pub success: bool,
    pub error: ErrorInfo,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pending`, `booting`, `running`, `restarting`, `stopping`, `stopped`, `starting`,
    /// `unhealthy`, `terminating` or `terminated`.
    pub status: String,
    pub instance_type: String,
    pub region: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    pub vcpus: i64,
    pub memory_gib: i64,
    pub storage_gib: i64,
    pub gpus: i64,
    /// `container` or `vm`: what it runs as on its host (its instance type's `machine`).
    /// Servers older than VMs do not send it; their instances are containers.
    #[serde(default = "container")]
    pub machine: String,
    pub ssh_key_names: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

fn container() -> String {
    "container".to_owned()
}

/// A GPU, or MIG device, of an instance (`GET /v1/instances/{id}/gpus`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceGpu {
    /// Its number inside the instance (GPUs are numbered from 0 there, in host order).
    pub index: i64,
    pub uuid: String,
    /// As NVML names it, e.g. `NVIDIA H200`.
    pub model: String,
    pub memory_mib: i64,
    /// The MIG profile (e.g. `1g.18gb`) when this is a MIG device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
    /// `ok`, `degraded`, `drain`, `reset_required`, `reboot_required` or `service_required`;
    /// from `reset_required` on, the instance is `unhealthy`.
    pub health: String,
    /// Why, e.g. `Xid 79: GPU has fallen off the bus`.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct InstanceUpdate {
    /// New name (1 to 64 characters); absent leaves it unchanged.
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces all tags; absent leaves them unchanged.
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceNetwork {
    pub instance_id: String,
    pub region: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    pub ssh_port: u16,
    pub firewall_ruleset_ids: Vec<String>,
}

/// `POST /v1/instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// 1 to 64 characters.
    #[serde(default)]
    pub name: Option<String>,
    /// An instance type name (`GET /api/v1/instance-types` lists them).
    pub instance_type: String,
    pub region: String,
    /// An image id, or an image family such as `debian-12`; the region's default when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// SSH key ids (at least one).
    pub ssh_keys: Vec<String>,
    /// A shell script or `#cloud-config` document run at first boot.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Volume ids to attach at creation.
    #[serde(default)]
    pub volumes: Option<Vec<String>>,
    #[serde(default)]
    pub firewall: Option<InstanceFirewall>,
}

/// Firewall of a new instance: the rulesets that apply on top of the organization's global rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceFirewall {
    #[serde(default)]
    pub ruleset_ids: Vec<String>,
}

/// `POST /v1/instances/{id}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceResize {
    pub instance_type: String,
}

/// A block volume. Its data lives on one host; attached, it is mounted at `mount_point` inside
/// the instance (without a restart).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub region: String,
    pub size_gib: i64,
    /// `available` (detached), `attaching` (the host is mounting it) or `attached`.
    pub status: String,
    /// The instance it is attached to. A volume shared through the Voltage Park dialect may be
    /// attached to several instances on its host: this is the first of them, and detach
    /// detaches it from all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Where it appears inside the instance it is attached to: `/mnt/volumes/<name>`.
    pub mount_point: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// Letters, digits and '-', starting with a letter; unique in the organization.
    pub name: String,
    pub region: String,
    /// Size in GiB, enforced (an ext4 file system of exactly this size).
    pub size_gib: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    pub instance_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    /// New size in GiB; volumes only grow.
    pub size_gib: i64,
}

/// A copy of an instance's disk or of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub region: String,
    /// `creating`, `available` or `failed`.
    pub status: String,
    /// `instance` or `volume`.
    pub source_type: String,
    pub source_id: String,
    /// The source's size when taken (the least a restore gets).
    pub size_gib: i64,
    /// Space the copy takes.
    pub size_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/snapshots`: exactly one of `instance_id` and `volume_id`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    pub name: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub volume_id: Option<String>,
}

/// `POST /v1/snapshots/{id}/restore`: into a new volume (volume snapshots) or a new instance
/// (instance snapshots), on the snapshot's host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRestore {
    /// Name of the new volume or instance.
    pub name: String,
    /// Volume restores: size of the new volume (default: the snapshot's).
    #[serde(default)]
    pub size_gib: Option<i64>,
    /// Instance restores: the new instance's type.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Instance restores: SSH key ids.
    #[serde(default)]
    pub ssh_keys: Option<Vec<String>>,
}

/// What a restore made: `volume` or `instance`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RateLimitPlan {
    pub requests_per_hour: u64,
    pub burst: u32,
}

/// The caller's organization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub email: String,
    /// `free`, `professional` or `enterprise` (rate limits).
    pub plan: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPlan>,
    /// Monthly spend limit in US cents (absent: none). Launches that would push the month's
    /// projected spend past it are refused; when actual spend reaches it, `spend_limit_action`
    /// runs (`stop` running instances, or `notify` with an event only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_limit_cents: Option<i64>,
    pub spend_limit_action: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// US cents per month; 0 removes the limit.
    #[serde(default)]
    pub spend_limit_cents: Option<i64>,
    /// `stop` or `notify`.
    #[serde(default)]
    pub spend_limit_action: Option<String>,
}

/// Usage of one quota, enforced when the resource is created.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    pub resource: String,
    pub used: i64,
    pub limit: i64,
    /// `count` or `GiB`.
    pub unit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    /// Subset of `ADMIN`, `CREATE`, `READ`, `EDIT`, `DELETE`.
    pub permissions: Vec<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The key that created this one, when created through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The service account the key belongs to; `permissions` are then the account's (and
    /// follow its changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_id: Option<String>,
}

/// `POST /v1/account/api-keys`. The new key cannot hold a permission the calling key lacks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    pub name: String,
    pub permissions: Vec<String>,
    /// RFC 3339 instant after which the key stops working.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Alternative to `expires_at`: days from now (1 to 3650).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

/// A new key with its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyWithSecret {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// A service account: a named, non-human principal of the organization. Its API keys act with
/// its permissions, whatever they are when a key is used.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccount {
    pub id: String,
    /// Unique among the organization's service accounts.
    pub name: String,
    pub description: String,
    /// Subset of `ADMIN`, `CREATE`, `READ`, `EDIT`, `DELETE`.
    pub permissions: Vec<String>,
    pub created_at: String,
    /// Set on the response of a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

/// `POST /v1/service-accounts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountCreate {
    /// 1 to 64 printable characters, not only whitespace.
    pub name: String,
    /// At most 500 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// At least one of `ADMIN`, `CREATE`, `READ`, `EDIT`, `DELETE`.
    pub permissions: Vec<String>,
}

/// `PATCH /v1/service-accounts/{id}`: the fields given are changed. New permissions apply to
/// every key of the account.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Replaces the permissions (at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
}

/// `POST /v1/service-accounts/{id}/api-keys`: a key that acts with the account's permissions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountKeyCreate {
    /// Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RFC 3339 instant after which the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Alternative to `expires_at`: days from now (1 to 3650).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<i64>,
}

/// One inbound allow rule. Without `ruleset_id` it is one of the organization's global rules
/// (every instance); with it, it belongs to that ruleset (instances launched with it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirewallRule {
    pub id: String,
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// `[min, max]`; absent for icmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<[u16; 2]>,
    /// IPv4 CIDR allowed in.
    pub source: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallRuleCreate {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// `[min, max]`, required unless protocol is icmp.
    #[serde(default)]
    pub port_range: Option<Vec<i64>>,
    /// IPv4 address or CIDR.
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Add to this ruleset instead of the global rules.
    #[serde(default)]
    pub ruleset_id: Option<String>,
}

/// Resource use of an instance over one step (the mean of the samples in it), or one sample on
/// the stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricPoint {
    /// Start of the step (a sample's own time on the stream), RFC 3339 UTC.
    pub timestamp: String,
    /// CPU in use, thousandths of a core.
    pub cpu_millicores: i64,
    pub memory_bytes: i64,
    pub disk_bytes: i64,
    pub net_rx_bytes_per_sec: i64,
    pub net_tx_bytes_per_sec: i64,
    /// GPU utilization in percent (instances with GPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_utilization_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceMetrics {
    pub instance_id: String,
    pub from: String,
    pub to: String,
    pub step_seconds: i64,
    pub points: Vec<MetricPoint>,
}

/// A WireGuard VPN into the organization's private network (its instances on the serving host).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Vpn {
    pub id: String,
    pub name: String,
    pub region: String,
    /// `pending` until the host has brought the gateway up, then `up` (or `failed`, see `message`).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `address:port` to connect to (known once the host has reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The instance network of the gateway's host (known once the host has reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Every instance subnet of the region the tunnel reaches, on every host (the client's
    /// AllowedIPs with `gateway_address`); empty where the region has no private network
    /// across hosts, and then `network` is what it reaches.
    #[serde(default)]
    pub networks: Vec<String>,
    pub gateway_public_key: String,
    pub gateway_address: String,
    /// The client's tunnel address.
    pub client_address: String,
    pub client_public_key: String,
    /// wg-quick configuration for the client; its PrivateKey is the one returned at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VpnCreate {
    pub name: String,
    pub region: String,
}

/// A new VPN with the client's private key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VpnCreated {
    #[serde(flatten)]
    pub vpn: Vpn,
    pub client_private_key: String,
}

/// What was billed for one resource in a period.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// `instance` or `volume`.
    pub resource_type: String,
    pub resource_id: String,
    /// `compute` (the instance type's price) or `storage` (GiB-hours of a kept disk).
    pub kind: String,
    /// The instance type, or `storage`.
    pub sku: String,
    pub quantity: i64,
    pub rate_micros_per_hour: i64,
    pub seconds: i64,
    pub amount_micros: i64,
    /// The amount in US dollars, exact (`"0.012345"`).
    pub amount_usd: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub start: String,
    pub end: String,
    pub total_micros: i64,
    pub total_usd: String,
    pub lines: Vec<UsageLine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    /// The instance type, or `storage`.
    pub sku: String,
    /// `compute` or `storage`.
    pub kind: String,
    pub seconds: i64,
    pub amount_micros: i64,
    pub amount_usd: String,
}

/// One calendar month (UTC) of charges from the hourly ledger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub id: String,
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    /// `open` while hours of the month are still to be rolled up, then `final`.
    pub status: String,
    pub lines: Vec<InvoiceLine>,
    pub total_micros: i64,
    pub total_usd: String,
    /// Credits granted in the month; they lower the balance.
    pub credits_micros: i64,
    pub balance_start_micros: i64,
    pub balance_end_micros: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProposedCost {
    pub instance_type: String,
    pub hours: i64,
    pub amount_micros: i64,
    pub amount_usd: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed: Option<ProposedCost>,
    pub month_to_date_micros: i64,
    /// What runs (or is stored) now, from now to the end of the month.
    pub current_to_month_end_micros: i64,
    pub projected_month_total_micros: i64,
    pub projected_month_total_usd: String,
    pub month_end: String,
}
