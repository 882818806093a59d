//! Cluster handlers: parse (the seed's camelCase and CockroachDB's snake_case both), call
//! `nimbus_control::clusters`, render in the seed's shape. Ids are UUID-shaped.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use nimbus_api_types::clusters as w;
use nimbus_control::clusters::{self, CreateRequest, Spec};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Cluster, Instance};
use nimbus_core::Error;

use super::{ClActor, ClError, ClJson, ClPath, Needs};
use crate::auth::perm::{Create, Edit, Read};
use crate::voltage::handlers::{from_uuid, uuid};
use crate::ApiState;

type ClResult = Result<Response, ClError>;

/// `2022-03-14T14:15:22Z`: the seed's timestamps, whole seconds.
fn ts(micros: i64) -> String {
    Utc.timestamp_micros(micros).single().unwrap_or_default().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn cluster_id(id: &str) -> Result<String, ClError> {
    from_uuid(id).ok_or_else(|| Error::not_found("cluster", id).into())
}

/// `notorious-moose-1234`: the name and a number from the id, as CockroachDB's routing ids.
fn routing_id(c: &Cluster) -> String {
    let n = u32::from_str_radix(&c.id[..4.min(c.id.len())], 16).unwrap_or(0) % 10_000;
    format!("{}-{n}", c.name)
}

fn render(s: &ApiState, c: &Cluster, nodes: &[Instance]) -> w::Cluster {
    let dedicated = c.plan == clusters::DEDICATED;
    let regions = c
        .region_nodes
        .iter()
        .map(|(r, n)| w::ClusterRegion {
            name: r.clone(),
            // The head node of the region: its first node with an address.
            sql_dns: nodes.iter().filter(|i| &i.region == r).find_map(|i| i.ip.clone()).unwrap_or_default(),
            ui_dns: String::new(),
            node_count: dedicated.then_some(*n),
        })
        .collect();
    let config = if c.plan == clusters::SERVERLESS {
        w::ClusterConfig {
            serverless: Some(w::ServerlessConfig {
                regions: c.region_nodes.iter().map(|(r, _)| r.clone()).collect(),
                spend_limit: c.spend_limit_cents.unwrap_or(0),
                routing_id: routing_id(c),
            }),
            dedicated: None,
        }
    } else {
        let t = s.control.config().instance_type(&c.machine_type).cloned();
        w::ClusterConfig {
            serverless: None,
            dedicated: Some(w::DedicatedConfig {
                machine_type: c.machine_type.clone(),
                num_virtual_cpus: t.as_ref().map_or(0, |t| t.vcpus),
                memory_gib: t.as_ref().map_or(0, |t| t.memory_gib),
                storage_gib: t.as_ref().map_or(0, |t| t.storage_gib),
            }),
        }
    };
    w::Cluster {
        id: uuid(&c.id),
        name: c.name.clone(),
        cloud_provider: c.provider.clone(),
        plan: c.plan.clone(),
        state: c.state.clone(),
        operation_status: c.operation_status.clone(),
        creator_id: c.creator_id.clone(),
        regions,
        config,
        created_at: ts(c.created_at),
        updated_at: ts(c.updated_at),
        deleted_at: c.deleted_at.map(ts),
    }
}

fn parse_create(b: w::CreateCluster) -> Result<CreateRequest, ClError> {
    let spec = match (b.spec.serverless, b.spec.dedicated) {
        (Some(sv), None) => Spec::Serverless { regions: sv.regions, spend_limit_cents: sv.spend_limit.unwrap_or(0) },
        (None, Some(d)) => {
            let machine_type = d
                .machine_type
                .or_else(|| d.hardware.and_then(|h| h.machine_spec).and_then(|m| m.machine_type))
                .ok_or_else(|| Error::invalid("spec.dedicated.machine_type", "is required (an instance type name)"))?;
            Spec::Dedicated { region_nodes: d.region_nodes.into_iter().collect(), machine_type }
        }
        _ => return Err(Error::invalid("spec", "give exactly one of serverless or dedicated").into()),
    };
    Ok(CreateRequest {
        name: b.name,
        provider: b.provider,
        spec,
        ssh_key_names: b.ssh_key_names.unwrap_or_default(),
        wait_for_capacity: b.wait_for_capacity.unwrap_or(false),
    })
}

#[utoipa::path(
    post,
    path = "/clusters",
    tag = "clusters",
    operation_id = "cluster_create",
    summary = "Create a cluster: its nodes are placed in one transaction, or it fails (or waits) holding nothing",
    request_body = w::CreateCluster,
    responses((status = 200, description = "The cluster, `CREATING` (or `CREATED`, `WAITING_FOR_CAPACITY`, `FAILED`)", body = w::Cluster), (status = 400, description = "Invalid argument (3) or no capacity (9)", body = w::ErrorBody), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody), (status = 409, description = "Name taken (6)", body = w::ErrorBody), (status = 429, description = "Rate limited or over quota (8)", body = w::ErrorBody))
)]
pub async fn create(State(s): State<ApiState>, ClActor(a): ClActor, _: Needs<Create>, ClJson(b): ClJson<w::CreateCluster>) -> ClResult {
    let req = parse_create(b)?;
    let (c, nodes) = clusters::create(&s.control, &a, req).await?;
    Ok(Json(render(&s, &c, &nodes)).into_response())
}

#[utoipa::path(
    get,
    path = "/clusters/{cluster_id}",
    tag = "clusters",
    operation_id = "cluster_get",
    summary = "Get a cluster",
    params(("cluster_id" = String, Path, description = "The cluster's id")),
    responses((status = 200, description = "The cluster", body = w::Cluster), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody), (status = 404, description = "Not found (5)", body = w::ErrorBody))
)]
pub async fn get_one(State(s): State<ApiState>, ClActor(a): ClActor, ClPath(id): ClPath<String>) -> ClResult {
    let hex = cluster_id(&id)?;
    let c = clusters::get(&s.control, &a, &hex).await?;
    let nodes = clusters::nodes(&s.control, &a, &hex).await?;
    Ok(Json(render(&s, &c, &nodes)).into_response())
}

/// `pagination.page` (from 1), `pagination.limit`, `pagination.sort_order` (`ASC`/`DESC`).
struct Pager {
    page: usize,
    limit: usize,
    desc: bool,
}

/// The query string's pairs, strictly percent-decoded (so `pagination%2Elimit` is
/// `pagination.limit`); a malformed one is INVALID_ARGUMENT naming the parameter.
fn query_pairs(q: Option<&str>) -> Result<Vec<(String, String)>, ClError> {
    Ok(crate::input::query_pairs(q)?)
}

fn pager(pairs: &[(String, String)]) -> Result<Pager, ClError> {
    let mut p = Pager { page: 1, limit: 100, desc: false };
    for (k, v) in pairs {
        match k.as_str() {
            "pagination.page" => {
                p.page =
                    v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| Error::invalid("pagination.page", "must be a positive integer"))?
            }
            "pagination.limit" => {
                let n: usize = v.parse().map_err(|_| Error::invalid("pagination.limit", "must be an integer from 1 to 500"))?;
                if n > 500 {
                    return Err(Error::invalid("pagination.limit", "must be an integer from 1 to 500").into());
                }
                // 0 is the server's default, as in the API this follows.
                p.limit = if n == 0 { 100 } else { n };
            }
            "pagination.sort_order" => {
                p.desc = match v.to_ascii_uppercase().as_str() {
                    "ASC" | "" => false,
                    "DESC" => true,
                    _ => return Err(Error::invalid("pagination.sort_order", "must be ASC or DESC").into()),
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

impl Pager {
    fn apply<T>(&self, mut items: Vec<T>, now: i64) -> (Vec<T>, w::Pagination) {
        if self.desc {
            items.reverse();
        }
        let total = items.len();
        let last = total.div_ceil(self.limit).max(1);
        let start = (self.page - 1).saturating_mul(self.limit);
        let page: Vec<T> = items.into_iter().skip(start).take(self.limit).collect();
        let next = if self.page < last { self.page + 1 } else { 0 };
        let meta = w::Pagination {
            next: next as u64,
            last: last as u64,
            limit: self.limit as u64,
            total_results: total as u64,
            time: ts(now),
            order: if self.desc { "DESC" } else { "ASC" }.to_owned(),
        };
        (page, meta)
    }
}

#[utoipa::path(
    get,
    path = "/clusters",
    tag = "clusters",
    operation_id = "clusters_list",
    summary = "List the organization's clusters, a page at a time",
    params(
        ("show_inactive" = Option<bool>, Query, description = "Include deleted and failed clusters"),
        ("pagination.page" = Option<u64>, Query, description = "Page number, from 1"),
        ("pagination.limit" = Option<u64>, Query, description = "Page size, 1 to 500 (0: the default, 100)"),
        ("pagination.sort_order" = Option<String>, Query, description = "`ASC` (oldest first, the default) or `DESC`"),
    ),
    responses((status = 200, description = "A page of clusters", body = w::ClusterList), (status = 400, description = "Invalid argument (3)", body = w::ErrorBody), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody))
)]
pub async fn list(State(s): State<ApiState>, ClActor(a): ClActor, _: Needs<Read>, RawQuery(q): RawQuery) -> ClResult {
    let pairs = query_pairs(q.as_deref())?;
    let pg = pager(&pairs)?;
    let inactive = match pairs.iter().find(|(k, _)| k == "show_inactive").map(|(_, v)| v.as_str()) {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid("show_inactive", "must be true or false").into()),
    };
    let all = clusters::list(&s.control, &a, inactive).await?;
    let (page, pagination) = pg.apply(all, s.control.now());
    let mut out = Vec::with_capacity(page.len());
    for c in &page {
        let nodes = clusters::nodes(&s.control, &a, &c.id).await?;
        out.push(render(&s, c, &nodes));
    }
    Ok(Json(w::ClusterList { clusters: out, pagination }).into_response())
}

#[utoipa::path(
    get,
    path = "/clusters/{cluster_id}/nodes",
    tag = "clusters",
    operation_id = "cluster_nodes_list",
    summary = "List a cluster's nodes and whether each is live",
    params(
        ("cluster_id" = String, Path, description = "The cluster's id"),
        ("pagination.page" = Option<u64>, Query, description = "Page number, from 1"),
        ("pagination.limit" = Option<u64>, Query, description = "Page size, 1 to 500 (0: the default, 100)"),
        ("pagination.sort_order" = Option<String>, Query, description = "`ASC` (the default) or `DESC`"),
    ),
    responses((status = 200, description = "A page of nodes", body = w::NodeList), (status = 400, description = "Invalid argument (3)", body = w::ErrorBody), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody), (status = 404, description = "Not found (5)", body = w::ErrorBody))
)]
pub async fn nodes(
    State(s): State<ApiState>,
    ClActor(a): ClActor,
    _: Needs<Read>,
    ClPath(id): ClPath<String>,
    RawQuery(q): RawQuery,
) -> ClResult {
    let hex = cluster_id(&id)?;
    let pg = pager(&query_pairs(q.as_deref())?)?;
    let all = clusters::nodes(&s.control, &a, &hex).await?;
    let (page, pagination) = pg.apply(all, s.control.now());
    let nodes = page
        .iter()
        .map(|n| w::Node {
            name: n.hostname.clone(),
            region_name: n.region.clone(),
            status: if n.state == InstanceState::Active { "LIVE" } else { "NOT_READY" }.to_owned(),
        })
        .collect();
    Ok(Json(w::NodeList { nodes, pagination }).into_response())
}

#[utoipa::path(
    put,
    path = "/clusters/{cluster_id}/spend-limit",
    tag = "clusters",
    operation_id = "cluster_spend_limit_update",
    summary = "Set a serverless cluster's monthly spend limit; its nodes stop when this month's charges reach it",
    params(("cluster_id" = String, Path, description = "The cluster's id")),
    request_body = w::SpendLimit,
    responses((status = 200, description = "Set", body = w::Empty), (status = 400, description = "Invalid argument (3), or a dedicated cluster (9)", body = w::ErrorBody), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody), (status = 404, description = "Not found (5)", body = w::ErrorBody))
)]
pub async fn spend_limit(
    State(s): State<ApiState>,
    ClActor(a): ClActor,
    _: Needs<Edit>,
    ClPath(id): ClPath<String>,
    ClJson(b): ClJson<w::SpendLimit>,
) -> ClResult {
    let hex = cluster_id(&id)?;
    clusters::set_spend_limit(&s.control, &a, &hex, b.spend_limit).await?;
    Ok(Json(w::Empty {}).into_response())
}

#[utoipa::path(
    delete,
    path = "/clusters/{cluster_id}",
    tag = "clusters",
    operation_id = "cluster_delete",
    summary = "Delete a cluster and terminate its nodes",
    params(("cluster_id" = String, Path, description = "The cluster's id")),
    responses((status = 200, description = "Deleted", body = w::Empty), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody), (status = 404, description = "Not found (5)", body = w::ErrorBody))
)]
pub async fn delete(State(s): State<ApiState>, ClActor(a): ClActor, ClPath(id): ClPath<String>) -> ClResult {
    clusters::delete(&s.control, &a, &cluster_id(&id)?).await?;
    Ok(Json(w::Empty {}).into_response())
}

#[utoipa::path(
    get,
    path = "/clusters/available-regions",
    tag = "clusters",
    operation_id = "available_regions_list",
    summary = "List the regions where a node of some machine type fits now",
    params(("provider" = Option<String>, Query, description = "`NIMBUS` (or its aliases `GCP`, `AWS`)")),
    responses((status = 200, description = "Region names", body = w::AvailableRegions), (status = 400, description = "Invalid argument (3)", body = w::ErrorBody), (status = 401, description = "Unauthenticated (16)", body = w::ErrorBody), (status = 403, description = "Permission denied (7)", body = w::ErrorBody))
)]
pub async fn available_regions(State(s): State<ApiState>, ClActor(a): ClActor, _: Needs<Read>, RawQuery(q): RawQuery) -> ClResult {
    let pairs = query_pairs(q.as_deref())?;
    let provider = pairs.iter().find(|(k, _)| k == "provider").map(|(_, v)| v.clone());
    let regions = clusters::available_regions(&s.control, &a, provider.as_deref()).await?;
    Ok(Json(w::AvailableRegions { regions }).into_response())
}
