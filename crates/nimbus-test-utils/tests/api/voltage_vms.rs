//! The Voltage Park dialect's instant-deploy presets, virtual machines and bare metal (seed
//! 004) on sim hosts: exact response shapes, keys/password/cloud-init reaching the instance,
//! power states and what they hold and bill, capacity that moves exactly with what runs
//! (concurrent creates included), tenant isolation and errors in the dialect's shape.

use std::collections::BTreeSet;

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::voltage::vp;
use crate::PUBKEY;

const OTHER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn6oEjRrsd3GNHlb0f6cpIc3oOqHvHvxAp7phYgnbeV other@host";
const INLINE_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcxWdYQdxBG1lKwJKS7pLsNA/ZYuFvRrdwXdjf4j6Oc inline@host";

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// The 1×H100 preset's id.
async fn h100_preset(s: &TestServer) -> String {
    let r = s.http.get(format!("{}/api/v1/instant-deploy-presets/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "presets are public");
    let all: Value = r.json().await.unwrap();
    let p = all
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["resources"]["gpus"]["h100-80gb-hbm3"]["count"] == 1 && p["resources"]["vcpu_count"] == 26)
        .unwrap_or_else(|| panic!("no 1xH100 preset: {all}"));
    p["id"].as_str().unwrap().to_owned()
}

async fn hostnode(s: &TestServer) -> Value {
    let (_, l) = vp(s, "GET", "/locations?limit=15", None).await;
    let east = l["results"].as_array().unwrap().iter().find(|l| l["region"] == "us-east-1").unwrap().clone();
    east["hostnodes"][0].clone()
}

async fn wait_vm(s: &TestServer, id: &str, status: &str) -> Value {
    let t = std::time::Instant::now();
    loop {
        let (st, v) = vp(s, "GET", &format!("/virtual-machines/{id}"), None).await;
        assert_eq!(st, 200, "{v}");
        if v["status"] == status {
            return v;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(15), "vm {id} never became {status}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn presets_and_the_life_of_a_vm() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 8)).start().await;

    // Presets: the seed's fields, availability from real capacity, the filter.
    let r = s.http.get(format!("{}/api/v1/instant-deploy-presets", s.url)).send().await.unwrap();
    let all: Value = r.json().await.unwrap();
    let preset_fields =
        set(&["id", "resources", "operating_system", "compute_rate_hourly", "storage_rate_hourly", "location_ids_with_availability"]);
    for p in all.as_array().unwrap() {
        assert_eq!(keys(p), preset_fields, "{p}");
        assert_eq!(keys(&p["resources"]), set(&["gpus", "vcpu_count", "ram_gb", "storage_gb"]));
    }
    let id = h100_preset(&s).await;
    let (_, one) = vp(&s, "GET", &format!("/instant-deploy-presets/{id}"), None).await;
    let node = hostnode(&s).await;
    assert_eq!(one["location_ids_with_availability"], json!([node["location_id"]]), "{one}");
    assert_eq!((one["compute_rate_hourly"].as_str(), one["storage_rate_hourly"].as_str()), (Some("3.290000"), Some("0.385792")));
    let avail = |v: &Value| {
        v.as_array().unwrap().iter().map(|p| !p["location_ids_with_availability"].as_array().unwrap().is_empty()).collect::<Vec<_>>()
    };
    let (_, yes) = vp(&s, "GET", "/instant-deploy-presets/?available=true", None).await;
    let (_, no) = vp(&s, "GET", "/instant-deploy-presets/?available=false", None).await;
    assert!(avail(&yes).iter().all(|a| *a) && avail(&no).iter().all(|a| !*a), "{yes} {no}");
    assert_eq!(yes.as_array().unwrap().len() + no.as_array().unwrap().len(), all.as_array().unwrap().len());
    assert!(!no.as_array().unwrap().is_empty(), "A100 types have no host here");
    let (st, e) = vp(&s, "GET", "/instant-deploy-presets/?available=maybe", None).await;
    assert_eq!((st, e["detail"][0]["loc"].clone()), (422, json!(["query", "available"])));
    let (st, _) = vp(&s, "GET", "/instant-deploy-presets/0123456789abcdef0123456789abcdef", None).await;
    assert_eq!(st, 404);

    // Two org keys; the VM gets only the selected one, plus an inline key and a password.
    let (_, k1) = vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "chosen", "content": PUBKEY}))).await;
    let (_, _k2) = vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "not chosen", "content": OTHER_KEY}))).await;
    let body = json!({
        "config_id": id,
        "name": "My Instant Virtual Machine",
        "password": "super_secret_instant_vm_password",
        "organization_ssh_keys": {"mode": "selective", "ssh_key_ids": [k1["id"]]},
        "ssh_keys": [INLINE_KEY],
        "cloud_init": {"write_files": [{"path": "/etc/hello", "content": "from cloud-init\n"}], "runcmd": ["touch /tmp/ran"]},
        "tags": ["tag1", "tag2"],
    });
    let (st, created) = vp(&s, "POST", "/virtual-machines/instant", Some(body.clone())).await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(keys(&created), set(&["vm_id"]));
    let vm_id = created["vm_id"].as_str().unwrap().to_owned();
    assert_eq!(vm_id.len(), 36);

    let inst = s.control.store().instance_list_by_org(&s.org.id).await.unwrap().pop().unwrap();
    assert_eq!(inst.ssh_public_keys, vec![PUBKEY.to_owned(), INLINE_KEY.to_owned()], "selected org key + inline key only");
    let ud = inst.user_data.clone().unwrap();
    assert!(ud.contains("$6$") && !ud.contains("super_secret"), "only the password's crypt hash is kept: {ud}");
    assert!(ud.contains("/etc/hello") && ud.contains("\"ssh_pwauth\":true"), "{ud}");
    assert_eq!(inst.hostname, "my-instant-virtual-machine");

    let v = wait_vm(&s, &vm_id, "Running").await;
    assert_eq!(
        keys(&v),
        set(&[
            "id",
            "hostnode_id",
            "type",
            "status",
            "name",
            "resources",
            "operating_system",
            "pricing",
            "public_ip",
            "port_forwards",
            "timestamp_creation",
            "tags"
        ])
    );
    assert_eq!(
        (v["type"].as_str(), v["name"].as_str(), v["hostnode_id"].clone()),
        (Some("ondem"), Some("My Instant Virtual Machine"), node["id"].clone())
    );
    assert_eq!(v["resources"], json!({"gpus": {"h100-80gb-hbm3": {"count": 1}}, "vcpu_count": 26, "ram_gb": 225, "storage_gb": 2816}));
    let p = &v["pricing"];
    assert_eq!(
        keys(p),
        set(&["gpus_per_hr", "vcpus_per_hr", "ram_per_hr", "storage_per_hr", "total_associated_per_hr", "total_disassociated_per_hr"])
    );
    let m = |k: &str| (p[k].as_str().unwrap().parse::<f64>().unwrap() * 1e6).round() as i64;
    assert_eq!(m("gpus_per_hr") + m("vcpus_per_hr") + m("ram_per_hr") + m("storage_per_hr"), m("total_associated_per_hr"), "{p}");
    assert_eq!((p["total_associated_per_hr"].as_str(), p["total_disassociated_per_hr"].as_str()), (Some("3.290000"), Some("0.385792")));
    assert_eq!(v["public_ip"], "127.0.0.1", "the agent's public address");
    assert_eq!(v["port_forwards"], json!([{"internal_port": 22, "external_port": 20000}]));
    assert_eq!(v["tags"], json!(["tag1", "tag2"]));

    // The hostnode lost exactly the VM's resources and the forwarded port.
    let n = hostnode(&s).await;
    let res = &n["available_resources"];
    assert_eq!(
        (res["vcpu_count"].as_i64(), res["ram_gb"].as_i64(), res["storage_gb"].as_i64(), res["gpus"]["h100-80gb-hbm3"]["count"].as_i64()),
        (Some(64 - 26), Some(512 - 225), Some(6400 - 2816), Some(7))
    );
    let ports = n["available_ports"].as_array().unwrap();
    assert_eq!((ports.len(), ports.contains(&json!(20000))), (255, false));

    // List, PATCH.
    let (_, l) = vp(&s, "GET", "/virtual-machines/", None).await;
    assert_eq!((l["total_result_count"].as_i64(), l["results"][0]["id"].as_str()), (Some(1), Some(vm_id.as_str())));
    let (st, e) = vp(&s, "GET", "/virtual-machines/?limit=101", None).await;
    assert_eq!((st, e["detail"][0]["loc"].clone()), (422, json!(["query", "limit"])));
    let (st, pv) = vp(&s, "PATCH", &format!("/virtual-machines/{vm_id}"), Some(json!({"name": "renamed", "tags": ["x"]}))).await;
    assert_eq!((st, pv), (200, json!({"name": "renamed", "tags": ["x"]})));
    let (st, pv) = vp(&s, "PATCH", &format!("/virtual-machines/{vm_id}"), Some(json!({"tags": ["y"]}))).await;
    assert_eq!((st, pv), (200, json!({"name": "renamed", "tags": ["y"]})), "an absent field is unchanged");

    // A plain stop keeps the reservation (and its full price); the disassociated stop gives
    // the compute back and keeps the disk; a start claims it again.
    let power = |st: &'static str| json!({"status": st});
    let (st, r) = vp(&s, "PUT", &format!("/virtual-machines/{vm_id}/power-status"), Some(power("stopped"))).await;
    assert_eq!((st, r), (200, json!({"status": "stopped"})));
    wait_vm(&s, &vm_id, "Stopped").await;
    assert_eq!(hostnode(&s).await["available_resources"]["vcpu_count"], 64 - 26);
    let (_, rate) = vp(&s, "GET", "/billing/hourly-rate", None).await;
    assert_eq!(rate["rate_hourly"], "3.290000", "stopped but reserved: billed like running");
    let (st, _) = vp(&s, "PUT", &format!("/virtual-machines/{vm_id}/power-status"), Some(power("stopped_disassociated"))).await;
    assert_eq!(st, 200);
    wait_vm(&s, &vm_id, "Disassociated").await;
    let res = hostnode(&s).await["available_resources"].clone();
    assert_eq!(
        (res["vcpu_count"].as_i64(), res["storage_gb"].as_i64(), res["gpus"]["h100-80gb-hbm3"]["count"].as_i64()),
        (Some(64), Some(6400 - 2816), Some(8)),
        "compute and GPU back, disk still held"
    );
    let (_, rate) = vp(&s, "GET", "/billing/hourly-rate", None).await;
    assert_eq!(rate["rate_hourly"], "0.385792", "the disk only");
    let (st, _) = vp(&s, "PUT", &format!("/virtual-machines/{vm_id}/power-status"), Some(power("started"))).await;
    assert_eq!(st, 200);
    wait_vm(&s, &vm_id, "Running").await;
    assert_eq!(hostnode(&s).await["available_resources"]["gpus"]["h100-80gb-hbm3"]["count"], 7);
    let (st, e) = vp(&s, "PUT", &format!("/virtual-machines/{vm_id}/power-status"), Some(power("sleeping"))).await;
    assert_eq!((st, e["detail"][0]["loc"].clone()), (422, json!(["body", "status"])));

    // Bad input, each in the dialect's shape.
    for (b, field) in [
        (json!({"config_id": id}), None),
        (json!({"config_id": "nope", "name": "x", "password": "longenough"}), Some("config_id")),
        (json!({"config_id": id, "name": "x", "password": "short"}), Some("password")),
        (json!({"config_id": id, "name": "x"}), Some("organization_ssh_keys")),
        (json!({"config_id": id, "name": "x", "ssh_keys": ["not a key"]}), Some("ssh_keys")),
        (json!({"config_id": id, "name": "x", "password": "longenough", "cloud_init": "#cloud-config\nruncmd: [\n"}), Some("user_data")),
    ] {
        let (st, e) = vp(&s, "POST", "/virtual-machines/instant", Some(b.clone())).await;
        assert_eq!(st, 422, "{b}: {e}");
        if let Some(f) = field {
            assert_eq!(e["detail"][0]["loc"], json!(["body", f]), "{b}: {e}");
        }
    }
    let (st, e) = vp(
        &s,
        "POST",
        "/virtual-machines/instant",
        Some(json!({"config_id": id, "name": "x", "organization_ssh_keys": {"mode": "selective", "ssh_key_ids": ["0123456789abcdef0123456789abcdef"]}})),
    )
    .await;
    assert_eq!((st, e["detail"].is_string()), (400, true), "an unknown org key: {e}");

    // Another organization sees and touches nothing.
    let (_, other) = s.org_with_key("other", "admin").await;
    let r = s.http.get(format!("{}/api/v1/virtual-machines/{vm_id}", s.url)).header("x-api-token", &other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.delete(format!("{}/api/v1/virtual-machines/{vm_id}", s.url)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.http.get(format!("{}/api/v1/virtual-machines", s.url)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["total_result_count"], 0);

    // Delete: 202, then gone, and everything it held is back.
    let (st, body) = vp(&s, "DELETE", &format!("/virtual-machines/{vm_id}"), None).await;
    assert_eq!((st, body), (202, Value::Null));
    s.wait_for("the VM to be gone", || async { vp(&s, "GET", &format!("/virtual-machines/{vm_id}"), None).await.0 == 404 }).await;
    let n = hostnode(&s).await;
    assert_eq!(
        n["available_resources"],
        json!({"gpus": {"h100-80gb-hbm3": {"count": 8}}, "ram_gb": 512, "storage_gb": 6400, "vcpu_count": 64})
    );
    assert_eq!(n["available_ports"].as_array().unwrap().len(), 256);
}

#[tokio::test]
async fn twenty_concurrent_creates_never_overcommit() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 512, 8)).start().await;
    let preset = h100_preset(&s).await;
    let creates = (0..20).map(|i| {
        let s = &s;
        let preset = preset.clone();
        async move {
            let body = json!({"config_id": preset, "name": format!("vm-{i}"), "ssh_keys": [PUBKEY]});
            vp(s, "POST", "/virtual-machines/instant", Some(body)).await
        }
    });
    let results = futures_util::future::join_all(creates).await;
    let ok: Vec<&Value> = results.iter().filter(|(st, _)| *st == 201).map(|(_, v)| v).collect();
    let refused = results.iter().filter(|(st, v)| *st == 400 && v["detail"].is_string()).count();
    assert_eq!((ok.len(), refused), (8, 12), "8 GPUs: 8 VMs and 12 clear refusals: {results:?}");

    let n = hostnode(&s).await;
    assert_eq!(n["available_resources"]["gpus"]["h100-80gb-hbm3"]["count"], 0);
    assert_eq!(n["available_resources"]["vcpu_count"], 512 - 8 * 26);
    let (_, l) = vp(&s, "GET", "/virtual-machines/?limit=100", None).await;
    let ports: BTreeSet<i64> =
        l["results"].as_array().unwrap().iter().map(|v| v["port_forwards"][0]["external_port"].as_i64().unwrap()).collect();
    assert_eq!(ports.len(), 8, "every VM its own port: {l}");

    for v in ok {
        let (st, e) = vp(&s, "DELETE", &format!("/virtual-machines/{}", v["vm_id"].as_str().unwrap()), None).await;
        assert_eq!(st, 202, "{e}");
    }
    s.wait_for("all capacity back", || async {
        let n = hostnode(&s).await;
        n["available_resources"]["gpus"]["h100-80gb-hbm3"]["count"] == 8 && n["available_resources"]["vcpu_count"] == 512
    })
    .await;
    assert_eq!(hostnode(&s).await["available_ports"].as_array().unwrap().len(), 256);
}

#[tokio::test]
async fn bare_metal_rents_whole_hosts_all_or_nothing() {
    let mut a = sim_host("a", 64, 8);
    a.address_block = 1;
    let mut b = sim_host("b", 64, 8);
    b.address_block = 2;
    let s = TestServer::builder().host("us-east-1", a).host("us-east-1", b).start().await;

    let r = s.http.get(format!("{}/api/v1/bare-metal/locations", s.url)).send().await.unwrap();
    let locs: Value = r.json().await.unwrap();
    assert_eq!(keys(&locs), set(&["results", "total_result_count", "has_previous", "has_next"]));
    let loc =
        locs["results"].as_array().unwrap().iter().find(|l| l["gpu_count_ethernet"] == 16).unwrap_or_else(|| panic!("{locs}")).clone();
    assert_eq!(
        keys(&loc),
        set(&["id", "gpu_count_ethernet", "gpu_price_ethernet", "gpu_count_infiniband", "gpu_price_infiniband", "specs_per_node"])
    );
    assert_eq!(loc["gpu_price_ethernet"], 3.29);
    assert_eq!(
        loc["specs_per_node"],
        json!({"gpu_model": "h100-80gb-hbm3", "gpu_count": 8, "cpu_model": loc["specs_per_node"]["cpu_model"], "cpu_count": 64, "ram_gb": 512, "storage_gb": 6400})
    );

    let (_, key) = vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "laptop", "content": PUBKEY}))).await;
    let req = |gpus: i64, net: &str| {
        json!({
            "location_id": loc["id"], "gpu_count": gpus, "name": "My Baremetal Rental", "network_type": net,
            "organization_ssh_keys": {"mode": "all"}, "sub_order": 12345, "tags": ["tag1"],
            "cloudinit_script": {"runcmd": ["echo hi"]},
        })
    };
    for (gpus, net, st_want) in [(12, "ethernet", 422), (0, "ethernet", 422), (8, "infiniband", 400), (8, "token-ring", 422)] {
        let (st, e) = vp(&s, "POST", "/bare-metal/", Some(req(gpus, net))).await;
        assert_eq!(st, st_want, "{gpus} {net}: {e}");
    }
    // One host taken by a VM: a two-node rental cannot be placed, and takes nothing.
    let preset = h100_preset(&s).await;
    let (st, vm) =
        vp(&s, "POST", "/virtual-machines/instant", Some(json!({"config_id": preset, "name": "vm", "ssh_keys": [PUBKEY]}))).await;
    assert_eq!(st, 201, "{vm}");
    let (st, e) = vp(&s, "POST", "/bare-metal/", Some(req(16, "ethernet"))).await;
    assert_eq!((st, e["detail"].is_string()), (400, true), "{e}");
    let r = s.http.get(format!("{}/api/v1/bare-metal/locations", s.url)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["results"][0]["gpu_count_ethernet"], 8, "the free host stayed free");
    vp(&s, "DELETE", &format!("/virtual-machines/{}", vm["vm_id"].as_str().unwrap()), None).await;
    s.wait_for("the VM's host to be free", || async {
        let r = s.http.get(format!("{}/api/v1/bare-metal/locations", s.url)).send().await.unwrap();
        r.json::<Value>().await.unwrap()["results"][0]["gpu_count_ethernet"] == 16
    })
    .await;

    let (st, created) = vp(&s, "POST", "/bare-metal/", Some(req(16, "ethernet"))).await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(keys(&created), set(&["rental_id", "warning"]));
    let rid = created["rental_id"].as_str().unwrap().to_owned();
    let (_, h) = vp(&s, "GET", &format!("/hostnodes/{}", hostnode(&s).await["id"].as_str().unwrap()), None).await;
    assert_eq!(h["available_resources"]["vcpu_count"], 0, "the whole host is rented");
    let (st, _) = vp(&s, "POST", "/virtual-machines/instant", Some(json!({"config_id": preset, "name": "vm", "ssh_keys": [PUBKEY]}))).await;
    assert_eq!(st, 400, "no room left for a VM");

    let list = || async {
        let (_, l) = vp(&s, "GET", "/bare-metal/", None).await;
        l
    };
    let l = list().await;
    assert_eq!(l["total_result_count"], 1);
    let r = &l["results"][0];
    assert_eq!(
        keys(r),
        set(&[
            "id",
            "name",
            "creation_timestamp",
            "status",
            "power_status",
            "node_count",
            "specs_per_node",
            "rate_hourly",
            "network_type",
            "username",
            "node_networking",
            "sub_order",
            "storage_id",
            "storage_pv",
            "storage_pvc",
            "k8s_cluster_id",
            "kubeconfig",
            "tags"
        ])
    );
    assert_eq!(
        (r["id"].as_str(), r["node_count"].as_i64(), r["rate_hourly"].as_str(), r["sub_order"].as_str(), r["username"].as_str()),
        (Some(rid.as_str()), Some(2), Some("52.640000"), Some("12345"), Some("ubuntu"))
    );
    assert_eq!((r["k8s_cluster_id"].clone(), r["kubeconfig"].clone()), (Value::Null, Value::Null));
    let vms = vp(&s, "GET", "/virtual-machines/", None).await.1;
    assert_eq!(vms["total_result_count"], 0, "nodes are not VMs");
    s.wait_for("both nodes running", || async { list().await["results"][0]["status"] == "Running" }).await;
    let nets = list().await["results"][0]["node_networking"].clone();
    let ips: Vec<String> = nets.as_array().unwrap().iter().map(|n| n["public_ip"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ips.len(), 2);
    assert_ne!(ips[0], ips[1]);

    // PATCH, reboot one node by its address (Pending, then back), power off and on, delete.
    let (st, p) = vp(&s, "PATCH", &format!("/bare-metal/{rid}"), Some(json!({"name": "renamed"}))).await;
    assert_eq!((st, p), (200, json!({"name": "renamed", "tags": ["tag1"]})));
    let (st, e) = vp(&s, "POST", &format!("/bare-metal/{rid}/reboot"), Some(json!({"public_ips": ["203.0.113.9"]}))).await;
    assert_eq!((st, e["detail"].is_string()), (400, true), "not a node's address: {e}");
    let (st, _) = vp(&s, "POST", &format!("/bare-metal/{rid}/reboot"), Some(json!({"public_ips": [ips[0]]}))).await;
    assert_eq!(st, 201);
    s.wait_for("running again after the reboot", || async { list().await["results"][0]["status"] == "Running" }).await;
    let (st, _) = vp(&s, "PUT", &format!("/bare-metal/{rid}/power-status"), Some(json!({"status": "stopped"}))).await;
    assert_eq!(st, 200);
    s.wait_for("stopped", || async { list().await["results"][0]["status"] == "Stopped" }).await;
    let (st, _) = vp(&s, "PUT", &format!("/bare-metal/{rid}/power-status"), Some(json!({"status": "started"}))).await;
    assert_eq!(st, 200);
    s.wait_for("started", || async { list().await["results"][0]["status"] == "Running" }).await;

    // Storage orders may be rentals: all their nodes, which must share the storage's host.
    let (st, e) = vp(&s, "POST", "/storage/", Some(json!({"size_in_gb": 1, "name": "data", "order_ids": [rid]}))).await;
    assert_eq!((st, e["detail"].is_string()), (400, true), "two nodes on two hosts cannot share host-local storage: {e}");

    let (_, other) = s.org_with_key("other", "admin").await;
    let r = s.http.delete(format!("{}/api/v1/bare-metal/{rid}", s.url)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(r.status(), 404, "another org cannot end it");
    let (st, body) = vp(&s, "DELETE", &format!("/bare-metal/{rid}"), None).await;
    assert_eq!((st, body), (202, Value::Null));
    assert_eq!(list().await["total_result_count"], 0);
    s.wait_for("both hosts free again", || async {
        let r = s.http.get(format!("{}/api/v1/bare-metal/locations", s.url)).send().await.unwrap();
        r.json::<Value>().await.unwrap()["results"][0]["gpu_count_ethernet"] == 16
    })
    .await;

    // A one-node rental takes storage by its rental id and shows it as the order.
    let (st, one) = vp(&s, "POST", "/bare-metal/", Some(req(8, "ethernet"))).await;
    assert_eq!(st, 201, "{one}");
    let one = one["rental_id"].as_str().unwrap().to_owned();
    let (st, st_body) = vp(&s, "POST", "/storage/", Some(json!({"size_in_gb": 1, "name": "data", "order_ids": [one]}))).await;
    assert_eq!((st, st_body["order_ids"].clone()), (201, json!([one])), "{st_body}");
    let (st, _) = vp(&s, "PATCH", &format!("/storage/{}", st_body["id"].as_str().unwrap()), Some(json!({"order_ids": []}))).await;
    assert_eq!(st, 200);
    let (st, _) = vp(&s, "DELETE", &format!("/storage/{}", st_body["id"].as_str().unwrap()), None).await;
    assert_eq!(st, 204);
    let _ = key;
}

/// Port forwards: a VM opens a port of its public address to one of its ports, sees it in its
/// `port_forwards` and in its host's desired state, closes it; wrong ports, repeats, the SSH
/// forward, another org's key and a READ key are refused in the dialect's shapes.
#[tokio::test]
async fn port_forwards_open_and_close() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 8)).start().await;
    let (st, k) = vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "web key", "content": PUBKEY}))).await;
    assert!(k["id"].is_string(), "{st} {k}");
    let body = json!({"config_id": h100_preset(&s).await, "name": "web", "organization_ssh_keys": {"mode": "selective", "ssh_key_ids": [k["id"]]}});
    let (st, created) = vp(&s, "POST", "/virtual-machines/instant", Some(body)).await;
    assert_eq!(st, 201, "{created}");
    let vm_id = created["vm_id"].as_str().unwrap().to_owned();
    let v = wait_vm(&s, &vm_id, "Running").await;
    let ssh = v["port_forwards"].as_array().unwrap().clone();
    assert_eq!(ssh.len(), 1, "the SSH forward of the launch: {v}");
    assert_eq!(ssh[0]["internal_port"], 22);

    let path = format!("/virtual-machines/{vm_id}/port-forwards");
    let (st, f) = vp(&s, "POST", &path, Some(json!({"internal_port": 8080}))).await;
    assert_eq!(st, 201, "{f}");
    assert_eq!(f["internal_port"], 8080);
    let ext = f["external_port"].as_i64().unwrap();
    assert!(ext != ssh[0]["external_port"].as_i64().unwrap() && (20_000..20_256).contains(&ext), "{f}");
    let v = wait_vm(&s, &vm_id, "Running").await;
    assert_eq!(v["port_forwards"], json!([ssh[0], {"internal_port": 8080, "external_port": ext}]));
    // The host is told: its desired state forwards that port to the VM's 8080.
    let inst = s.control.store().instance_list_by_org(&s.org.id).await.unwrap().pop().unwrap();
    let host = inst.host_id.clone().unwrap();
    let d = nimbus_control::agents::desired(&s.control, &host, nimbus_proto::DesiredRequest { known_generation: -1, ..Default::default() })
        .await
        .unwrap();
    let di = d.instances.iter().find(|i| i.id == inst.id.as_str()).unwrap();
    assert_eq!(di.port_forwards, vec![(u16::try_from(ext).unwrap(), 8080)]);

    for (body, status, why) in [
        (json!({"internal_port": 8080}), 400, "the same port twice"),
        (json!({"internal_port": 22}), 400, "port 22 has the SSH forward"),
        (json!({"internal_port": 0}), 422, "port 0"),
        (json!({"internal_port": 70000}), 422, "a port past 65535"),
        (json!({"internal_port": "80"}), 422, "a string"),
        (json!({}), 422, "no port"),
    ] {
        let (st, e) = vp(&s, "POST", &path, Some(body)).await;
        assert_eq!(st, status, "{why}: {e}");
    }
    // Another org does not see the VM; a READ key cannot open or close.
    let (_, other) = s.org_with_key("pf-other", "ADMIN").await;
    let (_, reader) = s.org_with_key(&s.org.name, "READ").await;
    for (key, status) in [(&other, 404), (&reader, 403)] {
        let r = s
            .http
            .post(format!("{}/api/v1{path}", s.url))
            .header("x-api-token", key)
            .json(&json!({"internal_port": 9090}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        let r = s.http.delete(format!("{}/api/v1{path}/{ext}", s.url)).header("x-api-token", key).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
    }
    let (st, _) = vp(&s, "DELETE", &format!("{path}/{}", ssh[0]["external_port"]), None).await;
    assert_eq!(st, 400, "the SSH forward goes only with the VM");
    let (st, _) = vp(&s, "DELETE", &format!("{path}/{ext}"), None).await;
    assert_eq!(st, 202);
    let (st, _) = vp(&s, "DELETE", &format!("{path}/{ext}"), None).await;
    assert_eq!(st, 404, "closed already");
    let (st, _) = vp(&s, "DELETE", &format!("{path}/not-a-port"), None).await;
    assert_eq!(st, 422);
    assert_eq!(wait_vm(&s, &vm_id, "Running").await["port_forwards"], json!([ssh[0]]));
    s.shutdown().await;
}

/// Bare-metal rentals of one `sub_order` share a network: each node's host is told the others'
/// nodes as peers (reachable on every port, in `/etc/hosts`); a rental of another sub_order is
/// no peer of theirs.
#[tokio::test]
async fn rentals_of_one_sub_order_are_peers() {
    let mut b = TestServer::builder();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let mut h = sim_host(name, 64, 8);
        h.address_block = u8::try_from(i + 1).unwrap();
        b = b.host("us-east-1", h);
    }
    let s = b.start().await;
    let r = s.http.get(format!("{}/api/v1/bare-metal/locations", s.url)).send().await.unwrap();
    let locs: Value = r.json().await.unwrap();
    let loc = locs["results"][0]["id"].clone();
    vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "laptop", "content": PUBKEY}))).await;
    let mut rentals = Vec::new();
    for (name, sub) in [("one", "order-a"), ("two", "order-a"), ("three", "order-b")] {
        let body = json!({"location_id": loc, "gpu_count": 8, "name": name, "network_type": "ethernet",
            "organization_ssh_keys": {"mode": "all"}, "sub_order": sub});
        let (st, v) = vp(&s, "POST", "/bare-metal/", Some(body)).await;
        assert_eq!(st, 201, "{v}");
        rentals.push(name);
    }
    s.wait_for("every node active with an address", || async {
        let all = s.control.store().instance_list_by_org(&s.org.id).await.unwrap();
        all.len() == 3 && all.iter().all(|i| i.private_ip.is_some() && i.state == nimbus_core::instance::InstanceState::Active)
    })
    .await;
    let nodes = s.control.store().instance_list_by_org(&s.org.id).await.unwrap();
    let by_rental = |name: &str| nodes.iter().find(|i| i.name.as_deref() == Some(name)).unwrap().clone();
    let (one, two, three) = (by_rental("one"), by_rental("two"), by_rental("three"));
    let peers = |i: &nimbus_core::model::Instance| {
        let (c, host, id) = (s.control.clone(), i.host_id.clone().unwrap(), i.id.to_string());
        async move {
            let d = nimbus_control::agents::desired(&c, &host, nimbus_proto::DesiredRequest { known_generation: -1, ..Default::default() })
                .await
                .unwrap();
            d.instances.iter().find(|x| x.id == id).unwrap().peers.iter().map(|p| p.ip.clone()).collect::<Vec<_>>()
        }
    };
    assert_eq!(peers(&one).await, vec![two.private_ip.clone().unwrap()]);
    assert_eq!(peers(&two).await, vec![one.private_ip.clone().unwrap()]);
    assert!(peers(&three).await.is_empty(), "another sub_order is another network");
    s.shutdown().await;
}
