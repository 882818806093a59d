//! Native handlers for volumes and snapshots.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use nimbus_api_types::native as w;
use nimbus_control::volumes;
use nimbus_core::clock::to_rfc3339;
use nimbus_core::model::{Snapshot, Volume};
use nimbus_core::Error;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, query_pairs, render, NResult};
use super::page;
use crate::auth::perm::{Create, Edit, Read};
use crate::ApiState;

/// `attached` once the host reports it mounted in every instance it is attached to.
fn volume_status(v: &Volume) -> &'static str {
    match (v.attachments.is_empty(), v.all_mounted()) {
        (true, _) => "available",
        (false, false) => "attaching",
        (false, true) => "attached",
    }
}

fn render_volume(v: &Volume) -> w::Volume {
    w::Volume {
        id: v.id.to_string(),
        name: v.name.clone(),
        region: v.region.clone(),
        size_gib: v.size_gib,
        status: volume_status(v).to_owned(),
        instance_id: v.instance_id().map(ToString::to_string),
        mount_point: format!("/mnt/volumes/{}", v.name),
        source_snapshot_id: v.source_snapshot_id.as_ref().map(ToString::to_string),
        created_at: to_rfc3339(v.created_at),
        updated_at: to_rfc3339(v.updated_at),
    }
}

fn render_snapshot(s: &Snapshot) -> w::Snapshot {
    w::Snapshot {
        id: s.id.to_string(),
        name: s.name.clone(),
        region: s.region.clone(),
        status: s.state.as_str().to_owned(),
        source_type: s.source_type.as_str().to_owned(),
        source_id: s.source_id.clone(),
        size_gib: s.size_gib,
        size_bytes: s.size_bytes,
        message: s.message.clone(),
        created_at: to_rfc3339(s.created_at),
        updated_at: to_rfc3339(s.updated_at),
    }
}

fn created<T: serde::Serialize>(data: T) -> NResult {
    Ok((StatusCode::CREATED, ok(data, None)).into_response())
}

const VOLUME_SORTS: &[&str] = &["created_at", "name", "size_gib", "status", "region"];
const VOLUME_FILTERS: &[&str] = &["status", "region", "name", "instance_id"];

#[utoipa::path(
    get,
    path = "/volumes",
    tag = "volumes",
    operation_id = "volumes_list",
    summary = "List volumes (paginated; filter by status, region, name, instance_id; sortable)",
    params(
        ("page" = Option<u32>, Query), ("limit" = Option<u32>, Query),
        ("sort" = Option<String>, Query, description = "created_at, name, size_gib, status, region"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("status" = Option<String>, Query), ("region" = Option<String>, Query), ("name" = Option<String>, Query), ("instance_id" = Option<String>, Query)
    ),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::Volume>>),
        (status = 400, description = "Invalid query", body = w::ErrorEnvelope)
    )
)]
pub async fn volumes_list(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let q = page::parse(&query_pairs(raw)?, VOLUME_SORTS, VOLUME_FILTERS)?;
    let all = volumes::list(&s.control, &a).await?;
    let field = |v: &Volume, f: &str| -> Option<String> {
        match f {
            "status" => Some(volume_status(v).to_owned()),
            "region" => Some(v.region.clone()),
            "name" => Some(v.name.clone()),
            "instance_id" => v.instance_id().map(ToString::to_string),
            _ => None,
        }
    };
    let key = |v: &Volume, k: &str| -> String {
        match k {
            "name" => v.name.clone(),
            "size_gib" => format!("{:020}", v.size_gib),
            "status" => volume_status(v).to_owned(),
            "region" => v.region.clone(),
            _ => format!("{:020}", v.created_at),
        }
    };
    let (items, pg) = page::apply(all, &q, field, key, |v| v.id.to_string());
    Ok(ok(items.iter().map(render_volume).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/volumes",
    tag = "volumes",
    operation_id = "volume_create",
    summary = "Create a volume (materialized on the host of the first instance it is attached to)",
    request_body = w::VolumeCreate,
    responses(
        (status = 201, description = "Created", body = w::Envelope<w::Volume>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 403, description = "Quota", body = w::ErrorEnvelope),
        (status = 409, description = "Name taken", body = w::ErrorEnvelope)
    )
)]
pub async fn volume_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(b): NativeJson<w::VolumeCreate>,
) -> NResult {
    created(render_volume(&volumes::create(&s.control, &a, &b.name, &b.region, b.size_gib).await?))
}

#[utoipa::path(
    get,
    path = "/volumes/{id}",
    tag = "volumes",
    operation_id = "volume_get",
    summary = "Get a volume",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = w::Envelope<w::Volume>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn volume_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_volume(&volumes::get(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    delete,
    path = "/volumes/{id}",
    tag = "volumes",
    operation_id = "volume_delete",
    summary = "Delete a detached volume and its data",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = w::Envelope<w::Volume>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Attached", body = w::ErrorEnvelope)
    )
)]
pub async fn volume_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_volume(&volumes::delete(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    post,
    path = "/volumes/{id}/attach",
    tag = "volumes",
    operation_id = "volume_attach",
    summary = "Attach a volume to an instance; it appears at /mnt/volumes/<name> without a restart",
    params(("id" = String, Path)),
    request_body = w::VolumeAttach,
    responses(
        (status = 200, description = "Attaching", body = w::Envelope<w::Volume>),
        (status = 404, description = "Volume or instance not found", body = w::ErrorEnvelope),
        (status = 409, description = "Already attached, other region or other host", body = w::ErrorEnvelope)
    )
)]
pub async fn volume_attach(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Edit>,
    NativePath(id): NativePath<String>,
    NativeJson(b): NativeJson<w::VolumeAttach>,
) -> NResult {
    Ok(ok(render_volume(&volumes::attach(&s.control, &a, &id, &b.instance_id).await?), None))
}

#[utoipa::path(
    post,
    path = "/volumes/{id}/detach",
    tag = "volumes",
    operation_id = "volume_detach",
    summary = "Detach a volume (unmounted from the running instance)",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Detached", body = w::Envelope<w::Volume>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Not attached", body = w::ErrorEnvelope)
    )
)]
pub async fn volume_detach(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_volume(&volumes::detach(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    post,
    path = "/volumes/{id}/resize",
    tag = "volumes",
    operation_id = "volume_resize",
    summary = "Grow a volume (online when attached)",
    params(("id" = String, Path)),
    request_body = w::VolumeResize,
    responses(
        (status = 200, description = "Resized", body = w::Envelope<w::Volume>),
        (status = 400, description = "Smaller than now or too big", body = w::ErrorEnvelope),
        (status = 403, description = "Quota", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope)
    )
)]
pub async fn volume_resize(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Edit>,
    NativePath(id): NativePath<String>,
    NativeJson(b): NativeJson<w::VolumeResize>,
) -> NResult {
    Ok(ok(render_volume(&volumes::resize(&s.control, &a, &id, b.size_gib).await?), None))
}

const SNAPSHOT_SORTS: &[&str] = &["created_at", "name", "status", "region", "size_bytes"];
const SNAPSHOT_FILTERS: &[&str] = &["status", "region", "name", "source_type", "source_id"];

#[utoipa::path(
    get,
    path = "/snapshots",
    tag = "snapshots",
    operation_id = "snapshots_list",
    summary = "List snapshots (paginated; filter by status, region, name, source_type, source_id; sortable)",
    params(
        ("page" = Option<u32>, Query), ("limit" = Option<u32>, Query),
        ("sort" = Option<String>, Query, description = "created_at, name, status, region, size_bytes"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("status" = Option<String>, Query), ("region" = Option<String>, Query), ("name" = Option<String>, Query),
        ("source_type" = Option<String>, Query), ("source_id" = Option<String>, Query)
    ),
    responses(
        (status = 200, description = "Success", body = w::Envelope<Vec<w::Snapshot>>),
        (status = 400, description = "Invalid query", body = w::ErrorEnvelope)
    )
)]
pub async fn snapshots_list(State(s): State<ApiState>, NativeActor(a): NativeActor, _: Needs<Read>, RawQuery(raw): RawQuery) -> NResult {
    let q = page::parse(&query_pairs(raw)?, SNAPSHOT_SORTS, SNAPSHOT_FILTERS)?;
    let all = volumes::snapshot_list(&s.control, &a).await?;
    let field = |x: &Snapshot, f: &str| -> Option<String> {
        match f {
            "status" => Some(x.state.as_str().to_owned()),
            "region" => Some(x.region.clone()),
            "name" => Some(x.name.clone()),
            "source_type" => Some(x.source_type.as_str().to_owned()),
            "source_id" => Some(x.source_id.clone()),
            _ => None,
        }
    };
    let key = |x: &Snapshot, k: &str| -> String {
        match k {
            "name" => x.name.clone(),
            "status" => x.state.as_str().to_owned(),
            "region" => x.region.clone(),
            "size_bytes" => format!("{:020}", x.size_bytes),
            _ => format!("{:020}", x.created_at),
        }
    };
    let (items, pg) = page::apply(all, &q, field, key, |x| x.id.to_string());
    Ok(ok(items.iter().map(render_snapshot).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/snapshots",
    tag = "snapshots",
    operation_id = "snapshot_create",
    summary = "Snapshot an instance's disk or a volume (consistent for stopped instances and for volumes; file-by-file for a running instance's disk)",
    request_body = w::SnapshotCreate,
    responses(
        (status = 201, description = "Creating", body = w::Envelope<w::Snapshot>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 404, description = "Source not found", body = w::ErrorEnvelope),
        (status = 409, description = "Source in a state that cannot be snapshotted", body = w::ErrorEnvelope)
    )
)]
pub async fn snapshot_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(b): NativeJson<w::SnapshotCreate>,
) -> NResult {
    let source = match (b.instance_id, b.volume_id) {
        (Some(i), None) => volumes::SnapshotSourceRef::Instance(i),
        (None, Some(v)) => volumes::SnapshotSourceRef::Volume(v),
        _ => return Err(Error::InvalidRequest { message: "give exactly one of instance_id and volume_id".into() }.into()),
    };
    created(render_snapshot(&volumes::snapshot_create(&s.control, &a, &b.name, source).await?))
}

#[utoipa::path(
    get,
    path = "/snapshots/{id}",
    tag = "snapshots",
    operation_id = "snapshot_get",
    summary = "Get a snapshot",
    params(("id" = String, Path)),
    responses((status = 200, description = "Success", body = w::Envelope<w::Snapshot>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn snapshot_get(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_snapshot(&volumes::snapshot_get(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    delete,
    path = "/snapshots/{id}",
    tag = "snapshots",
    operation_id = "snapshot_delete",
    summary = "Delete a snapshot",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = w::Envelope<w::Snapshot>),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "A restore from it is in progress", body = w::ErrorEnvelope)
    )
)]
pub async fn snapshot_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render_snapshot(&volumes::snapshot_delete(&s.control, &a, &id).await?), None))
}

#[utoipa::path(
    post,
    path = "/snapshots/{id}/restore",
    tag = "snapshots",
    operation_id = "snapshot_restore",
    summary = "Restore a snapshot into a new volume (volume snapshots) or a new instance (instance snapshots)",
    params(("id" = String, Path)),
    request_body = w::SnapshotRestore,
    responses(
        (status = 201, description = "Restoring", body = w::Envelope<w::RestoreResult>),
        (status = 400, description = "Invalid request", body = w::ErrorEnvelope),
        (status = 404, description = "Not found", body = w::ErrorEnvelope),
        (status = 409, description = "Snapshot not available, or no capacity on its host", body = w::ErrorEnvelope)
    )
)]
pub async fn snapshot_restore(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativePath(id): NativePath<String>,
    NativeJson(b): NativeJson<w::SnapshotRestore>,
) -> NResult {
    let req = volumes::RestoreRequest { name: b.name, size_gib: b.size_gib, instance_type: b.instance_type, ssh_key_ids: b.ssh_keys };
    match volumes::snapshot_restore(&s.control, &a, &id, req).await? {
        volumes::Restored::Volume(v) => created(w::RestoreResult { volume: Some(render_volume(&v)), instance: None }),
        volumes::Restored::Instance(i) => created(w::RestoreResult { volume: None, instance: Some(render(s.control.config(), &i)) }),
    }
}
