//! The agent's own Prometheus metrics and the small HTTP listener that serves them.
//!
//! This module owns one `prometheus::Registry` per [`Agent`] (never the process-global
//! default: tests and `nimbus dev` run several agents in one process, each with its own
//! counts), the counters and histograms of what the agent does (driver calls, applies, calls to
//! the server, GPU Xid events), and the gauges computed at scrape time from what the agent
//! knows then (`driver.list()`, the applied generation, the GPUs as of the last health look).
//!
//! GPU gauges come from the last look `Agent::gpu_health` took (at every report), never from
//! a look of their own: a look may reset an idle GPU, which a scrape must not cause.
//! `nimbus_agent_gpu_health_checked_timestamp_seconds` says how old that look is.
//!
//! [`serve_metrics`] answers without any authentication, and what it tells (instance counts,
//! GPU UUIDs and health, driver latencies, the server's reachability) is the operator's
//! business. Bind it to a loopback or management-network address that only the operator's
//! scraper reaches, never to an address a tenant's instance can reach.
//!
//! Label values are bounded: `op`, `call`, `outcome` and `state` come from this module's
//! enums, `index`/`uuid` from the host's own GPUs, `xid` from NVIDIA's codes (large values are
//! folded into `other`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nimbus_core::gpu_health::{Condition, Signals};
use nimbus_proto as proto;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramTimer, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::{Agent, AgentError};

/// The Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scraper sends its request head at once; a client that trickles it holds a slot.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a connection whose client stops reading the response (the slot comes back).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// One scraper or two is normal; the cap bounds the `driver.list()` calls scrapes make.
const MAX_CONNECTIONS: usize = 64;

/// From a sim or container call (sub-millisecond to milliseconds) to a VM boot or a slow
/// image pull (tens of seconds to minutes).
const DRIVER_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The driver calls the agent makes (label `op` of `nimbus_agent_driver_operation_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DriverOp {
    Inventory,
    List,
    Ensure,
    Restart,
    Stop,
    Destroy,
    SyncStorage,
    SyncFabric,
    SyncVpns,
    Sample,
    VolumeUsage,
    GpuSignals,
    ResetGpu,
}

impl DriverOp {
    const ALL: [DriverOp; 13] = [
        DriverOp::Inventory,
        DriverOp::List,
        DriverOp::Ensure,
        DriverOp::Restart,
        DriverOp::Stop,
        DriverOp::Destroy,
        DriverOp::SyncStorage,
        DriverOp::SyncFabric,
        DriverOp::SyncVpns,
        DriverOp::Sample,
        DriverOp::VolumeUsage,
        DriverOp::GpuSignals,
        DriverOp::ResetGpu,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DriverOp::Inventory => "inventory",
            DriverOp::List => "list",
            DriverOp::Ensure => "ensure",
            DriverOp::Restart => "restart",
            DriverOp::Stop => "stop",
            DriverOp::Destroy => "destroy",
            DriverOp::SyncStorage => "sync_storage",
            DriverOp::SyncFabric => "sync_fabric",
            DriverOp::SyncVpns => "sync_vpns",
            DriverOp::Sample => "sample",
            DriverOp::VolumeUsage => "volume_usage",
            DriverOp::GpuSignals => "gpu_signals",
            DriverOp::ResetGpu => "reset_gpu",
        }
    }
}

/// The agent's calls to the server (label `call` of `nimbus_agent_server_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerCall {
    Register,
    Report,
    Desired,
    Metrics,
}

impl ServerCall {
    const ALL: [ServerCall; 4] = [ServerCall::Register, ServerCall::Report, ServerCall::Desired, ServerCall::Metrics];

    pub(crate) fn path(self) -> &'static str {
        match self {
            ServerCall::Register => proto::PATH_REGISTER,
            ServerCall::Report => proto::PATH_REPORT,
            ServerCall::Desired => proto::PATH_DESIRED,
            ServerCall::Metrics => proto::PATH_METRICS,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ServerCall::Register => "register",
            ServerCall::Report => "report",
            ServerCall::Desired => "desired",
            ServerCall::Metrics => "metrics",
        }
    }
}

/// `outcome` of a server call: an operator tells a revoked host (`unauthorized`) from a
/// server that answers with errors and from one it cannot reach.
const SERVER_OUTCOMES: [&str; 4] = ["ok", "unauthorized", "server_error", "transport_error"];

fn server_outcome<T>(r: &Result<T, AgentError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(AgentError::Unauthorized) => "unauthorized",
        Err(AgentError::Server { .. }) => "server_error",
        // Only transport errors come out of a request; the rest are counted with it anyway.
        Err(_) => "transport_error",
    }
}

const INSTANCE_STATES: [proto::ActualState; 4] =
    [proto::ActualState::Creating, proto::ActualState::Running, proto::ActualState::Stopped, proto::ActualState::Failed];

/// The wire protocol's names (`rename_all = "snake_case"`), so a dashboard and a report agree.
fn state_name(s: proto::ActualState) -> &'static str {
    match s {
        proto::ActualState::Creating => "creating",
        proto::ActualState::Running => "running",
        proto::ActualState::Stopped => "stopped",
        proto::ActualState::Failed => "failed",
    }
}

/// Xid codes in NVIDIA's catalog are small numbers; anything else is one label value, so a
/// misbehaving driver cannot grow the series without bound.
fn xid_label(xid: u64) -> String {
    if xid < 1000 {
        xid.to_string()
    } else {
        "other".to_owned()
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The GPUs as the last health look saw them.
struct GpuLook {
    at: f64,
    gpus: Vec<proto::GpuHealthReport>,
}

/// Registers `m` in `r`. Names and labels are this module's constants, so a failure is a bug
/// the first test that builds an `Agent` finds, not a runtime condition.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    if let Err(e) = r.register(Box::new(m.clone())) {
        panic!("registering an agent metric: {e}");
    }
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    reg(r, Gauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// The agent's registry and the metrics that accumulate between scrapes.
pub(crate) struct Metrics {
    registry: Registry,
    driver_seconds: HistogramVec,
    apply_seconds: Histogram,
    server_requests: IntCounterVec,
    last_report: Gauge,
    xid_errors: IntCounterVec,
    gpus: Mutex<Option<GpuLook>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let r = Registry::new();
        let driver_seconds = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "nimbus_agent_driver_operation_seconds",
                    "Time of one driver call the agent made, by operation and outcome (ok, error).",
                )
                .buckets(DRIVER_BUCKETS.to_vec()),
                &["op", "outcome"],
            )
            .unwrap_or_else(|e| panic!("driver histogram: {e}")),
        );
        let apply_seconds = reg(
            &r,
            Histogram::with_opts(
                HistogramOpts::new("nimbus_agent_apply_seconds", "Time to bring the driver in line with one desired state (one apply).")
                    .buckets(DRIVER_BUCKETS.to_vec()),
            )
            .unwrap_or_else(|e| panic!("apply histogram: {e}")),
        );
        let server_requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "nimbus_agent_server_requests_total",
                    "Requests the agent made to the server, by call (register, report, desired, metrics) and outcome.",
                ),
                &["call", "outcome"],
            )
            .unwrap_or_else(|e| panic!("server requests: {e}")),
        );
        let last_report = gauge(
            &r,
            "nimbus_agent_last_report_timestamp_seconds",
            "Unix time of the last report the server accepted (0 before the first).",
        );
        let xid_errors = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "nimbus_agent_gpu_xid_errors_total",
                    "Xid events the driver delivered since the agent started, by GPU index and Xid code.",
                ),
                &["index", "xid"],
            )
            .unwrap_or_else(|e| panic!("xid counter: {e}")),
        );
        let build = gauge_vec(&r, "nimbus_agent_build_info", "This agent's version (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Every series exists from the start, so `rate()` and `increase()` see the first event.
        for op in DriverOp::ALL {
            for outcome in ["ok", "error"] {
                driver_seconds.with_label_values(&[op.as_str(), outcome]);
            }
        }
        for call in ServerCall::ALL {
            for outcome in SERVER_OUTCOMES {
                server_requests.with_label_values(&[call.as_str(), outcome]);
            }
        }
        Metrics { registry: r, driver_seconds, apply_seconds, server_requests, last_report, xid_errors, gpus: Mutex::new(None) }
    }

    /// Runs one driver call, timed.
    pub(crate) async fn driver<T, E>(&self, op: DriverOp, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let timer = self.driver_seconds.with_label_values(&[op.as_str(), "ok"]).start_timer();
        let r = call.await;
        if r.is_err() {
            // Discarded so the ok series does not count it, then observed under error.
            let took = timer.stop_and_discard();
            self.driver_seconds.with_label_values(&[op.as_str(), "error"]).observe(took);
        } else {
            timer.observe_duration();
        }
        r
    }

    /// Observes one apply when dropped (an apply that fails early is timed too).
    pub(crate) fn apply_timer(&self) -> HistogramTimer {
        self.apply_seconds.start_timer()
    }

    pub(crate) fn server_request<T>(&self, call: ServerCall, r: &Result<T, AgentError>) {
        self.server_requests.with_label_values(&[call.as_str(), server_outcome(r)]).inc();
    }

    pub(crate) fn reported(&self) {
        self.last_report.set(unix_now());
    }

    /// Counts the Xid events of one look (each is delivered once).
    pub(crate) fn xids(&self, signals: &[Signals]) {
        for s in signals {
            for &x in &s.xids {
                self.xid_errors.with_label_values(&[&s.index.to_string(), &xid_label(x)]).inc();
            }
        }
    }

    pub(crate) fn gpus_looked(&self, gpus: &[proto::GpuHealthReport]) {
        *self.gpus.lock().unwrap_or_else(|p| p.into_inner()) = Some(GpuLook { at: unix_now(), gpus: gpus.to_vec() });
    }

    /// The text exposition of everything: the accumulated metrics and the gauges of now.
    /// `instances` is `None` when the driver could not list (the family is then left out, not
    /// reported as zero: absent means unknown).
    fn render(&self, instances: Option<&[proto::InstanceReport]>, applied_generation: i64) -> String {
        // A registry per scrape: a GPU that was replaced (new UUID) or removed leaves no stale
        // series behind.
        let now = Registry::new();
        let generation = reg(
            &now,
            IntGauge::new("nimbus_agent_applied_generation", "The desired-state generation the agent last applied.")
                .unwrap_or_else(|e| panic!("generation: {e}")),
        );
        generation.set(applied_generation);
        if let Some(list) = instances {
            let by_state = gauge_vec(&now, "nimbus_agent_instances", "Instances the driver has, by observed state.", &["state"]);
            for s in INSTANCE_STATES {
                by_state.with_label_values(&[state_name(s)]).set(list.iter().filter(|i| i.state == s).count() as i64);
            }
        }
        if let Some(look) = self.gpus.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            gauge(
                &now,
                "nimbus_agent_gpu_health_checked_timestamp_seconds",
                "Unix time of the last GPU health look the GPU metrics come from.",
            )
            .set(look.at);
            let by_condition = gauge_vec(
                &now,
                "nimbus_agent_gpus",
                "GPUs of this host by health condition (nimbus_core::gpu_health::Condition).",
                &["condition"],
            );
            for c in Condition::ALL {
                by_condition.with_label_values(&[c.as_str()]).set(look.gpus.iter().filter(|g| g.condition == c).count() as i64);
            }
            let healthy = gauge_vec(
                &now,
                "nimbus_agent_gpu_healthy",
                "1 when new instances may be placed on the GPU (condition ok or degraded), else 0.",
                &["index", "uuid"],
            );
            let clean = gauge_vec(
                &now,
                "nimbus_agent_gpu_clean",
                "1 when the GPU was checked idle (and reset, where allowed) since an instance last used it, else 0.",
                &["index", "uuid"],
            );
            for g in &look.gpus {
                let labels = [g.index.to_string(), g.uuid.clone()];
                let labels = [labels[0].as_str(), labels[1].as_str()];
                healthy.with_label_values(&labels).set(i64::from(g.condition.placeable()));
                clean.with_label_values(&labels).set(i64::from(g.clean));
            }
        }
        let mut families = self.registry.gather();
        families.extend(now.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "encoding the agent's metrics failed");
        }
        out
    }
}

impl Agent {
    /// This agent's metrics in the Prometheus text exposition format 0.0.4 (see
    /// [`CONTENT_TYPE`]). Lists the driver's instances, so a scrape costs one `driver.list()`.
    pub async fn render_metrics(&self) -> String {
        let instances = match self.metrics.driver(DriverOp::List, self.driver.list()).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(error = %e, "listing instances for a scrape failed");
                None
            }
        };
        self.metrics.render(instances.as_deref(), self.applied_generation.load(std::sync::atomic::Ordering::SeqCst))
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn answer(agent: &Agent, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found: this listener serves GET /metrics\n");
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: GET /metrics\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(agent.render_metrics().await)));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Serves `GET /metrics` of `agent` on `listener` (plain HTTP/1.1, no authentication: see the
/// module doc for where to bind it) until `stop` turns true or its sender is dropped. Other
/// paths answer 404, other methods on `/metrics` 405. At most 64 connections are served at
/// once (further ones wait in the listen backlog), each closed after one response, a request
/// head that takes over 10 s, or 30 s in all.
pub async fn serve_metrics(agent: Arc<Agent>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // One request per connection: a connection's lifetime is then bounded by the timeouts
        // above, and a scraper's reconnect every interval costs nothing worth keeping it for.
        .keep_alive(false)
        .max_buf_size(16 * 1024);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        while conns.try_join_next().is_some() {}
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            r = stop.changed() => {
                if r.is_err() { break }
                continue;
            }
        };
        let tcp = tokio::select! {
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: the next accept may work, but not in a spin.
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            r = stop.changed() => {
                if r.is_err() { break }
                continue;
            }
        };
        let agent = agent.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let agent = agent.clone();
            async move { Ok::<_, Infallible>(answer(&agent, &req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        conns.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!("metrics connection timed out"),
            }
        });
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use nimbus_driver::sim::SimConfig;

    use super::*;
    use crate::tests::temp_dir;

    fn agent(dir: &std::path::Path, sim: SimConfig) -> Arc<Agent> {
        crate::tests::sim_agent(dir, sim)
    }

    fn running(id: &str) -> proto::DesiredInstance {
        crate::tests::instance(id, None)
    }

    /// The value of exactly the series `series` (name and labels as exposed), or a panic
    /// naming it: a missing or duplicated series fails the test.
    fn value(text: &str, series: &str) -> f64 {
        let found: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(s, _)| *s == series)
            .map(|(_, v)| v.parse().unwrap_or_else(|e| panic!("{series}: {v:?}: {e}")))
            .collect();
        assert_eq!(found.len(), 1, "series {series} in:\n{text}");
        found[0]
    }

    fn has_family(text: &str, name: &str) -> bool {
        text.lines().any(|l| l == format!("# TYPE {name} gauge"))
    }

    /// A real agent on the sim driver applies one running instance and looks at its GPUs (one
    /// healthy, one that fell off the bus); its listener then serves what happened.
    #[tokio::test]
    async fn serves_what_the_agent_did() {
        let dir = temp_dir("serve");
        std::fs::create_dir_all(&dir).unwrap();
        let faults = dir.join("faults.json");
        std::fs::write(&faults, br#"{"1": {"xids": [79]}}"#).unwrap();
        let sim = SimConfig { gpus: vec![("NVIDIA H100 80GB HBM3".into(), 2)], faults_file: Some(faults), ..SimConfig::default() };
        let a = agent(&dir, sim);
        a.prepare_data_dir().unwrap();
        let desired = proto::DesiredResponse {
            generation: 7,
            instances: vec![running("i1")],
            volumes: vec![],
            snapshots: vec![],
            vpns: vec![],
            user_data_omitted: vec![],
            fabric: None,
        };
        a.apply(&desired).await.unwrap();
        // Looks at the GPUs, then fails to reach the server.
        assert!(matches!(a.report().await, Err(AgentError::Transport(_))));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve_metrics(a.clone(), listener, stop));
        let http = reqwest::Client::new();

        let resp = http.get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[reqwest::header::CONTENT_TYPE], CONTENT_TYPE);
        let text = resp.text().await.unwrap();

        assert_eq!(value(&text, r#"nimbus_agent_instances{state="running"}"#), 1.0);
        for s in ["creating", "stopped", "failed"] {
            assert_eq!(value(&text, &format!("nimbus_agent_instances{{state=\"{s}\"}}")), 0.0);
        }
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="ensure",outcome="ok"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="ensure",outcome="error"}"#), 0.0);
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_bucket{op="ensure",outcome="ok",le="+Inf"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="destroy",outcome="ok"}"#), 0.0);
        // Apply lists once, the report once, and this scrape once (counted before it renders).
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="list",outcome="ok"}"#), 3.0);
        // Before instances (volumes to mount) and after (volumes to delete once unmounted).
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="sync_storage",outcome="ok"}"#), 2.0);
        assert_eq!(value(&text, "nimbus_agent_apply_seconds_count"), 1.0);
        assert_eq!(value(&text, "nimbus_agent_applied_generation"), 7.0);
        assert_eq!(value(&text, &format!("nimbus_agent_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), 1.0);

        assert_eq!(value(&text, r#"nimbus_agent_server_requests_total{call="report",outcome="transport_error"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_server_requests_total{call="report",outcome="ok"}"#), 0.0);
        assert_eq!(value(&text, "nimbus_agent_last_report_timestamp_seconds"), 0.0);

        assert_eq!(value(&text, r#"nimbus_agent_gpus{condition="ok"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_gpus{condition="reboot_required"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_gpus{condition="drain"}"#), 0.0);
        let uuid = |i: i64| format!("GPU-sim-sim-host-{i}");
        assert_eq!(value(&text, &format!("nimbus_agent_gpu_healthy{{index=\"0\",uuid=\"{}\"}}", uuid(0))), 1.0);
        assert_eq!(value(&text, &format!("nimbus_agent_gpu_healthy{{index=\"1\",uuid=\"{}\"}}", uuid(1))), 0.0);
        // Both were new (dirty) and idle, so both were reset and are clean; a reset does not
        // clear a GPU that fell off the bus.
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="reset_gpu",outcome="ok"}"#), 2.0);
        assert_eq!(value(&text, &format!("nimbus_agent_gpu_clean{{index=\"1\",uuid=\"{}\"}}", uuid(1))), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_gpu_xid_errors_total{index="1",xid="79"}"#), 1.0);
        let checked = value(&text, "nimbus_agent_gpu_health_checked_timestamp_seconds");
        assert!((unix_now() - checked).abs() < 60.0, "checked at {checked}");

        let nope = http.get(format!("{url}/nope")).send().await.unwrap();
        assert_eq!(nope.status(), 404);
        let post = http.post(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()[reqwest::header::ALLOW], "GET");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the listener stops").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Before any GPU look there are no GPU series (absent, not zero: nothing is known), and a
    /// failed driver call is counted under `error` only.
    #[tokio::test]
    async fn unknown_is_absent_and_errors_are_counted() {
        let dir = temp_dir("errors");
        let a = agent(&dir, SimConfig::default());
        let failed: Result<(), &str> = a.metrics.driver(DriverOp::Stop, async { Err("no such instance") }).await;
        assert!(failed.is_err());
        let text = a.render_metrics().await;
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="stop",outcome="error"}"#), 1.0);
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="stop",outcome="ok"}"#), 0.0);
        assert_eq!(value(&text, r#"nimbus_agent_instances{state="running"}"#), 0.0);
        assert_eq!(value(&text, "nimbus_agent_apply_seconds_count"), 0.0);
        assert!(!has_family(&text, "nimbus_agent_gpus"), "{text}");
        assert!(!has_family(&text, "nimbus_agent_gpu_healthy"), "{text}");
        // Each agent has its own registry: another one starts from zero.
        let b = agent(&dir, SimConfig::default());
        let text = b.render_metrics().await;
        assert_eq!(value(&text, r#"nimbus_agent_driver_operation_seconds_count{op="stop",outcome="error"}"#), 0.0);
    }

    /// A stop already set when the listener starts ends it at once.
    #[tokio::test]
    async fn stops_when_told() {
        let a = agent(&temp_dir("stop"), SimConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_tx, stop) = watch::channel(true);
        tokio::time::timeout(Duration::from_secs(5), serve_metrics(a, listener, stop)).await.expect("returns at once");
    }
}
