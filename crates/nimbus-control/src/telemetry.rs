//! The control plane's Prometheus metrics, for the operator's scraper (never a tenant):
//! counters and histograms of what happens (requests, launches, time to `active`, webhook
//! attempts, rate-limit refusals), and gauges read from the database at scrape time (instances,
//! hosts and their heartbeats, capacity, the webhook outbox, metering's lag, the pools).
//!
//! One registry per `Control`, so that several servers in one process (tests) keep their own
//! counts; database timings are per process (see `nimbus_store::DbTimings`). Gauges from the
//! database are the same on every replica: a dashboard takes `max` over replicas for them and
//! `sum` for the counters.
//!
//! Label values are bounded: an instance type a client names is a label only when it is in
//! the catalog, routes are the router's path templates, hosts are the operator's own.

use std::collections::BTreeMap;

use nimbus_core::gpu_health::Condition;
use nimbus_core::instance::InstanceState;
use nimbus_core::model::{Gpu, HostStatus};
use nimbus_core::Error;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::Control;

/// Where a request's time goes: from a cached list (sub-millisecond) to a slow launch.
const HTTP_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Container instances are active in well under a second, VMs in seconds, a slow image pull
/// or a GPU reset in minutes.
const ACTIVE_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

pub struct Telemetry {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    rate_limited: IntCounterVec,
    launches: IntCounterVec,
    time_to_active: HistogramVec,
    webhook_attempts: IntCounterVec,
    scrape: Scraped,
}

/// The gauges a scrape fills from the database.
struct Scraped {
    instances: IntGaugeVec,
    hosts: IntGaugeVec,
    host_up: IntGaugeVec,
    heartbeat_age: GaugeVec,
    vcpus: IntGaugeVec,
    memory: IntGaugeVec,
    disk: IntGaugeVec,
    gpus: IntGaugeVec,
    gpu_health: IntGaugeVec,
    outbox_pending: IntGauge,
    outbox_oldest_age: Gauge,
    metering_lag: Gauge,
    pool: IntGaugeVec,
    ping: Gauge,
    scrape_errors: IntCounterVec,
}

/// Registers `m` in `r`. Names and labels are this module's constants, so a failure is a bug
/// found by the first test that builds a `Control`, not a runtime condition.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    if let Err(e) = r.register(Box::new(m.clone())) {
        panic!("registering a metric: {e}");
    }
    m
}

macro_rules! metric {
    ($r:expr, $ty:ident, $name:expr, $help:expr, $labels:expr) => {
        reg($r, $ty::new(Opts::new($name, $help), $labels).unwrap_or_else(|e| panic!("{}: {e}", $name)))
    };
    ($r:expr, $ty:ident, $name:expr, $help:expr) => {
        reg($r, $ty::new($name, $help).unwrap_or_else(|e| panic!("{}: {e}", $name)))
    };
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let o = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(o, labels).unwrap_or_else(|e| panic!("{name}: {e}")))
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let r = Registry::new();
        let build = metric!(&r, IntGaugeVec, "nimbus_build_info", "This server's version (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let scrape = Scraped {
            instances: metric!(&r, IntGaugeVec, "nimbus_instances", "Instances not yet terminated, by state and type.", &["state", "instance_type"]),
            hosts: metric!(&r, IntGaugeVec, "nimbus_hosts", "Registered hosts by region and status (up, down).", &["region", "status"]),
            host_up: metric!(&r, IntGaugeVec, "nimbus_host_up", "1 while a host's agent heartbeats, 0 once it is marked down.", &["host", "region"]),
            heartbeat_age: metric!(&r, GaugeVec, "nimbus_host_heartbeat_age_seconds", "Seconds since a host's last report.", &["host", "region"]),
            vcpus: metric!(&r, IntGaugeVec, "nimbus_capacity_vcpus", "vCPUs of up hosts per region: total and used.", &["region", "kind"]),
            memory: metric!(&r, IntGaugeVec, "nimbus_capacity_memory_bytes", "Memory of up hosts per region: total and used.", &["region", "kind"]),
            disk: metric!(&r, IntGaugeVec, "nimbus_capacity_disk_bytes", "Instance disk of up hosts per region: total and used.", &["region", "kind"]),
            gpus: metric!(
                &r,
                IntGaugeVec,
                "nimbus_capacity_gpus",
                "GPUs of up hosts per region and model: used (by an instance), free (placeable now), unavailable (unhealthy or not yet checked).",
                &["region", "model", "state"]
            ),
            gpu_health: metric!(&r, IntGaugeVec, "nimbus_gpus_by_health", "GPUs of every host by health condition as their agents report it.", &["region", "model", "condition"]),
            outbox_pending: metric!(&r, IntGauge, "nimbus_webhook_outbox_pending", "Webhook deliveries not yet made (waiting or retrying)."),
            outbox_oldest_age: metric!(&r, Gauge, "nimbus_webhook_outbox_oldest_age_seconds", "Age of the oldest webhook delivery not yet made (0 when none)."),
            metering_lag: metric!(&r, Gauge, "nimbus_metering_lag_seconds", "Seconds from the last hour metering rolled into the ledger to now (under 3600 when keeping up)."),
            pool: metric!(&r, IntGaugeVec, "nimbus_db_pool_connections", "Database pool connections: open, idle and max, per pool.", &["pool", "state"]),
            ping: metric!(&r, Gauge, "nimbus_db_ping_seconds", "One SELECT 1 round trip at scrape time, acquiring a connection included."),
            scrape_errors: metric!(&r, IntCounterVec, "nimbus_metrics_scrape_errors_total", "Parts of a scrape that could not be read from the database.", &["part"]),
        };
        Telemetry {
            http_requests: metric!(
                &r,
                IntCounterVec,
                "nimbus_http_requests_total",
                "HTTP requests answered, by dialect, route template, method and status.",
                &["dialect", "route", "method", "status"]
            ),
            http_seconds: histogram(
                &r,
                "nimbus_http_request_duration_seconds",
                "Time to answer an HTTP request (to its response head), by dialect, route and method.",
                HTTP_BUCKETS,
                &["dialect", "route", "method"],
            ),
            rate_limited: metric!(
                &r,
                IntCounterVec,
                "nimbus_rate_limit_rejections_total",
                "Requests refused with 429 (an org's plan or an address's failed-auth budget), by dialect.",
                &["dialect"]
            ),
            launches: metric!(
                &r,
                IntCounterVec,
                "nimbus_instance_launches_total",
                "Instances launched (result ok, counted per instance) and launch requests refused (by error code), by type.",
                &["instance_type", "result"]
            ),
            time_to_active: histogram(
                &r,
                "nimbus_instance_time_to_active_seconds",
                "From launch to first active (the agent says it runs and SSH answers), by type.",
                ACTIVE_BUCKETS,
                &["instance_type"],
            ),
            webhook_attempts: metric!(
                &r,
                IntCounterVec,
                "nimbus_webhook_delivery_attempts_total",
                "Webhook delivery attempts by result: delivered, retry (failed, tried again later), gave_up.",
                &["result"]
            ),
            scrape,
            registry: r,
        }
    }

    /// One answered HTTP request.
    pub fn http_request(&self, dialect: &str, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.http_requests.with_label_values(&[dialect, route, method, &status]).inc();
        self.http_seconds.with_label_values(&[dialect, route, method]).observe(seconds);
    }

    pub fn rate_limited(&self, dialect: &str) {
        self.rate_limited.with_label_values(&[dialect]).inc();
    }

    pub fn webhook_attempt(&self, result: &str) {
        self.webhook_attempts.with_label_values(&[result]).inc();
    }

    pub(crate) fn observe_active(&self, instance_type: &str, seconds: f64) {
        self.time_to_active.with_label_values(&[instance_type]).observe(seconds.max(0.0));
    }

    pub(crate) fn launched(&self, instance_type: &str, result: &Result<Vec<nimbus_core::ids::InstanceId>, Error>) {
        match result {
            Ok(ids) => self.launches.with_label_values(&[instance_type, "ok"]).inc_by(ids.len() as u64),
            Err(e) => self.launches.with_label_values(&[instance_type, e.code()]).inc(),
        }
    }
}

/// An instance type as a label: the catalog's names only, so a client cannot mint series.
pub(crate) fn type_label<'a>(c: &'a Control, name: &'a str) -> &'a str {
    if c.config().instance_type(name).is_some() {
        name
    } else {
        "unknown"
    }
}

/// Where a GPU stands for placement.
fn gpu_state(g: &Gpu) -> &'static str {
    if g.instance_id.is_some() || g.mig_devices.iter().any(|m| m.instance_id.is_some()) {
        "used"
    } else if g.health.placeable() && g.clean {
        "free"
    } else {
        "unavailable"
    }
}

/// Every metric in the text exposition format (0.0.4), the database's gauges read now.
pub async fn render(c: &Control) -> String {
    let t = c.telemetry();
    refresh(c, &t.scrape).await;
    let mut families = t.registry.gather();
    families.extend(db_families());
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The per-process database timings, gathered on their own (a collector is in one registry).
fn db_families() -> Vec<prometheus::proto::MetricFamily> {
    static R: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::new();
        reg(&r, nimbus_store::DbTimings::get().seconds.clone());
        r
    })
    .gather()
}

/// Fills the database's gauges. A part that cannot be read keeps its last values and counts an
/// error, so one slow table does not blank the rest of the scrape.
async fn refresh(c: &Control, s: &Scraped) {
    let now = c.now();
    let failed = |part: &str, e: Error| {
        tracing::warn!(part, error = %e, "reading metrics from the database failed");
        s.scrape_errors.with_label_values(&[part]).inc();
    };
    match c.store().ops_instance_counts().await {
        Ok(counts) => {
            s.instances.reset();
            // Every live state of every type is a series, zero or not, so that rates and
            // alerts see a drop to zero rather than a series that vanished.
            for it in &c.config().instance_types {
                for st in InstanceState::ALL.iter().filter(|s| **s != InstanceState::Terminated) {
                    s.instances.with_label_values(&[st.as_str(), &it.name]).set(0);
                }
            }
            for n in counts {
                s.instances.with_label_values(&[&n.state, &n.instance_type]).set(n.count);
            }
        }
        Err(e) => failed("instances", e),
    }
    match c.store().host_list(None, false).await {
        Ok(hosts) => {
            for g in [&s.hosts, &s.host_up, &s.vcpus, &s.memory, &s.disk, &s.gpus, &s.gpu_health] {
                g.reset();
            }
            s.heartbeat_age.reset();
            let mut by_status: BTreeMap<(String, &str), i64> = BTreeMap::new();
            for h in &hosts {
                let region = h.region.as_str();
                for st in ["up", "down"] {
                    by_status.entry((region.to_owned(), st)).or_insert(0);
                }
                *by_status.entry((region.to_owned(), h.status.as_str())).or_insert(0) += 1;
                s.host_up.with_label_values(&[&h.name, region]).set(i64::from(h.status == HostStatus::Up));
                s.heartbeat_age.with_label_values(&[&h.name, region]).set((now - h.last_seen_at).max(0) as f64 / 1e6);
                for g in &h.gpus {
                    // Conditions no GPU is in are series too (zero), for alerts on `> 0`.
                    for cond in Condition::ALL {
                        s.gpu_health.with_label_values(&[region, &g.model, cond.as_str()]).add(0);
                    }
                    s.gpu_health.with_label_values(&[region, &g.model, g.health.as_str()]).inc();
                }
                if h.status != HostStatus::Up {
                    continue;
                }
                for (gauge, total, used) in [
                    (&s.vcpus, h.total.vcpus, h.used.vcpus),
                    (&s.memory, h.total.memory_mib << 20, h.used.memory_mib << 20),
                    (&s.disk, h.total.disk_gib << 30, h.used.disk_gib << 30),
                ] {
                    gauge.with_label_values(&[region, "total"]).add(total);
                    gauge.with_label_values(&[region, "used"]).add(used);
                }
                for g in &h.gpus {
                    for st in ["used", "free", "unavailable"] {
                        s.gpus.with_label_values(&[region, &g.model, st]).add(0);
                    }
                    s.gpus.with_label_values(&[region, &g.model, gpu_state(g)]).inc();
                }
            }
            for ((region, st), n) in by_status {
                s.hosts.with_label_values(&[&region, st]).set(n);
            }
        }
        Err(e) => failed("hosts", e),
    }
    match c.store().ops_outbox_depth().await {
        Ok(o) => {
            s.outbox_pending.set(o.pending);
            s.outbox_oldest_age.set(o.oldest_pending_created_at.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6));
        }
        Err(e) => failed("webhook_outbox", e),
    }
    match c.store().ops_metering_cursor(crate::metering::CURSOR).await {
        // Before the first roll-up there is no lag to speak of.
        Ok(cursor) => s.metering_lag.set(cursor.map_or(0.0, |until| (now.div_euclid(1_000_000) - until).max(0) as f64)),
        Err(e) => failed("metering", e),
    }
    s.pool.reset();
    for p in c.store().pool_stats() {
        s.pool.with_label_values(&[p.pool, "open"]).set(i64::from(p.size));
        s.pool.with_label_values(&[p.pool, "idle"]).set(i64::from(p.idle));
        s.pool.with_label_values(&[p.pool, "max"]).set(i64::from(p.max));
    }
    match c.store().ping().await {
        Ok(d) => s.ping.set(d.as_secs_f64()),
        Err(e) => failed("ping", e),
    }
}
