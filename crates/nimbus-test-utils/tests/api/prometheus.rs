//! `/metrics` of the server and of an agent, read the way an operator reads them: Prometheus's
//! own `promtool check metrics` lints both expositions, and a real Prometheus server scrapes
//! both and answers queries for what the test did (a launch that went active, a 404, a launch
//! refused by the rate limit, a webhook whose receiver is down, the host and its GPUs).
//!
//! The Prometheus binaries come from Debian's `prometheus` package, unpacked by scripts/test
//! into target/tools/prometheus (or `NIMBUS_TEST_PROMETHEUS_BIN`); without them the test says
//! so and skips, except under CI, where it fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nimbus_control::config::Rate;
use nimbus_test_utils::{sim_host, TestServer, METRICS_TOKEN};
use serde_json::{json, Value};

use crate::PUBKEY;

fn prometheus_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("NIMBUS_TEST_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/prometheus/usr/bin"));
    if dir.join("prometheus").is_file() && dir.join("promtool").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "no Prometheus binaries in {} (scripts/test unpacks them)", dir.display());
    eprintln!("skipping: no Prometheus binaries in {} (scripts/test unpacks Debian's prometheus package there)", dir.display());
    None
}

/// `promtool check metrics` on `text`: the exposition parses and follows the naming rules.
fn promtool_check(bin: &std::path::Path, what: &str, text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin.join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on the {what}'s /metrics: {said}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Prometheus {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// A Prometheus server scraping `targets` (`(job, http://host:port/metrics)`) every second.
    async fn start(bin: &std::path::Path, dir: &std::path::Path, targets: &[(&str, &str)]) -> Prometheus {
        let mut cfg = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n");
        for (job, url) in targets {
            let (addr, path) = url.strip_prefix("http://").and_then(|u| u.split_once('/')).unwrap();
            cfg.push_str(&format!("  - job_name: {job}\n    metrics_path: /{path}\n    static_configs:\n      - targets: ['{addr}']\n"));
        }
        let cfg_path = dir.join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new(bin.join("prometheus"))
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let t = Instant::now();
        loop {
            if let Ok(r) = p.http.get(format!("{}/-/ready", p.url)).send().await {
                if r.status().is_success() {
                    return p;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Prometheus not ready: {}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of an instant query that should return one series.
    async fn value(&self, query: &str) -> Option<f64> {
        let r: Value =
            self.http.get(format!("{}/api/v1/query", self.url)).query(&[("query", query)]).send().await.ok()?.json().await.ok()?;
        let result = r["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` is `want`: Prometheus has scraped since the state it measures.
    async fn expect(&self, query: &str, want: f64) {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < Duration::from_secs(30) {
            last = self.value(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("Prometheus: {query} = {last:?}, want {want}");
    }
}

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// The metric families of an exposition (its `# TYPE` lines).
fn families(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_owned)).collect()
}

/// Every `nimbus_…` name in a query or rules file.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("nimbus_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // A job label value (`nimbus-server`) is not a metric; `nimbus_` always is.
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The `expr` of every target of every panel of a Grafana dashboard.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// The shipped alerting rules load, and fire (and only after their `for:`) on the series of
/// docs/monitoring/alerts-test.yml; promtool exits non-zero when an expected alert is missing.
#[test]
fn the_shipped_alerts_load_and_fire_when_they_should() {
    let Some(bin) = prometheus_bin() else { return };
    for args in [&["check", "rules", "alerts.yml"][..], &["test", "rules", "alerts-test.yml"][..]] {
        let out = std::process::Command::new(bin.join("promtool")).args(args).current_dir(docs().join("monitoring")).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_server_and_an_agent_and_sees_what_happened() {
    let Some(bin) = prometheus_bin() else { return };
    let mut s = TestServer::builder()
        .metrics()
        .config(|c| {
            // One launch, then the next is refused: a rate-limit rejection to count.
            c.rate_limits.launch = Rate { per_second: 0.001, burst: 1 };
            c.webhooks.allow_private_targets = true;
            c.webhooks.retry_initial_ms = 600_000;
            c.webhooks.poll_interval_ms = 50;
        })
        .start()
        .await;
    s.add_host("us-east-1", sim_host("h1", 64, 8)).await;
    let metrics_url = s.metrics_url.clone().unwrap();
    let agent_url = s.agent_metrics_url(0).unwrap();

    // A webhook whose receiver is down: its deliveries fail once and wait in the outbox.
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    let (st, _) = s.native(&s.key.clone(), "POST", "/webhooks", Some(json!({"url": closed, "events": ["instance.*"]}))).await;
    assert_eq!(st, 201);
    s.expect("POST", "/ssh-keys", Some(json!({"name": "k", "public_key": PUBKEY})), 200).await;
    let launch = json!({"region_name": "us-east-1", "instance_type_name": "gpu_1x_h100_sxm5", "ssh_key_names": ["k"]});
    let v = s.expect("POST", "/instance-operations/launch", Some(launch.clone()), 200).await;
    let id = v["data"]["instance_ids"][0].as_str().unwrap().to_owned();
    s.wait_status(&s.key.clone(), &id, "active").await;
    s.expect("POST", "/instance-operations/launch", Some(launch), 429).await;
    s.expect("GET", "/instances/0123456789abcdef0123456789abcdef", None, 404).await;
    let (st, _) = s.call(&s.key.clone(), "GET", "/no-such-endpoint", None).await;
    assert_eq!(st, 404);

    // Operator-only: the main listener answers /metrics to the metrics token alone.
    let main = format!("{}/metrics", s.url);
    assert_eq!(s.http.get(&main).send().await.unwrap().status(), 401);
    assert_eq!(s.http.get(&main).bearer_auth(&s.key).send().await.unwrap().status(), 401, "a tenant key opens nothing");
    let r = s.http.get(&main).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");

    let server_text = s.http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    let agent_text = s.http.get(&agent_url).send().await.unwrap().text().await.unwrap();
    promtool_check(&bin, "server", &server_text);
    promtool_check(&bin, "agent", &agent_text);

    // The docs name every family both expose, and the shipped dashboard and alerts use only
    // families that exist.
    let families: Vec<String> = [&server_text, &agent_text].iter().flat_map(|t| families(t)).collect();
    let ops = std::fs::read_to_string(docs().join("operations.md")).unwrap();
    for f in &families {
        assert!(ops.contains(&format!("`{f}`")), "docs/operations.md does not document {f}");
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(docs().join("monitoring/grafana-dashboard.json")).unwrap()).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let alerts = std::fs::read_to_string(docs().join("monitoring/alerts.yml")).unwrap();
    for used in exprs.iter().chain([&alerts]).flat_map(|e| metric_names(e)) {
        let base = ["_bucket", "_count", "_sum"].iter().find_map(|x| used.strip_suffix(x)).filter(|b| families.iter().any(|f| f == b));
        let name = base.unwrap_or(&used);
        assert!(families.iter().any(|f| f == name), "{used} is used by the dashboard or alerts but exposed by neither");
    }

    let prom = Prometheus::start(&bin, &s.dir.0, &[("nimbus-server", &metrics_url), ("nimbus-agent", &agent_url)]).await;
    prom.expect(r#"up{job="nimbus-server"}"#, 1.0).await;
    prom.expect(r#"up{job="nimbus-agent"}"#, 1.0).await;
    // What the server saw.
    prom.expect(r#"nimbus_instances{state="active",instance_type="gpu_1x_h100_sxm5"}"#, 1.0).await;
    prom.expect(r#"nimbus_instances{state="booting",instance_type="gpu_1x_h100_sxm5"}"#, 0.0).await;
    prom.expect(r#"nimbus_instance_launches_total{instance_type="gpu_1x_h100_sxm5",result="ok"}"#, 1.0).await;
    prom.expect(r#"nimbus_instance_time_to_active_seconds_count{instance_type="gpu_1x_h100_sxm5"}"#, 1.0).await;
    prom.expect(r#"nimbus_rate_limit_rejections_total{dialect="lambda"}"#, 1.0).await;
    prom.expect(
        r#"nimbus_http_requests_total{dialect="lambda",route="/api/v1/instance-operations/launch",method="POST",status="200"}"#,
        1.0,
    )
    .await;
    prom.expect(r#"nimbus_http_requests_total{dialect="lambda",route="/api/v1/instances/{id}",method="GET",status="404"}"#, 1.0).await;
    prom.expect(r#"nimbus_http_requests_total{dialect="lambda",route="none",method="GET",status="404"}"#, 1.0).await;
    prom.expect(r#"sum(nimbus_http_request_duration_seconds_count{dialect="lambda",route="/api/v1/instance-operations/launch"})"#, 2.0)
        .await;
    prom.expect(r#"nimbus_hosts{region="us-east-1",status="up"}"#, 1.0).await;
    prom.expect(r#"nimbus_host_up{host="h1",region="us-east-1"}"#, 1.0).await;
    prom.expect(r#"nimbus_host_heartbeat_age_seconds{host="h1"} < bool 5"#, 1.0).await;
    prom.expect(r#"nimbus_capacity_gpus{region="us-east-1",model="NVIDIA H100 80GB HBM3",state="used"}"#, 1.0).await;
    prom.expect(r#"nimbus_capacity_gpus{region="us-east-1",model="NVIDIA H100 80GB HBM3",state="free"}"#, 7.0).await;
    prom.expect(r#"nimbus_capacity_vcpus{region="us-east-1",kind="total"}"#, 64.0).await;
    prom.expect(r#"nimbus_capacity_vcpus{region="us-east-1",kind="used"}"#, 26.0).await;
    prom.expect(r#"nimbus_gpus_by_health{region="us-east-1",model="NVIDIA H100 80GB HBM3",condition="ok"}"#, 8.0).await;
    prom.expect(r#"nimbus_webhook_outbox_pending > bool 0"#, 1.0).await;
    prom.expect(r#"nimbus_webhook_delivery_attempts_total{result="retry"} > bool 0"#, 1.0).await;
    prom.expect(r#"sum(nimbus_webhook_delivery_attempts_total{result="delivered"}) or vector(0)"#, 0.0).await;
    prom.expect(r#"count(nimbus_db_pool_connections{state="max"})"#, if nimbus_test_utils::backend_name() == "sqlite" { 2.0 } else { 1.0 })
        .await;
    prom.expect(r#"sum(nimbus_db_operation_seconds_count{op="commit"}) > bool 0"#, 1.0).await;
    // Every dashboard query is PromQL that Prometheus evaluates.
    for e in &exprs {
        let r: Value =
            prom.http.get(format!("{}/api/v1/query", prom.url)).query(&[("query", e)]).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["status"], "success", "dashboard query {e}: {r}");
    }
    // What the agent saw.
    prom.expect(r#"nimbus_agent_instances{state="running"}"#, 1.0).await;
    prom.expect(r#"sum(nimbus_agent_driver_operation_seconds_count{op="ensure",outcome="ok"})"#, 1.0).await;
    prom.expect(r#"nimbus_agent_apply_seconds_count > bool 0"#, 1.0).await;
    prom.expect(r#"count(nimbus_agent_gpu_healthy == 1)"#, 8.0).await;

    // Terminated: the gauges follow on the next scrape, the counters stay.
    s.expect("POST", "/instance-operations/terminate", Some(json!({"instance_ids": [id]})), 200).await;
    s.wait_status(&s.key.clone(), &id, "terminated").await;
    prom.expect(r#"nimbus_instances{state="active",instance_type="gpu_1x_h100_sxm5"}"#, 0.0).await;
    prom.expect(r#"nimbus_agent_instances{state="running"}"#, 0.0).await;
    prom.expect(r#"nimbus_capacity_gpus{region="us-east-1",model="NVIDIA H100 80GB HBM3",state="used"}"#, 0.0).await;
    prom.expect(r#"nimbus_instance_launches_total{instance_type="gpu_1x_h100_sxm5",result="ok"}"#, 1.0).await;
    drop(prom);
    s.shutdown().await;
}

/// A name a client makes up is never a label value: unknown types and paths fold into
/// `unknown` and `none`.
#[tokio::test]
async fn client_input_never_becomes_a_label() {
    let s = TestServer::builder().metrics().host("us-east-1", sim_host("h", 8, 0)).start().await;
    s.expect("POST", "/ssh-keys", Some(json!({"name": "k", "public_key": PUBKEY})), 200).await;
    for n in 0..3 {
        let launch = json!({"region_name": "us-east-1", "instance_type_name": format!("made-up-{n}"), "ssh_key_names": ["k"]});
        let (st, _) = s.call(&s.key, "POST", "/instance-operations/launch", Some(launch)).await;
        assert_eq!(st, 404, "an unknown type is not found");
        let (st, _) = s.call(&s.key, "GET", &format!("/made-up-path-{n}"), None).await;
        assert_eq!(st, 404);
    }
    let text = s.http.get(s.metrics_url.clone().unwrap()).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("made-up"), "client input in labels:\n{text}");
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().to_owned());
    assert_eq!(line(r#"nimbus_instance_launches_total{instance_type="unknown",result="not_found"}"#).as_deref(), Some("3"), "{text}");
    assert_eq!(
        line(r#"nimbus_http_requests_total{dialect="lambda",method="GET",route="none",status="404"}"#).as_deref(),
        Some("3"),
        "{text}"
    );
    s.shutdown().await;
}
