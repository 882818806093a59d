//! Cluster handlers: parse (the seed's camelCase and CockroachDB's snake_case both), call
//! `nimbus_control::clusters`, render in the seed's shape. Ids are UUID-shaped.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use nimbus_control::clusters::{self, CreateRequest, Spec};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Cluster, Instance};
use nimbus_core::Error;
use serde_json::{json, Map, Value};

use super::{ClActor, ClError, ClJson};
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

fn render(s: &ApiState, c: &Cluster, nodes: &[Instance]) -> Value {
    let regions: Vec<Value> = c
        .region_nodes
        .iter()
        .map(|(r, n)| {
            // The head node of the region: its first node with an address.
            let head = nodes.iter().filter(|i| &i.region == r).find_map(|i| i.ip.clone()).unwrap_or_default();
            let mut v = json!({"name": r, "sql_dns": head, "ui_dns": ""});
            if c.plan == clusters::DEDICATED {
                v["node_count"] = json!(n);
            }
            v
        })
        .collect();
    let config = if c.plan == clusters::SERVERLESS {
        json!({"serverless": {
            "regions": c.region_nodes.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(),
            "spend_limit": c.spend_limit_cents.unwrap_or(0),
            "routing_id": routing_id(c),
        }})
    } else {
        let t = s.control.config().instance_type(&c.machine_type).cloned();
        json!({"dedicated": {
            "machine_type": c.machine_type,
            "num_virtual_cpus": t.as_ref().map_or(0, |t| t.vcpus),
            "memory_gib": t.as_ref().map_or(0, |t| t.memory_gib),
            "storage_gib": t.as_ref().map_or(0, |t| t.storage_gib),
        }})
    };
    json!({
        "cloud_provider": c.provider,
        "created_at": ts(c.created_at),
        "creator_id": c.creator_id,
        "deleted_at": c.deleted_at.map(ts),
        "id": uuid(&c.id),
        "operation_status": c.operation_status,
        "name": c.name,
        "plan": c.plan,
        "regions": regions,
        "config": config,
        "state": c.state,
        "updated_at": ts(c.updated_at),
    })
}

/// A field by any of its spellings.
fn field<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| o.get(*n)).filter(|v| !v.is_null())
}

fn string_list(v: &Value, label: &'static str) -> Result<Vec<String>, ClError> {
    v.as_array()
        .ok_or_else(|| Error::invalid(label, "must be a list of strings"))?
        .iter()
        .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| Error::invalid(label, "must be a list of strings").into()))
        .collect()
}

fn parse_create(b: &Value) -> Result<CreateRequest, ClError> {
    let o = b.as_object().ok_or_else(|| Error::invalid("body", "must be a JSON object"))?;
    let name = field(o, &["name"]).and_then(Value::as_str).ok_or_else(|| Error::invalid("name", "is required"))?.to_owned();
    let provider =
        field(o, &["provider", "cloud_provider"]).and_then(Value::as_str).ok_or_else(|| Error::invalid("provider", "is required"))?;
    let spec =
        field(o, &["spec"]).and_then(Value::as_object).ok_or_else(|| Error::invalid("spec", "is required: serverless or dedicated"))?;
    let spec = match (field(spec, &["serverless"]), field(spec, &["dedicated"])) {
        (Some(sv), None) => {
            let sv = sv.as_object().ok_or_else(|| Error::invalid("spec.serverless", "must be an object"))?;
            let regions = string_list(field(sv, &["regions"]).unwrap_or(&json!([])), "spec.serverless.regions")?;
            let limit = match field(sv, &["spendLimit", "spend_limit"]) {
                None => 0,
                Some(v) => {
                    v.as_i64().ok_or_else(|| Error::invalid("spec.serverless.spendLimit", "must be an integer number of US cents"))?
                }
            };
            Spec::Serverless { regions, spend_limit_cents: limit }
        }
        (None, Some(d)) => {
            let d = d.as_object().ok_or_else(|| Error::invalid("spec.dedicated", "must be an object"))?;
            let rn = field(d, &["region_nodes", "regionNodes"])
                .and_then(Value::as_object)
                .ok_or_else(|| Error::invalid("spec.dedicated.region_nodes", "is required: {\"region\": node count}"))?;
            let mut region_nodes = Vec::new();
            for (r, n) in rn {
                let n = n
                    .as_i64()
                    .ok_or_else(|| Error::invalid("spec.dedicated.region_nodes", format!("{r}: the node count must be an integer")))?;
                region_nodes.push((r.clone(), n));
            }
            let machine_type = field(d, &["machine_type", "machineType"])
                .or_else(|| d.get("hardware").and_then(|h| h.get("machine_spec")).and_then(|m| m.get("machine_type")))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("spec.dedicated.machine_type", "is required (an instance type name)"))?
                .to_owned();
            Spec::Dedicated { region_nodes, machine_type }
        }
        _ => return Err(Error::invalid("spec", "give exactly one of serverless or dedicated").into()),
    };
    let ssh_key_names = match field(o, &["ssh_key_names", "sshKeyNames"]) {
        Some(v) => string_list(v, "ssh_key_names")?,
        None => Vec::new(),
    };
    let wait_for_capacity = field(o, &["wait_for_capacity", "waitForCapacity"]).and_then(Value::as_bool).unwrap_or(false);
    Ok(CreateRequest { name, provider: provider.to_owned(), spec, ssh_key_names, wait_for_capacity })
}

pub async fn create(State(s): State<ApiState>, ClActor(a): ClActor, ClJson(b): ClJson<Value>) -> ClResult {
    let req = parse_create(&b)?;
    let (c, nodes) = clusters::create(&s.control, &a, req).await?;
    Ok(Json(render(&s, &c, &nodes)).into_response())
}

pub async fn get_one(State(s): State<ApiState>, ClActor(a): ClActor, Path(id): Path<String>) -> ClResult {
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

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.replace("%2E", ".").replace("%2e", "."), v.to_owned())
        })
        .collect()
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
    fn apply<T>(&self, mut items: Vec<T>, now: i64) -> (Vec<T>, Value) {
        if self.desc {
            items.reverse();
        }
        let total = items.len();
        let last = total.div_ceil(self.limit).max(1);
        let start = (self.page - 1).saturating_mul(self.limit);
        let page: Vec<T> = items.into_iter().skip(start).take(self.limit).collect();
        let next = if self.page < last { self.page + 1 } else { 0 };
        let meta = json!({
            "next": next,
            "last": last,
            "limit": self.limit,
            "total_results": total,
            "time": ts(now),
            "order": if self.desc { "DESC" } else { "ASC" },
        });
        (page, meta)
    }
}

pub async fn list(State(s): State<ApiState>, ClActor(a): ClActor, RawQuery(q): RawQuery) -> ClResult {
    let pairs = query_pairs(q.as_deref());
    let pg = pager(&pairs)?;
    let inactive = match pairs.iter().find(|(k, _)| k == "show_inactive").map(|(_, v)| v.as_str()) {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid("show_inactive", "must be true or false").into()),
    };
    let all = clusters::list(&s.control, &a, inactive).await?;
    let (page, meta) = pg.apply(all, s.control.now());
    let mut out = Vec::with_capacity(page.len());
    for c in &page {
        let nodes = clusters::nodes(&s.control, &a, &c.id).await?;
        out.push(render(&s, c, &nodes));
    }
    Ok(Json(json!({"clusters": out, "pagination": meta})).into_response())
}

pub async fn nodes(State(s): State<ApiState>, ClActor(a): ClActor, Path(id): Path<String>, RawQuery(q): RawQuery) -> ClResult {
    let hex = cluster_id(&id)?;
    let pg = pager(&query_pairs(q.as_deref()))?;
    let all = clusters::nodes(&s.control, &a, &hex).await?;
    let (page, meta) = pg.apply(all, s.control.now());
    let nodes: Vec<Value> = page
        .iter()
        .map(|n| {
            let live = n.state == InstanceState::Active;
            json!({"name": n.hostname, "region_name": n.region, "status": if live { "LIVE" } else { "NOT_READY" }})
        })
        .collect();
    Ok(Json(json!({"nodes": nodes, "pagination": meta})).into_response())
}

pub async fn spend_limit(State(s): State<ApiState>, ClActor(a): ClActor, Path(id): Path<String>, ClJson(b): ClJson<Value>) -> ClResult {
    let hex = cluster_id(&id)?;
    let cents = b
        .as_object()
        .and_then(|o| field(o, &["spendLimit", "spend_limit"]))
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::invalid("spendLimit", "is required: an integer number of US cents"))?;
    clusters::set_spend_limit(&s.control, &a, &hex, cents).await?;
    Ok(Json(json!({})).into_response())
}

pub async fn delete(State(s): State<ApiState>, ClActor(a): ClActor, Path(id): Path<String>) -> ClResult {
    clusters::delete(&s.control, &a, &cluster_id(&id)?).await?;
    Ok(Json(json!({})).into_response())
}

pub async fn available_regions(State(s): State<ApiState>, ClActor(a): ClActor, RawQuery(q): RawQuery) -> ClResult {
    let pairs = query_pairs(q.as_deref());
    let provider = pairs.iter().find(|(k, _)| k == "provider").map(|(_, v)| v.clone());
    let regions = clusters::available_regions(&s.control, &a, provider.as_deref()).await?;
    Ok(Json(json!({"regions": regions})).into_response())
}
