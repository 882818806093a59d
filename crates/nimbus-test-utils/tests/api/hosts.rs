//! Hosts: a silent host's instances become unhealthy and recover when it reports again; a
//! restarted agent adopts its instances (no duplicates) and removes orphans.

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

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
    let d = nimbus_control::agents::desired(&s.control, &host, nimbus_proto::DesiredRequest { known_generation: -1, wait_ms: 0 })
        .await
        .unwrap();
    let find = |id: &str| d.instances.iter().find(|i| i.id == id).cloned().unwrap();
    let (p, t) = (find(&plain), find(&trusted));
    assert_eq!((p.privileged, t.privileged), (false, true));
    assert_eq!(p.tenant, s.org.id.to_string());
    assert_eq!(t.tenant, s.org.id.to_string());
    s.shutdown().await;
}
