//! Firewall rules: the org-wide global rules (Lambda's `/firewall-rules` and
//! `/firewall-rulesets/global` are the same set) and named, regional rulesets attached to
//! instances at launch. The agent enforces them with nftables (container-runtime issue).

use nimbus_core::auth::{Actor, Permission};
use nimbus_core::firewall::FirewallRule;
use nimbus_core::ids::FirewallRulesetId;
use nimbus_core::model::FirewallRuleset;
use nimbus_core::{validate, ConflictReason, Error};
use nimbus_store::Store;
use serde_json::json;

use crate::{emit, Control};

const MAX_RULES: usize = 256;

/// Tells the hosts that run the org's instances to re-read their desired state (their firewall
/// changed). Host rows are locked first, as in every transaction that touches hosts.
async fn bump_org_hosts(tx: &mut nimbus_store::Conn, actor: &Actor) -> Result<Vec<nimbus_core::ids::HostId>, Error> {
    let hosts = Store::host_ids_with_org_instances_in(tx, &actor.org_id).await?;
    for h in &hosts {
        Store::host_bump_generation_in_txn(tx, h).await?;
    }
    Ok(hosts)
}

fn check_rules(rules: &[FirewallRule]) -> Result<(), Error> {
    if rules.len() > MAX_RULES {
        return Err(Error::invalid("rules", format!("at most {MAX_RULES} rules are allowed")));
    }
    Ok(())
}

pub async fn global_get(c: &Control, actor: &Actor) -> Result<Vec<FirewallRule>, Error> {
    actor.require(Permission::Read)?;
    c.store().org_global_rules(&actor.org_id).await
}

pub async fn global_set(c: &Control, actor: &Actor, rules: Vec<FirewallRule>) -> Result<Vec<FirewallRule>, Error> {
    actor.require(Permission::Edit)?;
    check_rules(&rules)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = bump_org_hosts(&mut tx, actor).await?;
    Store::org_set_global_rules_in_txn(&mut tx, &actor.org_id, &rules).await?;
    emit(&mut tx, actor, "firewall.global_rules_updated", "firewall_ruleset", "global", json!({"rules": rules.len()}), now).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(rules)
}

/// Replaces the global rules when `rules` is given, else returns them unchanged: a PATCH that
/// changes nothing is still a change request, so it needs EDIT (not READ) either way.
pub async fn global_update(c: &Control, actor: &Actor, rules: Option<Vec<FirewallRule>>) -> Result<Vec<FirewallRule>, Error> {
    actor.require(Permission::Edit)?;
    match rules {
        Some(r) => global_set(c, actor, r).await,
        None => c.store().org_global_rules(&actor.org_id).await,
    }
}

pub async fn ruleset_create(
    c: &Control,
    actor: &Actor,
    name: &str,
    region: &str,
    rules: Vec<FirewallRule>,
) -> Result<FirewallRuleset, Error> {
    actor.require(Permission::Create)?;
    validate::printable_name(name)?;
    check_rules(&rules)?;
    c.require_region("region", region)?;
    let now = c.now();
    let rs = FirewallRuleset {
        id: FirewallRulesetId::generate(),
        org_id: actor.org_id.clone(),
        name: name.to_owned(),
        region: region.to_owned(),
        rules,
        created_at: now,
        instance_ids: Vec::new(),
    };
    let mut tx = c.store().begin().await?;
    let limit = c.config().quotas.firewall_rulesets_per_org;
    if Store::ruleset_count_in(&mut tx, &actor.org_id).await? >= limit {
        return Err(Error::QuotaExceeded { message: format!("an organization may have at most {limit} firewall rulesets") });
    }
    Store::ruleset_insert_in_txn(&mut tx, &rs).await?;
    emit(&mut tx, actor, "firewall_ruleset.created", "firewall_ruleset", rs.id.as_str(), json!({"name": name}), now).await?;
    Store::commit(tx).await?;
    Ok(rs)
}

pub async fn ruleset_list(c: &Control, actor: &Actor) -> Result<Vec<FirewallRuleset>, Error> {
    actor.require(Permission::Read)?;
    c.store().ruleset_list_by_org(&actor.org_id).await
}

fn parse_id(id: &str) -> Result<FirewallRulesetId, Error> {
    FirewallRulesetId::parse(id).ok_or_else(|| Error::not_found("firewall ruleset", id))
}

pub async fn ruleset_get(c: &Control, actor: &Actor, id: &str) -> Result<FirewallRuleset, Error> {
    actor.require(Permission::Read)?;
    let rid = parse_id(id)?;
    let mut conn = c.store().reader().await?;
    let rs = Store::ruleset_get_in(&mut conn, &actor.org_id, &rid).await?;
    rs.ok_or_else(|| Error::not_found("firewall ruleset", id))
}

pub async fn ruleset_update(
    c: &Control,
    actor: &Actor,
    id: &str,
    name: Option<&str>,
    rules: Option<Vec<FirewallRule>>,
) -> Result<FirewallRuleset, Error> {
    actor.require(Permission::Edit)?;
    let rid = parse_id(id)?;
    if let Some(n) = name {
        validate::printable_name(n)?;
    }
    if let Some(r) = &rules {
        check_rules(r)?;
    }
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = bump_org_hosts(&mut tx, actor).await?;
    let cur = Store::ruleset_get_in(&mut tx, &actor.org_id, &rid).await?.ok_or_else(|| Error::not_found("firewall ruleset", id))?;
    let name = name.unwrap_or(&cur.name).to_owned();
    let rules = rules.unwrap_or(cur.rules);
    Store::ruleset_update_in_txn(&mut tx, &actor.org_id, &rid, &name, &rules, now).await?;
    emit(&mut tx, actor, "firewall_ruleset.updated", "firewall_ruleset", rid.as_str(), json!({"name": name}), now).await?;
    let out = Store::ruleset_get_in(&mut tx, &actor.org_id, &rid).await?.ok_or_else(|| Error::not_found("firewall ruleset", id))?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(out)
}

pub async fn ruleset_delete(c: &Control, actor: &Actor, id: &str) -> Result<(), Error> {
    actor.require(Permission::Delete)?;
    let rid = parse_id(id)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let cur = Store::ruleset_get_in(&mut tx, &actor.org_id, &rid).await?.ok_or_else(|| Error::not_found("firewall ruleset", id))?;
    if !cur.instance_ids.is_empty() {
        return Err(Error::conflict(
            ConflictReason::FirewallRulesetInUse,
            format!("firewall ruleset {} is attached to {} instance(s)", cur.name, cur.instance_ids.len()),
        ));
    }
    Store::ruleset_delete_in_txn(&mut tx, &actor.org_id, &rid).await?;
    emit(&mut tx, actor, "firewall_ruleset.deleted", "firewall_ruleset", rid.as_str(), json!({"name": cur.name}), now).await?;
    Store::commit(tx).await
}

/// One rule as the native API sees it: with its id and where it lives.
#[derive(Debug, Clone)]
pub struct ScopedRule {
    pub id: String,
    /// `None`: the org's global rules (apply to every instance).
    pub ruleset_id: Option<FirewallRulesetId>,
    pub rule: FirewallRule,
}

fn scoped<'a>(actor: &'a Actor, ruleset: Option<&FirewallRulesetId>, rules: Vec<FirewallRule>) -> impl Iterator<Item = ScopedRule> + 'a {
    let scope = ruleset.map(|r| r.to_string()).unwrap_or_else(|| "global".to_owned());
    let ruleset = ruleset.cloned();
    rules.into_iter().map(move |rule| ScopedRule { id: rule.id_in(actor.org_id.as_str(), &scope), ruleset_id: ruleset.clone(), rule })
}

/// Every rule of the org: the global ones, then each ruleset's.
pub async fn rule_list(c: &Control, actor: &Actor) -> Result<Vec<ScopedRule>, Error> {
    actor.require(Permission::Read)?;
    let mut out: Vec<ScopedRule> = scoped(actor, None, c.store().org_global_rules(&actor.org_id).await?).collect();
    for rs in c.store().ruleset_list_by_org(&actor.org_id).await? {
        out.extend(scoped(actor, Some(&rs.id), rs.rules));
    }
    Ok(out)
}

/// Adds one rule to the global rules or to a ruleset; hosts running affected instances are told.
pub async fn rule_add(c: &Control, actor: &Actor, ruleset: Option<&str>, rule: FirewallRule) -> Result<ScopedRule, Error> {
    actor.require(Permission::Create)?;
    let rid = ruleset.map(parse_id).transpose()?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = bump_org_hosts(&mut tx, actor).await?;
    // The org row serializes read-modify-write of its rule lists across replicas.
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    let (mut rules, name) = match &rid {
        None => (Store::org_global_rules_in(&mut tx, &actor.org_id).await?, None),
        Some(r) => {
            let rs =
                Store::ruleset_get_in(&mut tx, &actor.org_id, r).await?.ok_or_else(|| Error::not_found("firewall ruleset", r.as_str()))?;
            (rs.rules, Some(rs.name))
        }
    };
    let added = scoped(actor, rid.as_ref(), vec![rule.clone()]).next().ok_or_else(|| Error::internal("no rule"))?;
    if scoped(actor, rid.as_ref(), rules.clone()).any(|r| r.id == added.id) {
        return Err(Error::AlreadyExists { kind: "firewall rule", name: added.id });
    }
    rules.push(rule);
    check_rules(&rules)?;
    match (&rid, &name) {
        (Some(r), Some(n)) => Store::ruleset_update_in_txn(&mut tx, &actor.org_id, r, n, &rules, now).await?,
        _ => Store::org_set_global_rules_in_txn(&mut tx, &actor.org_id, &rules).await?,
    }
    emit(&mut tx, actor, "firewall.rule_added", "firewall_rule", &added.id, json!({"ruleset_id": rid}), now).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(added)
}

/// Removes one rule, wherever it lives.
pub async fn rule_delete(c: &Control, actor: &Actor, id: &str) -> Result<ScopedRule, Error> {
    actor.require(Permission::Delete)?;
    let now = c.now();
    let mut tx = c.store().begin().await?;
    let hosts = bump_org_hosts(&mut tx, actor).await?;
    Store::org_bump_instances_generation_in_txn(&mut tx, &actor.org_id).await?;
    let global = Store::org_global_rules_in(&mut tx, &actor.org_id).await?;
    let mut removed = None;
    if let Some(pos) = scoped(actor, None, global.clone()).position(|r| r.id == id) {
        let mut rules = global;
        let rule = rules.remove(pos);
        Store::org_set_global_rules_in_txn(&mut tx, &actor.org_id, &rules).await?;
        removed = Some(ScopedRule { id: id.to_owned(), ruleset_id: None, rule });
    } else {
        for rs in Store::ruleset_list_by_org_in(&mut tx, &actor.org_id).await? {
            if let Some(pos) = scoped(actor, Some(&rs.id), rs.rules.clone()).position(|r| r.id == id) {
                let mut rules = rs.rules;
                let rule = rules.remove(pos);
                Store::ruleset_update_in_txn(&mut tx, &actor.org_id, &rs.id, &rs.name, &rules, now).await?;
                removed = Some(ScopedRule { id: id.to_owned(), ruleset_id: Some(rs.id), rule });
                break;
            }
        }
    }
    let removed = removed.ok_or_else(|| Error::not_found("firewall rule", id))?;
    emit(&mut tx, actor, "firewall.rule_deleted", "firewall_rule", id, json!({"ruleset_id": removed.ruleset_id}), now).await?;
    Store::commit(tx).await?;
    for h in &hosts {
        c.hosts().wake(h);
    }
    Ok(removed)
}
