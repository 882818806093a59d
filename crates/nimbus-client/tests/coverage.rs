//! Every operation of the Lambda, native, Voltage Park and clusters OpenAPI documents (checked
//! in, generated from the server's code) has a client method: each row names the operation and
//! calls the method (the future is built and dropped, so a missing or renamed method fails to
//! compile), and the test fails when the document has an operation without a row, or a row names
//! none.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use nimbus_api_types::lambda as lw;
use nimbus_api_types::voltage as vw;
use nimbus_client::{LambdaClient, ListParams, NativeClient, VoltageClient};

type LambdaRow = (&'static str, fn(&LambdaClient));
type NativeRow = (&'static str, fn(&NativeClient));

const LAMBDA: &[LambdaRow] = &[
    ("audit_events_list", |c| drop(c.audit_events(None))),
    ("file_systems_list", |c| drop(c.file_systems())),
    ("file_system_create", |c| drop(c.file_system_create("x", "us-east-1"))),
    ("file_system_delete", |c| drop(c.file_system_delete("x"))),
    ("firewall_rules_list", |c| drop(c.firewall_rules())),
    ("firewall_rules_replace", |c| drop(c.firewall_rules_replace(vec![]))),
    ("firewall_rulesets_list", |c| drop(c.firewall_rulesets())),
    ("firewall_ruleset_create", |c| {
        drop(c.firewall_ruleset_create(&lw::CreateRulesetRequest { name: "x".into(), region: "us-east-1".into(), rules: vec![] }))
    }),
    ("firewall_ruleset_global_get", |c| drop(c.firewall_ruleset_global())),
    ("firewall_ruleset_global_update", |c| drop(c.firewall_ruleset_global_update(&lw::PatchRulesetRequest { name: None, rules: None }))),
    ("firewall_ruleset_get", |c| drop(c.firewall_ruleset("x"))),
    ("firewall_ruleset_delete", |c| drop(c.firewall_ruleset_delete("x"))),
    ("firewall_ruleset_update", |c| drop(c.firewall_ruleset_update("x", &lw::PatchRulesetRequest { name: None, rules: None }))),
    ("images_list", |c| drop(c.images())),
    ("instances_launch", |_| {
        let _ = LambdaClient::launch;
    }),
    ("instances_restart", |c| drop(c.restart(&[]))),
    ("instances_terminate", |c| drop(c.terminate(&[]))),
    ("instance_types_list", |c| drop(c.instance_types())),
    ("instances_list", |c| drop(c.instances())),
    ("instance_get", |c| drop(c.instance("x"))),
    ("instance_update", |c| drop(c.instance_rename("x", None))),
    ("ssh_keys_list", |c| drop(c.ssh_keys())),
    ("ssh_key_create", |c| drop(c.ssh_key_add("x", None))),
    ("ssh_key_delete", |c| drop(c.ssh_key_delete("x"))),
];

fn p() -> ListParams {
    ListParams::default()
}

const NATIVE: &[NativeRow] = &[
    ("account_get", |c| drop(c.account())),
    ("account_update", |_| {
        let _ = NativeClient::account_update;
    }),
    ("api_keys_list", |c| drop(c.api_keys(&p()))),
    ("api_key_create", |_| {
        let _ = NativeClient::api_key_create;
    }),
    ("api_key_delete", |c| drop(c.api_key_delete("x"))),
    ("account_quota", |c| drop(c.quota())),
    ("billing_estimate_get", |c| drop(c.billing_estimate(None, None))),
    ("billing_invoices_list", |c| drop(c.billing_invoices())),
    ("billing_invoice_get", |c| drop(c.billing_invoice("x"))),
    ("billing_usage_get", |c| drop(c.billing_usage(None, None))),
    ("firewall_rules_list", |c| drop(c.firewall_rules(&p()))),
    ("firewall_rule_create", |_| {
        let _ = NativeClient::firewall_rule_create;
    }),
    ("firewall_rule_delete", |c| drop(c.firewall_rule_delete("x"))),
    ("instances_list", |c| drop(c.instances(&p()))),
    ("instance_create", |_| {
        let _ = NativeClient::instance_create;
    }),
    ("instance_get", |c| drop(c.instance("x"))),
    ("instance_delete", |c| drop(c.instance_delete("x"))),
    ("instance_update", |_| {
        let _ = NativeClient::instance_update;
    }),
    ("instance_metrics_get", |c| drop(c.instance_metrics("x", 60))),
    ("instance_network_get", |c| drop(c.instance_network("x"))),
    ("instance_gpus_list", |c| drop(c.instance_gpus("x"))),
    ("instance_resize", |c| drop(c.instance_resize("x", "t"))),
    ("instance_restart", |c| drop(c.instance_restart("x"))),
    ("instance_start", |c| drop(c.instance_start("x"))),
    ("instance_stop", |c| drop(c.instance_stop("x"))),
    ("service_accounts_list", |c| drop(c.service_accounts(&p()))),
    ("service_account_create", |_| {
        let _ = NativeClient::service_account_create;
    }),
    ("service_account_get", |c| drop(c.service_account("x"))),
    ("service_account_delete", |c| drop(c.service_account_delete("x"))),
    ("service_account_update", |_| {
        let _ = NativeClient::service_account_update;
    }),
    ("service_account_api_keys_list", |c| drop(c.service_account_api_keys("x", &p()))),
    ("service_account_api_key_create", |_| {
        let _ = NativeClient::service_account_api_key_create;
    }),
    ("service_account_api_key_delete", |c| drop(c.service_account_api_key_delete("x", "y"))),
    ("snapshots_list", |c| drop(c.snapshots(&p()))),
    ("snapshot_create", |_| {
        let _ = NativeClient::snapshot_create;
    }),
    ("snapshot_get", |c| drop(c.snapshot("x"))),
    ("snapshot_delete", |c| drop(c.snapshot_delete("x"))),
    ("snapshot_restore", |_| {
        let _ = NativeClient::snapshot_restore;
    }),
    ("volumes_list", |c| drop(c.volumes(&p()))),
    ("volume_create", |_| {
        let _ = NativeClient::volume_create;
    }),
    ("volume_get", |c| drop(c.volume("x"))),
    ("volume_delete", |c| drop(c.volume_delete("x"))),
    ("volume_attach", |c| drop(c.volume_attach("x", "y"))),
    ("volume_detach", |c| drop(c.volume_detach("x"))),
    ("volume_resize", |c| drop(c.volume_resize("x", 2))),
    ("vpns_list", |c| drop(c.vpns(&p()))),
    ("vpn_create", |_| {
        let _ = NativeClient::vpn_create;
    }),
    ("vpn_get", |c| drop(c.vpn("x"))),
    ("vpn_delete", |c| drop(c.vpn_delete("x"))),
    ("webhooks_list", |c| drop(c.webhooks(&p()))),
    ("webhook_create", |_| {
        let _ = NativeClient::webhook_create;
    }),
    ("webhook_get", |c| drop(c.webhook("x"))),
    ("webhook_delete", |c| drop(c.webhook_delete("x"))),
    ("webhook_deliveries_list", |c| drop(c.webhook_deliveries("x", &p()))),
    ("webhook_delivery_redeliver", |c| drop(c.webhook_redeliver("x", "y"))),
];

fn operation_ids(doc: &str) -> BTreeSet<String> {
    let path = format!("{}/../../openapi/{doc}", env!("CARGO_MANIFEST_DIR"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    for ops in v["paths"].as_object().unwrap().values() {
        for (m, op) in ops.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&m.as_str()) {
                out.insert(op["operationId"].as_str().unwrap().to_owned());
            }
        }
    }
    out
}

fn check(doc: &str, rows: &[&str]) {
    let ops = operation_ids(doc);
    let table: BTreeSet<String> = rows.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(table.len(), rows.len(), "{doc}: a row is listed twice");
    let missing: Vec<&String> = ops.difference(&table).collect();
    let stale: Vec<&String> = table.difference(&ops).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{doc}: operations without a client method {missing:?}; rows for no operation {stale:?}"
    );
}

#[tokio::test]
async fn every_operation_has_a_client_method() {
    let lambda = LambdaClient::new("http://127.0.0.1:9", "k");
    for (_, call) in LAMBDA {
        call(&lambda);
    }
    check("lambda.json", &LAMBDA.iter().map(|r| r.0).collect::<Vec<_>>());
    let native = NativeClient::new("http://127.0.0.1:9", "k");
    for (_, call) in NATIVE {
        call(&native);
    }
    check("native.json", &NATIVE.iter().map(|r| r.0).collect::<Vec<_>>());
}

type ClustersRow = (&'static str, fn(&nimbus_client::ClustersClient));

const CLUSTERS: &[ClustersRow] = &[
    ("clusters_list", |c| drop(c.list_page(false, 1, 0))),
    ("cluster_create", |_| {
        let _ = nimbus_client::ClustersClient::create;
    }),
    ("available_regions_list", |c| drop(c.available_regions("NIMBUS"))),
    ("cluster_get", |c| drop(c.get("x"))),
    ("cluster_delete", |c| drop(c.delete("x"))),
    ("cluster_nodes_list", |c| drop(c.nodes("x"))),
    ("cluster_spend_limit_update", |c| drop(c.set_spend_limit("x", 0))),
];

#[tokio::test]
async fn every_clusters_operation_has_a_client_method() {
    let c = nimbus_client::ClustersClient::new("http://127.0.0.1:9", "k");
    for (_, call) in CLUSTERS {
        call(&c);
    }
    check("clusters.json", &CLUSTERS.iter().map(|r| r.0).collect::<Vec<_>>());
}

type VoltageRow = (&'static str, fn(&VoltageClient));

const VOLTAGE: &[VoltageRow] = &[
    ("locations_list", |c| drop(c.locations(None, None))),
    ("location_get", |c| drop(c.location("x"))),
    ("hostnode_get", |c| drop(c.hostnode("x"))),
    ("vm_create", |c| drop(c.vm_create(&vw::VmCreateRequest::default()))),
    ("vms_list", |c| drop(c.vms(None, None))),
    ("vm_get", |c| drop(c.vm("x"))),
    ("vm_update", |c| drop(c.vm_update("x", &vw::NameTagsUpdate::default()))),
    ("vm_delete", |c| drop(c.vm_delete("x"))),
    ("vm_power_update", |c| drop(c.vm_power("x", "started"))),
    ("vm_port_forward_create", |c| drop(c.port_forward_create("x", 8080))),
    ("vm_port_forward_delete", |c| drop(c.port_forward_delete("x", 20001))),
    ("presets_list", |c| drop(c.presets(None))),
    ("preset_get", |c| drop(c.preset("x"))),
    ("bare_metal_locations_list", |c| drop(c.bare_metal_locations())),
    ("bare_metal_create", |c| drop(c.bare_metal_create(&vw::BareMetalCreateRequest::default()))),
    ("bare_metal_list", |c| drop(c.bare_metal(None, None))),
    ("bare_metal_power_update", |c| drop(c.bare_metal_power("x", "started"))),
    ("bare_metal_delete", |c| drop(c.bare_metal_delete("x"))),
    ("bare_metal_update", |c| drop(c.bare_metal_update("x", &vw::NameTagsUpdate::default()))),
    ("bare_metal_reboot", |c| drop(c.bare_metal_reboot("x", &[]))),
    ("billing_hourly_rate_get", |c| drop(c.billing_hourly_rate())),
    ("billing_transactions_list", |c| drop(c.billing_transactions(None, None, None))),
    ("billing_month_report_get", |c| drop(c.billing_month_report(2026, 1))),
    ("ssh_keys_list", |c| drop(c.ssh_keys())),
    ("ssh_key_create", |c| drop(c.ssh_key_add("x", "y"))),
    ("ssh_key_delete", |c| drop(c.ssh_key_delete("x"))),
    ("cloudinit_validate", |c| drop(c.validate_cloudinit(&vw::CloudInitValidateRequest::default()))),
    ("storage_hourly_rate_get", |c| drop(c.storage_hourly_rate())),
    ("storage_create", |c| drop(c.storage_create(&vw::StorageCreateRequest::default()))),
    ("storage_list", |c| drop(c.storage_list(None, None))),
    ("storage_delete", |c| drop(c.storage_delete("x"))),
    ("storage_update", |c| drop(c.storage_update("x", &vw::StorageUpdateRequest::default()))),
    ("storage_get", |c| drop(c.storage("x"))),
];

/// Every operation of `openapi/voltage.json` has a client method (as for Lambda and native), and
/// the document covers seed 004: each endpoint of the seed's JSON examples (tests/fixtures,
/// "METHOD /api/v1/path" as the seed writes it) is an operation of the document, and the
/// document has the 31 operations of the seed's "On this page" list.
#[tokio::test]
async fn every_voltage_park_operation_has_a_client_method_and_the_document_covers_the_seed() {
    let c = VoltageClient::new("http://127.0.0.1:9", "k");
    for (_, call) in VOLTAGE {
        call(&c);
    }
    check("voltage.json", &VOLTAGE.iter().map(|r| r.0).collect::<Vec<_>>());

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}/../../openapi/voltage.json", env!("CARGO_MANIFEST_DIR"))).unwrap())
            .unwrap();
    let base = doc["servers"][0]["url"].as_str().unwrap();
    assert_eq!(base, "/api/v1");
    let path = format!("{}/../../tests/fixtures/voltage-park-seed-examples.json", env!("CARGO_MANIFEST_DIR"));
    let ex: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let endpoints = ex.as_object().unwrap();
    assert!(endpoints.len() >= 20, "{} seed endpoints", endpoints.len());
    let missing: Vec<&String> = endpoints
        .keys()
        .filter(|k| {
            let (method, full) = k.split_once(' ').unwrap();
            let op = full.strip_prefix(base).map(|p| &doc["paths"][p][method.to_lowercase()]);
            !op.is_some_and(|op| op["operationId"].is_string())
        })
        .collect();
    assert!(missing.is_empty(), "seed 004 endpoints that are no operation of openapi/voltage.json: {missing:?}");
    assert_eq!(operation_ids("voltage.json").len(), 33, "the seed's 31 operations and the two port-forward extensions");
}
