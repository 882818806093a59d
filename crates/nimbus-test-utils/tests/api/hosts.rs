//! Hosts: a silent host's instances become unhealthy and recover when it reports again; a
//! restarted agent adopts its instances (no duplicates) and removes orphans. The agent plane's
//! security: host tokens expire and are spent once (races included), a token never takes over a
//! registered machine (its secret or an operator's re-enrolment does), credentials are checked
//! before any body is read, the agent's data dir is private, and user data is sent once.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_agent::{Agent, AgentConfig};
use nimbus_control::admin::{self, HostTokenLimits};
use nimbus_control::agents;
use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_core::Error;
use nimbus_proto as proto;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{add_key, launch};

#[tokio::test]
async fn silent_host_makes_instances_unhealthy_then_recovers() {
    let s0 = TestServer::builder().config(|c| c.agents.host_timeout_ms = 800).host("us-east-1", sim_host("h", 16, 0));
    let mut s = s0.start().await;
    add_key(&s, "k").await;
    let id = launch(&s, &s.key, "cpu_1x_small", "k").await;
    s.wait_status(&s.key, &id, "active").await;
    s.stop_agent(0).await;
    s.wait_status(&s.key, &id, "unhealthy").await;
    let v = s.expect("GET", "/instance-types", None, 200).await;
    assert_eq!(v["data"]["cpu_1x_small"]["regions_with_capacity_available"], json!([]), "a down host offers no capacity");
    s.restart_agent(0);
    s.wait_status(&s.key, &id, "active").await;
    s.shutdown().await;
}

#[tokio::test]
async fn restarted_agent_adopts_and_removes_orphans() {
    let mut s = TestServer::builder().host("us-east-1", sim_host("h", 16, 0)).start().await;
    add_key(&s, "k").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(launch(&s, &s.key, "cpu_1x_small", "k").await);
    }
    for id in &ids {
        s.wait_status(&s.key, id, "active").await;
    }
    let before: Vec<Value> = s.expect("GET", "/instances", None, 200).await["data"].as_array().unwrap().clone();
    s.stop_agent(0).await;

    // While the agent is down, an orphan appears in the driver's state (e.g. an instance whose
    // termination the server committed while the agent was away).
    let state_file = s.dir.0.join("agent-0").join("sim.json");
    let mut state: serde_json::Map<String, Value> = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state.len(), 3);
    let orphan = "feedfacefeedfacefeedfacefeedface";
    state.insert(
        orphan.into(),
        json!({"id": orphan, "state": "running", "ip": null, "private_ip": null, "restart_generation": 0, "message": null}),
    );
    std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();

    s.restart_agent(0);
    s.wait_for("orphan removal", || async {
        let st: serde_json::Map<String, Value> = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
        !st.contains_key(orphan)
    })
    .await;
    let st: serde_json::Map<String, Value> = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(st.len(), 3, "the three instances were adopted, not recreated or duplicated");
    assert_eq!(s.control.store().host_list(None, false).await.unwrap().len(), 1, "the agent came back as the same host");
    let after: Vec<Value> = s.expect("GET", "/instances", None, 200).await["data"].as_array().unwrap().clone();
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a["status"], "active");
        assert_eq!(a["ip"], b["ip"], "adopted instances keep their addresses");
    }
    s.shutdown().await;
}

/// What a host is told to run carries the tenant (its uid range on the host) and, only for
/// instance types the operator marked `privileged`, the opt-out of the user namespace.
#[tokio::test]
async fn desired_instances_carry_their_tenant_and_privileged_only_by_type() {
    let s = TestServer::builder()
        .config(|c| {
            let mut t = c.instance_type("cpu_1x_small").cloned().unwrap();
            t.name = "cpu_1x_trusted".into();
            t.privileged = true;
            c.instance_types.push(t);
        })
        .host("us-east-1", sim_host("h", 16, 0))
        .start()
        .await;
    add_key(&s, "k").await;
    let plain = launch(&s, &s.key, "cpu_1x_small", "k").await;
    let trusted = launch(&s, &s.key, "cpu_1x_trusted", "k").await;
    let host = s.control.store().host_list(None, true).await.unwrap()[0].id.clone();
    let d = nimbus_control::agents::desired(&s.control, &host, nimbus_proto::DesiredRequest { known_generation: -1, ..Default::default() })
        .await
        .unwrap();
    let find = |id: &str| d.instances.iter().find(|i| i.id == id).cloned().unwrap();
    let (p, t) = (find(&plain), find(&trusted));
    assert_eq!((p.privileged, t.privileged), (false, true));
    assert_eq!(p.tenant, s.org.id.to_string());
    assert_eq!(t.tenant, s.org.id.to_string());
    s.shutdown().await;
}

fn reg(credential: &str, machine: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        protocol_version: proto::PROTOCOL_VERSION,
        token: credential.to_owned(),
        machine_id: machine.to_owned(),
        inventory: proto::Inventory {
            hostname: machine.to_owned(),
            cpu_model: "test".into(),
            vcpus: 4,
            memory_mib: 4096,
            disk_gib: 10,
            gpus: vec![],
            driver: "sim".into(),
            public_ip: None,
            network: None,
            machines: vec![],
        },
    }
}

/// `POST register` as an agent sends it: the credential in the header, none in the body.
async fn http_register(s: &TestServer, bearer: &str, machine: &str) -> (u16, Value) {
    let body = serde_json::to_value(reg("", machine)).unwrap();
    assert!(body.get("token").is_none(), "the body carries no credential");
    let resp = s.http.post(format!("{}{}", s.agent_url, proto::PATH_REGISTER)).bearer_auth(bearer).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The mode of a file that may not exist yet (0 then).
fn mode_if_any(p: &Path) -> u32 {
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}

/// Expiry follows the control plane's clock; an expired token is refused like an unknown one,
/// and a host it registered keeps working with its secret.
#[tokio::test]
async fn host_tokens_expire_by_the_control_clock() {
    let clock = Arc::new(ManualClock::new(parse_rfc3339("2026-03-01T00:00:00Z").unwrap()));
    let s = TestServer::builder().clock(clock.clone()).start().await;
    let short = admin::host_token_create_with(&s.control, "us-east-1", HostTokenLimits { uses: 5, ttl_secs: 60 }).await.unwrap();
    let default = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    let (st, first) = http_register(&s, &short.secret, "m-1").await;
    assert_eq!(st, 200, "{first}");
    clock.advance_secs(61);
    let (st, expired) = http_register(&s, &short.secret, "m-2").await;
    assert_eq!(st, 401, "{expired}");
    let (st, unknown) = http_register(&s, "nmbh_no-such-token", "m-2").await;
    assert_eq!(st, 401);
    assert_eq!(expired, unknown, "an expired token is answered like an unknown one");
    // The default lifetime is an hour: still good at 61 s, not past the hour.
    let (st, v) = http_register(&s, &default, "m-3").await;
    assert_eq!(st, 200, "{v}");
    let late = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    clock.advance_secs(3601);
    assert_eq!(http_register(&s, &late, "m-4").await.0, 401);
    // The host registered before expiry re-registers with its secret.
    let secret = first["host_secret"].as_str().unwrap();
    let (st, again) = http_register(&s, secret, "m-1").await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["host_id"], first["host_id"]);
    assert_eq!(again["host_secret"], first["host_secret"], "a registration with the secret keeps it");
    s.shutdown().await;
}

/// A token's uses are spent in the registration transaction: of concurrent registrations with a
/// one-use token exactly one wins, and a three-use token registers three hosts.
#[tokio::test]
async fn host_tokens_are_spent_once_even_when_raced() {
    let s = TestServer::builder().start().await;
    let race = |token: String, n: usize, tag: &'static str| {
        let c = s.control.clone();
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (c, t) = (c.clone(), token.clone());
                    tokio::spawn(async move { agents::register(&c, reg(&t, &format!("{tag}-{i}"))).await })
                })
                .collect();
            let mut won = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(_) => won += 1,
                    Err(Error::Unauthenticated) => {}
                    Err(e) => panic!("a losing registration must be unauthenticated, not {e:?}"),
                }
            }
            won
        }
    };
    let one = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    assert_eq!(race(one.clone(), 8, "one").await, 1, "a one-use token registers one host");
    let (st, spent) = http_register(&s, &one, "late").await;
    assert_eq!(st, 401);
    assert_eq!(spent, http_register(&s, "nmbh_no-such-token", "late").await.1, "a spent token is answered like an unknown one");
    let three = admin::host_token_create_with(&s.control, "us-east-1", HostTokenLimits { uses: 3, ttl_secs: 3600 }).await.unwrap();
    assert_eq!(race(three.secret, 6, "three").await, 3);
    assert_eq!(s.control.store().host_list(None, false).await.unwrap().len(), 4);
    for bad in [HostTokenLimits { uses: 0, ttl_secs: 60 }, HostTokenLimits { uses: 1, ttl_secs: 0 }] {
        assert!(admin::host_token_create_with(&s.control, "us-east-1", bad).await.is_err(), "{bad:?}");
    }
    s.shutdown().await;
}

/// A leaked token cannot hijack a host: registering a known machine id with a token (the same
/// token or a fresh one) is refused and rotates nothing; the host's own secret still works.
#[tokio::test]
async fn a_token_does_not_take_over_a_registered_machine() {
    let s = TestServer::builder().start().await;
    let a = admin::host_token_create_with(&s.control, "us-east-1", HostTokenLimits { uses: 2, ttl_secs: 3600 }).await.unwrap();
    let first = agents::register(&s.control, reg(&a.secret, "machine")).await.unwrap();
    let fresh = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    for token in [a.secret.clone(), fresh.clone()] {
        let (st, v) = http_register(&s, &token, "machine").await;
        assert_eq!(st, 409, "{v}");
        assert_eq!(v["code"], "conflict");
    }
    let host = agents::authenticate(&s.control, &first.host_secret).await.unwrap();
    assert_eq!(host.to_string(), first.host_id, "the original secret still authenticates");
    let (st, again) = http_register(&s, &first.host_secret, "machine").await;
    assert_eq!(st, 200, "{again}");
    assert_eq!((again["host_id"].as_str(), again["host_secret"].as_str()), (Some(&*first.host_id), Some(&*first.host_secret)));
    // A secret proves one machine's identity, not another's.
    assert_eq!(http_register(&s, &first.host_secret, "another").await.0, 400);
    // The refused registrations spent nothing: both tokens still enrol new machines.
    let second = agents::register(&s.control, reg(&a.secret, "machine-2")).await.unwrap();
    let third = agents::register(&s.control, reg(&fresh, "machine-3")).await.unwrap();
    assert!(second.host_id != first.host_id && third.host_id != first.host_id);
    assert_eq!(s.control.store().host_list(None, false).await.unwrap().len(), 3);
    s.shutdown().await;
}

fn own_agent(s: &TestServer, token: &str, dir: &Path) -> Arc<Agent> {
    let sim = nimbus_test_utils::Sim { state_file: Some(dir.join("sim.json")), ..sim_host("own", 8, 0) };
    let cfg = AgentConfig {
        server_url: s.agent_url.clone(),
        token: token.to_owned(),
        data_dir: dir.to_owned(),
        poll_wait: Duration::from_secs(1),
        public_ip: None,
        trust: Default::default(),
        insecure: false,
    };
    Agent::new(cfg, Arc::new(nimbus_driver::sim::SimDriver::new(sim))).unwrap()
}

/// A restarted agent (its one-use token spent) comes back with its secret; an operator's
/// re-enrolment revokes that secret and lets the next agent holding the re-enrolment token, with
/// the old data dir or none, take over the same host once.
#[tokio::test]
async fn agents_restart_with_their_secret_and_admin_reenrol_takes_over() {
    let s = TestServer::builder().start().await;
    let token = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    let dir = s.dir.0.join("own-agent");
    let first = own_agent(&s, &token, &dir).register().await.unwrap();
    let again = own_agent(&s, &token, &dir).register().await.unwrap();
    assert_eq!((&again.host_id, &again.host_secret), (&first.host_id, &first.host_secret));

    let r = admin::host_reenrol(&s.control, &first.host_id, 3600).await.unwrap();
    assert_eq!(r.host_id.as_ref().map(ToString::to_string).as_deref(), Some(first.host_id.as_str()));
    assert!(
        matches!(agents::authenticate(&s.control, &first.host_secret).await, Err(Error::Unauthenticated)),
        "re-enrolment revokes the secret"
    );
    // The agent's saved secret is refused; it falls back to the re-enrolment token.
    let taken = own_agent(&s, &r.secret, &dir).register().await.unwrap();
    assert_eq!(taken.host_id, first.host_id);
    assert_ne!(taken.host_secret, first.host_secret);
    assert_eq!(agents::authenticate(&s.control, &taken.host_secret).await.unwrap().to_string(), first.host_id);
    assert_eq!(http_register(&s, &r.secret, "x").await.0, 401, "a re-enrolment token is spent once");

    // A wiped data dir: a new machine id, re-enrolled by name this time.
    std::fs::remove_dir_all(&dir).unwrap();
    let r2 = admin::host_reenrol(&s.control, "own", 3600).await.unwrap();
    let back = own_agent(&s, &r2.secret, &dir).register().await.unwrap();
    assert_eq!(back.host_id, first.host_id, "the host keeps its id");
    assert!(admin::host_reenrol(&s.control, "no-such-host", 60).await.is_err());
    s.shutdown().await;
}

/// Credentials travel in a header and are checked before the body is read: an unauthenticated
/// request announcing a 3 MiB body, and sending none of it, is answered 401 at once.
#[tokio::test]
async fn agent_endpoints_refuse_unauthenticated_requests_before_reading_the_body() {
    let s = TestServer::builder().start().await;
    let addr = s.agent_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let cases = [
        (proto::PATH_REGISTER, None),
        (proto::PATH_REGISTER, Some("nmbh_no-such-token")),
        (proto::PATH_REPORT, Some("nmbs_no-such-secret")),
        (proto::PATH_DESIRED, None),
        (proto::PATH_METRICS, Some("nmbs_no-such-secret")),
    ];
    for (path, bearer) in cases {
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let auth = bearer.map(|b| format!("Authorization: Bearer {b}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
            3 * 1024 * 1024
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer while the body was withheld"))
                .unwrap();
            assert!(n > 0, "{path}: connection closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 401"), "{path} {bearer:?}: {text}");
        assert!(t.elapsed() < Duration::from_secs(2), "{path}: answered only after {:?}", t.elapsed());
    }
    s.shutdown().await;
}

/// The agent's data dir is 0711 (listable by nobody else; traversable, which the container
/// driver's launcher needs inside a user namespace) and agent.json 0600, and an agent restarted
/// over a looser dir (an older agent's) tightens both.
#[tokio::test]
async fn agent_data_dir_is_private_and_tightened_on_start() {
    let mut s = TestServer::builder().host("us-east-1", sim_host("h", 8, 0)).start().await;
    let dir = s.dir.0.join("agent-0");
    // The server records the host before the agent has written its secret to agent.json.
    s.wait_for("agent.json written", || async { mode_if_any(&dir.join("agent.json")) != 0 }).await;
    assert_eq!(mode(&dir), 0o711);
    assert_eq!(mode(&dir.join("agent.json")), 0o600);
    s.stop_agent(0).await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("agent.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
    s.restart_agent(0);
    s.wait_for("the data dir tightened", || async { mode_if_any(&dir) == 0o711 && mode_if_any(&dir.join("agent.json")) == 0o600 }).await;
    assert_eq!(s.control.store().host_list(None, false).await.unwrap().len(), 1, "the same host, by its secret");
    s.shutdown().await;
}

/// Each instance's user data is sent once: the agent keeps it (0600) and lists it in its polls,
/// so the answer after a generation bump is small; a restarted agent still has every script.
#[tokio::test]
async fn user_data_crosses_the_wire_once_per_instance() {
    const N: usize = 4;
    const MIB: usize = 1024 * 1024;
    let mut s = TestServer::builder().host("us-east-1", sim_host("h", 64, 0)).start().await;
    add_key(&s, "k").await;
    let mut launched = Vec::new();
    for i in 0..N {
        let mut ud = format!("#!/bin/sh\n# instance {i}\n");
        ud.push_str(&"x".repeat(MIB - ud.len()));
        let body = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "user_data": ud});
        let v = s.expect("POST", "/instance-operations/launch", Some(body), 200).await;
        launched.push((v["data"]["instance_ids"][0].as_str().unwrap().to_owned(), ud));
    }
    for (id, _) in &launched {
        s.wait_status(&s.key, id, "active").await;
    }
    let dir = s.dir.0.join("agent-0");
    let kept = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("user-data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let check_kept = |dir: &Path| {
        for (id, ud) in &launched {
            let p = dir.join("user-data").join(id);
            assert_eq!(&std::fs::read_to_string(&p).unwrap(), ud, "the agent keeps {id}'s user data");
            assert_eq!(mode(&p), 0o600);
        }
        assert_eq!(mode(&dir.join("user-data")), 0o700);
    };
    check_kept(&dir);
    let mut ids: Vec<String> = launched.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(kept(&dir), ids);

    // What the agent asks: its secret, and the instances it keeps user data for.
    let creds: Value = serde_json::from_slice(&std::fs::read(dir.join("agent.json")).unwrap()).unwrap();
    let secret = creds["host_secret"].as_str().unwrap().to_owned();
    let poll = |known: i64, held: Vec<String>| {
        let (s, secret) = (&s, secret.clone());
        async move {
            let req = proto::DesiredRequest { known_generation: known, wait_ms: 0, user_data_held: held };
            let resp = s.http.post(format!("{}{}", s.agent_url, proto::PATH_DESIRED)).bearer_auth(secret).json(&req).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let bytes = resp.bytes().await.unwrap();
            (bytes.len(), serde_json::from_slice::<proto::DesiredResponse>(&bytes).unwrap())
        }
    };
    let (full, _) = poll(-1, vec![]).await;
    assert!(full > N * MIB, "without the list every script is sent ({full} bytes)");
    let (small, d0) = poll(-1, kept(&dir)).await;
    assert!(small < 64 * 1024, "{small} bytes");
    let mut omitted = d0.user_data_omitted.clone();
    omitted.sort();
    assert_eq!(omitted, ids);
    assert!(d0.instances.iter().all(|i| i.user_data.is_none()));

    // A generation bump (another launch) re-sends the specs, not the scripts.
    let extra = launch(&s, &s.key, "cpu_1x_small", "k").await;
    s.wait_status(&s.key, &extra, "active").await;
    let (after_bump, d1) = poll(d0.generation, kept(&dir)).await;
    assert!(d1.generation > d0.generation);
    assert_eq!(d1.instances.len(), N + 1);
    assert!(after_bump < 64 * 1024, "the answer after a bump is {after_bump} bytes");

    // A restarted agent still has every script, and its polls keep listing them.
    s.stop_agent(0).await;
    s.restart_agent(0);
    let host = s.control.store().host_list(None, false).await.unwrap()[0].clone();
    s.wait_for("the restarted agent's report", || async {
        s.control.store().host_get(&host.id).await.unwrap().is_some_and(|h| h.last_seen_at > host.last_seen_at)
    })
    .await;
    check_kept(&dir);
    assert_eq!(kept(&dir), ids);
    for (id, _) in &launched {
        s.wait_status(&s.key, id, "active").await;
    }
    s.shutdown().await;
}

fn reg_net(token: &str, machine: &str, underlay: &str, subnet: &str) -> proto::RegisterRequest {
    let mut r = reg(token, machine);
    r.inventory.network = Some(proto::HostNetwork { underlay: underlay.into(), instance_subnet: subnet.into(), routes: vec![] });
    (r.inventory.vcpus, r.inventory.memory_mib, r.inventory.disk_gib) = (16, 65_536, 1_000);
    r
}

/// Hosts join their region's private network with an underlay address and an instance subnet
/// that no other host of the region has; each host's desired state names its peers and every
/// member of the orgs it serves, and a new member on one host wakes the org's other hosts.
#[tokio::test]
async fn hosts_share_one_private_network_and_hear_of_new_members() {
    let s = TestServer::builder().start().await;
    let token = admin::host_token_create_with(&s.control, "us-east-1", HostTokenLimits { uses: 10, ttl_secs: 600 }).await.unwrap();
    let h1 = agents::register(&s.control, reg_net(&token.secret, "m-1", "198.51.100.1", "10.220.1.0/24")).await.unwrap().host_id;
    let h2 = agents::register(&s.control, reg_net(&token.secret, "m-2", "198.51.100.2", "10.220.2.0/24")).await.unwrap().host_id;
    for (machine, underlay, subnet, why) in [
        ("m-3", "198.51.100.3", "10.220.0.0/16", "a subnet over another host's"),
        ("m-4", "198.51.100.1", "10.220.4.0/24", "another host's underlay address"),
        ("m-5", "10.220.2.9", "10.220.5.0/24", "an underlay address inside another host's subnet"),
    ] {
        let e = agents::register(&s.control, reg_net(&token.secret, machine, underlay, subnet)).await.unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{why}: {e:?}");
    }
    for (underlay, subnet) in [("nope", "10.220.6.0/24"), ("198.51.100.6", "10.220.6.1/24"), ("198.51.100.6", "10.220.6.0/31")] {
        let e = agents::register(&s.control, reg_net(&token.secret, "m-6", underlay, subnet)).await.unwrap_err();
        assert!(matches!(e, Error::InvalidValue { .. }), "{underlay} {subnet}: {e:?}");
    }
    let (h1, h2) = (nimbus_core::ids::HostId::parse(&h1).unwrap(), nimbus_core::ids::HostId::parse(&h2).unwrap());
    let desired = |h: nimbus_core::ids::HostId| {
        let c = s.control.clone();
        async move { agents::desired(&c, &h, proto::DesiredRequest { known_generation: -1, ..Default::default() }).await.unwrap() }
    };
    let f1 = desired(h1.clone()).await.fabric.unwrap();
    assert_eq!(f1.vni, nimbus_control::fabric::vni("us-east-1"));
    assert_eq!(
        f1.peers,
        vec![proto::HostNetwork { underlay: "198.51.100.2".into(), instance_subnet: "10.220.2.0/24".into(), routes: vec![] }]
    );
    assert!(f1.orgs.is_empty(), "no instance on it yet");

    // A 2-node cluster spreads over both hosts; each node's address arrives with its host's report.
    add_key(&s, "k").await;
    let body = json!({"name": "pair", "provider": "GCP", "spec": {"dedicated": {"region_nodes": {"us-east-1": 2}, "machine_type": "cpu_1x_small"}}});
    let (st, v) = s.send(&s.key, "POST", format!("{}/api/v1/clusters", s.url), Some(body)).await;
    assert_eq!(st, 200, "{v}");
    // Reports the host's instances (oldest first) at `addrs`.
    let report = |h: nimbus_core::ids::HostId, addrs: &'static [&'static str]| {
        let c = s.control.clone();
        async move {
            let mine = c.store().instance_list_by_host(&h).await.unwrap();
            assert!(mine.len() >= addrs.len(), "instances on the host");
            let instances = mine
                .iter()
                .zip(addrs)
                .map(|(i, a)| proto::InstanceReport {
                    id: i.id.to_string(),
                    state: proto::ActualState::Running,
                    ip: Some((*a).into()),
                    private_ip: Some((*a).into()),
                    restart_generation: 0,
                    message: None,
                })
                .collect();
            let gen = c.store().host_desired_generation(&h).await.unwrap();
            agents::report(&c, &h, proto::ReportRequest { instances, applied_generation: gen, ..Default::default() }).await.unwrap();
        }
    };
    report(h1.clone(), &["10.220.1.3"]).await;
    report(h2.clone(), &["10.220.2.3"]).await;
    let f1 = desired(h1.clone()).await.fabric.unwrap();
    assert_eq!(f1.orgs, vec![proto::OrgMembers { tenant: s.org.id.to_string(), addrs: vec!["10.220.1.3".into(), "10.220.2.3".into()] }]);
    // An instance outside the cluster (so no cluster change wakes anyone): best fit puts it on
    // the older host, and its address reaching the server bumps the org's other host.
    launch(&s, &s.key, "cpu_1x_small", "k").await;
    let g2 = s.control.store().host_desired_generation(&h2).await.unwrap();
    report(h1.clone(), &["10.220.1.3"]).await;
    assert_eq!(s.control.store().host_desired_generation(&h2).await.unwrap(), g2, "a report without a new address changes no member");
    report(h1.clone(), &["10.220.1.3", "10.220.1.4"]).await;
    assert!(s.control.store().host_desired_generation(&h2).await.unwrap() > g2, "host 2 must hear of host 1's new member");
    let f2 = desired(h2.clone()).await.fabric.unwrap();
    assert_eq!(f2.orgs[0].addrs, vec!["10.220.1.3".to_owned(), "10.220.1.4".into(), "10.220.2.3".into()]);
    // Terminating a node takes it out at once, before its host reports it gone.
    let gone = s.control.store().instance_list_by_host(&h2).await.unwrap()[0].id.to_string();
    let g1 = s.control.store().host_desired_generation(&h1).await.unwrap();
    let (st, v) =
        s.send(&s.key, "POST", format!("{}/api/v1/instance-operations/terminate", s.url), Some(json!({"instance_ids": [gone]}))).await;
    assert_eq!(st, 200, "{v}");
    assert!(s.control.store().host_desired_generation(&h1).await.unwrap() > g1, "host 1 must hear of the terminate");
    let f1 = desired(h1.clone()).await.fabric.unwrap();
    assert_eq!(f1.orgs[0].addrs, vec!["10.220.1.3".to_owned(), "10.220.1.4".into()]);
    s.shutdown().await;
}
