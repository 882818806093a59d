//! Lambda Cloud API v1 wire types, as the real clients encode them
//! (`shared/reference/lambda-cloud-api.md`). Optional lists are omitted rather than `null`,
//! because generated clients iterate them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{}`: the `data` of deletes that return nothing else.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Empty {}

/// `{"data": …}`, the envelope of every success.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Region {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Specs {
    pub vcpus: i64,
    pub memory_gib: i64,
    pub storage_gib: i64,
    pub gpus: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceType {
    pub name: String,
    pub description: String,
    pub gpu_description: String,
    pub price_cents_per_hour: i64,
    pub specs: Specs,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceTypeEntry {
    pub instance_type: InstanceType,
    pub regions_with_capacity_available: Vec<Region>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionAvailability {
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Actions {
    pub migrate: ActionAvailability,
    pub rebuild: ActionAvailability,
    pub restart: ActionAvailability,
    pub cold_reboot: ActionAvailability,
    pub terminate: ActionAvailability,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileSystemMount {
    pub mount_point: String,
    pub file_system_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdRef {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,
    pub status: String,
    pub ssh_key_names: Vec<String>,
    pub file_system_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_system_mounts: Option<Vec<FileSystemMount>>,
    pub region: Region,
    pub instance_type: InstanceType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jupyter_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jupyter_url: Option<String>,
    pub actions: Actions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall_rulesets: Option<Vec<IdRef>>,
    pub is_reserved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ImageSpec {
    Id { id: String },
    Family { family: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LaunchRequest {
    pub region_name: String,
    pub instance_type_name: String,
    pub ssh_key_names: Vec<String>,
    #[serde(default)]
    pub file_system_names: Option<Vec<String>>,
    #[serde(default)]
    pub file_system_mounts: Option<Vec<FileSystemMount>>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<ImageSpec>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<Tag>>,
    #[serde(default)]
    pub firewall_rulesets: Option<Vec<IdRef>>,
    #[serde(default)]
    pub quantity: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LaunchResponse {
    pub instance_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceIdsRequest {
    pub instance_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RestartResponse {
    pub restarted_instances: Vec<Instance>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TerminateResponse {
    pub terminated_instances: Vec<Instance>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceModifyRequest {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshKey {
    pub id: String,
    pub name: String,
    pub public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddSshKeyRequest {
    pub name: String,
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileSystem {
    pub id: String,
    pub name: String,
    pub mount_point: String,
    pub created: String,
    pub created_by: User,
    pub is_in_use: bool,
    pub region: Region,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateFileSystemRequest {
    pub name: String,
    pub region: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeletedIds {
    pub deleted_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: String,
    pub created_time: String,
    pub updated_time: String,
    pub name: String,
    pub description: String,
    pub family: String,
    pub version: String,
    pub architecture: String,
    pub region: Region,
}

/// A firewall rule as sent and rendered. Input fields are loosely typed (`serde_json::Value`
/// for the port range) so that a wrong type becomes a precise validation message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirewallRule {
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<Vec<i64>>,
    pub source_network: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FirewallRulesPut {
    pub data: Vec<FirewallRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FirewallRuleset {
    pub id: String,
    pub name: String,
    pub region: Region,
    pub rules: Vec<FirewallRule>,
    pub created: String,
    pub instance_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GlobalFirewallRuleset {
    pub id: String,
    pub name: String,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateRulesetRequest {
    pub name: String,
    pub region: String,
    pub rules: Vec<FirewallRule>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PatchRulesetRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub rules: Option<Vec<FirewallRule>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub service_name: String,
    pub resource_name: String,
    pub action: String,
    pub catalog_version: String,
    pub event_id: String,
    pub event_time: String,
    pub actor_lrn: Option<String>,
    pub resource_lrns: Vec<String>,
    pub resource_owner_lrn: Option<String>,
    pub request_api_key_lrn: Option<String>,
    #[schema(value_type = Object)]
    pub additional_details: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEventsPage {
    pub events: Vec<AuditEvent>,
    pub page_token: Option<String>,
}
