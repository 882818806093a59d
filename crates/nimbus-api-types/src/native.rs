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
    pub ssh_key_names: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
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
