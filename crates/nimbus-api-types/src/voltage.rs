//! Voltage Park On-Demand wire types (seed 004, served under `/api/v1`; decisions in
//! docs/voltage-park.md): every request and response body of the dialect, its page wrapper and
//! its FastAPI error bodies. The server renders through these types and `VoltageClient` reads
//! into them, so the two cannot drift.
//!
//! Conventions of the seed kept here: ids are UUID strings; money is a decimal string with six
//! places (`"3.290000"`), except the two bare-metal GPU prices, which the seed shows as JSON
//! numbers; fields the seed documents as nullable are `Option` and rendered as `null` (never
//! omitted); lists are `{results, total_result_count, has_previous, has_next}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// Envelopes and errors.

/// One page of a list: `results` after `offset`, at most `limit` of them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub results: Vec<T>,
    /// Items in the whole list, over all pages.
    pub total_result_count: u64,
    /// Whether a page comes before this one (`offset > 0` in a non-empty list).
    pub has_previous: bool,
    /// Whether a page comes after this one.
    pub has_next: bool,
}

/// `{"detail": "<message>"}`: every error but a validation error (400 a request that cannot be
/// done, 401 a missing or invalid key, 403 a missing permission, 404 an unknown object).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub detail: String,
}

/// `{"detail": [{"loc", "msg", "type"}]}`: a 422 validation error, FastAPI's shape.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidationErrorBody {
    pub detail: Vec<ValidationIssue>,
}

/// One invalid value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ValidationIssue {
    /// Where: `body`, `query` or `path`, then the field (`["body", "size_in_gb"]`); just
    /// `["body"]` when the body as a whole is unreadable.
    pub loc: Vec<LocPart>,
    /// What is wrong with it.
    pub msg: String,
    /// The kind of error (`value_error` from Nimbus).
    #[serde(rename = "type")]
    pub kind: String,
}

/// A `loc` element: a name, or (from FastAPI servers) the index of a list item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LocPart {
    Name(String),
    Index(i64),
}

impl std::fmt::Display for LocPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocPart::Name(s) => f.write_str(s),
            LocPart::Index(i) => write!(f, "{i}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Locations and hostnodes.

/// `{"count": n}`, the value of a GPU map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuCount {
    pub count: i64,
}

/// Resources of a hostnode (what is free on it now), a preset or a virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    /// GPUs by model slug as hosts name them (`h100-80gb-hbm3` from NVML's
    /// `NVIDIA H100 80GB HBM3`); empty without GPUs.
    pub gpus: BTreeMap<String, GpuCount>,
    pub vcpu_count: i64,
    pub ram_gb: i64,
    pub storage_gb: i64,
}

/// Hourly prices on a hostnode, decimal strings in dollars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostNodePricing {
    /// Per GPU-hour by model slug: the cheapest one-GPU instance type of that model.
    pub per_gpu_hr: BTreeMap<String, String>,
    pub per_vcpu_hr: String,
    pub per_gb_ram_hr: String,
    pub per_gb_storage_hr: String,
}

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostNode {
    pub id: String,
    pub location_id: String,
    /// What is free on the host now.
    pub available_resources: Resources,
    pub pricing: HostNodePricing,
    /// Host ports that can still be forwarded to a VM.
    pub available_ports: Vec<i64>,
}

/// A location: one configured region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    pub id: String,
    /// From the region's description (`Virginia, USA` → `Virginia`).
    pub city: String,
    /// The region's name.
    pub region: String,
    /// From the region's description (`Virginia, USA` → `USA`).
    pub country: String,
    /// Its hosts that are up.
    pub hostnodes: Vec<HostNode>,
}

// ---------------------------------------------------------------------------------------------
// Instant-deploy presets and virtual machines.

/// An instant-deploy preset: an instance type with an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Preset {
    pub id: String,
    pub resources: Resources,
    /// The image's description.
    pub operating_system: String,
    /// The instance type's price per hour.
    pub compute_rate_hourly: String,
    /// Its disk per hour at the storage rate.
    pub storage_rate_hourly: String,
    /// Locations where one can be placed now.
    pub location_ids_with_availability: Vec<String>,
}

/// `organization_ssh_keys`: which of the organization's SSH keys go onto a new VM or rental
/// (`{"mode": "none"}` when absent).
// Named as the server's type was before it moved here: serde names the type in the message of
// a 422 for a value that is not an object, and that message stays as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum OrgKeys {
    /// Every key of the organization.
    All,
    /// None of them.
    #[default]
    None,
    /// The keys with these ids.
    Selective {
        #[serde(default)]
        ssh_key_ids: Vec<String>,
    },
}

/// `POST /virtual-machines/instant`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VmCreateRequest {
    /// The preset to launch.
    pub config_id: String,
    /// 1–64 characters; a hostname is derived from it.
    pub name: String,
    /// At least 8 characters; set (as a crypt hash) for the default user `ubuntu`, with SSH
    /// password logins enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub organization_ssh_keys: OrgKeys,
    /// Extra OpenSSH public keys for this VM only.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// An object is a cloud-config document; a string is user data as it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<serde_json::Value>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `201` of `POST /virtual-machines/instant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmCreated {
    pub vm_id: String,
}

/// A VM's hourly prices, decimal strings in dollars: the four parts add up to
/// `total_associated_per_hr` (the instance type's price).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmPricing {
    /// What the vCPU, RAM and disk rates leave of the type's price.
    pub gpus_per_hr: String,
    pub vcpus_per_hr: String,
    pub ram_per_hr: String,
    pub storage_per_hr: String,
    /// While running or stopped (a stop keeps the reservation).
    pub total_associated_per_hr: String,
    /// While stopped disassociated: the disk only.
    pub total_disassociated_per_hr: String,
}

/// A host port forwarded to a port of the VM (its SSH port 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortForward {
    pub internal_port: i64,
    pub external_port: i64,
}

/// Open a port of the VM's public address to one of its ports (Nimbus extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortForwardCreate {
    /// The VM's port (TCP, 1–65535); the external port is chosen from the host's range.
    pub internal_port: i64,
}

/// A virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VirtualMachine {
    pub id: String,
    /// `null` before it is placed on a host.
    pub hostnode_id: Option<String>,
    /// Always `ondem`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `Provisioning`, `Running`, `Restarting`, `Stopping`, `Stopped`, `Disassociated`,
    /// `Starting`, `Error` or `Terminating`.
    pub status: String,
    pub name: String,
    pub resources: Resources,
    /// The image's description.
    pub operating_system: String,
    pub pricing: VmPricing,
    /// The host's public address (`null` while unknown).
    pub public_ip: Option<String>,
    pub port_forwards: Vec<PortForward>,
    /// RFC 3339.
    pub timestamp_creation: String,
    pub tags: Vec<String>,
}

/// `PATCH` of a VM or a bare-metal rental: absent (or `null`) fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NameTagsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The complete new list of tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// The answer to a `PATCH` of a VM or a bare-metal rental: its name and tags now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NameTags {
    pub name: String,
    pub tags: Vec<String>,
}

/// `PUT …/power-status` body, and a VM's answer: `started`, `stopped` or (VMs only)
/// `stopped_disassociated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PowerStatus {
    pub status: String,
}

// ---------------------------------------------------------------------------------------------
// Bare metal.

/// The shape of one bare-metal node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeSpecs {
    /// Model slug (`h100-80gb-hbm3`); empty without GPUs.
    pub gpu_model: String,
    pub gpu_count: i64,
    pub cpu_model: String,
    /// vCPUs.
    pub cpu_count: i64,
    pub ram_gb: i64,
    pub storage_gb: i64,
}

/// A location with bare-metal nodes to rent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BareMetalLocation {
    pub id: String,
    /// GPUs of the free nodes of this shape.
    pub gpu_count_ethernet: i64,
    /// Dollars per GPU-hour (a JSON number, as in the seed).
    pub gpu_price_ethernet: f64,
    /// Always 0: hosts report no InfiniBand fabric yet.
    pub gpu_count_infiniband: i64,
    /// Dollars per GPU-hour (a JSON number).
    pub gpu_price_infiniband: f64,
    pub specs_per_node: NodeSpecs,
}

/// The seed's `sub_order`: an integer or a string (`12345`, `"12345"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SubOrder {
    Int(i64),
    Text(String),
}

/// `POST /bare-metal/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BareMetalCreateRequest {
    pub location_id: String,
    /// A positive multiple of the node's GPUs (`0` rents one host without GPUs).
    pub gpu_count: i64,
    pub name: String,
    #[serde(default)]
    pub organization_ssh_keys: OrgKeys,
    /// Extra OpenSSH public keys for this rental only.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// `ethernet` (`infiniband` is refused: there is none here).
    pub network_type: String,
    /// Recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_order: Option<SubOrder>,
    /// A storage volume to attach to the node (one-node rentals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// As a VM's `cloud_init`: an object is a cloud-config document, a string user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudinit_script: Option<serde_json::Value>,
}

/// `201` of `POST /bare-metal/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BareMetalCreated {
    pub rental_id: String,
    /// Always `null` from Nimbus.
    pub warning: Option<String>,
}

/// Addresses of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeNetworking {
    /// Where its SSH port 22 answers.
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
}

/// A bare-metal rental.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BareMetalRental {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub creation_timestamp: String,
    /// `Pending`, `Running`, `Stopping`, `Stopped`, `Error` or `Terminating`.
    pub status: String,
    /// `Running` or `Stopped`.
    pub power_status: String,
    pub node_count: i64,
    pub specs_per_node: NodeSpecs,
    /// The nodes' prices per hour, a decimal string.
    pub rate_hourly: String,
    pub network_type: String,
    /// Always `ubuntu`.
    pub username: String,
    pub node_networking: Vec<NodeNetworking>,
    pub sub_order: Option<String>,
    pub storage_id: Option<String>,
    /// `null`: no Kubernetes cluster is created.
    pub storage_pv: Option<String>,
    /// `null`: no Kubernetes cluster is created.
    pub storage_pvc: Option<String>,
    /// `null`: no Kubernetes cluster is created.
    pub k8s_cluster_id: Option<String>,
    /// `null`: no Kubernetes cluster is created.
    pub kubeconfig: Option<String>,
    pub tags: Vec<String>,
}

/// `POST /bare-metal/{id}/reboot`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RebootRequest {
    /// The nodes to restart, by public address.
    pub public_ips: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Organization SSH keys and cloud-init.

/// An SSH public key of the organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgSshKey {
    pub id: String,
    pub name: String,
    /// The OpenSSH public key.
    pub content: String,
}

/// `POST /organization/ssh-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct OrgSshKeyCreateRequest {
    /// 3–64 letters, digits, hyphens or spaces.
    pub name: String,
    /// The OpenSSH public key.
    pub content: String,
}

/// `POST /validate/cloudinit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CloudInitValidateRequest {
    /// `instant-vm` or `bare-metal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A string (user data) or an object (a cloud-config document).
    pub content: serde_json::Value,
}

/// The answer of `POST /validate/cloudinit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloudInitValidation {
    /// Whether the content would be refused at launch.
    pub error: bool,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Storage.

/// `GET /storage/hourly-rate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageHourlyRate {
    /// Dollars per GB-hour, a decimal string.
    pub hourly_rate_per_gb: String,
}

/// `POST /storage/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StorageCreateRequest {
    /// GiB, at least 1.
    pub size_in_gb: i64,
    /// 1–255 characters, not only spaces, no control characters.
    pub name: String,
    /// Orders (VMs or bare-metal rentals, by UUID) to attach it to.
    #[serde(default)]
    pub order_ids: Vec<String>,
}

/// `PATCH /storage/{id}`: absent (or `null`) parts stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StorageUpdateRequest {
    /// A larger size (shrinking is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_in_gb: Option<i64>,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The complete new set of orders: left-out ones are detached, new ones attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ids: Option<Vec<String>>,
}

/// A storage volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Storage {
    pub id: String,
    /// GiB.
    pub size_in_gb: i64,
    pub name: String,
    /// `active`, `creating` or `error`.
    pub status: String,
    /// `size_in_gb` at the storage rate, a decimal string.
    pub rate_hourly: String,
    /// The orders it is attached to (a rental once for all its nodes).
    pub order_ids: Vec<String>,
    /// The organization as an integer (the first 13 hex digits of its id).
    pub tenant_id: i64,
    /// Always `0.0.0.0`: the host mounts the volume, there is no address to mount it from.
    pub vip: String,
}

/// `GET /storage/{id}`: a storage volume with the bytes in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageDetail {
    /// Bytes in use in its file system, as its host last measured them.
    pub used_capacity_bytes: i64,
    #[serde(flatten)]
    pub storage: Storage,
}

// ---------------------------------------------------------------------------------------------
// Billing.

/// `GET /billing/hourly-rate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BillingHourlyRate {
    /// What the organization's open usage costs per hour now, a decimal string.
    pub rate_hourly: String,
}

/// What a charge is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LinkedInstance {
    VirtualMachineInstance {
        id: String,
        virtual_machine_id: String,
        /// RFC 3339; `null` when unknown.
        timestamp_creation: Option<String>,
        /// RFC 3339; `null` while it runs.
        timestamp_deletion: Option<String>,
    },
    BaremetalRental {
        /// The rental.
        id: String,
        /// The node (instance) charged.
        node_id: String,
    },
    StorageVolume {
        id: String,
    },
}

/// What a transaction is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransactionDetails {
    /// One usage interval for one hour.
    Charge { linked_instance: LinkedInstance },
    /// Credit granted to the organization.
    Credit { reason: String },
}

/// One billing transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transaction {
    pub id: String,
    /// Dollars, a decimal string (negative for credit).
    pub total_amount: String,
    /// RFC 3339.
    pub timestamp_creation: String,
    /// RFC 3339.
    pub timestamp_completion: String,
    pub details: TransactionDetails,
    /// Dollars, a decimal string.
    pub period_amount: String,
}

/// `GET /billing/reports/{year}/{month}/transactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MonthReport {
    /// The month's transactions, newest first.
    pub transactions: Vec<Transaction>,
    pub balance_at_period_start: String,
    pub balance_delta_in_period: String,
    pub balance_at_period_end: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn tagged_and_untagged_shapes_are_the_seeds() {
        let m: OrgKeys = serde_json::from_value(json!({"mode": "selective", "ssh_key_ids": ["x"]})).unwrap();
        assert_eq!(m, OrgKeys::Selective { ssh_key_ids: vec!["x".into()] });
        assert_eq!(serde_json::to_value(OrgKeys::All).unwrap(), json!({"mode": "all"}));
        assert!(serde_json::from_value::<OrgKeys>(json!({"mode": "some"})).is_err());
        assert_eq!(serde_json::from_value::<SubOrder>(json!(12345)).unwrap(), SubOrder::Int(12345));
        assert_eq!(serde_json::from_value::<SubOrder>(json!("12345")).unwrap(), SubOrder::Text("12345".into()));
        let d = TransactionDetails::Charge { linked_instance: LinkedInstance::StorageVolume { id: "s".into() } };
        assert_eq!(serde_json::to_value(&d).unwrap(), json!({"type": "charge", "linked_instance": {"type": "storage_volume", "id": "s"}}));
        let s = StorageDetail {
            used_capacity_bytes: 1,
            storage: Storage {
                id: "i".into(),
                size_in_gb: 2,
                name: "n".into(),
                status: "active".into(),
                rate_hourly: "0.000001".into(),
                order_ids: vec![],
                tenant_id: 3,
                vip: "0.0.0.0".into(),
            },
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["used_capacity_bytes"], 1);
        assert_eq!(v["tenant_id"], 3);
        assert_eq!(serde_json::from_value::<StorageDetail>(v).unwrap(), s);
        let e: ValidationErrorBody = serde_json::from_value(json!({"detail": [{"loc": ["body", 0], "msg": "m", "type": "t"}]})).unwrap();
        assert_eq!(e.detail[0].loc, vec![LocPart::Name("body".into()), LocPart::Index(0)]);
    }
}
