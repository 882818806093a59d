//! The Voltage Park dialect (seed 004): shapes of locations, hostnodes, organization SSH keys,
//! cloud-init validation; its errors; capacity it reports moves with what runs.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::PUBKEY;

pub(crate) async fn vp(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = s.http.request(m, format!("{}/api/v1{path}", s.url)).header("x-api-token", &s.key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let st = r.status().as_u16();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn locations_hostnodes_keys_and_cloudinit() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 8)).start().await;

    let (st, v) = vp(&s, "GET", "/locations/", None).await;
    assert_eq!(st, 200, "{v}");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["has_next", "has_previous", "results", "total_result_count"], "exactly the seed's fields");
    assert_eq!(
        (v["results"].as_array().unwrap().len(), v["has_previous"].as_bool(), v["has_next"].as_bool()),
        (3, Some(false), Some(true))
    );
    let (_, all) = vp(&s, "GET", "/locations?limit=15", None).await;
    let east = all["results"].as_array().unwrap().iter().find(|l| l["region"] == "us-east-1").unwrap().clone();
    assert_eq!((east["city"].as_str(), east["country"].as_str()), (Some("Virginia"), Some("USA")));
    let node = east["hostnodes"][0].clone();
    assert_eq!(node["location_id"], east["id"]);
    let res = &node["available_resources"];
    assert_eq!(
        (res["vcpu_count"].as_i64(), res["ram_gb"].as_i64(), res["gpus"]["h100-80gb-hbm3"]["count"].as_i64()),
        (Some(64), Some(512), Some(8))
    );
    assert_eq!(node["pricing"]["per_gpu_hr"]["h100-80gb-hbm3"], "3.290000", "the one-GPU H100 SXM5 type's price");
    assert_eq!(node["pricing"]["per_gb_storage_hr"], "0.000137");
    let (st, one) = vp(&s, "GET", &format!("/locations/{}", east["id"].as_str().unwrap()), None).await;
    assert_eq!((st, &one["id"]), (200, &east["id"]));

    // The hostnode's free resources go down by exactly what an instance takes, and back.
    let hn = format!("/hostnodes/{}", node["id"].as_str().unwrap());
    s.expect("POST", "/ssh-keys", Some(json!({"name": "k", "public_key": PUBKEY})), 200).await;
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k"]})),
            200,
        )
        .await;
    let id = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let (_, h) = vp(&s, "GET", &hn, None).await;
    assert_eq!(
        (h["available_resources"]["vcpu_count"].as_i64(), h["available_resources"]["gpus"]["h100-80gb-hbm3"]["count"].as_i64()),
        (Some(64 - 26), Some(7))
    );
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]})), 200).await;
    s.wait_status(&s.key, &id, "terminated").await;
    let (_, h) = vp(&s, "GET", &hn, None).await;
    assert_eq!(h["available_resources"]["vcpu_count"], 64);
    let (st, e) = vp(&s, "GET", "/hostnodes/0123456789abcdef0123456789abcdef", None).await;
    assert_eq!((st, e["detail"].is_string()), (404, true), "{e}");

    // Organization SSH keys are the org's SSH keys (the Lambda dialect lists them too).
    let (st, k) = vp(&s, "POST", "/organization/ssh-keys", Some(json!({"name": "My Laptop-1", "content": PUBKEY}))).await;
    assert_eq!(st, 201, "{k}");
    assert_eq!(k.as_object().unwrap().len(), 3);
    assert_eq!(k["id"].as_str().unwrap().len(), 36, "UUID-shaped");
    let (_, l) = s.call(&s.key, "GET", "/ssh-keys", None).await;
    assert!(l["data"].as_array().unwrap().iter().any(|x| x["name"] == "My Laptop-1"));
    let (_, list) = vp(&s, "GET", "/organization/ssh-keys", None).await;
    assert_eq!(list["total_result_count"], 2);
    for (body, field) in [
        (json!({"name": "ab", "content": PUBKEY}), "name"),
        (json!({"name": "under_score", "content": PUBKEY}), "name"),
        (json!({"name": "fine name", "content": "not a key"}), "content"),
    ] {
        let (st, e) = vp(&s, "POST", "/organization/ssh-keys", Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {e}");
        assert_eq!(e["detail"][0]["loc"], json!(["body", field]), "{e}");
    }
    let (st, _) = vp(&s, "DELETE", &format!("/organization/ssh-keys/{}", k["id"].as_str().unwrap()), None).await;
    assert_eq!(st, 204);

    // Cloud-init validation, string and object forms.
    for (content, error) in [
        (json!("#cloud-config\nruncmd:\n  - echo hi\n"), false),
        (json!("#cloud-config\nruncmd: [unclosed\n"), true),
        (json!({"write_files": [{"path": "/etc/x", "content": "y"}]}), false),
        (json!("#!/bin/sh\necho hi\n"), false),
    ] {
        let (st, v) = vp(&s, "POST", "/validate/cloudinit", Some(json!({"type": "instant-vm", "content": content}))).await;
        assert_eq!((st, v["error"].as_bool()), (200, Some(error)), "{content}: {v}");
    }
    let (st, v) = vp(&s, "POST", "/validate/cloudinit", Some(json!({"type": "lunar", "content": "x"}))).await;
    assert_eq!((st, v["detail"][0]["loc"].clone()), (422, json!(["body", "type"])));

    // Errors in the dialect's shape.
    let (st, e) = vp(&s, "GET", "/locations?limit=16", None).await;
    assert_eq!((st, e["detail"][0]["loc"].clone()), (422, json!(["query", "limit"])));
    let r = s.http.get(format!("{}/api/v1/organization/ssh-keys", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    let r = s.http.get(format!("{}/api/v1/storage/hourly-rate", s.url)).bearer_auth(&s.key).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"hourly_rate_per_gb": "0.000137"}));
}

/// Every tenant sees each host's free resources (seed 004), but under an id of its own: the
/// `hostnode_id` one org's VM reveals names nothing another org can look up or compare.
#[tokio::test]
async fn hostnode_ids_are_per_organization() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 64, 8)).start().await;
    let (_, b_key) = s.org_with_key("org-b", "ADMIN").await;
    let east = |v: &Value| v["results"].as_array().unwrap().iter().find(|l| l["region"] == "us-east-1").unwrap()["hostnodes"].clone();
    let (_, a) = vp(&s, "GET", "/locations?limit=15", None).await;
    let r = s.http.get(format!("{}/api/v1/locations?limit=15", s.url)).header("x-api-token", &b_key).send().await.unwrap();
    let b: Value = r.json().await.unwrap();
    let (a_nodes, b_nodes) = (east(&a), east(&b));
    assert_eq!((a_nodes.as_array().unwrap().len(), b_nodes.as_array().unwrap().len()), (1, 1));
    let (a_id, b_id) = (a_nodes[0]["id"].as_str().unwrap(), b_nodes[0]["id"].as_str().unwrap());
    assert_ne!(a_id, b_id, "one host, two orgs, two ids");
    assert_eq!(a_nodes[0]["available_resources"], b_nodes[0]["available_resources"], "the same free capacity");
    // Each org reaches the host by its own id only.
    assert_eq!(vp(&s, "GET", &format!("/hostnodes/{a_id}"), None).await.0, 200);
    assert_eq!(vp(&s, "GET", &format!("/hostnodes/{b_id}"), None).await.0, 404);
    let r = s.http.get(format!("{}/api/v1/hostnodes/{a_id}", s.url)).header("x-api-token", &b_key).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A VM names its host by its org's id.
    crate::add_key(&s, "k").await;
    let id = crate::launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &id, "active").await;
    let (st, vms) = vp(&s, "GET", "/virtual-machines/", None).await;
    assert_eq!(st, 200, "{vms}");
    let vm = vms["results"].as_array().unwrap().iter().find(|m| m["hostnode_id"].is_string()).unwrap().clone();
    assert_eq!(vm["hostnode_id"], a_id, "{vm}");
    s.shutdown().await;
}
