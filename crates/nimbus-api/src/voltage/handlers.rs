//! Voltage Park handlers: locations, hostnodes, organization SSH keys, cloud-init validation,
//! storage rate. Ids are rendered as UUIDs (our 128-bit ids with hyphens) and accepted in both
//! forms.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api_types::voltage as w;
use nimbus_core::auth::Actor;
use nimbus_core::model::{Host, HostStatus};
use nimbus_core::money::Micros;
use nimbus_core::Error;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::KeyErrors;
use super::extract::{query_pairs, Needs, Page, VpActor, VpJson, VpPath};
use super::VpError;
use crate::auth::perm::{Create, Read};
use crate::ApiState;

type VpResult = Result<Response, VpError>;

/// `0123…` (32 hex) as `01234567-89ab-cdef-0123-456789abcdef`.
pub fn uuid(hex32: &str) -> String {
    if hex32.len() != 32 {
        return hex32.to_owned();
    }
    format!("{}-{}-{}-{}-{}", &hex32[..8], &hex32[8..12], &hex32[12..16], &hex32[16..20], &hex32[20..])
}

/// A UUID (or our plain form) back to 32 lowercase hex, or `None`.
pub fn from_uuid(s: &str) -> Option<String> {
    let h: String = s.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    nimbus_core::ids::is_valid_id(&h).then_some(h)
}

/// A host as one organization sees it. Seed 004 shows every tenant each hostnode's free
/// resources (that is how a tenant picks where to deploy); what no tenant may learn is which
/// hosts another org's machines are on. So the id is derived per org: the `hostnode_id` in one
/// org's VM tells another org nothing, and two orgs cannot agree on a host by its id.
pub fn hostnode_id(org: &nimbus_core::ids::OrgId, host: &str) -> String {
    uuid(&hex::encode(&Sha256::digest(format!("nimbus-hostnode\0{}\0{host}", org.as_str()).as_bytes())[..16]))
}

pub fn location_id(region: &str) -> String {
    uuid(&hex::encode(&Sha256::digest(format!("nimbus-location\0{region}").as_bytes())[..16]))
}

/// `NVIDIA H100 80GB HBM3` → `h100-80gb-hbm3`, the shape of the seed's GPU keys.
pub fn gpu_slug(model: &str) -> String {
    let m = model.trim();
    let m = m.strip_prefix("NVIDIA ").unwrap_or(m);
    m.split(|c: char| c.is_whitespace() || c == '_').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-").to_ascii_lowercase()
}

pub fn usd(m: i64) -> String {
    Micros(m).to_string()
}

fn hostnode(s: &ApiState, a: &Actor, h: &Host, free_ports: Vec<i64>) -> w::HostNode {
    let cfg = s.control.config();
    let free = h.free();
    let mut gpus = std::collections::BTreeMap::new();
    let mut per_gpu = std::collections::BTreeMap::new();
    for g in &h.gpus {
        let slug = gpu_slug(&g.model);
        let e = gpus.entry(slug.clone()).or_insert(w::GpuCount { count: 0 });
        if g.instance_id.is_none() {
            e.count += 1;
        }
        if let Some(m) = nimbus_control::bare_metal::gpu_hour_price_micros(cfg, &g.model) {
            per_gpu.insert(slug, usd(m));
        }
    }
    w::HostNode {
        id: hostnode_id(&a.org_id, h.id.as_str()),
        location_id: location_id(&h.region),
        available_resources: w::Resources { gpus, vcpu_count: free.vcpus, ram_gb: free.memory_mib / 1024, storage_gb: free.disk_gib },
        pricing: w::HostNodePricing {
            per_gpu_hr: per_gpu,
            per_vcpu_hr: usd(cfg.pricing.vcpu_hour_micros),
            per_gb_ram_hr: usd(cfg.pricing.ram_gib_hour_micros),
            per_gb_storage_hr: usd(cfg.pricing.storage_gib_hour_micros),
        },
        available_ports: free_ports,
    }
}

async fn locations(s: &ApiState, a: &Actor) -> Result<Vec<w::Location>, VpError> {
    let nodes = nimbus_control::capacity::hostnodes(&s.control, a, true).await?;
    Ok(s.control
        .config()
        .regions
        .iter()
        .map(|r| {
            let (city, country) = r.description.split_once(", ").unwrap_or((r.description.as_str(), ""));
            w::Location {
                id: location_id(&r.name),
                city: city.to_owned(),
                region: r.name.clone(),
                country: country.to_owned(),
                hostnodes: nodes
                    .iter()
                    .filter(|(h, _)| h.region == r.name && h.status == HostStatus::Up)
                    .map(|(h, p)| hostnode(s, a, h, p.clone()))
                    .collect(),
            }
        })
        .collect())
}

#[utoipa::path(
    get,
    path = "/locations/",
    tag = "locations",
    operation_id = "locations_list",
    summary = "List locations with their available hostnodes",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 15 (default 3)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::Location>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn locations_list(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 3, 15)?;
    Ok(Json(page.render(locations(&s, &a).await?)).into_response())
}

#[utoipa::path(
    get,
    path = "/locations/{location_id}",
    tag = "locations",
    operation_id = "location_get",
    summary = "Get one location with its available hostnodes",
    params(("location_id" = String, Path, description = "Location id (UUID)")),
    responses(
        (status = 200, description = "Successful Response", body = w::Location),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        KeyErrors,
    )
)]
pub async fn location_get(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let all = locations(&s, &a).await?;
    let found = all.into_iter().find(|l| l.id.eq_ignore_ascii_case(&id));
    found.map(|l| Json(l).into_response()).ok_or_else(|| Error::not_found("location", id).into())
}

#[utoipa::path(
    get,
    path = "/hostnodes/{hostnode_id}",
    tag = "hostnodes",
    operation_id = "hostnode_get",
    summary = "Get a hostnode's available resources, pricing and free ports",
    params(("hostnode_id" = String, Path, description = "Hostnode id (UUID)")),
    responses(
        (status = 200, description = "Successful Response", body = w::HostNode),
        (status = 404, description = "HostNode not found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn hostnode_get(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let hex = from_uuid(&id).ok_or_else(|| VpError::at("path", Error::invalid("hostnode_id", "Input should be a valid UUID")))?;
    let nodes = nimbus_control::capacity::hostnodes(&s.control, &a, false).await?;
    let (h, ports) = nodes
        .into_iter()
        .find(|(h, _)| from_uuid(&hostnode_id(&a.org_id, h.id.as_str())).as_deref() == Some(hex.as_str()))
        .ok_or_else(|| Error::NotFound { kind: "HostNode", id: id.clone() })?;
    Ok(Json(hostnode(&s, &a, &h, ports)).into_response())
}

fn check_key_name(name: &str) -> Result<(), VpError> {
    let ok = (3..=64).contains(&name.chars().count()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ' ');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("name", "must be 3 to 64 characters of letters, digits, hyphens or spaces").into())
    }
}

fn org_key(k: &nimbus_core::model::SshKey) -> w::OrgSshKey {
    w::OrgSshKey { id: uuid(k.id.as_str()), name: k.name.clone(), content: k.public_key.clone() }
}

#[utoipa::path(
    get,
    path = "/organization/ssh-keys",
    tag = "ssh-keys",
    operation_id = "ssh_keys_list",
    summary = "List the organization's SSH public keys",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 150 (default 150)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::OrgSshKey>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn ssh_keys_list(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 150, 150)?;
    let keys = nimbus_control::ssh_keys::list(&s.control, &a).await?;
    Ok(Json(page.render(keys.iter().map(org_key).collect())).into_response())
}

#[utoipa::path(
    post,
    path = "/organization/ssh-keys",
    tag = "ssh-keys",
    operation_id = "ssh_key_create",
    summary = "Add an SSH public key to the organization",
    request_body = w::OrgSshKeyCreateRequest,
    responses(
        (status = 201, description = "Successful Response", body = w::OrgSshKey),
        (status = 400, description = "Bad Request", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn ssh_key_add(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    _: Needs<Create>,
    VpJson(b): VpJson<w::OrgSshKeyCreateRequest>,
) -> VpResult {
    check_key_name(&b.name)?;
    if b.content.trim().is_empty() {
        return Err(Error::invalid("content", "the SSH public key is required").into());
    }
    let (k, _) = nimbus_control::ssh_keys::add(&s.control, &a, &b.name, Some(&b.content)).await.map_err(|e| match e {
        Error::InvalidValue { message, .. } => Error::invalid("content", message),
        other => other,
    })?;
    Ok((StatusCode::CREATED, Json(org_key(&k))).into_response())
}

#[utoipa::path(
    delete,
    path = "/organization/ssh-keys/{ssh_key_id}",
    tag = "ssh-keys",
    operation_id = "ssh_key_delete",
    summary = "Remove an SSH public key from the organization",
    params(("ssh_key_id" = String, Path, description = "SSH key id (UUID)")),
    responses(
        (status = 204, description = "Successful Response"),
        (status = 404, description = "Not Found", body = w::ErrorBody),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn ssh_key_delete(State(s): State<ApiState>, VpActor(a): VpActor, VpPath(id): VpPath<String>) -> VpResult {
    let hex = from_uuid(&id).ok_or_else(|| VpError::at("path", Error::invalid("ssh_key_id", "Input should be a valid UUID")))?;
    nimbus_control::ssh_keys::delete(&s.control, &a, &hex).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Validates cloud-init the way a launch would: `{error, message}`; no key needed.
#[utoipa::path(
    post,
    path = "/validate/cloudinit",
    tag = "cloud-init",
    operation_id = "cloudinit_validate",
    summary = "Validate a cloud-init script as a launch would",
    request_body = w::CloudInitValidateRequest,
    security(()),
    responses(
        (status = 200, description = "Successful Response", body = w::CloudInitValidation),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
    )
)]
pub async fn validate_cloudinit(VpJson(b): VpJson<w::CloudInitValidateRequest>) -> VpResult {
    if !matches!(b.kind.as_str(), "instant-vm" | "bare-metal") {
        return Err(Error::invalid("type", "Input should be 'instant-vm' or 'bare-metal'").into());
    }
    let text = match &b.content {
        Value::String(s) => s.clone(),
        // YAML is a superset of JSON: the object form is a cloud-config document as it stands.
        Value::Object(_) => format!("#cloud-config\n{}", b.content),
        _ => return Err(Error::invalid("content", "Input should be a valid string or object").into()),
    };
    let out = match nimbus_core::validate::user_data(&text) {
        Ok(()) => w::CloudInitValidation { error: false, message: "cloud-init is valid".into() },
        Err(e) => w::CloudInitValidation { error: true, message: e.external_message() },
    };
    Ok(Json(out).into_response())
}

#[utoipa::path(
    get,
    path = "/storage/hourly-rate",
    tag = "storage",
    operation_id = "storage_hourly_rate_get",
    summary = "Get the storage price per GB-hour",
    responses(
        (status = 200, description = "Successful Response", body = w::StorageHourlyRate),
        KeyErrors,
    )
)]
pub async fn storage_hourly_rate(State(s): State<ApiState>, VpActor(a): VpActor) -> VpResult {
    let rate = nimbus_control::billing::storage_hourly_rate(&s.control, &a).await?;
    Ok(Json(w::StorageHourlyRate { hourly_rate_per_gb: usd(rate.0) }).into_response())
}

/// Instance id → the bare-metal rental it is (or was) a node of, for the instances charged in `txs`.
async fn node_rentals(
    s: &ApiState,
    a: &nimbus_core::auth::Actor,
    txs: &[nimbus_store::LedgerTransaction],
) -> Result<std::collections::HashMap<String, String>, VpError> {
    let mut out = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for t in txs.iter().filter(|t| t.resource_type == "instance") {
        if !seen.insert(t.resource_id.clone()) {
            continue;
        }
        let Some(id) = nimbus_core::ids::InstanceId::parse(&t.resource_id) else { continue };
        if let Some(r) = s.control.store().instance_get(&a.org_id, &id).await?.and_then(|i| i.rental_id) {
            out.insert(t.resource_id.clone(), r);
        }
    }
    Ok(out)
}

fn transaction(t: &nimbus_store::LedgerTransaction, rentals: &std::collections::HashMap<String, String>) -> w::Transaction {
    let ts = nimbus_core::clock::to_rfc3339;
    let linked = if let Some(rental) = rentals.get(&t.resource_id) {
        w::LinkedInstance::BaremetalRental { id: uuid(rental), node_id: uuid(&t.resource_id) }
    } else if t.resource_type == "instance" {
        w::LinkedInstance::VirtualMachineInstance {
            id: uuid(&t.resource_id),
            virtual_machine_id: uuid(&t.resource_id),
            timestamp_creation: t.instance_created_at.map(ts),
            timestamp_deletion: t.instance_terminated_at.map(ts),
        }
    } else {
        w::LinkedInstance::StorageVolume { id: uuid(&t.resource_id) }
    };
    w::Transaction {
        id: uuid(&t.id),
        total_amount: usd(t.amount_micros),
        timestamp_creation: ts(t.hour_start * 1_000_000),
        timestamp_completion: ts((t.hour_start + 3600) * 1_000_000),
        details: w::TransactionDetails::Charge { linked_instance: linked },
        period_amount: usd(t.amount_micros),
    }
}

fn credit(g: &nimbus_store::Credit) -> w::Transaction {
    let ts = nimbus_core::clock::to_rfc3339;
    w::Transaction {
        id: uuid(&g.id),
        total_amount: usd(-g.amount_micros),
        timestamp_creation: ts(g.created_at),
        timestamp_completion: ts(g.created_at),
        details: w::TransactionDetails::Credit { reason: g.reason.clone() },
        period_amount: usd(-g.amount_micros),
    }
}

#[utoipa::path(
    get,
    path = "/billing/hourly-rate",
    tag = "billing",
    operation_id = "billing_hourly_rate_get",
    summary = "Get what the organization's active rentals cost per hour now",
    responses(
        (status = 200, description = "Successful Response", body = w::BillingHourlyRate),
        KeyErrors,
    )
)]
pub async fn billing_hourly_rate(State(s): State<ApiState>, VpActor(a): VpActor) -> VpResult {
    let r = nimbus_control::billing::hourly_rate(&s.control, &a).await?;
    Ok(Json(w::BillingHourlyRate { rate_hourly: r.to_string() }).into_response())
}

/// `YYYY-MM-DD` as the first instant of that day (µs, UTC).
fn day(label: &str, v: &str) -> Result<i64, VpError> {
    nimbus_core::clock::parse_rfc3339(&format!("{v}T00:00:00Z"))
        .ok_or_else(|| VpError::at("query", Error::invalid(label.to_owned(), "Input should be a valid date in the format YYYY-MM-DD")))
}

#[utoipa::path(
    get,
    path = "/billing/transactions",
    tag = "billing",
    operation_id = "billing_transactions_list",
    summary = "List the organization's billing transactions, newest first",
    params(
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 10000 (default 30)"),
        ("offset" = Option<u32>, Query, description = "Items to skip (default 0)"),
        ("types" = Option<String>, Query, description = "Comma-separated: charge, credit, payment (default all)"),
        ("earliest" = Option<String>, Query, description = "First day included, YYYY-MM-DD"),
        ("latest" = Option<String>, Query, description = "Last day included, YYYY-MM-DD"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::Page<w::Transaction>),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn billing_transactions(State(s): State<ApiState>, VpActor(a): VpActor, _: Needs<Read>, RawQuery(q): RawQuery) -> VpResult {
    let page = Page::parse(q.as_deref(), 30, 10_000)?;
    let (mut from, mut to, mut types) = (i64::MIN / 2, i64::MAX / 2, Vec::new());
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "earliest" if !v.is_empty() => from = day("earliest", &v)?,
            // `latest` is a whole day: charges of that day are included.
            "latest" if !v.is_empty() => to = day("latest", &v)? + 86_400_000_000,
            "types" => types.extend(v.split(',').filter(|t| !t.is_empty()).map(str::to_owned)),
            _ => {}
        }
    }
    if let Some(bad) = types.iter().find(|t| !matches!(t.as_str(), "charge" | "credit" | "payment")) {
        return Err(VpError::at(
            "query",
            Error::invalid("types", format!("unknown transaction type {bad:?}; expected charge, credit or payment")),
        ));
    }
    let want = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
    let mut items: Vec<w::Transaction> = Vec::new();
    if want("charge") {
        let txs = nimbus_control::billing::transactions(&s.control, &a, from, to).await?;
        let rentals = node_rentals(&s, &a, &txs).await?;
        items.extend(txs.iter().map(|t| transaction(t, &rentals)));
    }
    if want("credit") {
        items.extend(nimbus_control::billing::credits(&s.control, &a, from, to).await?.iter().map(credit));
    }
    // Newest first; payments are not modelled.
    items.sort_by(|a, b| b.timestamp_creation.cmp(&a.timestamp_creation));
    Ok(Json(page.render(items)).into_response())
}

#[utoipa::path(
    get,
    path = "/billing/reports/{year}/{month}/transactions",
    tag = "billing",
    operation_id = "billing_month_report_get",
    summary = "Get a month's transactions and balances",
    params(
        ("year" = i32, Path, description = "Year, e.g. 2024"),
        ("month" = u32, Path, description = "Month, 1 to 12"),
    ),
    responses(
        (status = 200, description = "Successful Response", body = w::MonthReport),
        (status = 422, description = "Validation Error", body = w::ValidationErrorBody),
        KeyErrors,
    )
)]
pub async fn billing_month_report(
    State(s): State<ApiState>,
    VpActor(a): VpActor,
    VpPath((year, month)): VpPath<(String, String)>,
) -> VpResult {
    let y: i32 = year.parse().map_err(|_| VpError::at("path", Error::invalid("year", "Input should be a valid integer")))?;
    let m: u32 = month.parse().map_err(|_| VpError::at("path", Error::invalid("month", "Input should be a valid integer")))?;
    let (txs, granted, start, delta, end) =
        nimbus_control::billing::month_report(&s.control, &a, y, m).await.map_err(|e| VpError::at("path", e))?;
    let rentals = node_rentals(&s, &a, &txs).await?;
    let mut all: Vec<w::Transaction> = txs.iter().map(|t| transaction(t, &rentals)).chain(granted.iter().map(credit)).collect();
    all.sort_by(|a, b| b.timestamp_creation.cmp(&a.timestamp_creation));
    Ok(Json(w::MonthReport {
        transactions: all,
        balance_at_period_start: start.to_string(),
        balance_delta_in_period: delta.to_string(),
        balance_at_period_end: end.to_string(),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_slugs() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(uuid(hex), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(from_uuid(&uuid(hex)).as_deref(), Some(hex));
        assert_eq!(from_uuid("01234567-89AB-CDEF-0123-456789ABCDEF").as_deref(), Some(hex));
        assert_eq!(from_uuid("nope"), None);
        assert_eq!(gpu_slug("NVIDIA H100 80GB HBM3"), "h100-80gb-hbm3");
        assert_eq!(gpu_slug("NVIDIA A100-SXM4-40GB"), "a100-sxm4-40gb");
    }
}
