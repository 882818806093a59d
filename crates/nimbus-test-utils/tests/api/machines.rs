//! Containers and VMs: an instance type's `machine` decides which hosts may take it. A VM type
//! lands only on a host whose agent reports VMs (the sim driver reports containers and VMs), a
//! container-only host never takes one (not by placement, not by the claim in the database), the
//! capacity every dialect shows follows the same rule, and the agent is told to run a VM.

use nimbus_control::{admin, agents};
use nimbus_core::catalog::{Machine, Resources};
use nimbus_core::ids::{HostId, InstanceId};
use nimbus_proto as proto;
use nimbus_store::Store;
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::{add_key, launch};

/// Registers a host the way an agent that runs containers only does (no agent keeps running:
/// the server's host timeout must outlast the test). Returns its id.
async fn register_container_only_host(s: &TestServer, name: &str, vcpus: i64) -> HostId {
    let token = admin::host_token_create(&s.control, "us-east-1").await.unwrap();
    let r = agents::register(
        &s.control,
        proto::RegisterRequest {
            protocol_version: proto::PROTOCOL_VERSION,
            token,
            machine_id: format!("machine-{name}"),
            inventory: proto::Inventory {
                hostname: name.to_owned(),
                cpu_model: "test".into(),
                vcpus,
                memory_mib: vcpus * 8 * 1024,
                disk_gib: vcpus * 100,
                gpus: vec![],
                driver: "container".into(),
                public_ip: None,
                network: None,
                machines: vec![proto::Machine::Container],
            },
        },
    )
    .await
    .unwrap();
    HostId::parse(&r.host_id).unwrap()
}

async fn host_of(s: &TestServer, id: &str) -> HostId {
    let i = s.control.store().instance_get(&s.org.id, &InstanceId::parse(id).unwrap()).await.unwrap().unwrap();
    i.host_id.unwrap()
}

/// Regions the Lambda dialect lists with capacity for `itype`.
async fn regions_with_capacity(s: &TestServer, itype: &str) -> Value {
    s.expect("GET", "/instance-types", None, 200).await["data"][itype]["regions_with_capacity_available"].clone()
}

async fn preset_regions(s: &TestServer, itype: &str) -> Vec<String> {
    let all = nimbus_control::presets::list(&s.control).await.unwrap();
    all.into_iter().find(|p| p.instance_type.name == itype).unwrap().available_in
}

fn vm_launch() -> Value {
    json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small_vm", "ssh_key_names": ["k"]})
}

#[tokio::test]
async fn vm_types_land_only_on_hosts_that_run_vms() {
    let mut s = TestServer::builder().config(|c| c.agents.host_timeout_ms = 3_600_000).start().await;
    add_key(&s, "k").await;
    let east = json!([{"name": "us-east-1", "description": "Virginia, USA"}]);

    // Only a container host: a VM type has no capacity and its launch is refused as any
    // launch that does not fit, while the container type fits there.
    let boxes = register_container_only_host(&s, "boxes", 16).await;
    let listed = s.control.store().host_list(None, true).await.unwrap();
    assert_eq!(listed.iter().map(|h| h.machines.clone()).collect::<Vec<_>>(), [vec![Machine::Container]], "persisted");
    assert_eq!(regions_with_capacity(&s, "cpu_1x_small_vm").await, json!([]));
    assert_eq!(regions_with_capacity(&s, "cpu_1x_small").await, east);
    assert_eq!(preset_regions(&s, "cpu_1x_small_vm").await, Vec::<String>::new(), "Voltage Park presets too");
    let (st, v) = s.call(&s.key, "POST", "/instance-operations/launch", Some(vm_launch())).await;
    crate::assert_error(st, &v, 400, "instance-operations/launch/insufficient-capacity");
    let kid = s.expect("GET", "/ssh-keys", None, 200).await["data"][0]["id"].as_str().unwrap().to_owned();
    let native_vm = json!({"instance_type": "cpu_1x_small_vm", "region": "us-east-1", "ssh_keys": [kid]});
    let e = s.nexpect("POST", "/instances", Some(native_vm.clone()), 409).await;
    assert_eq!(e["error"]["code"], "insufficient_capacity", "{e}");
    let plain = launch(&s, &s.key, "cpu_1x_small", "k").await;
    assert_eq!(host_of(&s, &plain).await, boxes);

    // The claim re-checks it too: a VM claim on the container host fails, a container one
    // succeeds (rolled back with the transaction).
    {
        let mut tx = s.control.store().begin().await.unwrap();
        let one = Resources { vcpus: 1, memory_mib: 1024, disk_gib: 10 };
        let i = InstanceId::generate();
        assert!(!Store::host_claim_in_txn(&mut tx, &boxes, Machine::Vm, &one, &[], &[], &i).await.unwrap(), "no VM on it");
        assert!(Store::host_claim_in_txn(&mut tx, &boxes, Machine::Container, &one, &[], &[], &i).await.unwrap());
    }

    // A host that runs VMs (the sim agent). The container host is the fuller one, so best fit
    // alone would put every small instance there; VM ones go to the sim host all the same.
    s.add_host("us-east-1", sim_host("vms", 64, 0)).await;
    let vms = s.control.store().host_list(None, true).await.unwrap().into_iter().find(|h| h.id != boxes).unwrap();
    assert_eq!(vms.machines, [Machine::Container, Machine::Vm]);
    assert_eq!(regions_with_capacity(&s, "cpu_1x_small_vm").await, east);
    assert_eq!(preset_regions(&s, "cpu_1x_small_vm").await, ["us-east-1"]);
    let mut vm_ids = Vec::new();
    for _ in 0..2 {
        vm_ids.push(launch(&s, &s.key, "cpu_1x_small_vm", "k").await);
    }
    let native = s.nexpect("POST", "/instances", Some(native_vm), 201).await;
    vm_ids.push(native["id"].as_str().unwrap().to_owned());
    for id in &vm_ids {
        assert_eq!(host_of(&s, id).await, vms.id, "{id} went to the host that runs VMs");
    }
    let plain2 = launch(&s, &s.key, "cpu_1x_small", "k").await;
    assert_eq!(host_of(&s, &plain2).await, boxes, "containers still pack onto the fuller host");

    // The agents are told what to run each as.
    let desired = |h: HostId| {
        let c = s.control.clone();
        async move { agents::desired(&c, &h, proto::DesiredRequest { known_generation: -1, ..Default::default() }).await.unwrap() }
    };
    let on_vms = desired(vms.id.clone()).await;
    assert_eq!(on_vms.instances.len(), 3);
    assert!(on_vms.instances.iter().all(|i| i.machine == proto::Machine::Vm), "{:?}", on_vms.instances);
    let on_boxes = desired(boxes.clone()).await;
    assert_eq!(
        on_boxes.instances.iter().map(|i| (i.id.clone(), i.machine)).collect::<Vec<_>>(),
        [(plain.clone(), proto::Machine::Container), (plain2.clone(), proto::Machine::Container)]
    );

    // The sim agent runs them; the native API says what each is.
    for id in &vm_ids {
        s.wait_status(&s.key, id, "active").await;
        assert_eq!(s.nexpect("GET", &format!("/instances/{id}"), None, 200).await["machine"], "vm");
    }
    assert_eq!(s.nexpect("GET", &format!("/instances/{plain}"), None, 200).await["machine"], "container");

    // A VM gets its volumes at start: attach and detach wait for it to be stopped.
    let vid = s.nexpect("POST", "/volumes", Some(json!({"name": "data", "region": "us-east-1", "size_gib": 1})), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = s.nexpect("POST", &format!("/volumes/{vid}/attach"), Some(json!({"instance_id": vm_ids[0]})), 409).await;
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("while they are stopped")), "{e}");
    let v = s.nexpect("GET", &format!("/volumes/{vid}"), None, 200).await;
    assert!(v["status"] == "available" && v["instance_id"].is_null(), "nothing attached: {v}");
    s.nexpect("POST", &format!("/instances/{}/stop", vm_ids[2]), None, 200).await;
    s.wait_native_status(&format!("/instances/{}", vm_ids[2]), "stopped").await;
    s.nexpect("POST", &format!("/volumes/{vid}/attach"), Some(json!({"instance_id": vm_ids[2]})), 200).await;
    s.nexpect("POST", &format!("/instances/{}/start", vm_ids[2]), None, 200).await;
    s.wait_native_status(&format!("/instances/{}", vm_ids[2]), "running").await;
    let e = s.nexpect("POST", &format!("/volumes/{vid}/detach"), None, 409).await;
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("while they are stopped")), "{e}");
    let d = desired(vms.id.clone()).await;
    let vm2 = d.instances.iter().find(|i| i.id == vm_ids[2]).unwrap();
    assert_eq!(
        vm2.volumes.iter().map(|m| m.volume_id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&vid),
        "the agent is told to give it the volume"
    );

    // A snapshot restores only to the kind of machine it was taken of.
    let snap = s.nexpect("POST", "/snapshots", Some(json!({"name": "vm-disk", "instance_id": vm_ids[1]})), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_native_status(&format!("/snapshots/{snap}"), "available").await;
    let as_container = json!({"name": "nope", "instance_type": "cpu_1x_small", "ssh_keys": [kid]});
    let e = s.nexpect("POST", &format!("/snapshots/{snap}/restore"), Some(as_container), 400).await;
    assert_eq!(e["error"]["details"]["field"], "instance_type", "{e}");
    assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("vm instance's disk")), "{e}");
    let as_vm = json!({"name": "copy", "instance_type": "cpu_1x_small_vm", "ssh_keys": [kid]});
    let r = s.nexpect("POST", &format!("/snapshots/{snap}/restore"), Some(as_vm), 201).await;
    assert_eq!(r["instance"]["machine"], "vm", "{r}");

    // A resize keeps what an instance runs as.
    s.nexpect("POST", &format!("/instances/{}/stop", vm_ids[0]), None, 200).await;
    s.wait_native_status(&format!("/instances/{}", vm_ids[0]), "stopped").await;
    let e = s.nexpect("POST", &format!("/instances/{}/resize", vm_ids[0]), Some(json!({"instance_type": "cpu_2x_medium"})), 400).await;
    assert_eq!(e["error"]["details"]["field"], "instance_type", "{e}");
    s.shutdown().await;
}
