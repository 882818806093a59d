//! Native handlers for firewall rules: one rule at a time over the same model as Lambda's
//! global rules and rulesets; the agents enforce them with nftables.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use nimbus_api_types::native as w;
use nimbus_control::firewall::{self, ScopedRule};
use nimbus_core::firewall::FirewallRule;
use nimbus_core::Error;

use super::extract::{NativeActor, NativeJson, NativePath, Needs};
use super::handlers::{ok, query_pairs, NResult};
use super::page;
use crate::auth::perm::{Create, Read};
use crate::ApiState;

fn protocol(r: &FirewallRule) -> String {
    serde_json::to_value(r.protocol).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn render(r: &ScopedRule) -> w::FirewallRule {
    w::FirewallRule {
        id: r.id.clone(),
        protocol: protocol(&r.rule),
        port_range: r.rule.port_range.map(|(a, b)| [a, b]),
        source: r.rule.source_network.clone(),
        description: r.rule.description.clone(),
        ruleset_id: r.ruleset_id.as_ref().map(ToString::to_string),
    }
}

#[utoipa::path(
    get,
    path = "/firewall/rules",
    tag = "firewall",
    operation_id = "firewall_rules_list",
    summary = "List firewall rules (global and per ruleset; filter by protocol, ruleset_id, source)",
    params(("page" = Option<u32>, Query), ("limit" = Option<u32>, Query), ("sort" = Option<String>, Query, description = "ruleset_id, protocol or source"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("protocol" = Option<String>, Query), ("ruleset_id" = Option<String>, Query, description = "`global` for the global rules"), ("source" = Option<String>, Query)),
    responses((status = 200, description = "Success", body = w::Envelope<Vec<w::FirewallRule>>), (status = 400, description = "Invalid query", body = w::ErrorEnvelope))
)]
pub async fn firewall_rules_list(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Read>,
    RawQuery(raw): RawQuery,
) -> NResult {
    let q = page::parse(&query_pairs(raw)?, &["ruleset_id", "protocol", "source"], &["protocol", "ruleset_id", "source"])?;
    let all = firewall::rule_list(&s.control, &a).await?;
    let scope = |r: &ScopedRule| r.ruleset_id.as_ref().map(ToString::to_string).unwrap_or_else(|| "global".to_owned());
    let field = |r: &ScopedRule, f: &str| -> Option<String> {
        match f {
            "protocol" => Some(protocol(&r.rule)),
            "ruleset_id" => Some(scope(r)),
            "source" => Some(r.rule.source_network.clone()),
            _ => None,
        }
    };
    let key = |r: &ScopedRule, k: &str| -> String {
        match k {
            "protocol" => protocol(&r.rule),
            "source" => r.rule.source_network.clone(),
            _ => scope(r),
        }
    };
    let (items, pg) = page::apply(all, &q, field, key, |r| r.id.clone());
    Ok(ok(items.iter().map(render).collect::<Vec<_>>(), Some(pg)))
}

#[utoipa::path(
    post,
    path = "/firewall/rules",
    tag = "firewall",
    operation_id = "firewall_rule_create",
    summary = "Add an inbound allow rule (global, or to a ruleset); running instances get it without restart",
    request_body = w::FirewallRuleCreate,
    responses(
        (status = 201, description = "Created", body = w::Envelope<w::FirewallRule>),
        (status = 400, description = "Invalid rule", body = w::ErrorEnvelope),
        (status = 404, description = "Ruleset not found", body = w::ErrorEnvelope),
        (status = 409, description = "An identical rule exists", body = w::ErrorEnvelope)
    )
)]
pub async fn firewall_rule_create(
    State(s): State<ApiState>,
    NativeActor(a): NativeActor,
    _: Needs<Create>,
    NativeJson(b): NativeJson<w::FirewallRuleCreate>,
) -> NResult {
    // The shared validator labels fields Lambda's way (`rule.source_network`); name them as this
    // dialect's request does.
    let rule = FirewallRule::new("rule", &b.protocol, b.port_range.as_deref(), &b.source, b.description.as_deref().unwrap_or("")).map_err(
        |e| match e {
            Error::InvalidValue { label, message } => {
                let field = label.trim_start_matches("rule.");
                Error::InvalidValue { label: if field == "source_network" { "source".to_owned() } else { field.to_owned() }, message }
            }
            other => other,
        },
    )?;
    let r = firewall::rule_add(&s.control, &a, b.ruleset_id.as_deref(), rule).await?;
    Ok((StatusCode::CREATED, ok(render(&r), None)).into_response())
}

#[utoipa::path(
    delete,
    path = "/firewall/rules/{id}",
    tag = "firewall",
    operation_id = "firewall_rule_delete",
    summary = "Remove a firewall rule",
    params(("id" = String, Path)),
    responses((status = 200, description = "Removed", body = w::Envelope<w::FirewallRule>), (status = 404, description = "Not found", body = w::ErrorEnvelope))
)]
pub async fn firewall_rule_delete(State(s): State<ApiState>, NativeActor(a): NativeActor, NativePath(id): NativePath<String>) -> NResult {
    Ok(ok(render(&firewall::rule_delete(&s.control, &a, &id).await?), None))
}
