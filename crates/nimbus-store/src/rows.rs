//! Decoding rows into domain records. Columns are read by name; a decode failure is an internal
//! error (the schema and this code disagree), never a panic.

use nimbus_core::auth::Permissions;
use nimbus_core::catalog::Resources;
use nimbus_core::ids::*;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::*;
use nimbus_core::Error;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(|e| Error::internal(format!("decoding column {col}: {e}")))
}

pub(crate) fn json<T: DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T, Error> {
    let s: String = get(row, col)?;
    serde_json::from_str(&s).map_err(|e| Error::internal(format!("decoding JSON column {col}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing plain records (strings, numbers, vectors) cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub(crate) fn org(row: &AnyRow) -> Result<Org, Error> {
    Ok(Org {
        id: OrgId::from_trusted(get(row, "id")?),
        name: get(row, "name")?,
        email: get(row, "email")?,
        plan: get(row, "plan")?,
        created_at: get(row, "created_at")?,
        spend_limit_cents: get(row, "spend_limit_cents")?,
        spend_limit_action: get(row, "spend_limit_action")?,
        spend_limit_reached: get(row, "spend_limit_reached")?,
    })
}

pub(crate) fn api_key(row: &AnyRow) -> Result<ApiKey, Error> {
    Ok(ApiKey {
        id: ApiKeyId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        plan: get::<Option<String>>(row, "plan")?.unwrap_or_else(|| "professional".to_owned()),
        name: get(row, "name")?,
        prefix: get(row, "prefix")?,
        permissions: Permissions::from_bits(get(row, "permissions")?),
        created_at: get(row, "created_at")?,
        revoked_at: get(row, "revoked_at")?,
        expires_at: get(row, "expires_at")?,
        created_by: get::<Option<String>>(row, "created_by")?.map(ApiKeyId::from_trusted),
        service_account_id: get::<Option<String>>(row, "service_account_id")?.map(ServiceAccountId::from_trusted),
    })
}

pub(crate) fn service_account(row: &AnyRow) -> Result<ServiceAccount, Error> {
    Ok(ServiceAccount {
        id: ServiceAccountId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        description: get(row, "description")?,
        permissions: Permissions::from_bits(get(row, "permissions")?),
        created_at: get(row, "created_at")?,
        deleted_at: get(row, "deleted_at")?,
    })
}

pub(crate) fn host(row: &AnyRow, gpus: Vec<Gpu>) -> Result<Host, Error> {
    let status: String = get(row, "status")?;
    Ok(Host {
        id: HostId::from_trusted(get(row, "id")?),
        name: get(row, "name")?,
        region: get(row, "region")?,
        driver: get(row, "driver")?,
        cpu_model: get(row, "cpu_model")?,
        total: Resources {
            vcpus: get(row, "vcpus_total")?,
            memory_mib: get(row, "memory_mib_total")?,
            disk_gib: get(row, "disk_gib_total")?,
        },
        used: Resources { vcpus: get(row, "vcpus_used")?, memory_mib: get(row, "memory_mib_used")?, disk_gib: get(row, "disk_gib_used")? },
        gpus,
        status: if status == "up" { HostStatus::Up } else { HostStatus::Down },
        last_seen_at: get(row, "last_seen_at")?,
        desired_generation: get(row, "desired_generation")?,
        created_at: get(row, "created_at")?,
        public_ip: get(row, "public_ip")?,
        underlay: get(row, "underlay")?,
        instance_subnet: get(row, "instance_subnet")?,
        machines: machines(&get::<String>(row, "machines")?),
    })
}

/// A host's `machines` column (a JSON array of names). A name this build does not know (a
/// newer replica wrote it) is dropped, so nothing is placed on the strength of it.
fn machines(json: &str) -> Vec<nimbus_core::catalog::Machine> {
    let names: Vec<String> = serde_json::from_str(json).unwrap_or_default();
    names.iter().filter_map(|n| nimbus_core::catalog::Machine::parse(n)).collect()
}

pub(crate) const GPU_COLS: &str = "host_id, idx, model, memory_mib, uuid, instance_id, health, health_reasons, clean";

pub(crate) fn gpu(row: &AnyRow) -> Result<Gpu, Error> {
    let health: String = get(row, "health")?;
    let reasons: String = get(row, "health_reasons")?;
    Ok(Gpu {
        index: get(row, "idx")?,
        model: get(row, "model")?,
        memory_mib: get(row, "memory_mib")?,
        uuid: get(row, "uuid")?,
        instance_id: get::<Option<String>>(row, "instance_id")?.map(InstanceId::from_trusted),
        // A value this build does not know (a newer replica wrote it) is not placed on.
        health: nimbus_core::gpu_health::Condition::parse(&health).unwrap_or(nimbus_core::gpu_health::Condition::ServiceRequired),
        health_reasons: serde_json::from_str(&reasons).unwrap_or_default(),
        clean: get::<i64>(row, "clean")? != 0,
        mig_devices: Vec::new(),
    })
}

pub(crate) const MIG_COLS: &str = "host_id, uuid, parent_idx, profile, memory_mib, gpu_instance_id, compute_instance_id, instance_id";

pub(crate) fn mig_device(row: &AnyRow) -> Result<nimbus_core::model::MigDevice, Error> {
    Ok(nimbus_core::model::MigDevice {
        uuid: get(row, "uuid")?,
        profile: get(row, "profile")?,
        memory_mib: get(row, "memory_mib")?,
        gpu_instance_id: get(row, "gpu_instance_id")?,
        compute_instance_id: get(row, "compute_instance_id")?,
        instance_id: get::<Option<String>>(row, "instance_id")?.map(InstanceId::from_trusted),
    })
}

pub(crate) const INSTANCE_COLS: &str = "id, org_id, name, hostname, state, region, instance_type, host_id, \
    vcpus, memory_mib, disk_gib, gpu_indices, image_id, ssh_key_names, ssh_public_keys, user_data, tags, \
    file_system_mounts, firewall_ruleset_ids, ip, private_ip, restart_generation, generation, created_at, \
    updated_at, terminated_at, source_snapshot_id, ssh_port, stop_billing, compute_released, rental_id, price_micros_per_hour, cluster_id";

pub(crate) fn instance(row: &AnyRow) -> Result<Instance, Error> {
    let state: String = get(row, "state")?;
    Ok(Instance {
        id: InstanceId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        hostname: get(row, "hostname")?,
        state: InstanceState::parse(&state).ok_or_else(|| Error::internal(format!("bad instance state {state:?}")))?,
        region: get(row, "region")?,
        instance_type: get(row, "instance_type")?,
        host_id: get::<Option<String>>(row, "host_id")?.map(HostId::from_trusted),
        resources: Resources { vcpus: get(row, "vcpus")?, memory_mib: get(row, "memory_mib")?, disk_gib: get(row, "disk_gib")? },
        gpu_indices: json(row, "gpu_indices")?,
        image_id: ImageId::from_trusted(get(row, "image_id")?),
        ssh_key_names: json(row, "ssh_key_names")?,
        ssh_public_keys: json(row, "ssh_public_keys")?,
        user_data: get(row, "user_data")?,
        tags: json(row, "tags")?,
        file_system_mounts: json(row, "file_system_mounts")?,
        firewall_ruleset_ids: json(row, "firewall_ruleset_ids")?,
        ip: get(row, "ip")?,
        private_ip: get(row, "private_ip")?,
        restart_generation: get(row, "restart_generation")?,
        generation: get(row, "generation")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        terminated_at: get(row, "terminated_at")?,
        source_snapshot_id: get::<Option<String>>(row, "source_snapshot_id")?.map(SnapshotId::from_trusted),
        ssh_port: get(row, "ssh_port")?,
        stop_billing: nimbus_core::metering::StopBilling::parse(&get::<String>(row, "stop_billing")?),
        compute_released: get::<i64>(row, "compute_released")? != 0,
        rental_id: get(row, "rental_id")?,
        price_micros_per_hour: get(row, "price_micros_per_hour")?,
        cluster_id: get(row, "cluster_id")?,
    })
}

pub(crate) fn ssh_key(row: &AnyRow) -> Result<SshKey, Error> {
    Ok(SshKey {
        id: SshKeyId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        public_key: get(row, "public_key")?,
        created_at: get(row, "created_at")?,
    })
}

pub(crate) fn file_system(row: &AnyRow) -> Result<FileSystem, Error> {
    Ok(FileSystem {
        id: FileSystemId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        region: get(row, "region")?,
        mount_point: get(row, "mount_point")?,
        created_at: get(row, "created_at")?,
        in_use: get::<i64>(row, "in_use")? != 0,
    })
}

pub(crate) fn image(row: &AnyRow) -> Result<Image, Error> {
    Ok(Image {
        id: ImageId::from_trusted(get(row, "id")?),
        name: get(row, "name")?,
        description: get(row, "description")?,
        family: get(row, "family")?,
        version: get(row, "version")?,
        architecture: get(row, "architecture")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

pub(crate) fn event(row: &AnyRow) -> Result<Event, Error> {
    Ok(Event {
        seq: get(row, "seq")?,
        id: EventId::from_trusted(get(row, "id")?),
        org_id: get::<Option<String>>(row, "org_id")?.map(OrgId::from_trusted),
        kind: get(row, "kind")?,
        resource_type: get(row, "resource_type")?,
        resource_id: get(row, "resource_id")?,
        actor_key_id: get::<Option<String>>(row, "actor_key_id")?.map(ApiKeyId::from_trusted),
        payload: json(row, "payload")?,
        created_at: get(row, "created_at")?,
    })
}

pub(crate) const VOLUME_COLS: &str = "id, org_id, name, display_name, region, size_gib, host_id, source_snapshot_id, host_state, \
     host_message, used_bytes, created_at, updated_at";

/// A volume row; its attachments are read separately (`Store::volume_attachments_fill`).
pub(crate) fn volume(row: &AnyRow) -> Result<Volume, Error> {
    let state: String = get(row, "host_state")?;
    let host_state = match state.as_str() {
        "unreported" => VolumeHostState::Unreported,
        "ready" => VolumeHostState::Ready,
        "failed" => VolumeHostState::Failed(get::<Option<String>>(row, "host_message")?.unwrap_or_default()),
        other => return Err(Error::internal(format!("unknown volume host_state {other:?}"))),
    };
    Ok(Volume {
        id: VolumeId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        display_name: get(row, "display_name")?,
        region: get(row, "region")?,
        size_gib: get(row, "size_gib")?,
        host_id: get::<Option<String>>(row, "host_id")?.map(HostId::from_trusted),
        attachments: Vec::new(),
        source_snapshot_id: get::<Option<String>>(row, "source_snapshot_id")?.map(SnapshotId::from_trusted),
        host_state,
        used_bytes: get(row, "used_bytes")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

pub(crate) const SNAPSHOT_COLS: &str =
    "id, org_id, name, region, host_id, source_type, source_id, size_gib, state, size_bytes, message, created_at, updated_at";

pub(crate) fn snapshot(row: &AnyRow) -> Result<Snapshot, Error> {
    let st: String = get(row, "source_type")?;
    let state: String = get(row, "state")?;
    Ok(Snapshot {
        id: SnapshotId::from_trusted(get(row, "id")?),
        org_id: OrgId::from_trusted(get(row, "org_id")?),
        name: get(row, "name")?,
        region: get(row, "region")?,
        host_id: HostId::from_trusted(get(row, "host_id")?),
        source_type: SnapshotSourceType::parse(&st).ok_or_else(|| Error::internal(format!("bad snapshot source {st:?}")))?,
        source_id: get(row, "source_id")?,
        size_gib: get(row, "size_gib")?,
        state: SnapshotState::parse(&state).ok_or_else(|| Error::internal(format!("bad snapshot state {state:?}")))?,
        size_bytes: get(row, "size_bytes")?,
        message: get(row, "message")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}
