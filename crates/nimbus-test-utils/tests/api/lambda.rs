//! The Lambda dialect end to end: every endpoint's success shape and the lifecycle.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::{add_key, assert_error, launch, PUBKEY};

#[tokio::test]
async fn instance_lifecycle_and_shapes() {
    let s = TestServer::start().await;
    add_key(&s, "k1").await;
    let name = "n".repeat(64);
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({
                "region_name": "us-east-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k1"],
                "file_system_names": [], "quantity": 1, "name": name, "hostname": "trainer-1",
                "tags": [{"key": "team", "value": "ml"}], "user_data": "#cloud-config\nruncmd: [echo hi]\n"
            })),
            200,
        )
        .await;
    let id = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    let inst = s.wait_status(&s.key, &id, "active").await;
    assert_eq!(inst["name"], name, "64-character names come back exactly");
    assert_eq!(inst["hostname"], "trainer-1");
    assert!(inst["ip"].is_string() && inst["private_ip"].is_string(), "{inst}");
    assert_eq!(inst["instance_type"]["name"], "gpu_1x_h100_sxm5");
    assert_eq!(inst["instance_type"]["description"], "1x H100 (80 GB SXM5)");
    assert_eq!(inst["region"]["name"], "us-east-1");
    assert_eq!(inst["ssh_key_names"], json!(["k1"]));
    assert_eq!(inst["tags"], json!([{"key": "team", "value": "ml"}]));
    assert_eq!(inst["actions"]["restart"]["available"], true);
    assert_eq!(inst["actions"]["terminate"]["available"], true);
    assert_eq!(inst["actions"]["migrate"]["available"], false);
    for k in ["file_system_mounts", "firewall_rulesets", "tags"] {
        assert!(inst[k].is_array(), "{k} must be an array, never null: {inst}");
    }

    // The GPU is reserved on the host.
    let hosts = s.control.store().host_list(None, false).await.unwrap();
    let held: Vec<_> = hosts[0].gpus.iter().filter(|g| g.instance_id.as_ref().map(|i| i.as_str()) == Some(id.as_str())).collect();
    assert_eq!(held.len(), 1);

    // List, rename.
    let list = s.expect("GET", "/instances", None, 200).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let v = s.expect("POST", &format!("/instances/{id}"), Some(json!({"name": "renamed"})), 200).await;
    assert_eq!(v["data"]["name"], "renamed");
    let list = s.expect("GET", "/instances", None, 200).await;
    assert_eq!(list["data"][0]["name"], "renamed", "the list reflects the rename at once");

    // Restart goes through booting back to active.
    let v = s.expect("POST", "/instance-operations/restart", Some(json!({"instance_ids": [id]})), 200).await;
    assert_eq!(v["data"]["restarted_instances"][0]["id"], id.as_str());
    s.wait_status(&s.key, &id, "active").await;

    // Terminate: terminating, then gone from the list, terminated by id, GPU free again.
    let v = s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]})), 200).await;
    assert_eq!(v["data"]["terminated_instances"][0]["id"], id.as_str());
    s.wait_status(&s.key, &id, "terminated").await;
    let list = s.expect("GET", "/instances", None, 200).await;
    assert_eq!(list["data"], json!([]));
    let hosts = s.control.store().host_list(None, false).await.unwrap();
    assert!(hosts[0].gpus.iter().all(|g| g.instance_id.is_none()));
    assert_eq!(hosts[0].used.vcpus, 0);
    s.shutdown().await;
}

#[tokio::test]
async fn instance_types_capacity_follows_real_hosts() {
    let mut s = TestServer::builder().start().await;
    let v = s.expect("GET", "/instance-types", None, 200).await;
    let t = &v["data"]["gpu_8x_h100_sxm5"];
    assert_eq!(t["instance_type"]["specs"]["gpus"], 8);
    assert_eq!(t["regions_with_capacity_available"], json!([]), "no hosts, no capacity");

    s.add_host("us-west-1", sim_host("w1", 256, 8)).await;
    let v = s.expect("GET", "/instance-types", None, 200).await;
    assert_eq!(v["data"]["gpu_8x_h100_sxm5"]["regions_with_capacity_available"][0]["name"], "us-west-1");
    assert_eq!(v["data"]["gpu_1x_a100_sxm4"]["regions_with_capacity_available"], json!([]), "no A100 anywhere");

    // Fill the host: capacity disappears.
    add_key(&s, "k").await;
    let (st, body) = s
        .call(
            &s.key,
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-west-1", "instance_type_name": "gpu_8x_h100_sxm5", "ssh_key_names": ["k"]})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let v = s.expect("GET", "/instance-types", None, 200).await;
    assert_eq!(v["data"]["gpu_8x_h100_sxm5"]["regions_with_capacity_available"], json!([]));
    assert_eq!(v["data"]["gpu_1x_h100_sxm5"]["regions_with_capacity_available"], json!([]));
    let (st, body) = s
        .call(
            &s.key,
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-west-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k"]})),
        )
        .await;
    assert_error(st, &body, 400, "instance-operations/launch/insufficient-capacity");

    // Images are listed for every region that has hosts, and launch by a listed image id works.
    let imgs = s.expect("GET", "/images", None, 200).await;
    let arr = imgs["data"].as_array().unwrap();
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["region"]["name"], "us-west-1");
    assert_eq!(arr[0]["family"], "debian-12");
    s.shutdown().await;
}

#[tokio::test]
async fn launch_quantity_images_and_partial_capacity() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 3, 0)).start().await;
    add_key(&s, "k").await;
    let imgs = s.expect("GET", "/images", None, 200).await;
    let image_id = imgs["data"][0]["id"].as_str().unwrap().to_owned();
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "quantity": 5, "image": {"id": image_id}})),
            200,
        )
        .await;
    assert_eq!(v["data"]["instance_ids"].as_array().unwrap().len(), 3, "only three fit: fewer than requested, as Lambda does");
    let (st, body) = s
        .call(&s.key, "POST", "/instance-operations/launch", Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "image": {"family": "no-such"}})))
        .await;
    assert_error(st, &body, 404, "global/object-does-not-exist");
    s.shutdown().await;
}

#[tokio::test]
async fn ssh_keys() {
    let s = TestServer::start().await;
    let k = add_key(&s, "mine").await;
    assert_eq!(k["public_key"], PUBKEY);
    assert!(k.get("private_key").is_none());
    // Byte-identical listing, even with surrounding whitespace sent.
    let k2 = s.expect("POST", "/ssh-keys", Some(json!({"name": "padded", "public_key": format!("  {PUBKEY}\n")})), 200).await;
    assert_eq!(k2["data"]["public_key"], PUBKEY);
    let g = s.expect("POST", "/ssh-keys", Some(json!({"name": "gen"})), 200).await["data"].clone();
    let private = g["private_key"].as_str().unwrap();
    assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(g["public_key"].as_str().unwrap().starts_with("ssh-ed25519 "));
    let list = s.expect("GET", "/ssh-keys", None, 200).await;
    let arr = list["data"].as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert!(arr.iter().all(|k| k.get("private_key").is_none()), "private keys are never listed");
    assert_eq!(arr[0]["public_key"], PUBKEY);

    let (st, body) = s.call(&s.key, "POST", "/ssh-keys", Some(json!({"name": "mine", "public_key": PUBKEY}))).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    let (st, body) = s.call(&s.key, "POST", "/ssh-keys", Some(json!({"name": "bad", "public_key": "ssh-rsa not-a-key"}))).await;
    assert_error(st, &body, 400, "global/invalid-parameters");

    let id = k["id"].as_str().unwrap();
    s.expect("DELETE", &format!("/ssh-keys/{id}"), None, 200).await;
    let (st, body) = s.call(&s.key, "DELETE", &format!("/ssh-keys/{id}"), None).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    s.shutdown().await;
}

#[tokio::test]
async fn ssh_key_quota() {
    let s = TestServer::builder().config(|c| c.quotas.ssh_keys_per_org = 2).start().await;
    for n in ["a", "b"] {
        s.expect("POST", "/ssh-keys", Some(json!({"name": n, "public_key": PUBKEY})), 200).await;
    }
    let (st, body) = s.call(&s.key, "POST", "/ssh-keys", Some(json!({"name": "c", "public_key": PUBKEY}))).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    s.shutdown().await;
}

#[tokio::test]
async fn file_systems() {
    let s = TestServer::start().await;
    add_key(&s, "k").await;
    let fs = s.expect("POST", "/filesystems", Some(json!({"name": "data-1", "region": "us-east-1"})), 200).await["data"].clone();
    assert_eq!(fs["mount_point"], "/lambda/nfs/data-1");
    assert_eq!(fs["is_in_use"], false);
    assert_eq!(fs["created_by"]["email"], "a@example.com");
    let (st, body) = s.call(&s.key, "POST", "/filesystems", Some(json!({"name": "data-1", "region": "us-east-1"}))).await;
    assert_error(st, &body, 400, "global/duplicate");
    let (st, body) = s.call(&s.key, "POST", "/filesystems", Some(json!({"name": "1bad", "region": "us-east-1"}))).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    let (st, body) = s.call(&s.key, "POST", "/filesystems", Some(json!({"name": "eu", "region": "mars-1"}))).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    s.expect("POST", "/filesystems", Some(json!({"name": "west", "region": "us-west-1"})), 200).await;

    // Mount it; wrong-region file systems are refused.
    let (st, body) = s
        .call(&s.key, "POST", "/instance-operations/launch", Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "file_system_names": ["west"]})))
        .await;
    assert_error(st, &body, 400, "instance-operations/launch/file-system-in-wrong-region");
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "file_system_names": ["data-1"]})),
            200,
        )
        .await;
    let iid = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let inst = s.wait_status(&s.key, &iid, "active").await;
    assert_eq!(inst["file_system_names"], json!(["data-1"]));
    assert_eq!(inst["file_system_mounts"][0]["mount_point"], "/lambda/nfs/data-1");
    let list = s.expect("GET", "/file-systems", None, 200).await;
    let mine = list["data"].as_array().unwrap().iter().find(|f| f["name"] == "data-1").unwrap().clone();
    assert_eq!(mine["is_in_use"], true);
    let fid = fs["id"].as_str().unwrap();
    let (st, body) = s.call(&s.key, "DELETE", &format!("/filesystems/{fid}"), None).await;
    assert_error(st, &body, 400, "filesystems/filesystem-in-use");

    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [iid]})), 200).await;
    s.wait_status(&s.key, &iid, "terminated").await;
    let v = s.expect("DELETE", &format!("/filesystems/{fid}"), None, 200).await;
    assert_eq!(v["data"]["deleted_ids"], json!([fid]));
    s.shutdown().await;
}

#[tokio::test]
async fn firewall_rules_and_rulesets() {
    let s = TestServer::start().await;
    let v = s.expect("GET", "/firewall-rules", None, 200).await;
    assert_eq!(v["data"][0]["port_range"], json!([22, 22]), "orgs start with SSH allowed");
    let rules = json!({"data": [
        {"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0", "description": "ssh"},
        {"protocol": "icmp", "source_network": "10.0.0.1", "description": "ping"}
    ]});
    let v = s.expect("PUT", "/firewall-rules", Some(rules), 200).await;
    assert_eq!(v["data"][1]["source_network"], "10.0.0.1/32");
    assert!(v["data"][1].get("port_range").is_none());
    let g = s.expect("GET", "/firewall-rulesets/global", None, 200).await;
    assert_eq!(g["data"]["id"], "global");
    assert_eq!(g["data"]["rules"].as_array().unwrap().len(), 2);
    let (st, body) = s
        .call(
            &s.key,
            "PUT",
            "/firewall-rules",
            Some(json!({"data": [{"protocol": "tcp", "source_network": "0.0.0.0/0", "description": ""}]})),
        )
        .await;
    assert_error(st, &body, 400, "global/invalid-parameters");

    let rs = s
        .expect("POST", "/firewall-rulesets", Some(json!({"name": "web", "region": "us-east-1", "rules": [{"protocol": "tcp", "port_range": [443, 443], "source_network": "0.0.0.0/0", "description": "https"}]})), 200)
        .await["data"]
        .clone();
    let rid = rs["id"].as_str().unwrap().to_owned();
    assert_eq!(rs["instance_ids"], json!([]));
    let v = s.expect("PATCH", &format!("/firewall-rulesets/{rid}"), Some(json!({"name": "web2"})), 200).await;
    assert_eq!(v["data"]["name"], "web2");
    assert_eq!(v["data"]["rules"][0]["port_range"], json!([443, 443]), "partial update keeps rules");
    add_key(&s, "k").await;
    let v = s
        .expect(
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "firewall_rulesets": [{"id": rid}]})),
            200,
        )
        .await;
    let iid = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let got = s.expect("GET", &format!("/firewall-rulesets/{rid}"), None, 200).await;
    assert_eq!(got["data"]["instance_ids"], json!([iid]));
    let (st, body) = s.call(&s.key, "DELETE", &format!("/firewall-rulesets/{rid}"), None).await;
    assert_error(st, &body, 400, "firewall-rulesets/firewall-ruleset-in-use");
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [iid]})), 200).await;
    s.wait_status(&s.key, &iid, "terminated").await;
    s.expect("DELETE", &format!("/firewall-rulesets/{rid}"), None, 200).await;
    let list = s.expect("GET", "/firewall-rulesets", None, 200).await;
    assert_eq!(list["data"], json!([]));
    s.shutdown().await;
}

#[tokio::test]
async fn audit_events_page_and_filter() {
    let s = TestServer::builder().start().await;
    for i in 0..120 {
        s.expect("POST", "/ssh-keys", Some(json!({"name": format!("k{i}"), "public_key": PUBKEY})), 200).await;
    }
    let p1 = s.expect("GET", "/audit-events?resource_type=cloud.ssh_key", None, 200).await;
    let ev = p1["data"]["events"].as_array().unwrap();
    assert_eq!(ev.len(), 100);
    assert_eq!(ev[0]["action"], "ssh_key.created");
    assert_eq!(ev[0]["resource_name"], "cloud.ssh_key");
    let token = p1["data"]["page_token"].as_str().unwrap();
    let p2 = s.expect("GET", &format!("/audit-events?resource_type=cloud.ssh_key&page_token={token}"), None, 200).await;
    assert_eq!(p2["data"]["events"].as_array().unwrap().len(), 20);
    assert!(p2["data"]["page_token"].is_null());
    let none = s.expect("GET", "/audit-events?start=2999-01-01T00:00:00Z", None, 200).await;
    assert_eq!(none["data"]["events"], json!([]));
    let (st, body) = s.call(&s.key, "GET", "/audit-events?start=yesterday", None).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    let (st, body) = s.call(&s.key, "GET", "/audit-events?page_token=garbage!", None).await;
    assert_error(st, &body, 400, "global/invalid-parameters");
    s.shutdown().await;
}

#[tokio::test]
async fn curl_style_requests_work() {
    // Basic auth with the key as user name, and a form content type on a JSON body, as in seed 000.
    let s = TestServer::start().await;
    let resp = s
        .http
        .post(s.lambda("/ssh-keys"))
        .basic_auth(&s.key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(r#"{{"name":"curl","public_key":"{PUBKEY}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = s.http.get(s.lambda("/ssh-keys")).header("x-api-key", &s.key).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let id = launch(&s, &s.key, "cpu_1x_small", "curl").await;
    s.wait_status(&s.key, &id, "active").await;
    s.shutdown().await;
}
