//! Native create / stop / start / resize of instances, and volumes and snapshots on the control
//! plane (sim hosts). What the container driver does with them is tested in containers.rs.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::add_key;

#[tokio::test]
async fn create_stop_resize_start() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 4, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();

    let body = json!({"name": "web", "instance_type": "cpu_2x_medium", "region": "us-east-1", "ssh_keys": [key_id], "tags": {"team": "a"}});
    let i = s.nexpect("POST", "/instances", Some(body), 201).await;
    let id = i["id"].as_str().unwrap().to_owned();
    assert_eq!(i["status"], "booting");
    assert_eq!((i["vcpus"].as_i64(), i["tags"]["team"].as_str()), (Some(2), Some("a")));
    assert_eq!(i["ssh_key_names"], json!(["k"]));
    let path = format!("/instances/{id}");
    s.wait_native_status(&path, "running").await;
    // One core: the Lambda dialect sees the same instance.
    s.wait_status(&s.key, &id, "active").await;

    let v = s.nexpect("POST", &format!("{path}/resize"), Some(json!({"instance_type": "cpu_4x_large"})), 409).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("stop it"), "{v}");
    s.nexpect("POST", &format!("{path}/start"), None, 409).await;

    assert_eq!(s.nexpect("POST", &format!("{path}/stop"), None, 200).await["status"], "stopping");
    s.wait_native_status(&path, "stopped").await;

    // Grow to the whole host: the stopped instance keeps its reservation, so nothing else fits.
    let r = s.nexpect("POST", &format!("{path}/resize"), Some(json!({"instance_type": "cpu_4x_large"})), 200).await;
    assert_eq!((r["instance_type"].as_str(), r["vcpus"].as_i64(), r["status"].as_str()), (Some("cpu_4x_large"), Some(4), Some("stopped")));
    let other = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let v = s.nexpect("POST", "/instances", Some(other.clone()), 409).await;
    assert_eq!(v["error"]["code"], "insufficient_capacity");

    // Shrink, let another instance take a core, and the grow no longer fits: refused, unchanged.
    s.nexpect("POST", &format!("{path}/resize"), Some(json!({"instance_type": "cpu_2x_medium"})), 200).await;
    s.nexpect("POST", "/instances", Some(other), 201).await;
    let v = s.nexpect("POST", &format!("{path}/resize"), Some(json!({"instance_type": "cpu_4x_large"})), 409).await;
    assert_eq!(v["error"]["code"], "insufficient_capacity", "{v}");
    assert_eq!(s.nexpect("GET", &path, None, 200).await["instance_type"], "cpu_2x_medium");
    let v = s.nexpect("POST", &format!("{path}/resize"), Some(json!({"instance_type": "cpu_9x_huge"})), 400).await;
    assert_eq!(v["error"]["details"]["field"], "instance_type");
    assert!(v["error"]["details"]["allowed_values"].as_array().unwrap().contains(&json!("cpu_4x_large")));

    assert_eq!(s.nexpect("POST", &format!("{path}/start"), None, 200).await["status"], "starting");
    let i = s.wait_native_status(&path, "running").await;
    assert_eq!(i["vcpus"], 2);

    // Bad creates, each in the native error shape.
    for (body, status, field) in [
        (json!({"instance_type": "nope", "region": "us-east-1", "ssh_keys": [key_id]}), 400, Some("instance_type")),
        (json!({"instance_type": "cpu_1x_small", "region": "mars-1", "ssh_keys": [key_id]}), 400, Some("region")),
        (json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": []}), 400, Some("ssh_keys")),
        (json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": ["0123456789abcdef0123456789abcdef"]}), 404, None),
        (json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id], "colour": "red"}), 400, None),
        (json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id], "name": ""}), 400, Some("name")),
    ] {
        let v = s.nexpect("POST", "/instances", Some(body.clone()), status).await;
        assert_eq!(v["success"], false, "{body}");
        if let Some(f) = field {
            assert_eq!(v["error"]["details"]["field"], f, "{body}: {v}");
        }
    }
}

#[tokio::test]
async fn volumes_attach_detach_resize_quota_and_host_locality() {
    let mut s = TestServer::builder()
        .config(|c| {
            c.quotas.volume_gib_per_org = 100;
            c.quotas.max_volume_gib = 90;
        })
        .host("us-east-1", sim_host("h1", 8, 0))
        .start()
        .await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let create = |name: &str| json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id], "name": name});
    let a = s.nexpect("POST", "/instances", Some(create("a")), 201).await["id"].as_str().unwrap().to_owned();
    let b = s.nexpect("POST", "/instances", Some(create("b")), 201).await["id"].as_str().unwrap().to_owned();

    let v = s.nexpect("POST", "/volumes", Some(json!({"name": "data", "region": "us-east-1", "size_gib": 10})), 201).await;
    let vid = v["id"].as_str().unwrap().to_owned();
    assert_eq!((v["status"].as_str(), v["mount_point"].as_str()), (Some("available"), Some("/mnt/volumes/data")));
    s.nexpect("POST", "/volumes", Some(json!({"name": "data", "region": "us-east-1", "size_gib": 1})), 409).await;
    for (body, field) in [
        (json!({"name": "x", "region": "us-east-1", "size_gib": 0}), "size_gib"),
        (json!({"name": "x", "region": "us-east-1", "size_gib": 91}), "size_gib"),
        (json!({"name": "bad name", "region": "us-east-1", "size_gib": 1}), "name"),
        (json!({"name": "x", "region": "mars-1", "size_gib": 1}), "region"),
    ] {
        let e = s.nexpect("POST", "/volumes", Some(body), 400).await;
        assert_eq!(e["error"]["details"]["field"], field, "{e}");
    }
    s.nexpect("POST", "/volumes", Some(json!({"name": "big", "region": "us-east-1", "size_gib": 85})), 201).await;
    let e = s.nexpect("POST", "/volumes", Some(json!({"name": "more", "region": "us-east-1", "size_gib": 6})), 403).await;
    assert_eq!(e["error"]["code"], "quota_exceeded");

    let path = format!("/volumes/{vid}");
    let v = s.nexpect("POST", &format!("{path}/attach"), Some(json!({"instance_id": a})), 200).await;
    assert_eq!(v["instance_id"], a.as_str());
    assert_ne!(v["status"], "available");
    s.nexpect("POST", &format!("{path}/attach"), Some(json!({"instance_id": b})), 409).await;
    s.nexpect("DELETE", &path, None, 409).await;
    let e = s.nexpect("POST", &format!("{path}/resize"), Some(json!({"size_gib": 5})), 400).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("only grow"), "{e}");
    s.nexpect("POST", &format!("{path}/resize"), Some(json!({"size_gib": 16})), 403).await;
    assert_eq!(s.nexpect("POST", &format!("{path}/resize"), Some(json!({"size_gib": 15})), 200).await["size_gib"], 15);
    assert_eq!(s.nexpect("POST", &format!("{path}/detach"), None, 200).await["status"], "available");
    s.nexpect("POST", &format!("{path}/detach"), None, 409).await;

    // The volume's data now lives on h1: an instance on another host cannot take it, and a new
    // instance that asks for it is placed on h1.
    s.add_host("us-east-1", sim_host("h2", 64, 0)).await;
    let mut on_h2 = None;
    for n in 0..8 {
        let id = s.nexpect("POST", "/instances", Some(create(&format!("c{n}"))), 201).await["id"].as_str().unwrap().to_owned();
        let host =
            s.control.store().instance_get(&s.org.id, &nimbus_core::ids::InstanceId::parse(&id).unwrap()).await.unwrap().unwrap().host_id;
        let h1 = s.control.store().host_list(None, false).await.unwrap().into_iter().find(|h| h.name == "h1").unwrap().id;
        if host != Some(h1) {
            on_h2 = Some(id);
            break;
        }
    }
    let c = on_h2.expect("the scheduler never used the bigger, emptier host h2");
    let e = s.nexpect("POST", &format!("{path}/attach"), Some(json!({"instance_id": c})), 409).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("host-local"), "{e}");
    let mut body = create("with-volume");
    body["volumes"] = json!([vid]);
    // The scheduler packs: h1 is full by now, and the volume cannot follow the instance to h2.
    let e = s.nexpect("POST", "/instances", Some(body.clone()), 409).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("host that holds the requested volume"), "{e}");
    s.nexpect("DELETE", &format!("/instances/{b}"), None, 200).await;
    s.wait_native_status(&format!("/instances/{b}"), "terminated").await;
    let d = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    assert_eq!(s.nexpect("GET", &path, None, 200).await["instance_id"], d.as_str());

    // Terminating the instance detaches the volume and keeps it.
    s.nexpect("DELETE", &format!("/instances/{d}"), None, 200).await;
    s.wait_native_status(&path, "available").await;
    s.nexpect("DELETE", &path, None, 200).await;
    s.nexpect("GET", &path, None, 404).await;
}

#[tokio::test]
async fn snapshot_requests_are_validated_and_isolated() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let a = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/instances/{a}"), "running").await;
    let vid = s.nexpect("POST", "/volumes", Some(json!({"name": "v", "region": "us-east-1", "size_gib": 1})), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    s.nexpect("POST", "/snapshots", Some(json!({"name": "s", "instance_id": a, "volume_id": vid})), 400).await;
    s.nexpect("POST", "/snapshots", Some(json!({"name": "s"})), 400).await;
    let e = s.nexpect("POST", "/snapshots", Some(json!({"name": "s", "volume_id": vid})), 409).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("never been attached"), "{e}");
    let snap = s.nexpect("POST", "/snapshots", Some(json!({"name": "s1", "instance_id": a})), 201).await;
    assert_eq!((snap["status"].as_str(), snap["source_type"].as_str()), (Some("creating"), Some("instance")));
    let sid = snap["id"].as_str().unwrap().to_owned();
    s.nexpect("POST", "/snapshots", Some(json!({"name": "s1", "instance_id": a})), 409).await;
    // Not restorable until the host has made it. The sim host makes it on its next desired
    // round trip, which may beat this request: then the snapshot must be available already.
    let (st, e) = s
        .native(
            &s.key,
            "POST",
            &format!("/snapshots/{sid}/restore"),
            Some(json!({"name": "r", "instance_type": "cpu_1x_small", "ssh_keys": [key_id]})),
        )
        .await;
    match st {
        409 => assert!(e["error"]["message"].as_str().unwrap().contains("not available"), "{e}"),
        201 => {
            let now = s.nexpect("GET", &format!("/snapshots/{sid}"), None, 200).await;
            assert_eq!(now["status"], "available", "restored from a snapshot that was not made: {now}");
        }
        _ => panic!("restore answered {st}: {e}"),
    }

    // Another organization sees none of it.
    let (_, other) = s.org_with_key("other-org", "admin").await;
    for path in [format!("/snapshots/{sid}"), format!("/volumes/{vid}")] {
        let (st, v) = s.native(&other, "GET", &path, None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
        let (st, _) = s.native(&other, "DELETE", &path, None).await;
        assert_eq!(st, 404);
    }
    let (st, v) = s.native(&other, "POST", &format!("/volumes/{vid}/attach"), Some(json!({"instance_id": a}))).await;
    assert_eq!(st, 404, "{v}");
    for path in ["/snapshots", "/volumes"] {
        let (_, v) = s.native(&other, "GET", path, None).await;
        assert_eq!(v["pagination"]["total_items"], 0);
    }
    s.nexpect("DELETE", &format!("/snapshots/{sid}"), None, 200).await;
}

#[tokio::test]
async fn firewall_rules_crud_on_the_shared_model() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let rules = s.nexpect("GET", "/firewall/rules", None, 200).await;
    assert_eq!(rules.as_array().unwrap().len(), 1, "new orgs allow SSH: {rules}");
    assert_eq!((rules[0]["protocol"].as_str(), rules[0]["port_range"].clone()), (Some("tcp"), json!([22, 22])));

    let r = s
        .nexpect(
            "POST",
            "/firewall/rules",
            Some(json!({"protocol": "tcp", "port_range": [8080, 8081], "source": "10.0.0.0/8", "description": "web"})),
            201,
        )
        .await;
    let id = r["id"].as_str().unwrap().to_owned();
    assert!(r.get("ruleset_id").is_none());
    let e = s
        .nexpect("POST", "/firewall/rules", Some(json!({"protocol": "tcp", "port_range": [8080, 8081], "source": "10.0.0.0/8"})), 409)
        .await;
    assert_eq!(e["error"]["code"], "already_exists");
    // The Lambda dialect sees the same global rules.
    let (_, v) = s.call(&s.key, "GET", "/firewall-rules", None).await;
    assert!(
        v["data"].as_array().unwrap().iter().any(|r| r["port_range"] == json!([8080, 8081]) && r["source_network"] == "10.0.0.0/8"),
        "{v}"
    );

    let (_, v) = s.call(&s.key, "POST", "/firewall-rulesets", Some(json!({"name": "db", "region": "us-east-1", "rules": []}))).await;
    let rs = v["data"]["id"].as_str().unwrap().to_owned();
    let r2 = s
        .nexpect(
            "POST",
            "/firewall/rules",
            Some(json!({"protocol": "udp", "port_range": [53, 53], "source": "10.1.2.3", "ruleset_id": rs})),
            201,
        )
        .await;
    assert_eq!((r2["ruleset_id"].as_str(), r2["source"].as_str()), (Some(rs.as_str()), Some("10.1.2.3/32")));
    let only = s.nexpect("GET", &format!("/firewall/rules?ruleset_id={rs}"), None, 200).await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    let global = s.nexpect("GET", "/firewall/rules?ruleset_id=global&protocol=tcp", None, 200).await;
    assert_eq!(global.as_array().unwrap().len(), 2);

    for (body, field) in [
        (json!({"protocol": "sctp", "port_range": [1, 2], "source": "0.0.0.0/0"}), "protocol"),
        (json!({"protocol": "tcp", "source": "0.0.0.0/0"}), "port_range"),
        (json!({"protocol": "icmp", "port_range": [1, 2], "source": "0.0.0.0/0"}), "port_range"),
        (json!({"protocol": "tcp", "port_range": [1, 2], "source": "10.0.0.0/40"}), "source"),
    ] {
        let e = s.nexpect("POST", "/firewall/rules", Some(body.clone()), 400).await;
        assert_eq!(e["error"]["details"]["field"], field, "{body}: {e}");
    }
    s.nexpect(
        "POST",
        "/firewall/rules",
        Some(json!({"protocol": "tcp", "port_range": [1, 2], "source": "0.0.0.0/0", "ruleset_id": "0123456789abcdef0123456789abcdef"})),
        404,
    )
    .await;

    let (_, other) = s.org_with_key("fw-other", "ADMIN").await;
    assert_eq!(s.native(&other, "DELETE", &format!("/firewall/rules/{id}"), None).await.0, 404);
    s.nexpect("DELETE", &format!("/firewall/rules/{id}"), None, 200).await;
    s.nexpect("DELETE", &format!("/firewall/rules/{id}"), None, 404).await;
    s.nexpect("DELETE", &format!("/firewall/rules/{}", r2["id"].as_str().unwrap()), None, 200).await;
    assert_eq!(s.nexpect("GET", "/firewall/rules", None, 200).await.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn vpn_keys_config_and_isolation() {
    let s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let e = s.nexpect("POST", "/vpn", Some(json!({"name": "x", "region": "us-west-1"})), 409).await;
    assert_eq!(e["error"]["code"], "insufficient_capacity", "no host in that region: {e}");
    s.nexpect("POST", "/vpn", Some(json!({"name": "bad name", "region": "us-east-1"})), 400).await;
    s.nexpect("POST", "/vpn", Some(json!({"name": "x", "region": "mars-1"})), 400).await;

    let v = s.nexpect("POST", "/vpn", Some(json!({"name": "office", "region": "us-east-1"})), 201).await;
    let id = v["id"].as_str().unwrap().to_owned();
    let private = v["client_private_key"].as_str().unwrap();
    assert_eq!(nimbus_core::wireguard::public_key(private).as_deref(), v["client_public_key"].as_str(), "a real Curve25519 pair");
    assert!(nimbus_core::wireguard::is_key(v["gateway_public_key"].as_str().unwrap()));
    assert_eq!((v["client_address"].as_str(), v["gateway_address"].as_str()), (Some("10.201.0.2"), Some("10.201.0.1")));
    s.nexpect("POST", "/vpn", Some(json!({"name": "office", "region": "us-east-1"})), 409).await;

    let up = s.wait_native_status(&format!("/vpn/{id}"), "up").await;
    let config = up["config"].as_str().unwrap();
    assert!(config.contains(&format!("PublicKey = {}", up["gateway_public_key"].as_str().unwrap())), "{config}");
    assert!(config.contains("Endpoint = 192.0.2.1:51820") && config.contains("AllowedIPs = 10.201.0.1/32, 10.255.0.0/16"), "{config}");
    assert!(!up.to_string().contains(private), "the client private key is never shown again");
    let second = s.nexpect("POST", "/vpn", Some(json!({"name": "lab", "region": "us-east-1"})), 201).await;
    assert_eq!(second["client_address"], "10.201.1.2", "each VPN on a host gets its own /24");

    let (_, other) = s.org_with_key("vpn-iso", "ADMIN").await;
    assert_eq!(s.native(&other, "GET", &format!("/vpn/{id}"), None).await.0, 404);
    assert_eq!(s.native(&other, "DELETE", &format!("/vpn/{id}"), None).await.0, 404);
    assert_eq!(s.native(&other, "GET", "/vpn", None).await.1["data"], json!([]));
    assert_eq!(s.nexpect("GET", "/vpn", None, 200).await.as_array().unwrap().len(), 2);
    s.nexpect("DELETE", &format!("/vpn/{id}"), None, 200).await;
    s.nexpect("GET", &format!("/vpn/{id}"), None, 404).await;
}
