//! Several server replicas on one database, in one process: a change committed through one
//! replica wakes an agent long-polling another (PostgreSQL `LISTEN/NOTIFY`), the background
//! loops run on one lease holder at a time and a replaced holder cannot write (the fence), and
//! an agent given several replicas moves to another when its own goes away, as the same host.
//!
//! The cross-replica tests need PostgreSQL (one SQLite file is one process's) and say SKIPPED on
//! SQLite; the lease tests run on both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_agent::{Agent, AgentConfig};
use nimbus_api::server::ServerHandle;
use nimbus_control::{admin, Config, Control};
use nimbus_core::clock::SystemClock;
use nimbus_store::{Fence, Store, FENCE};
use nimbus_test_utils::{sim_host, TempDir};
use serde_json::{json, Value};

struct Replicas {
    _dir: TempDir,
    dir: std::path::PathBuf,
    replicas: Vec<(Control, Option<ServerHandle>)>,
    http: reqwest::Client,
    key: String,
}

impl Replicas {
    /// `n` replicas on one fresh database (PostgreSQL only: `None`, with a SKIPPED line, else).
    async fn start(n: usize, tag: &str) -> Option<Replicas> {
        nimbus_test_utils::init_logs();
        let dir = TempDir::new(tag);
        let url = nimbus_test_utils::test_database_url(&dir.0).await;
        if !url.starts_with("postgres") {
            eprintln!("SKIPPED: several replicas need PostgreSQL (NIMBUS_TEST_DATABASE_URL)");
            return None;
        }
        let config = Config {
            rate_limits: nimbus_control::config::RateLimits::generous(),
            agents: nimbus_control::config::AgentTimings { heartbeat_interval_ms: 200, host_timeout_ms: 5_000 },
            ..Config::default()
        };
        let mut replicas = Vec::new();
        for _ in 0..n {
            let store = Store::connect(&url).await.unwrap();
            let control = Control::new(store, Arc::new(SystemClock), config.clone()).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = nimbus_api::server::start(control.clone(), listener).unwrap();
            replicas.push((control, Some(server)));
        }
        let c0 = replicas[0].0.clone();
        let org = admin::org_create(&c0, "org-replicas", None).await.unwrap();
        let (_, key) = admin::api_key_create(&c0, &org, "k", nimbus_core::auth::Permissions::admin(), None).await.unwrap();
        let path = dir.0.clone();
        Some(Replicas { _dir: dir, dir: path, replicas, http: reqwest::Client::new(), key })
    }

    fn url(&self, i: usize) -> String {
        self.replicas[i].1.as_ref().unwrap().url()
    }

    async fn call(&self, i: usize, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}/api/v1{path}", self.url(i))).bearer_auth(&self.key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// A real agent with a sim driver, given `servers` (comma-separated), long-polling 25 s:
    /// only a wake-up makes it apply a change sooner.
    fn agent(&self, servers: String, token: &str) -> Arc<Agent> {
        let dir = self.dir.join("agent");
        let sim = nimbus_test_utils::Sim { state_file: Some(dir.join("sim.json")), ..sim_host("rh", 32, 0) };
        let cfg = AgentConfig {
            server_url: servers,
            token: token.to_owned(),
            data_dir: dir,
            poll_wait: Duration::from_secs(25),
            public_ip: None,
            trust: Default::default(),
            insecure: false,
        };
        Agent::new(cfg, Arc::new(nimbus_driver::sim::SimDriver::new(sim))).unwrap()
    }

    /// [`Self::agent`] with a fresh host token, running until the sender says stop; returns
    /// once it has registered.
    async fn run_agent(&self, servers: String) -> (Arc<Agent>, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let token = admin::host_token_create(&self.replicas[0].0, "us-east-1").await.unwrap();
        let agent = self.agent(servers, &token);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(agent.clone().run(stop));
        let t = Instant::now();
        while self.hosts_up().await < 1 {
            assert!(t.elapsed() < Duration::from_secs(10), "the agent did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (agent, stop_tx, run)
    }

    async fn launch(&self, i: usize) -> String {
        let body = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]});
        let (st, v) = self.call(i, reqwest::Method::POST, "/instance-operations/launch", Some(body)).await;
        assert_eq!(st, 200, "{v}");
        v["data"]["instance_ids"][0].as_str().unwrap().to_owned()
    }

    async fn wait_status(&self, i: usize, id: &str, status: &str, within: Duration) -> Duration {
        let t = Instant::now();
        loop {
            let (_, v) = self.call(i, reqwest::Method::GET, &format!("/instances/{id}"), None).await;
            if v["data"]["status"] == status {
                return t.elapsed();
            }
            assert!(t.elapsed() < within, "{id} not {status} within {within:?}: {v}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn hosts_up(&self) -> usize {
        self.replicas[0].0.store().host_list(None, true).await.unwrap().len()
    }
}

/// An agent long-polls replica 0 (25 s window); launches go through replica 1. Each is applied
/// and `active` well inside the window, which only the cross-replica wake-up allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_through_one_replica_wakes_an_agent_polling_another() {
    let Some(r) = Replicas::start(2, "replicas-wake").await else { return };
    let (_agent, stop_tx, run) = r.run_agent(r.url(0)).await;
    let (st, v) = r.call(1, reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "k"}))).await;
    assert_eq!(st, 200, "{v}");
    // Let the agent settle into a long-poll on replica 0.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let id = r.launch(1).await;
        r.wait_status(1, &id, "active", Duration::from_secs(5)).await;
        took.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort();
    eprintln!("launch through replica 1 -> active via an agent on replica 0: {took:?}");
    assert!(took[took.len() - 1] < Duration::from_secs(5));
    let _ = stop_tx.send(true);
    let _ = run.await;
}

/// An agent given both replicas (`r0,r1`) keeps working when its replica goes away: the next
/// launch (through r1) is applied, the host is the same host (no new registration), and the
/// instance it already ran is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_moves_to_another_replica_as_the_same_host() {
    let Some(mut r) = Replicas::start(2, "replicas-failover").await else { return };
    let (agent, stop_tx, run) = r.run_agent(format!("{},{}", r.url(0), r.url(1))).await;
    let host_before = r.replicas[1].0.store().host_list(None, true).await.unwrap()[0].id.clone();
    assert_eq!(r.call(1, reqwest::Method::POST, "/ssh-keys", Some(json!({"name": "k"}))).await.0, 200);
    let first = r.launch(0).await;
    r.wait_status(0, &first, "active", Duration::from_secs(5)).await;
    assert_eq!(agent.server(), r.url(0));

    // Replica 0 goes away (its listener closes: connections are refused from now on).
    r.replicas[0].1.take().unwrap().shutdown().await.unwrap();
    let t = Instant::now();
    let second = r.launch(1).await;
    let took = r.wait_status(1, &second, "active", Duration::from_secs(10)).await;
    eprintln!("after replica 0 went away: launch through replica 1 -> active in {:?}", t.elapsed().max(took));
    assert_eq!(agent.server(), r.url(1), "the agent moved to replica 1");
    let hosts = r.replicas[1].0.store().host_list(None, true).await.unwrap();
    assert_eq!(hosts.len(), 1, "no second host: the agent did not re-register as a new machine");
    assert_eq!(hosts[0].id, host_before);
    assert_eq!(r.call(1, reqwest::Method::GET, &format!("/instances/{first}"), None).await.1["data"]["status"], "active");
    let _ = stop_tx.send(true);
    let _ = run.await;
}

/// The lease: one holder at a time, renewed by its holder, taken only once expired (the
/// generation grows), and a fenced transaction of a replaced holder fails however late it
/// starts, while the new holder's succeeds. Outside a fence nothing is checked.
#[tokio::test]
async fn a_lease_has_one_holder_and_fences_a_replaced_one() {
    let dir = TempDir::new("lease");
    let url = nimbus_test_utils::test_database_url(&dir.0).await;
    let store = Store::connect(&url).await.unwrap();
    const S: i64 = 1_000_000;
    let g1 = store.lease_acquire("duty", "a", 100 * S, 110 * S).await.unwrap();
    assert_eq!(g1, Some(1));
    assert_eq!(store.lease_acquire("duty", "b", 105 * S, 115 * S).await.unwrap(), None, "a's lease is live");
    assert_eq!(store.lease_acquire("duty", "a", 108 * S, 118 * S).await.unwrap(), Some(1), "a renews, same generation");
    assert_eq!(store.lease_acquire("duty", "b", 117 * S, 127 * S).await.unwrap(), None, "renewed to 118");
    let g2 = store.lease_acquire("duty", "b", 119 * S, 129 * S).await.unwrap();
    assert_eq!(g2, Some(2), "expired: b takes it, one generation later");

    // a was paused from 108 s and wakes believing it still holds generation 1.
    let stale = Fence { name: "duty".into(), holder: "a".into(), generation: 1, now: 108 * S };
    let err = FENCE.scope(stale, async { store.begin().await.map(|_| ()) }).await;
    assert!(matches!(err, Err(nimbus_core::Error::Conflict { .. })), "a's fenced transaction must fail: {err:?}");
    let live = Fence { name: "duty".into(), holder: "b".into(), generation: 2, now: 120 * S };
    let tx = FENCE.scope(live, async { store.begin().await }).await.unwrap();
    Store::commit(tx).await.unwrap();
    // a coming back at its own next pass takes nothing while b's lease is live.
    assert_eq!(store.lease_acquire("duty", "a", 121 * S, 131 * S).await.unwrap(), None);
    // A clean release hands it over at once.
    store.lease_release("duty", "b").await.unwrap();
    assert_eq!(store.lease_acquire("duty", "a", 122 * S, 132 * S).await.unwrap(), Some(3));
    assert!(store.begin().await.is_ok(), "unfenced transactions are not checked");
    assert_eq!(store.lease_get("duty").await.unwrap().map(|(h, g, _)| (h, g)), Some((Some("a".into()), 3)));
}

/// Two replicas: exactly one runs the reconciler, and when it shuts down the other takes over
/// (a clean shutdown releases the lease; a killed one is covered by the chaos test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_runs_the_reconciler_and_another_takes_over() {
    let Some(mut r) = Replicas::start(2, "replicas-lease").await else { return };
    let ids: Vec<String> = r.replicas.iter().map(|(c, _)| c.replica_id().to_owned()).collect();
    let store = r.replicas[0].0.store().clone();
    let holder = |store: Store| async move { store.lease_get(nimbus_control::reconcile::LEASE).await.unwrap() };
    let t = Instant::now();
    let (first, g) = loop {
        if let Some((Some(h), g, _)) = holder(store.clone()).await {
            break (h, g);
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no replica took the reconciler lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(ids.contains(&first));
    // It stays with its holder while the holder lives (several renewals).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(holder(store.clone()).await.map(|(h, g, _)| (h, g)), Some((Some(first.clone()), g)));
    let i = ids.iter().position(|x| *x == first).unwrap();
    r.replicas[i].1.take().unwrap().shutdown().await.unwrap();
    let t = Instant::now();
    loop {
        if let Some((Some(h), g2, _)) = holder(store.clone()).await {
            if h != first {
                assert_eq!(h, ids[1 - i]);
                assert_eq!(g2, g + 1);
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(3), "the other replica did not take the lease over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Idempotency claims across replica failures: a live replica's claim is in flight for the
/// others; a dead replica's claim with nothing committed is taken over (the request runs once
/// more); a claim whose change committed in its own transaction is never run again, even when
/// its replica died before answering, and no release removes it; and a replica that was only
/// cut off (its liveness ran out while its request still ran) cannot commit, answer or release
/// under a claim that was taken over: the request's change is made once, by the new owner.
#[tokio::test]
async fn idempotency_claims_of_a_dead_replica_are_taken_over_unless_committed() {
    use nimbus_core::ids::ApiKeyId;
    use nimbus_store::{Claim, IdempotencyScope, StoredResponse, IDEMPOTENCY};
    let dir = TempDir::new("idem-owner");
    let url = nimbus_test_utils::test_database_url(&dir.0).await;
    let store = Store::connect(&url).await.unwrap();
    const S: i64 = 1_000_000;
    let key = ApiKeyId::generate();
    let claim = |idem: &'static str, replica: &'static str, now: i64| {
        let (store, key) = (store.clone(), key.clone());
        async move { store.idempotency_claim(&key, idem, "h", replica, now, now + 60 * S, now - 86_400 * S).await.unwrap() }
    };
    let owned = |c: Claim| -> IdempotencyScope {
        match c {
            Claim::Owned(scope) => scope,
            other => panic!("expected to own the claim, got {other:?}"),
        }
    };
    // A change under a claim: one transaction that marks it committed, or is refused.
    let commit_under = |scope: IdempotencyScope| {
        let store = store.clone();
        async move { IDEMPOTENCY.scope(scope, async { Store::commit(store.begin().await.unwrap()).await }).await }
    };
    // Replica a is alive until 105 s.
    store.lease_acquire("replica/a", "a", 100 * S, 105 * S).await.unwrap();
    let a1 = owned(claim("k1", "a", 100 * S).await);
    assert_eq!(claim("k1", "b", 101 * S).await, Claim::InFlight, "a is alive: its claim runs");
    // a's liveness runs out at 105 s with nothing committed: b takes the claim over.
    let b1 = owned(claim("k1", "b", 106 * S).await);
    // a was only cut off and its request goes on: its commit is refused, its release and its
    // answer touch nothing; b's request commits and answers.
    assert!(commit_under(a1.clone()).await.is_err(), "a replica whose claim was taken over must not commit");
    store.idempotency_release(&a1).await.unwrap();
    let answer = |body: &str| StoredResponse { status: 200, content_type: None, body_b64: body.into() };
    store.idempotency_complete(&a1, &answer("a")).await.unwrap();
    commit_under(b1.clone()).await.unwrap();
    store.idempotency_complete(&b1, &answer("b")).await.unwrap();
    assert_eq!(claim("k1", "c", 107 * S).await, Claim::Replay(answer("b")), "b's answer, not a's");

    // k2: a's change commits (marked in the change's transaction), then a dies unanswered.
    store.lease_acquire("replica/a", "a", 110 * S, 115 * S).await.unwrap();
    let a2 = owned(claim("k2", "a", 110 * S).await);
    commit_under(a2.clone()).await.unwrap();
    store.idempotency_release(&a2).await.unwrap();
    assert_eq!(claim("k2", "b", 112 * S).await, Claim::InFlight, "a still alive, and the release kept the committed claim");
    assert_eq!(claim("k2", "b", 116 * S).await, Claim::Unknown, "a died after committing: never run again");
    // Another request under the same key is still a mismatch.
    assert_eq!(store.idempotency_claim(&key, "k2", "other", "b", 117 * S, 177 * S, 0).await.unwrap(), Claim::Mismatch);
}
