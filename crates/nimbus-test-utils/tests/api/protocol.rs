//! Rolling upgrades: a server of agent protocol N serves agents of N-1. The previous version's
//! agent is played over HTTP with that version's own message types (`proto_v1`, frozen): it
//! registers, reports, long-polls, gets an instance launched through the Lambda API, reports it
//! running, and reads every answer as such an agent reads it. Versions outside the window are
//! refused with a message that says which to upgrade.

use nimbus_control::admin;
use nimbus_proto as proto;
use nimbus_test_utils::TestServer;
use serde_json::{json, Value};

use crate::proto_v1 as v1;

async fn post(s: &TestServer, path: &str, bearer: &str, body: Value) -> (u16, Value) {
    let r = s.http.post(format!("{}{path}", s.agent_url)).bearer_auth(bearer).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn register_v1(version: u32) -> Value {
    serde_json::to_value(v1::RegisterRequest {
        protocol_version: version,
        token: String::new(),
        machine_id: "agent-of-version-1".into(),
        inventory: v1::Inventory {
            hostname: "old-agent".into(),
            cpu_model: "fixture".into(),
            vcpus: 8,
            memory_mib: 32_768,
            disk_gib: 500,
            gpus: vec![],
            driver: "sim".into(),
            public_ip: None,
        },
    })
    .unwrap()
}

#[tokio::test]
async fn an_agent_of_the_previous_protocol_version_is_served() {
    assert_eq!(proto::OLDEST_PROTOCOL_VERSION, v1::PROTOCOL_VERSION, "the frozen types are the oldest version accepted");
    assert_eq!(proto::PROTOCOL_VERSION, v1::PROTOCOL_VERSION + 1);
    let s = TestServer::builder().start().await;
    let token = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    for bad in [proto::OLDEST_PROTOCOL_VERSION - 1, proto::PROTOCOL_VERSION + 1] {
        let (st, v) = post(&s, v1::PATH_REGISTER, &token, register_v1(bad)).await;
        assert_eq!(st, 400, "version {bad}: {v}");
        assert!(v.to_string().contains("upgrade servers first"), "{v}");
    }
    let (st, v) = post(&s, v1::PATH_REGISTER, &token, register_v1(v1::PROTOCOL_VERSION)).await;
    assert_eq!(st, 200, "{v}");
    let reg: v1::RegisterResponse = serde_json::from_value(v).unwrap();
    let report = |instances: Vec<v1::InstanceReport>, applied: i64| {
        serde_json::to_value(v1::ReportRequest { instances, applied_generation: applied, volumes: vec![], snapshots: vec![], vpns: vec![] })
            .unwrap()
    };
    let (st, v) = post(&s, v1::PATH_REPORT, &reg.host_secret, report(vec![], 0)).await;
    assert_eq!(st, 200, "{v}");
    let _: v1::ReportResponse = serde_json::from_value(v).unwrap();

    s.expect("POST", "/ssh-keys", Some(json!({"name": "k"})), 200).await;
    let body = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});
    let id = s.expect("POST", "/instance-operations/launch", Some(body), 200).await["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    let poll = serde_json::to_value(v1::DesiredRequest { known_generation: -1, wait_ms: 0, user_data_held: vec![] }).unwrap();
    let (st, v) = post(&s, v1::PATH_DESIRED, &reg.host_secret, poll).await;
    assert_eq!(st, 200, "{v}");
    let desired: v1::DesiredResponse = serde_json::from_value(v).expect("a version-1 agent reads the answer");
    let d = desired.instances.iter().find(|d| d.id == id).expect("the launched instance is desired on the old agent's host");
    assert_eq!(d.power, v1::Power::Running);
    let running = v1::InstanceReport {
        id: id.clone(),
        state: v1::ActualState::Running,
        ip: Some("10.250.0.2".into()),
        private_ip: Some("10.250.0.2".into()),
        restart_generation: d.restart_generation,
        message: None,
    };
    let (st, v) = post(&s, v1::PATH_REPORT, &reg.host_secret, report(vec![running], desired.generation)).await;
    assert_eq!(st, 200, "{v}");
    s.wait_status(&s.key, &id, "active").await;
    s.shutdown().await;
}
