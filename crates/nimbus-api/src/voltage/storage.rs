//! Voltage Park storage (`/storage/…`): shared storage volumes, served by the native volumes
//! domain (`nimbus_control::volumes`). A VP storage volume *is* a Nimbus volume: an ext4 file
//! system of `size_in_gb` GiB on one host, mounted at `/mnt/volumes/<internal name>` inside every
//! instance ("order") it is attached to. What this module adds is the dialect: the VP display
//! name (free-form, kept beside the volume's internal name), orders as UUID-shaped instance ids,
//! the status names, `rate_hourly`, `tenant_id` and `vip`. See docs/voltage-park.md.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::voltage as w;
use nimbus_control::volumes::{self, SharedVolumeSpec, VolumeChange};
use nimbus_core::auth::Permission;
use nimbus_core::ids::OrgId;
use nimbus_core::model::{Volume, VolumeHostState};
use nimbus_core::money::Micros;
use nimbus_core::{ConflictReason, Error};
use serde_json::{Map, Value};

use super::error::KeyErrors;
use super::extract::{Needs, Page, VpActor, VpJson, VpPath};
use super::handlers::{from_uuid, uuid};
use super::VpError;
use crate::auth::perm::{Create, Edit, Read};
use crate::ApiState;

type VpResult = Result<Response, VpError>;

/// What `vip` says: our volumes are block devices the host mounts into each attached instance,
/// so there is no network address to mount them from.
const NO_VIP: &str = "0.0.0.0";

/// The org as the integer `tenant_id`: the first 13 hex digits of its id (52 bits, so the number
/// is exact in JSON and JavaScript), stable for the org's lifetime.
pub fn tenant_id(org: &OrgId) -> i64 {
    org.as_str().get(..13).and_then(|h| i64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// `error` when the host could not make the volume (or grow it), `creating` while a volume that
/// has been placed on a host (attached at least once) is not reported there yet, else `active`:
/// ready, or not placed yet (it is created on the host of the first order it is attached to).
fn status(v: &Volume) -> &'static str {
    match (&v.host_state, &v.host_id) {
        (VolumeHostState::Failed(_), _) => "error",
        (VolumeHostState::Unreported, Some(_)) => "creating",
        _ => "active",
    }
}

/// Orders are virtual machines (an instance id) or bare-metal rentals (all of their nodes).
struct Orders {
    /// Rental id → its nodes' instance ids.
    rentals: Vec<(String, Vec<String>)>,
}

impl Orders {
    /// The org's rentals, looked up for an action that needs `p`.
    async fn load(s: &ApiState, a: &nimbus_core::auth::Actor, p: Permission) -> Result<Orders, VpError> {
        let rentals = nimbus_control::bare_metal::list_for(&s.control, a, p).await?;
        Ok(Orders { rentals: rentals.into_iter().map(|(r, nodes)| (r.id, nodes.iter().map(|n| n.id.to_string()).collect())).collect() })
    }

    /// Instance ids for order ids.
    fn expand(&self, ids: Vec<String>) -> Vec<String> {
        ids.into_iter()
            .flat_map(|id| match self.rentals.iter().find(|(r, _)| *r == id) {
                Some((_, nodes)) => nodes.clone(),
                None => vec![id],
            })
            .collect()
    }

    /// Order ids (UUIDs) for the attached instances: a rental once for its nodes.
    fn shown(&self, v: &Volume) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in &v.attachments {
            let i = a.instance_id.as_str();
            let id = self.rentals.iter().find(|(_, n)| n.iter().any(|x| x == i)).map_or(i, |(r, _)| r.as_str());
            let id = uuid(id);
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

fn render(s: &ApiState, v: &Volume, orders: &Orders) -> w::Storage {
    let rate = Micros(v.size_gib.saturating_mul(s.control.config().pricing.storage_gib_hour_micros));
    w::Storage {
        id: uuid(v.id.as_str()),
        size_in_gb: v.size_gib,
        name: v.shown_name().to_owned(),
        status: status(v).into(),
        rate_hourly: rate.to_string(),
        order_ids: orders.shown(v),
        tenant_id: tenant_id(&v.org_id),
        vip: NO_VIP.into(),
    }
}

/// Domain errors in this dialect's terms: its field names, an unknown order is a request that
/// cannot be done (400, as the seed lists for these endpoints), the storage id as the client
/// wrote it.
fn vp_error(e: Error, storage_id: Option<&str>) -> VpError {
    match e {
        Error::InvalidValue { label, message } if label == "size_gib" => Error::invalid("size_in_gb", message),
        Error::NotFound { kind: "instance", id } => {
            Error::conflict(ConflictReason::InvalidState, format!("order {} does not exist", uuid(&id)))
        }
        Error::NotFound { kind: "volume", id } => Error::NotFound { kind: "storage", id: storage_id.map(str::to_owned).unwrap_or(id) },
        other => other,
    }
    .into()
}

fn storage_id(raw: &str) -> Result<String, VpError> {
    from_uuid(raw).ok_or_else(|| VpError::at("path", Error::invalid("storage_id", "Input should be a valid UUID")))
}

// Request bodies are read as JSON objects and checked field by field rather than deserialized
// into `w::StorageCreateRequest` / `w::StorageUpdateRequest` (the documented shapes): a 422 then
// names the field at fault (`["body", "size_in_gb"]`), which serde's message for the whole body
// would not.

/// A body field that may be absent or `null`.
fn field<'a>(b: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    b.get(key).filter(|v| !v.is_null())
}

fn int_field(b: &Map<String, Value>, key: &str) -> Result<Option<i64>, VpError> {
    match field(b, key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| Error::invalid(key, "Input should be a valid integer").into()),
    }
}

fn str_field(b: &Map<String, Value>, key: &str) -> Result<Option<String>, VpError> {
    match field(b, key) {
        None => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_owned())).ok_or_else(|| Error::invalid(key, "Input should be a valid string").into()),
    }
}

/// `order_ids`: a list of UUIDs, as our instance ids.
fn orders_field(b: &Map<String, Value>) -> Result<Option<Vec<String>>, VpError> {
    let Some(v) = field(b, "order_ids") else { return Ok(None) };
    let list = v.as_array().ok_or_else(|| VpError::from(Error::invalid("order_ids", "Input should be a valid list")))?;
    list.iter()
        .map(|o| {
            o.as_str().and_then(from_uuid).ok_or_else(|| Error::invalid("order_ids", format!("Input should be a valid UUID: {o}")).into())
        })
        .collect::<Result<Vec<_>, VpError>>()
        .map(Some)
}

fn check_size(size: i64) -> Result<i64, VpError> {
    if size < 1 {
        return Err(Error::invalid("size_in_gb", "Input should be greater than or equal to 1").into());
    }
    Ok(size)
}

#[utoipa::path(
    get,
    path = "/storage/",
    tag = "storage",
    operation_id = "storage_list",
    summary = "List the organization's storage volumes, oldest first",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 100 (default 20)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::Storage>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn storage_list(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 20, 100)?;
    let all = volumes::list(&s.control, &a).await.map_err(|e| vp_error(e, None))?;
    let orders = Orders::load(&s, &a, Permission::Read).await?;
    Ok(Json(page.render(all.iter().map(|v| render(&s, v, &orders)).collect())).into_response())
}

#[utoipa::path(
    post,
    path = "/storage/",
    tag = "storage",
    operation_id = "storage_create",
    summary = "Create a storage volume, attached to the given orders",
    request_body = w::StorageCreateRequest,
    responses(
        (status = 201, description = "Successful Response", body = w::Storage),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn storage_create(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Create>,
    VpJson(b): VpJson<Map<String, Value>>,
) -> VpResult {
    let size = int_field(&b, "size_in_gb")?.ok_or_else(|| VpError::from(Error::invalid("size_in_gb", "Field required")))?;
    let name = str_field(&b, "name")?.ok_or_else(|| VpError::from(Error::invalid("name", "Field required")))?;
    let orders = Orders::load(&s, &a, Permission::Create).await?;
    let instance_ids = orders.expand(orders_field(&b)?.unwrap_or_default());
    let spec = SharedVolumeSpec { display_name: name, size_gib: check_size(size)?, instance_ids };
    let v = volumes::create_shared(&s.control, &a, spec).await.map_err(|e| vp_error(e, None))?;
    Ok((StatusCode::CREATED, Json(render(&s, &v, &orders))).into_response())
}

#[utoipa::path(
    get,
    path = "/storage/{storage_id}",
    tag = "storage",
    operation_id = "storage_get",
    summary = "Get one storage volume with the bytes in use",
    params(("storage_id" = String, Path, description = "Storage id (UUID)")),
    responses(
        (status = 200, description = "Successful Response", body = w::StorageDetail),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn storage_get(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let v = volumes::get(&s.control, &a, &storage_id(&id)?).await.map_err(|e| vp_error(e, Some(&id)))?;
    let storage = render(&s, &v, &Orders::load(&s, &a, Permission::Read).await?);
    Ok(Json(w::StorageDetail { used_capacity_bytes: v.used_bytes, storage }).into_response())
}

#[utoipa::path(
    patch,
    path = "/storage/{storage_id}",
    tag = "storage",
    operation_id = "storage_update",
    summary = "Grow, rename or re-attach a storage volume",
    params(("storage_id" = String, Path, description = "Storage id (UUID)")),
    request_body = w::StorageUpdateRequest,
    responses(
        (status = 200, description = "Successful Response", body = w::Storage),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn storage_update(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Edit>,
    VpPath(id): VpPath<String>,
    VpJson(b): VpJson<Map<String, Value>>,
) -> VpResult {
    let hex = storage_id(&id)?;
    let orders = Orders::load(&s, &a, Permission::Edit).await?;
    let change = VolumeChange {
        size_gib: int_field(&b, "size_in_gb")?.map(check_size).transpose()?,
        display_name: str_field(&b, "name")?,
        instance_ids: orders_field(&b)?.map(|ids| orders.expand(ids)),
    };
    let v = volumes::update(&s.control, &a, &hex, change).await.map_err(|e| vp_error(e, Some(&id)))?;
    Ok(Json(render(&s, &v, &orders)).into_response())
}

#[utoipa::path(
    delete,
    path = "/storage/{storage_id}",
    tag = "storage",
    operation_id = "storage_delete",
    summary = "Delete a storage volume that is attached to no order",
    params(("storage_id" = String, Path, description = "Storage id (UUID)")),
    responses(
        (status = 204, description = "Successful Response"),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn storage_delete(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    volumes::delete(&s.control, &a, &storage_id(&id)?).await.map_err(|e| vp_error(e, Some(&id)))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_exact_json_integers() {
        let org = OrgId::from_trusted("fffffffffffff0000000000000000000".to_owned());
        assert_eq!(tenant_id(&org), (1i64 << 52) - 1);
        let org = OrgId::from_trusted("0000000000001fff0000000000000000".to_owned());
        assert_eq!(tenant_id(&org), 1);
    }
}
