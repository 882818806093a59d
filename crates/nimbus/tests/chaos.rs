//! Chaos: the control plane loses a server or its database while tenants launch and terminate.
//!
//! All started from this test, on loopback: etcd, two PostgreSQL nodes under Patroni (a primary
//! and a synchronous standby, `synchronous_mode`), three `nimbus server` replicas connected
//! through a libpq multi-host URL (`target_session_attrs=read-write`), four `nimbus agent
//! --driver sim` hosts given all three replicas, and a webhook receiver. Four tenants' workers
//! churn launches and terminates through all replicas (each request with an `Idempotency-Key`,
//! retried on another replica until it is answered, one attempt in five cut off by the client
//! after 15 ms), while at random moments a replica is
//! `kill -9`ed and restarted, and once the PostgreSQL primary (its Patroni and its postmaster) is
//! `kill -9`ed so that Patroni promotes the standby.
//!
//! At the end, read from the database itself:
//! - no acknowledged launch lost, none duplicated, no instance nobody asked for;
//! - every instance `active` or `terminated` as last asked;
//! - each host's used vCPUs, memory and disk equal the sum over its live instances;
//! - each instance has at most one usage interval, open while it runs and closed once terminated;
//! - every instance event reached the receiver, through exactly one delivery per event.
//!
//! `NIMBUS_CHAOS_WEAKEN=no-idempotency` retries without idempotency keys: a request cut off
//! after its commit then runs twice, and the test must fail (a check of the checks).
//!
//! Needs root, `etcd` and `patroni` (scripts/test installs them); otherwise it says SKIPPED.
//! Bounded: about two minutes here.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const REPLICAS: usize = 3;
const HOSTS: usize = 4;
const WORKERS: usize = 4;
const CHURN: Duration = Duration::from_secs(70);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// uid and gid of `postgres` (PostgreSQL refuses to run as root).
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let f: Vec<&str> = passwd.lines().find(|l| l.starts_with("postgres:"))?.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

fn log_file(dir: &Path, name: &str) -> (Stdio, Stdio) {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
    (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
}

struct PgNode {
    name: String,
    rest: u16,
    port: u16,
    data: PathBuf,
    config: PathBuf,
    patroni: Option<Child>,
}

/// Everything started; killed and removed however the test ends.
struct Bed {
    dir: PathBuf,
    etcd: Option<Child>,
    pg: Vec<PgNode>,
    servers: Vec<Option<Child>>,
    server_ports: Vec<u16>,
    agents: Vec<Child>,
    db_url: String,
    config: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in self.agents.iter_mut().chain(self.servers.iter_mut().flatten()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &mut self.pg {
            if let Some(p) = n.patroni.as_mut() {
                let _ = p.kill();
                let _ = p.wait();
            }
            kill_postmaster(&n.data);
        }
        if let Some(e) = self.etcd.as_mut() {
            let _ = e.kill();
            let _ = e.wait();
        }
        if std::env::var_os("NIMBUS_CHAOS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kill_postmaster(data: &Path) {
    if let Some(pid) = std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
    {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
    }
}

impl Bed {
    fn patroni_config(&self, n: &PgNode, etcd: u16) -> String {
        let d = self.dir.display();
        format!(
            r#"scope: nimbus-chaos
name: {name}
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        max_connections: 300
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 5
        max_replication_slots: 5
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
    - local all all trust
postgresql:
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  data_dir: {data}
  bin_dir: {PG_BIN}
  pgpass: {d}/pgpass-{name}
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pg}}
  parameters:
    unix_socket_directories: {d}
"#,
            name = n.name,
            rest = n.rest,
            port = n.port,
            data = n.data.display(),
        )
    }

    fn start_patroni(&mut self, i: usize, ids: (u32, u32)) {
        let (out, err) = log_file(&self.dir, &self.pg[i].name);
        let child = Command::new("patroni")
            .arg(&self.pg[i].config)
            .uid(ids.0)
            .gid(ids.1)
            .env("HOME", &self.dir)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.pg[i].patroni = Some(child);
    }

    fn start_server(&mut self, i: usize) {
        let (out, err) = log_file(&self.dir, &format!("server-{i}"));
        let child = Command::new(BIN)
            .args(["server", "--no-tls", "--listen", &format!("127.0.0.1:{}", self.server_ports[i]), "--database-url", &self.db_url])
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join(format!("server-{i}")))
            .env("NIMBUS_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.servers[i] = Some(child);
    }

    fn kill_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("admin")
            .args(["--database-url", &self.db_url])
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.dir.join("admin"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The node whose Patroni says it is the primary now.
    async fn primary(&self, http: &reqwest::Client) -> Option<usize> {
        for (i, n) in self.pg.iter().enumerate() {
            if n.patroni.is_none() {
                continue;
            }
            if let Ok(r) = http.get(format!("http://127.0.0.1:{}/primary", n.rest)).send().await {
                if r.status().as_u16() == 200 {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Rows of a query on the current primary, `|`-separated fields.
    fn sql(&self, primary: usize, q: &str) -> Vec<Vec<String>> {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-h", "127.0.0.1", "-p", &self.pg[primary].port.to_string(), "-U", "postgres", "-d", "postgres", "-At", "-c", q])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {q}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split('|').map(str::to_owned).collect()).collect()
    }
}

/// A tenant's client of all replicas: every request carries an idempotency key and is retried
/// (on the next replica) until a replica answers it, for up to two minutes. Some attempts time
/// out early on purpose (see `must`).
struct Tenant {
    http: reqwest::Client,
    key: String,
    urls: Vec<String>,
}

impl Tenant {
    /// The answer, or `None` when the server says the outcome is unknown (the change committed,
    /// its answer was lost with its replica): the caller then reads the resource.
    async fn must(&self, who: usize, path: &str, body: Value) -> Option<Value> {
        let idem = nimbus_core::ids::random_hex_id();
        let t = Instant::now();
        let mut i = who;
        loop {
            let url = format!("{}/api/v1{path}", self.urls[i % self.urls.len()]);
            i += 1;
            let mut rb = self.http.post(&url).bearer_auth(&self.key).json(&body);
            // One attempt in five gives up after 15 ms, as a client or a load balancer timing
            // out does: the request may still commit, and only its key makes the retry safe.
            if rand::thread_rng().gen_bool(0.2) {
                rb = rb.timeout(Duration::from_millis(15));
            }
            // The weakened run (NIMBUS_CHAOS_WEAKEN=no-idempotency) retries without the key, so
            // a request cut off after its commit is made twice: the test must then fail.
            if std::env::var("NIMBUS_CHAOS_WEAKEN").as_deref() != Ok("no-idempotency") {
                rb = rb.header("Idempotency-Key", &idem);
            }
            let r = rb.send().await;
            match r {
                // The body may be cut off by the same timeout: the answer is lost, and the
                // retry under the same key replays it.
                Ok(r) if r.status().as_u16() == 200 => {
                    if let Ok(v) = r.json().await {
                        return Some(v);
                    }
                }
                Ok(r) if r.status().as_u16() == 409 => {
                    let v: Value = r.json().await.unwrap_or_default();
                    if v["error"]["code"] == "global/idempotency-outcome-unknown" {
                        return None;
                    }
                    // Still in flight on another replica: again.
                }
                // Unavailable (a failover), rate limited: again.
                Ok(r) if matches!(r.status().as_u16(), 429 | 500..=599) => {}
                Ok(r) => {
                    let st = r.status();
                    panic!("{path}: {st} {}", r.text().await.unwrap_or_default());
                }
                Err(_) => {}
            }
            assert!(t.elapsed() < Duration::from_secs(120), "{path} was never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        for u in &self.urls {
            if let Ok(r) = self.http.get(format!("{u}/api/v1{path}")).bearer_auth(&self.key).send().await {
                if r.status().as_u16() == 200 {
                    return r.json().await.ok();
                }
            }
        }
        None
    }
}

/// A webhook receiver: every delivery's event id and delivery id, answered 200.
async fn receiver() -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned())).unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    g.lock().unwrap().push((header("x-nimbus-event-id"), header("x-nimbus-delivery-id")));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                    return;
                }
            });
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_and_the_database_fail_while_tenants_churn() {
    if !nimbus_driver::container::inventory::is_root() || !have("etcd") || !have("patroni") || !Path::new(PG_BIN).exists() {
        eprintln!("SKIPPED: needs root, etcd, patroni and PostgreSQL 15 (scripts/test installs them)");
        return;
    }
    if std::env::var_os("NIMBUS_TEST_DATABASE_URL").is_some() {
        eprintln!("SKIPPED: this test brings its own PostgreSQL pair; it runs in the SQLite pass of scripts/test");
        return;
    }
    let Some(ids) = postgres_ids() else {
        eprintln!("SKIPPED: no postgres user");
        return;
    };
    let started = Instant::now();
    let seed: u64 = std::env::var("NIMBUS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("chaos seed {seed} (NIMBUS_CHAOS_SEED={seed} repeats this run's schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = std::env::temp_dir().join(format!("nimbus-chaos-{}", &nimbus_core::ids::random_hex_id()[..12]));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(ids.0), Some(ids.1)).unwrap();
    let pg: Vec<PgNode> = (0..2)
        .map(|i| PgNode {
            name: format!("pg{i}"),
            rest: free_port(),
            port: free_port(),
            data: dir.join(format!("pg{i}")),
            config: dir.join(format!("pg{i}.yml")),
            patroni: None,
        })
        .collect();
    let db_url = format!("postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write", pg[0].port, pg[1].port);
    let config = dir.join("nimbus.toml");
    std::fs::write(
        &config,
        "[rate_limits]\nenabled = false\n\n[agents]\nheartbeat_interval_ms = 500\nhost_timeout_ms = 10000\n\n\
         [webhooks]\nallow_private_targets = true\npoll_interval_ms = 200\nretry_initial_ms = 100\nretry_max_ms = 1000\n",
    )
    .unwrap();
    let mut bed = Bed {
        dir: dir.clone(),
        etcd: None,
        pg,
        servers: (0..REPLICAS).map(|_| None).collect(),
        server_ports: (0..REPLICAS).map(|_| free_port()).collect(),
        agents: Vec::new(),
        db_url,
        config,
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // etcd, then the first node (it bootstraps the cluster), then the second (a base backup).
    let (client, peer) = (free_port(), free_port());
    let (out, err) = log_file(&dir, "etcd");
    bed.etcd = Some(
        Command::new("etcd")
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("e0=http://127.0.0.1:{peer}")])
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap(),
    );
    for i in 0..2 {
        let cfg = bed.patroni_config(&bed.pg[i], client);
        std::fs::write(&bed.pg[i].config, cfg).unwrap();
        std::os::unix::fs::chown(&bed.pg[i].config, Some(ids.0), Some(ids.1)).unwrap();
    }
    bed.start_patroni(0, ids);
    let t = Instant::now();
    while bed.primary(&http).await != Some(0) {
        assert!(t.elapsed() < Duration::from_secs(60), "pg0 did not become the primary; see {}/pg0.log", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bed.start_patroni(1, ids);
    let t = Instant::now();
    loop {
        let sync = http.get(format!("http://127.0.0.1:{}/sync", bed.pg[1].rest)).send().await.map(|r| r.status().as_u16() == 200);
        if sync.unwrap_or(false) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "pg1 did not become the synchronous standby; see {}/pg1.log", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("[{:>5.1}s] PostgreSQL primary pg0 and synchronous standby pg1 up", started.elapsed().as_secs_f64());

    // Tenants, hosts and replicas.
    let orgs = ["acme", "globex"];
    let mut keys = Vec::new();
    for o in orgs {
        bed.admin(&["org", "create", o]);
        keys.push(bed.admin(&["api-key", "create", "--org", o, "--permissions", "ADMIN"]));
    }
    let token = bed.admin(&["host-token", "create", "--region", "us-east-1", "--uses", &HOSTS.to_string()]);
    for i in 0..REPLICAS {
        bed.start_server(i);
    }
    let urls: Vec<String> = bed.server_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    for i in 0..HOSTS {
        let (out, err) = log_file(&dir, &format!("agent-{i}"));
        let agent = Command::new(BIN)
            .args([
                "agent",
                "--server",
                &urls.join(","),
                "--token",
                &token,
                "--driver",
                "sim",
                "--sim-vcpus",
                "64",
                "--sim-memory-gib",
                "512",
                // Room for 64 small instances a host on every axis: capacity returns only when
                // the agent reports a termination done, and through a failover those reports
                // lag, so a host sized for 20 (the default disk) ran out mid-churn.
                "--sim-disk-gib",
                "1000",
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("agent-{i}")))
            .env("NIMBUS_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap();
        bed.agents.push(agent);
    }
    let t = Instant::now();
    while bed.admin(&["hosts"]).lines().filter(|l| l.contains(" up ")).count() < HOSTS {
        assert!(t.elapsed() < Duration::from_secs(60), "the agents did not register: {}", bed.admin(&["hosts"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tenants: Vec<Arc<Tenant>> =
        keys.iter().map(|k| Arc::new(Tenant { http: http.clone(), key: k.clone(), urls: urls.clone() })).collect();
    let (rx_port, received) = receiver().await;
    for t in &tenants {
        t.must(0, "/ssh-keys", json!({"name": "k"})).await.expect("an SSH key");
        let r = t
            .http
            .post(format!("{}/v1/webhooks", urls[0]))
            .bearer_auth(&t.key)
            .json(&json!({"url": format!("http://127.0.0.1:{rx_port}/hook"), "events": ["instance.*"]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "webhook: {}", r.text().await.unwrap());
    }
    eprintln!("[{:>5.1}s] {REPLICAS} replicas, {HOSTS} sim hosts, {} tenants ready", started.elapsed().as_secs_f64(), tenants.len());

    // The churn: per worker, launch while it has fewer than 12 live instances (and at random),
    // otherwise terminate one of its own. `asked` is what was acknowledged: id -> terminated?
    let asked: Arc<Mutex<HashMap<String, (usize, bool)>>> = Arc::default();
    let stop_at = Instant::now() + CHURN;
    let last_write = Arc::new(Mutex::new(Instant::now()));
    let unknown = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let tenant = tenants[w % tenants.len()].clone();
        let asked = asked.clone();
        let last_write = last_write.clone();
        let unknown = unknown.clone();
        let mut wrng = rand::rngs::StdRng::seed_from_u64(seed ^ (w as u64 + 1));
        workers.push(tokio::spawn(async move {
            let mut live: Vec<String> = Vec::new();
            let mut n = 0usize;
            while Instant::now() < stop_at {
                if live.len() < 3 || (live.len() < 12 && wrng.gen_bool(0.6)) {
                    let body = json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"], "name": format!("w{w}-{n}")});
                    let name = format!("w{w}-{n}");
                    let id = match tenant.must(w + n, "/instance-operations/launch", body).await {
                        Some(v) => v["data"]["instance_ids"][0].as_str().unwrap().to_owned(),
                        // Launched, answer lost: the instance is found by its (unique) name.
                        None => {
                            unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let list = tenant.get("/instances").await.expect("the instance list");
                            let found = list["data"].as_array().unwrap().iter().find(|i| i["name"] == name.as_str()).cloned();
                            found.unwrap_or_else(|| panic!("launch {name}: outcome unknown, and no such instance"))["id"].as_str().unwrap().to_owned()
                        }
                    };
                    assert!(asked.lock().unwrap().insert(id.clone(), (w % 2, false)).is_none(), "a launch answered with an id already given");
                    live.push(id);
                } else {
                    let id = live.swap_remove(wrng.gen_range(0..live.len()));
                    match tenant.must(w + n, "/instance-operations/terminate", json!({"instance_ids": [id]})).await {
                        Some(v) => assert_eq!(v["data"]["terminated_instances"][0]["id"], id.as_str(), "{v}"),
                        None => {
                            unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let st = tenant.get(&format!("/instances/{id}")).await.map(|v| v["data"]["status"].clone());
                            assert!(st.as_ref().is_none_or(|s| s == "terminating" || s == "terminated"), "terminate {id}: outcome unknown, and it is {st:?}");
                        }
                    }
                    asked.lock().unwrap().get_mut(&id).unwrap().1 = true;
                }
                *last_write.lock().unwrap() = Instant::now();
                n += 1;
                tokio::time::sleep(Duration::from_millis(wrng.gen_range(20..120))).await;
            }
            n
        }));
    }

    // The chaos: replica kills at random moments, and the database primary once, a third in.
    let mut db_kill_at = CHURN / 3;
    let mut events: Vec<String> = Vec::new();
    let mut failover = None;
    let churn_start = Instant::now();
    while churn_start.elapsed() < CHURN - Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3_000..7_000))).await;
        if churn_start.elapsed() >= db_kill_at {
            db_kill_at = Duration::MAX;
            let p = bed.primary(&http).await.expect("a primary before the kill");
            let node = &mut bed.pg[p];
            let killed = Instant::now();
            if let Some(mut c) = node.patroni.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            kill_postmaster(&node.data);
            events.push(format!(
                "[{:>5.1}s] kill -9 of PostgreSQL primary {} (Patroni and postmaster)",
                started.elapsed().as_secs_f64(),
                node.name
            ));
            // Until the standby is promoted and a write goes through again.
            let t = Instant::now();
            let promoted = loop {
                if bed.primary(&http).await.is_some() {
                    break t.elapsed();
                }
                assert!(t.elapsed() < Duration::from_secs(60), "Patroni did not promote the standby");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let t = Instant::now();
            while *last_write.lock().unwrap() < killed + promoted {
                assert!(t.elapsed() < Duration::from_secs(60), "no write went through after the promotion");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let writes_back = killed.elapsed();
            events.push(format!(
                "    standby promoted after {promoted:.1?}; tenants' writes answered again {writes_back:.1?} after the kill"
            ));
            failover = Some((promoted, writes_back));
            continue;
        }
        let i = rng.gen_range(0..REPLICAS);
        bed.kill_server(i);
        let down = Duration::from_millis(rng.gen_range(300..2_500));
        events.push(format!("[{:>5.1}s] kill -9 of replica {i}, restarted after {down:.1?}", started.elapsed().as_secs_f64()));
        tokio::time::sleep(down).await;
        bed.start_server(i);
    }
    let mut ops = 0;
    for w in workers {
        ops += w.await.unwrap();
    }
    for e in &events {
        eprintln!("{e}");
    }
    assert!(failover.is_some(), "the database primary was killed once");
    let asked = asked.lock().unwrap().clone();
    eprintln!(
        "[{:>5.1}s] churn over: {ops} acknowledged operations, {} instances launched, {} terminated; {} answers lost with their replica (read back instead)",
        started.elapsed().as_secs_f64(),
        asked.len(),
        asked.values().filter(|(_, t)| *t).count(),
        unknown.load(std::sync::atomic::Ordering::Relaxed)
    );

    // Settle: every instance reaches what was asked.
    let t = Instant::now();
    for (id, (tenant, terminated)) in &asked {
        let want = if *terminated { "terminated" } else { "active" };
        loop {
            let v = tenants[*tenant].get(&format!("/instances/{id}")).await;
            let st = v.as_ref().map(|v| v["data"]["status"].as_str().unwrap_or_default().to_owned());
            // A terminated instance may already be gone from the Lambda API.
            if st.as_deref() == Some(want) || (*terminated && st.is_none()) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{id} is {st:?}, asked {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let primary = bed.primary(&http).await.expect("a primary at the end");

    // 1. Exactly the acknowledged launches exist, in the states asked.
    let org_ids: Vec<String> =
        orgs.iter().map(|o| bed.sql(primary, &format!("SELECT id FROM orgs WHERE name = '{o}'"))[0][0].clone()).collect();
    let in_db: BTreeMap<String, String> = bed
        .sql(primary, &format!("SELECT id, state FROM instances WHERE org_id IN ('{}')", org_ids.join("','")))
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let lost: Vec<&String> = asked.keys().filter(|id| !in_db.contains_key(*id)).collect();
    let extra: Vec<&String> = in_db.keys().filter(|id| !asked.contains_key(*id)).collect();
    assert!(lost.is_empty(), "acknowledged launches lost: {lost:?}");
    assert!(extra.is_empty(), "instances nobody was told of (a duplicated launch): {extra:?}");
    for (id, (_, terminated)) in &asked {
        assert_eq!(in_db[id], if *terminated { "terminated" } else { "active" }, "{id}");
    }
    // 2. Capacity accounting is exact on every host.
    let cap = bed.sql(
        primary,
        "SELECT h.id, h.vcpus_used, h.memory_mib_used, h.disk_gib_used, COALESCE(SUM(i.vcpus), 0), COALESCE(SUM(i.memory_mib), 0), \
         COALESCE(SUM(i.disk_gib), 0) FROM hosts h LEFT JOIN instances i ON i.host_id = h.id AND i.state <> 'terminated' \
         GROUP BY h.id, h.vcpus_used, h.memory_mib_used, h.disk_gib_used",
    );
    assert_eq!(cap.len(), HOSTS);
    for r in &cap {
        assert_eq!((&r[1], &r[2], &r[3]), (&r[4], &r[5], &r[6]), "host {} used (vcpus, memory, disk) vs its live instances", r[0]);
    }
    // 3. Billing: at most one interval per instance, open while active, closed once terminated.
    let intervals: HashMap<String, (i64, i64)> = bed
        .sql(
            primary,
            &format!(
                "SELECT resource_id, COUNT(*), COUNT(ended_at) FROM usage_intervals WHERE org_id IN ('{}') GROUP BY resource_id",
                org_ids.join("','")
            ),
        )
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap())))
        .collect();
    for (id, (_, terminated)) in &asked {
        let (n, closed) = intervals.get(id).copied().unwrap_or((0, 0));
        if *terminated {
            assert!(n <= 1 && closed == n, "{id}: {n} intervals, {closed} closed; terminated");
        } else {
            assert_eq!((n, closed), (1, 0), "{id}: active, so one open interval");
        }
    }
    // 4. Webhooks: every public instance event (nimbus_core::webhook::public_event_type: not
    // the requests, nor an `active` that ends an `unhealthy` spell) reached the receiver,
    // through one delivery each.
    let events_db: HashSet<String> = bed
        .sql(
            primary,
            &format!(
                "SELECT id FROM events WHERE org_id IN ('{}') AND (kind IN ('instance.created', 'instance.stopped', 'instance.terminated', \
                 'instance.unhealthy') OR (kind = 'instance.active' AND payload::jsonb->>'from' IN ('booting', 'starting', 'restarting')))",
                org_ids.join("','")
            ),
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(!events_db.is_empty());
    let t = Instant::now();
    loop {
        let got: HashSet<String> = received.lock().unwrap().iter().map(|(e, _)| e.clone()).collect();
        let missing = events_db.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{missing} of {} events never reached the receiver", events_db.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let twice = bed.sql(primary, "SELECT event_id FROM webhook_deliveries GROUP BY webhook_id, event_id HAVING COUNT(*) > 1");
    assert!(twice.is_empty(), "events with more than one delivery: {twice:?}");
    let got = received.lock().unwrap().clone();
    let mut per_delivery: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (e, d) in &got {
        per_delivery.entry(e).or_default().insert(d);
    }
    assert!(per_delivery.values().all(|d| d.len() == 1), "an event came with two delivery ids");
    let resent = got.len() - per_delivery.len();
    let lease = bed.sql(primary, "SELECT holder, generation FROM leases WHERE name = 'reconciler'");
    eprintln!(
        "[{:>5.1}s] checked: {} instances as asked, {} hosts' capacity exact, {} events delivered ({} attempts resent after a replica died mid-send; same delivery id), reconciler lease generation {}",
        started.elapsed().as_secs_f64(),
        asked.len(),
        cap.len(),
        events_db.len(),
        resent,
        lease.first().map(|r| r[1].as_str()).unwrap_or("?")
    );
    let (promoted, back) = failover.unwrap();
    eprintln!("database failover: promoted in {promoted:.1?}, writes answered again {back:.1?} after the kill");
    assert!(started.elapsed() < Duration::from_secs(300), "the chaos test must stay within 5 minutes");
}
