//! Wire types of the clusters dialect (`/api/v1/clusters`, seed 003: CockroachDB Cloud's cluster
//! API). Requests accept the seed's camelCase and CockroachDB's snake_case spellings; answers use
//! the seed's spellings. Ids are UUID-shaped, times RFC 3339 UTC in whole seconds, money integer
//! US cents.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A cluster: a named group of nodes (instances) of one machine type, in one or more regions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    /// The configured provider name (`NIMBUS`).
    pub cloud_provider: String,
    /// `SERVERLESS` (one node per region, with a monthly spend limit) or `DEDICATED`.
    pub plan: String,
    /// `CREATING`, `WAITING_FOR_CAPACITY`, `CREATED`, `FAILED`, `DELETED`.
    pub state: String,
    /// `CLUSTER_STATUS_UNSPECIFIED`, or the last operation's outcome.
    pub operation_status: String,
    /// The service account of the key that created it (else the key's id).
    pub creator_id: String,
    pub regions: Vec<ClusterRegion>,
    pub config: ClusterConfig,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterRegion {
    pub name: String,
    /// The address of the region's first node with one (empty until then).
    pub sql_dns: String,
    /// Always empty: Nimbus serves no console.
    pub ui_dns: String,
    /// Dedicated clusters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i64>,
}

/// Exactly one of the two is present, by plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serverless: Option<ServerlessConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated: Option<DedicatedConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerlessConfig {
    pub regions: Vec<String>,
    /// US cents per month; 0 is no limit.
    pub spend_limit: i64,
    pub routing_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DedicatedConfig {
    /// An instance type name.
    pub machine_type: String,
    pub num_virtual_cpus: i64,
    pub memory_gib: i64,
    pub storage_gib: i64,
}

/// The page of a list: `next` is 0 on the last page; pages count from 1.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pagination {
    pub next: u64,
    pub last: u64,
    pub limit: u64,
    pub total_results: u64,
    pub time: String,
    /// `ASC` or `DESC`.
    pub order: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterList {
    pub clusters: Vec<Cluster>,
    pub pagination: Pagination,
}

/// A node: one instance of the cluster, named `<cluster>-N`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub region_name: String,
    /// `LIVE` (its instance is active) or `NOT_READY`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
    pub pagination: Pagination,
}

/// `POST /clusters`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateCluster {
    pub name: String,
    /// `NIMBUS`; `GCP` and `AWS` are accepted as aliases of it.
    #[serde(alias = "cloud_provider")]
    pub provider: String,
    pub spec: CreateClusterSpec,
    /// Nimbus extension: the organization's SSH keys (by name) authorized on every node.
    #[serde(default, alias = "sshKeyNames", skip_serializing_if = "Option::is_none")]
    pub ssh_key_names: Option<Vec<String>>,
    /// Nimbus extension: without capacity now, wait for it (`WAITING_FOR_CAPACITY`) instead of
    /// failing.
    #[serde(default, alias = "waitForCapacity", skip_serializing_if = "Option::is_none")]
    pub wait_for_capacity: Option<bool>,
}

/// Exactly one of `serverless` or `dedicated`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateClusterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serverless: Option<ServerlessSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated: Option<DedicatedSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ServerlessSpec {
    /// One node in each.
    #[serde(default)]
    pub regions: Vec<String>,
    /// US cents per month; 0 or absent is no limit.
    #[serde(default, rename = "spendLimit", alias = "spend_limit", skip_serializing_if = "Option::is_none")]
    pub spend_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DedicatedSpec {
    /// Node count by region name.
    #[serde(alias = "regionNodes")]
    pub region_nodes: BTreeMap<String, i64>,
    /// An instance type name; CockroachDB's `hardware.machine_spec.machine_type` is accepted too.
    #[serde(default, alias = "machineType", skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<Hardware>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Hardware {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_spec: Option<MachineSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MachineSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
}

/// `PUT /clusters/{id}/spend-limit` (serverless clusters).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SpendLimit {
    /// US cents per month; 0 is no limit.
    #[serde(rename = "spendLimit", alias = "spend_limit")]
    pub spend_limit: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AvailableRegions {
    pub regions: Vec<String>,
}

/// `{}`: the answer of spend-limit and delete.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Empty {}

/// Every error: a gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, 6 ALREADY_EXISTS,
/// 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED, 9 FAILED_PRECONDITION, 13 INTERNAL,
/// 14 UNAVAILABLE, 16 UNAUTHENTICATED) with the HTTP status grpc-gateway gives it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: i64,
    pub message: String,
}
