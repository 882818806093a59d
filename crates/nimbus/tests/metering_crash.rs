//! Metering survives `kill -9` of the server at any moment: a real `nimbus server` (SQLite) and a
//! real `nimbus agent` (sim driver) run while instances are launched, stopped, started and
//! terminated; the server is SIGKILLed at random moments many times and restarted. Afterwards
//! every instance's usage intervals must be exactly the billed segments its state history (the
//! outbox, written in the same transactions) implies: nothing lost, nothing counted twice.
//! The server speaks HTTPS (its self-signed certificate) and the agent pins its fingerprint.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nimbus_core::instance::InstanceState;
use nimbus_core::metering::{meter_for, Meter};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn server(dir: &std::path::Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("NIMBUS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_up(http: &reqwest::Client, url: &str) {
    let t = Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic generator, so a failing run can be replayed from its printed seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn state_of_event(kind: &str) -> Option<InstanceState> {
    Some(match kind {
        "instance.created" => InstanceState::Booting,
        "instance.active" => InstanceState::Active,
        "instance.stopped" => InstanceState::Stopped,
        "instance.terminated" => InstanceState::Terminated,
        "instance.unhealthy" => InstanceState::Unhealthy,
        "instance.stop_requested" => InstanceState::Stopping,
        "instance.start_requested" => InstanceState::Starting,
        "instance.terminate_requested" => InstanceState::Terminating,
        "instance.restart_requested" => InstanceState::Restarting,
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_sigkill_of_the_server() {
    let seed = std::env::var("NIMBUS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| u64::from(std::process::id()));
    eprintln!("seed {seed} (NIMBUS_CRASH_SEED to replay)");
    let mut rng = Lcg(seed);
    let dir = std::env::temp_dir().join(format!("nimbus-crash-{seed}-{}", nimbus_core::ids::random_hex_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[rate_limits]\nenabled = false\n\n[agents]\nheartbeat_interval_ms = 200\nhost_timeout_ms = 600000\n",
    )
    .unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display());
    let (org, key, token) = {
        let store = nimbus_store::Store::connect(&db).await.unwrap();
        let clock = std::sync::Arc::new(nimbus_core::clock::SystemClock);
        let c = nimbus_control::Control::new(store.clone(), clock, nimbus_control::Config::default()).await.unwrap();
        let org = nimbus_control::admin::org_create(&c, "crash", None).await.unwrap();
        let (_, key) = nimbus_control::admin::api_key_create(&c, &org, "k", nimbus_core::auth::Permissions::admin(), None).await.unwrap();
        let token = nimbus_control::admin::host_token_create(&c, "us-east-1").await.unwrap();
        store.close().await;
        (org, key, token)
    };
    let port = free_port();
    // HTTPS as `nimbus server` serves by default: the certificate it would make on first start is
    // made here first so that the test can trust it and the agent can pin it; every restart
    // serves the same one.
    let (cert, key_file, _) = nimbus_api::tls::ensure_self_signed(&dir, &["127.0.0.1".to_owned()]).unwrap();
    let fingerprint = nimbus_api::tls::ServerTls::load(&cert, &key_file).unwrap().fingerprint();
    let url = format!("https://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap())
        .build()
        .unwrap();
    let mut srv = server(&dir, port);
    wait_up(&http, &url).await;
    let mut agent = Command::new(BIN)
        .args(["agent", "--server", &url, "--server-fingerprint", &fingerprint, "--token", &token])
        .args(["--driver", "sim", "--sim-vcpus", "64", "--data-dir"])
        .arg(dir.join("agent"))
        .env("NIMBUS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let call = |m: &str, path: &str, body: Option<Value>| {
        let rb = http.request(m.parse().unwrap(), format!("{url}{path}")).bearer_auth(&key);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        async move { rb.send().await.ok().map(|r| r.status().as_u16()) }
    };
    let t = Instant::now();
    let key_id = loop {
        let r = http
            .post(format!("{url}/api/v1/ssh-keys"))
            .bearer_auth(&key)
            .json(&json!({"name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host"}))
            .send()
            .await;
        if let Ok(r) = r {
            let v: Value = r.json().await.unwrap();
            break v["data"]["id"].as_str().unwrap().to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    };

    let mut ids: Vec<String> = Vec::new();
    let kills = 12;
    for round in 0..kills {
        // A burst of operations, racing the agent's reports, then a kill at a random moment.
        let kill_after = Duration::from_millis(rng.next(400));
        let started = Instant::now();
        while started.elapsed() < kill_after + Duration::from_millis(100) {
            if started.elapsed() >= kill_after && srv.try_wait().unwrap().is_none() {
                srv.kill().unwrap(); // SIGKILL, wherever the server is
                srv.wait().unwrap();
            }
            let op = rng.next(4);
            let pick = |rng: &mut Lcg, ids: &Vec<String>| ids.get(rng.next(ids.len().max(1) as u64) as usize).cloned();
            match op {
                0 => {
                    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
                    if let Ok(r) = http.post(format!("{url}/v1/instances")).bearer_auth(&key).json(&body).send().await {
                        if let Ok(v) = r.json::<Value>().await {
                            if let Some(id) = v["data"]["id"].as_str() {
                                ids.push(id.to_owned());
                            }
                        }
                    }
                }
                1 => {
                    if let Some(id) = pick(&mut rng, &ids) {
                        let _ = call("POST", &format!("/v1/instances/{id}/stop"), None).await;
                    }
                }
                2 => {
                    if let Some(id) = pick(&mut rng, &ids) {
                        let _ = call("POST", &format!("/v1/instances/{id}/start"), None).await;
                    }
                }
                _ => {
                    if rng.next(3) == 0 {
                        if let Some(id) = pick(&mut rng, &ids) {
                            let _ = call("DELETE", &format!("/v1/instances/{id}"), None).await;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.next(40))).await;
        }
        if srv.try_wait().unwrap().is_some() {
            srv = server(&dir, port);
            wait_up(&http, &url).await;
        }
        eprintln!("round {round}: {} instances so far", ids.len());
    }
    // Let the agent catch up, then stop everything and read the database directly.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    srv.kill().unwrap();
    srv.wait().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();

    let store = nimbus_store::Store::connect(&db).await.unwrap();
    let events = store.event_list_by_org(&org.id, 0, None, None, Some("instance"), 1_000_000).await.unwrap();
    let intervals = store.usage_list_by_org(&org.id, i64::MIN, i64::MAX).await.unwrap();
    let mut expected: BTreeMap<String, Vec<(String, i64, Option<i64>)>> = BTreeMap::new();
    let mut state: BTreeMap<String, (InstanceState, i64)> = BTreeMap::new();
    for e in &events {
        let Some(to) = state_of_event(&e.kind) else { continue };
        let (from, _) = state.get(&e.resource_id).copied().unwrap_or((InstanceState::Pending, e.created_at));
        let segs = expected.entry(e.resource_id.clone()).or_default();
        if meter_for(from) != meter_for(to) {
            if meter_for(from) != Meter::None {
                if let Some(last) = segs.last_mut() {
                    last.2 = Some(e.created_at);
                }
            }
            if meter_for(to) != Meter::None {
                segs.push((meter_for(to).as_str().to_owned(), e.created_at, None));
            }
        }
        state.insert(e.resource_id.clone(), (to, e.created_at));
    }
    let mut actual: BTreeMap<String, Vec<(String, i64, Option<i64>)>> = BTreeMap::new();
    for u in intervals.iter().filter(|u| u.resource_type == "instance") {
        actual.entry(u.resource_id.clone()).or_default().push((u.kind.clone(), u.started_at, u.ended_at));
    }
    for v in actual.values_mut() {
        v.sort_by_key(|x| x.1);
    }
    expected.retain(|_, v| !v.is_empty());
    let billed = expected.values().flatten().count();
    eprintln!("{} instances, {} events, {billed} billed segments, {kills} SIGKILLs", ids.len(), events.len());
    assert!(billed >= 5, "the run should have billed something (seed {seed})");
    assert_eq!(actual, expected, "usage intervals differ from the state history (seed {seed})");
    let _ = std::fs::remove_dir_all(&dir);
}
