//! Every JSON example of seed 004 against what Nimbus answers, field by field: the same keys at
//! every level and the same JSON types (a few documented optional fields may be `null`). The
//! examples are extracted verbatim from the seed into tests/fixtures/voltage-park-seed-examples.json
//! (per endpoint: the request body, when there is one, then the response). Request bodies are
//! the seed's own, with its placeholders (ids, keys, `"text"` paths) replaced by real values.

use serde_json::{json, Value};

use crate::PUBKEY;

fn examples() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/voltage-park-seed-examples.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Fields the seed shows with a value that Nimbus may leave `null` (documented in
/// docs/voltage-park.md): nothing to report for them here.
const MAY_BE_NULL: &[&str] =
    &["storage_id", "storage_pv", "storage_pvc", "k8s_cluster_id", "kubeconfig", "warning", "timestamp_deletion", "sub_order"];

/// Maps keyed by data (GPU model slugs), not by field names.
const DATA_KEYED: &[&str] = &["gpus", "per_gpu_hr"];

struct Checker {
    ex: Value,
    checked: Vec<String>,
    problems: Vec<String>,
}

impl Checker {
    /// The seed's request body of `endpoint` (its first example).
    fn body(&self, endpoint: &str) -> Value {
        self.ex[endpoint][0].clone()
    }

    /// Compares `got` with the seed's response example of `endpoint` (its last example).
    fn check(&mut self, endpoint: &str, got: &Value) {
        let want = self.ex[endpoint].as_array().and_then(|a| a.last()).unwrap_or_else(|| panic!("no example for {endpoint}")).clone();
        assert!(!got.is_null(), "{endpoint}: no response body");
        let mut out = Vec::new();
        crate::shape::diff(&want, got, &crate::shape::Rules { may_be_null: MAY_BE_NULL, data_keyed: DATA_KEYED }, endpoint, "", &mut out);
        self.problems.extend(out);
        self.checked.push(endpoint.to_owned());
    }
}

#[tokio::test]
async fn every_seed_example_field_by_field() {
    let (s, clock) = crate::two_h100_hosts_at("2026-05-16T08:00:00Z").await;
    let call = |m: &'static str, p: String, body: Option<Value>| {
        let s = &s;
        async move { crate::vp_ok(s, m, &p, body).await }
    };
    let mut c = Checker { ex: examples(), checked: Vec::new(), problems: Vec::new() };

    // Organization SSH keys.
    let mut body = c.body("POST /api/v1/organization/ssh-keys");
    body["content"] = json!(PUBKEY);
    let key = call("POST", "/organization/ssh-keys".into(), Some(body)).await;
    c.check("POST /api/v1/organization/ssh-keys", &key);
    c.check("GET /api/v1/organization/ssh-keys", &call("GET", "/organization/ssh-keys".into(), None).await);

    // Locations, hostnodes, presets.
    let locs = call("GET", "/locations/".into(), None).await;
    let east = call("GET", "/locations/?limit=15".into(), None).await["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["region"] == "us-east-1")
        .unwrap()
        .clone();
    c.check("GET /api/v1/locations/", &locs);
    c.check("GET /api/v1/locations/{location_id}", &call("GET", format!("/locations/{}", east["id"].as_str().unwrap()), None).await);
    let node = east["hostnodes"][0]["id"].as_str().unwrap().to_owned();
    c.check("GET /api/v1/hostnodes/{hostnode_id}", &call("GET", format!("/hostnodes/{node}"), None).await);
    let presets = call("GET", "/instant-deploy-presets/".into(), None).await;
    c.check("GET /api/v1/instant-deploy-presets/", &presets);
    let preset =
        presets.as_array().unwrap().iter().find(|p| p["compute_rate_hourly"] == "3.290000").unwrap()["id"].as_str().unwrap().to_owned();
    c.check(
        "GET /api/v1/instant-deploy-presets/{instant_deploy_preset_id}",
        &call("GET", format!("/instant-deploy-presets/{preset}"), None).await,
    );

    // A VM from the seed's own request, its placeholders made real.
    let mut body = c.body("POST /api/v1/virtual-machines/instant");
    body["config_id"] = json!(preset);
    body["organization_ssh_keys"]["ssh_key_ids"] = json!([key["id"]]);
    body["ssh_keys"] = json!([PUBKEY]);
    body["cloud_init"]["packages"] = json!([]);
    body["cloud_init"]["write_files"][0] =
        json!({"encoding": "b64", "content": "aGk=", "owner": "root:root", "path": "/etc/x", "permissions": "0644"});
    let vm = call("POST", "/virtual-machines/instant".into(), Some(body)).await;
    c.check("POST /api/v1/virtual-machines/instant", &vm);
    let vm = vm["vm_id"].as_str().unwrap().to_owned();
    s.wait_for("the VM running", || async { call("GET", format!("/virtual-machines/{vm}"), None).await["status"] == "Running" }).await;
    c.check("GET /api/v1/virtual-machines/", &call("GET", "/virtual-machines/".into(), None).await);
    c.check("GET /api/v1/virtual-machines/{virtual_machine_id}", &call("GET", format!("/virtual-machines/{vm}"), None).await);
    let body = c.body("PATCH /api/v1/virtual-machines/{virtual_machine_id}");
    c.check("PATCH /api/v1/virtual-machines/{virtual_machine_id}", &call("PATCH", format!("/virtual-machines/{vm}"), Some(body)).await);
    let body = c.body("PUT /api/v1/virtual-machines/{virtual_machine_id}/power-status");
    let r = call("PUT", format!("/virtual-machines/{vm}/power-status"), Some(body)).await;
    c.check("PUT /api/v1/virtual-machines/{virtual_machine_id}/power-status", &r);

    // Storage, attached to the VM.
    let mut body = c.body("POST /api/v1/storage/");
    body["order_ids"] = json!([vm]);
    let st = call("POST", "/storage/".into(), Some(body)).await;
    c.check("POST /api/v1/storage/", &st);
    let sid = st["id"].as_str().unwrap().to_owned();
    c.check("GET /api/v1/storage/", &call("GET", "/storage/".into(), None).await);
    c.check("GET /api/v1/storage/{storage_id}", &call("GET", format!("/storage/{sid}"), None).await);
    let mut body = c.body("PATCH /api/v1/storage/{storage_id}");
    body["size_in_gb"] = json!(200);
    body["order_ids"] = json!([vm]);
    c.check("PATCH /api/v1/storage/{storage_id}", &call("PATCH", format!("/storage/{sid}"), Some(body)).await);
    c.check("GET /api/v1/storage/hourly-rate", &call("GET", "/storage/hourly-rate".into(), None).await);

    // Bare metal on the other (empty) host, from the seed's request, with its own storage.
    c.check("GET /api/v1/bare-metal/locations", &call("GET", "/bare-metal/locations".into(), None).await);
    let bm_storage = call("POST", "/storage/".into(), Some(json!({"size_in_gb": 1, "name": "bm"}))).await["id"].clone();
    let mut body = c.body("POST /api/v1/bare-metal/");
    body["location_id"] = east["id"].clone();
    body["gpu_count"] = json!(8);
    body["network_type"] = json!("ethernet");
    body["organization_ssh_keys"]["ssh_key_ids"] = json!([key["id"]]);
    body["ssh_keys"] = json!([PUBKEY]);
    body["storage_id"] = bm_storage;
    body["cloudinit_script"]["packages"] = json!([]);
    body["cloudinit_script"]["write_files"][0] = json!({"content": "hi", "path": "/etc/y"});
    let rental = call("POST", "/bare-metal/".into(), Some(body)).await;
    c.check("POST /api/v1/bare-metal/", &rental);
    let rid = rental["rental_id"].as_str().unwrap().to_owned();
    s.wait_for("the node running", || async { call("GET", "/bare-metal/".into(), None).await["results"][0]["status"] == "Running" }).await;
    c.check("GET /api/v1/bare-metal/", &call("GET", "/bare-metal/".into(), None).await);
    let body = c.body("PATCH /api/v1/bare-metal/{baremetal_rental_id}");
    c.check("PATCH /api/v1/bare-metal/{baremetal_rental_id}", &call("PATCH", format!("/bare-metal/{rid}"), Some(body)).await);
    let body = c.body("PUT /api/v1/bare-metal/{baremetal_rental_id}/power-status");
    let (st_code, _) = s.send(&s.key, "PUT", format!("{}/api/v1/bare-metal/{rid}/power-status", s.url), Some(body)).await;
    assert_eq!(st_code, 200);
    let ip = call("GET", "/bare-metal/".into(), None).await["results"][0]["node_networking"][0]["public_ip"].clone();
    let mut body = c.body("POST /api/v1/bare-metal/{baremetal_rental_id}/reboot");
    body["public_ips"] = json!([ip]);
    let (st_code, _) = s.send(&s.key, "POST", format!("{}/api/v1/bare-metal/{rid}/reboot", s.url), Some(body)).await;
    assert_eq!(st_code, 201);

    // Cloud-init validation with the seed's body ("text" is no cloud-init: an error, in shape).
    let body = c.body("POST /api/v1/validate/cloudinit");
    let v = call("POST", "/validate/cloudinit".into(), Some(body)).await;
    assert_eq!(v["error"], true);
    c.check("POST /api/v1/validate/cloudinit", &v);

    // Billing, after an hour of use has been rolled into the ledger.
    clock.advance_secs(3600);
    nimbus_control::metering::roll_up(&s.control).await.unwrap();
    c.check("GET /api/v1/billing/hourly-rate", &call("GET", "/billing/hourly-rate".into(), None).await);
    let txs = call("GET", "/billing/transactions".into(), None).await;
    assert!(txs["total_result_count"].as_i64().unwrap() > 0, "{txs}");
    // The seed's example is a VM's charge: compare those (a rental's charge names the rental).
    let vm_txs: Vec<Value> = txs["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["details"]["linked_instance"]["type"] == "virtual_machine_instance")
        .cloned()
        .collect();
    assert!(!vm_txs.is_empty(), "{txs}");
    c.check(
        "GET /api/v1/billing/transactions",
        &json!({"results": vm_txs, "total_result_count": 1, "has_previous": false, "has_next": false}),
    );
    let report = call("GET", "/billing/reports/2026/5/transactions".into(), None).await;
    let report_vm = json!({
        "transactions": vm_txs,
        "balance_at_period_start": report["balance_at_period_start"],
        "balance_delta_in_period": report["balance_delta_in_period"],
        "balance_at_period_end": report["balance_at_period_end"],
    });
    c.check("GET /api/v1/billing/reports/{year}/{month}/transactions", &report_vm);

    // Every example with a JSON response was compared.
    let mut not_checked: Vec<&String> = c.ex.as_object().unwrap().keys().filter(|k| !c.checked.contains(k)).collect();
    not_checked.retain(|k| {
        // Examples that are request bodies only (their responses are "No content" in the seed).
        !matches!(
            k.as_str(),
            "PUT /api/v1/bare-metal/{baremetal_rental_id}/power-status" | "POST /api/v1/bare-metal/{baremetal_rental_id}/reboot"
        )
    });
    assert!(not_checked.is_empty(), "examples not compared: {not_checked:?}");
    assert!(c.problems.is_empty(), "differences from seed 004:\n{}", c.problems.join("\n"));
}
