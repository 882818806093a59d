//! The scheduler under concurrency: racing launches never over-commit a host, GPU indices are
//! never handed out twice.

use std::collections::HashSet;

use nimbus_test_utils::{sim_host, TestServer};
use serde_json::json;

use crate::add_key;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_launches_never_overcommit_gpus() {
    let s = TestServer::builder().host("us-east-1", sim_host("a", 1000, 8)).host("us-east-1", sim_host("b", 1000, 4)).start().await;
    add_key(&s, "k").await;
    let body = json!({"region_name": "us-east-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k"]});
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let http = s.http.clone();
        let url = s.lambda("/instance-operations/launch");
        let key = s.key.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).bearer_auth(key).json(&body).send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<serde_json::Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (st, v) = t.await.unwrap();
        match st {
            200 => ok += 1,
            400 => assert_eq!(v["error"]["code"], "instance-operations/launch/insufficient-capacity", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 12, "exactly the 12 GPUs of the two hosts are handed out");
    let hosts = s.control.store().host_list(None, false).await.unwrap();
    for h in &hosts {
        let holders: Vec<_> = h.gpus.iter().filter_map(|g| g.instance_id.clone()).collect();
        assert_eq!(holders.len(), h.gpus.len(), "every GPU of {} is held", h.name);
        assert_eq!(holders.iter().collect::<HashSet<_>>().len(), holders.len(), "no instance holds two GPUs");
        assert_eq!(h.used.vcpus, 26 * h.gpus.len() as i64);
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cpu_launches_respect_vcpus() {
    let s = TestServer::builder().host("us-east-1", sim_host("small", 10, 0)).start().await;
    add_key(&s, "k").await;
    let body = json!({"region_name": "us-east-1", "instance_type_name": "cpu_4x_large", "ssh_key_names": ["k"]});
    let futs: Vec<_> = (0..8).map(|_| s.call(&s.key, "POST", "/instance-operations/launch", Some(body.clone()))).collect();
    let results = futures_util::future::join_all(futs).await;
    assert_eq!(results.iter().filter(|(st, _)| *st == 200).count(), 2, "10 vCPUs fit two 4-vCPU instances");
    let h = &s.control.store().host_list(None, false).await.unwrap()[0];
    assert_eq!(h.used.vcpus, 8);
    s.shutdown().await;
}
