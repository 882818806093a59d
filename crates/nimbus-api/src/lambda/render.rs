//! Domain → Lambda wire conversions.

use std::collections::HashMap;

use nimbus_api_types::lambda as w;
use nimbus_control::Config;
use nimbus_core::catalog::InstanceType;
use nimbus_core::clock::to_rfc3339;
use nimbus_core::firewall::FirewallRule;
use nimbus_core::ids::FileSystemId;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Event, FileSystem, FirewallRuleset, Image, Instance, Org, SshKey};

pub fn region(cfg: &Config, name: &str) -> w::Region {
    let description = cfg.region(name).map(|r| r.description.clone()).unwrap_or_default();
    w::Region { name: name.to_owned(), description }
}

pub fn instance_type(t: &InstanceType) -> w::InstanceType {
    w::InstanceType {
        name: t.name.clone(),
        description: t.description.clone(),
        gpu_description: t.gpu_description.clone(),
        price_cents_per_hour: t.price_cents_per_hour,
        specs: w::Specs { vcpus: t.vcpus, memory_gib: t.memory_gib, storage_gib: t.storage_gib, gpus: t.gpus },
    }
}

/// Lambda's status names: it has no stopped or restarting; a restarting instance is not
/// reachable, so it shows as booting (orchestrators wait on booting).
pub fn status(s: InstanceState) -> &'static str {
    use InstanceState::*;
    match s {
        Pending | Booting | Restarting | Starting => "booting",
        Active => "active",
        Unhealthy | Stopping | Stopped => "unhealthy",
        Terminating => "terminating",
        Terminated => "terminated",
    }
}

fn yes() -> w::ActionAvailability {
    w::ActionAvailability { available: true, reason_code: None, reason_description: None }
}

fn no(code: &str, why: &str) -> w::ActionAvailability {
    w::ActionAvailability { available: false, reason_code: Some(code.to_owned()), reason_description: Some(why.to_owned()) }
}

fn actions(s: InstanceState) -> w::Actions {
    use InstanceState::*;
    let unsupported = || no("not-supported", "This cloud does not offer this action.");
    let gone = matches!(s, Terminating | Terminated);
    let restart = match s {
        Active | Unhealthy => yes(),
        _ if gone => no("vm-is-terminating", "The instance is terminating."),
        _ => no("vm-has-not-launched", "The instance has not finished launching."),
    };
    w::Actions {
        migrate: unsupported(),
        rebuild: unsupported(),
        restart,
        cold_reboot: unsupported(),
        terminate: if gone { no("vm-is-terminating", "The instance is terminating.") } else { yes() },
    }
}

/// File system names by id, for rendering instances.
pub type FsNames = HashMap<FileSystemId, String>;

pub fn instance(i: &Instance, cfg: &Config, fs: &FsNames) -> w::Instance {
    let itype = cfg.instance_type(&i.instance_type).map(instance_type).unwrap_or_else(|| w::InstanceType {
        name: i.instance_type.clone(),
        description: i.instance_type.clone(),
        gpu_description: String::new(),
        price_cents_per_hour: 0,
        specs: w::Specs {
            vcpus: i.resources.vcpus,
            memory_gib: i.resources.memory_mib / 1024,
            storage_gib: i.resources.disk_gib,
            gpus: i.gpu_indices.len() as i64,
        },
    });
    w::Instance {
        id: i.id.to_string(),
        name: i.name.clone(),
        ip: i.ip.clone(),
        private_ip: i.private_ip.clone(),
        status: status(i.state).to_owned(),
        ssh_key_names: i.ssh_key_names.clone(),
        file_system_names: i.file_system_mounts.iter().filter_map(|m| fs.get(&m.file_system_id).cloned()).collect(),
        file_system_mounts: Some(
            i.file_system_mounts
                .iter()
                .map(|m| w::FileSystemMount { mount_point: m.mount_point.clone(), file_system_id: m.file_system_id.to_string() })
                .collect(),
        ),
        region: region(cfg, &i.region),
        instance_type: itype,
        hostname: Some(i.hostname.clone()),
        jupyter_token: None,
        jupyter_url: None,
        actions: actions(i.state),
        tags: Some(i.tags.iter().map(|(k, v)| w::Tag { key: k.clone(), value: v.clone() }).collect()),
        firewall_rulesets: Some(i.firewall_ruleset_ids.iter().map(|r| w::IdRef { id: r.to_string() }).collect()),
        is_reserved: false,
    }
}

pub fn ssh_key(k: &SshKey, private_key: Option<String>) -> w::SshKey {
    w::SshKey { id: k.id.to_string(), name: k.name.clone(), public_key: k.public_key.clone(), private_key }
}

pub fn file_system(f: &FileSystem, cfg: &Config, org: &Org) -> w::FileSystem {
    w::FileSystem {
        id: f.id.to_string(),
        name: f.name.clone(),
        mount_point: f.mount_point.clone(),
        created: to_rfc3339(f.created_at),
        created_by: w::User { id: org.id.to_string(), email: org.email.clone(), status: "active".to_owned() },
        is_in_use: f.in_use,
        region: region(cfg, &f.region),
    }
}

pub fn image(i: &Image, cfg: &Config, region_name: &str) -> w::Image {
    w::Image {
        id: nimbus_control::images::regional_id(&i.id, region_name),
        created_time: to_rfc3339(i.created_at),
        updated_time: to_rfc3339(i.updated_at),
        name: i.name.clone(),
        description: i.description.clone(),
        family: i.family.clone(),
        version: i.version.clone(),
        architecture: i.architecture.clone(),
        region: region(cfg, region_name),
    }
}

pub fn rule(r: &FirewallRule) -> w::FirewallRule {
    w::FirewallRule {
        protocol: serde_json::to_value(r.protocol).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        port_range: r.port_range.map(|(a, b)| vec![i64::from(a), i64::from(b)]),
        source_network: r.source_network.clone(),
        description: r.description.clone(),
    }
}

pub fn ruleset(r: &FirewallRuleset, cfg: &Config) -> w::FirewallRuleset {
    w::FirewallRuleset {
        id: r.id.to_string(),
        name: r.name.clone(),
        region: region(cfg, &r.region),
        rules: r.rules.iter().map(rule).collect(),
        created: to_rfc3339(r.created_at),
        instance_ids: r.instance_ids.iter().map(ToString::to_string).collect(),
    }
}

pub fn global_ruleset(rules: &[FirewallRule]) -> w::GlobalFirewallRuleset {
    w::GlobalFirewallRuleset { id: "global".to_owned(), name: "Global Firewall Rules".to_owned(), rules: rules.iter().map(rule).collect() }
}

fn lrn(org: &str, rtype: &str, id: &str) -> String {
    format!("lrn:nimbus:cloud::{org}:{rtype}/{id}")
}

pub fn audit_event(e: &Event) -> w::AuditEvent {
    let org = e.org_id.as_ref().map(ToString::to_string).unwrap_or_default();
    w::AuditEvent {
        service_name: "cloud".to_owned(),
        resource_name: format!("cloud.{}", e.resource_type),
        action: e.kind.clone(),
        catalog_version: "1".to_owned(),
        event_id: e.id.to_string(),
        event_time: to_rfc3339(e.created_at),
        actor_lrn: e.actor_key_id.as_ref().map(|k| lrn(&org, "api_key", k.as_str())),
        resource_lrns: vec![lrn(&org, &e.resource_type, &e.resource_id)],
        resource_owner_lrn: e.org_id.as_ref().map(|o| format!("lrn:nimbus:cloud::{o}:organization/{o}")),
        request_api_key_lrn: e.actor_key_id.as_ref().map(|k| lrn(&org, "api_key", k.as_str())),
        additional_details: e.payload.clone(),
    }
}
