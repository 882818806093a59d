//! GPU health and the check between tenants, end to end through a real agent with the sim
//! driver's fault injection (a JSON file of NVML-like signals per GPU): an Xid by its bucket
//! takes a GPU out and its instance `unhealthy` (event, Lambda status, native GPU list); a reset
//! of the idle GPU brings it back; a GPU goes to the next tenant only once its last tenant's
//! processes are gone; an unknown Xid drains; a GPU that fell off the bus stays out until the
//! host reboots. MIG types get MIG devices.

use std::path::{Path, PathBuf};

use nimbus_core::gpu_health::Condition;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::{add_key, launch};

fn faults(path: &Path, v: Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&v).expect("json")).expect("write faults");
    std::fs::rename(&tmp, path).expect("rename faults");
}

fn resets(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path.with_extension("resets")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

async fn gpu(s: &TestServer, index: i64) -> nimbus_core::model::Gpu {
    let hosts = s.control.store().host_list(None, false).await.expect("hosts");
    hosts[0].gpus.iter().find(|g| g.index == index).cloned().expect("gpu")
}

/// Host index of the GPU an instance holds.
async fn gpu_of(s: &TestServer, id: &str) -> i64 {
    let hosts = s.control.store().host_list(None, false).await.expect("hosts");
    hosts[0].gpus.iter().find(|g| g.instance_id.as_ref().is_some_and(|i| i.as_str() == id)).map(|g| g.index).expect("holds a GPU")
}

async fn try_launch(s: &TestServer, itype: &str) -> (u16, Value) {
    s.call(
        &s.key,
        "POST",
        "/instance-operations/launch",
        Some(json!({"region_name": "us-east-1", "instance_type_name": itype, "ssh_key_names": ["k"]})),
    )
    .await
}

async fn terminate(s: &TestServer, id: &str) {
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]})), 200).await;
    s.wait_status(&s.key, id, "terminated").await;
}

/// A server with one sim host of `gpus` H100s whose faults file is the returned path (in the
/// returned dir, which must live as long as the test).
async fn start_with_faults(gpus: i64) -> (TestServer, nimbus_test_utils::TempDir, PathBuf) {
    let dir = nimbus_test_utils::TempDir::new("gpu-faults");
    let file = dir.0.join("faults.json");
    let mut h = sim_host("h", 64, gpus);
    h.faults_file = Some(file.clone());
    let s = TestServer::builder().host("us-east-1", h).start().await;
    add_key(&s, "k").await;
    (s, dir, file)
}

#[tokio::test]
async fn an_xid_takes_its_gpu_and_instance_out_until_a_reset() {
    let (s, _dir, file) = start_with_faults(2).await;
    let first = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &first, "active").await;
    let g = gpu_of(&s, &first).await;
    let reset_before = resets(&file).iter().filter(|i| **i == g).count();

    // Xid 13 is the application's fault: nothing changes (a few reports later).
    faults(&file, json!({ g.to_string(): {"xids": [13]} }));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(gpu(&s, g).await.health, Condition::Ok);
    assert_eq!(s.wait_status(&s.key, &first, "active").await["status"], "active");

    // Xid 48 (double-bit ECC, RESET_GPU): the instance is unhealthy, with the reason.
    faults(&file, json!({ g.to_string(): {"xids": [13, 48]} }));
    s.wait_status(&s.key, &first, "unhealthy").await;
    let bad = gpu(&s, g).await;
    assert_eq!(bad.health, Condition::ResetRequired);
    assert!(bad.health_reasons.iter().any(|r| r.contains("Xid 48")), "{:?}", bad.health_reasons);
    let listed = s.nexpect("GET", &format!("/instances/{first}/gpus"), None, 200).await;
    assert_eq!(listed[0]["health"], "reset_required", "{listed}");
    assert_eq!(listed[0]["index"], 0, "numbered from 0 inside the instance");
    assert!(listed[0]["reasons"][0].as_str().is_some_and(|r| r.contains("Xid 48")), "{listed}");
    let events = s.control.store().event_list_by_org(&s.org.id, 0, None, None, Some("instance"), 1000).await.expect("events");
    let unhealthy = events.iter().find(|e| e.kind == "instance.unhealthy" && e.resource_id == first).expect("an instance.unhealthy event");
    assert!(unhealthy.payload["message"].as_str().is_some_and(|m| m.contains("Xid 48")), "{}", unhealthy.payload);
    let host_events = s.control.store().event_list_after(0, 10_000).await.expect("host events");
    assert!(
        host_events.iter().any(|e| e.kind == "host.gpu_health_changed" && e.payload["to"] == "reset_required"),
        "operators get a host event"
    );
    // The GPU itself stays out: a second 1-GPU instance gets the other GPU, a third gets none.
    let second = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    assert_ne!(gpu_of(&s, &second).await, g);
    let (st, v) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("instance-operations/launch/insufficient-capacity")), "{v}");

    // Terminating it frees the GPU, which the agent resets (it is idle): back in service.
    terminate(&s, &first).await;
    s.wait_for("the GPU reset and back", || async {
        let now = gpu(&s, g).await;
        now.health == Condition::Ok && now.clean
    })
    .await;
    assert!(resets(&file).iter().filter(|i| **i == g).count() > reset_before, "the agent reset the GPU: {:?}", resets(&file));
    let third = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    assert_eq!(gpu_of(&s, &third).await, g, "the reset GPU is placed again");
    s.shutdown().await;
}

#[tokio::test]
async fn a_gpu_goes_to_the_next_tenant_only_once_the_last_ones_processes_are_gone() {
    let (s, _dir, file) = start_with_faults(1).await;
    let id = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &id, "active").await;
    // A process of the instance outlives it (say, stuck in the driver).
    faults(&file, json!({"0": {"processes": 1}}));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let resets_before = resets(&file).len();
    terminate(&s, &id).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let g = gpu(&s, 0).await;
    assert!(g.instance_id.is_none() && !g.clean, "released but not checked: {g:?}");
    let (st, v) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!(st, 400, "not placed while its last tenant's process runs: {v}");
    assert_eq!(resets(&file).len(), resets_before, "never reset under a running process");
    // The process goes: the agent resets it and it is placed again.
    faults(&file, json!({"0": {"processes": 0}}));
    s.wait_for("the GPU checked", || async { gpu(&s, 0).await.clean }).await;
    assert!(resets(&file).len() > resets_before);
    let (st, v) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!(st, 200, "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_xids_drain_and_a_gpu_off_the_bus_stays_out_after_a_reset() {
    let (s, _dir, file) = start_with_faults(2).await;
    let id = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &id, "active").await;
    let g = gpu_of(&s, &id).await;
    let other = 1 - g;
    // An Xid Nimbus has no bucket for drains the GPU: its instance keeps running, nothing new
    // is placed on it.
    faults(&file, json!({ g.to_string(): {"xids": [4242]} }));
    s.wait_for("the unknown Xid drains", || async { gpu(&s, g).await.health == Condition::Drain }).await;
    assert_eq!(s.wait_status(&s.key, &id, "active").await["status"], "active");
    // Then it falls off the bus (RESTART_BM).
    faults(&file, json!({ g.to_string(): {"xids": [4242, 79]} }));
    s.wait_status(&s.key, &id, "unhealthy").await;
    terminate(&s, &id).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let lost = gpu(&s, g).await;
    assert_eq!(lost.health, Condition::RebootRequired, "a reset does not bring back a GPU that fell off the bus");
    assert!(lost.health_reasons.iter().any(|r| r.contains("Xid 79")), "{:?}", lost.health_reasons);
    let again = launch(&s, &s.key, "gpu_1x_h100_sxm5", "k").await;
    assert_eq!(gpu_of(&s, &again).await, other);
    let (st, _) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!(st, 400, "the lost GPU is not placed");
    s.shutdown().await;
}

/// MIG: types of a MIG profile are placed on free MIG devices of that profile (which the
/// operator made; sim inventory here), reach the agent as MIG device references, are listed
/// as the instance's GPUs, and whole-GPU types never take a GPU in MIG mode.
#[tokio::test]
async fn mig_types_get_mig_devices_and_whole_gpu_types_do_not() {
    let mut h = sim_host("h", 64, 0);
    h.gpus = vec![("NVIDIA H200".to_owned(), 2)];
    h.mig_devices = vec![(0, "1g.18gb".to_owned(), 2), (0, "3g.71gb".to_owned(), 1)];
    let s = TestServer::builder().host("us-east-1", h).start().await;
    add_key(&s, "k").await;
    let types = s.expect("GET", "/instance-types", None, 200).await;
    assert_eq!(types["data"]["gpu_1x_h200_1g"]["regions_with_capacity_available"][0]["name"], "us-east-1", "{types}");

    let a = launch(&s, &s.key, "gpu_1x_h200_1g", "k").await;
    let b = launch(&s, &s.key, "gpu_1x_h200_1g", "k").await;
    s.wait_status(&s.key, &a, "active").await;
    let (st, v) = try_launch(&s, "gpu_1x_h200_1g").await;
    assert_eq!(st, 400, "two 1g devices only: {v}");
    let listed = s.nexpect("GET", &format!("/instances/{a}/gpus"), None, 200).await;
    assert_eq!((listed[0]["mig_profile"].as_str(), listed[0]["model"].as_str()), (Some("1g.18gb"), Some("NVIDIA H200")), "{listed}");
    let other = s.nexpect("GET", &format!("/instances/{b}/gpus"), None, 200).await;
    assert_ne!(listed[0]["uuid"], other[0]["uuid"], "each instance its own device");

    // What the agent is told: the MIG device's parent and ids, and no whole GPU.
    let host = s.control.store().host_list(None, false).await.expect("hosts")[0].id.clone();
    let d = nimbus_control::agents::desired(&s.control, &host, nimbus_proto::DesiredRequest::default()).await.expect("desired");
    let da = d.instances.iter().find(|i| i.id == a).expect("a is desired");
    assert!(da.gpu_indices.is_empty());
    assert_eq!(da.mig_devices.len(), 1);
    assert_eq!((da.mig_devices[0].parent_index, da.mig_devices[0].uuid.as_str()), (0, listed[0]["uuid"].as_str().expect("uuid")));

    // A whole H200 comes from GPU 1 (not in MIG mode); there is no second one.
    let whole = launch(&s, &s.key, "gpu_1x_h200", "k").await;
    assert_eq!(gpu_of(&s, &whole).await, 1);
    let (st, _) = try_launch(&s, "gpu_1x_h200").await;
    assert_eq!(st, 400, "GPU 0 is in MIG mode: never placed whole");

    // A terminated instance's device goes back.
    terminate(&s, &a).await;
    let (st, v) = try_launch(&s, "gpu_1x_h200_1g").await;
    assert_eq!(st, 200, "{v}");
    s.shutdown().await;
}

/// A resize that keeps fewer GPUs gives the others up: they are checked before their next
/// tenant, exactly as after a termination.
#[tokio::test]
async fn gpus_a_resize_gives_up_are_checked_before_their_next_tenant() {
    let (s, _dir, file) = start_with_faults(2).await;
    let id = launch(&s, &s.key, "gpu_2x_h100_sxm5", "k").await;
    s.wait_status(&s.key, &id, "active").await;
    // Both GPUs have a process of this tenant that will outlive the shrink.
    faults(&file, json!({"0": {"processes": 1}, "1": {"processes": 1}}));
    s.nexpect("POST", &format!("/instances/{id}/stop"), None, 200).await;
    s.wait_native_status(&format!("/instances/{id}"), "stopped").await;
    s.nexpect("POST", &format!("/instances/{id}/resize"), Some(json!({"instance_type": "gpu_1x_h100_sxm5"})), 200).await;
    let kept = gpu_of(&s, &id).await;
    let given_up = 1 - kept;
    // At once, in the resize's own transaction (before its agent has even heard of it).
    assert!(!gpu(&s, given_up).await.clean, "given up unchecked");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(!gpu(&s, given_up).await.clean, "not handed on while the process runs");
    let (st, v) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!(st, 400, "{v}");
    faults(&file, json!({}));
    s.wait_for("the given-up GPU checked", || async { gpu(&s, given_up).await.clean }).await;
    let (st, v) = try_launch(&s, "gpu_1x_h100_sxm5").await;
    assert_eq!(st, 200, "{v}");
    s.shutdown().await;
}
