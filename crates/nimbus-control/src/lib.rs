//! Use-case services of the control plane: everything every API dialect does, written once.
//!
//! Each public function validates its input, opens one store transaction for any state change
//! (appending the outbox event in the same transaction), commits, and only then wakes background
//! work with a data-free hint. Nothing here knows about HTTP or a wire format; dialects convert
//! to and from the domain types of `nimbus-core`.

pub mod account;
pub mod admin;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod bare_metal;
pub mod billing;
pub mod capacity;
pub mod clusters;
pub mod config;
pub mod console;
pub mod egress;
pub mod fabric;
pub mod firewall;
pub mod idempotency;
pub mod images;
pub mod instances;
pub mod metering;
pub mod metrics;
pub mod notify;
pub mod port_forwards;
pub mod presets;
pub mod reconcile;
pub mod scheduler;
pub mod service_accounts;
pub mod ssh_keys;
pub mod storage;
pub mod telemetry;
pub mod volumes;
pub mod vpn;
pub mod webhook_delivery;
pub mod webhooks;

use std::sync::Arc;

use nimbus_core::clock::Clock;
use nimbus_store::Store;

pub use config::Config;

/// Shared handle to the control plane; cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    config: Config,
    hosts: notify::HostNotifier,
    auth_cache: auth::AuthCache,
    /// This process among the replicas: names it as a lease holder and as a wake-up's sender.
    replica_id: String,
    /// When this replica last renewed its liveness lease (see `idempotency`).
    liveness_renewed: std::sync::atomic::AtomicI64,
    telemetry: telemetry::Telemetry,
}

impl Control {
    /// Builds the control plane over an opened store and makes sure the configured images exist.
    pub async fn new(store: Store, clock: Arc<dyn Clock>, config: Config) -> nimbus_core::Result<Control> {
        config.validate()?;
        let c = Control {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                hosts: notify::HostNotifier::default(),
                auth_cache: auth::AuthCache::default(),
                replica_id: format!("replica-{}", &nimbus_core::ids::random_hex_id()[..16]),
                liveness_renewed: std::sync::atomic::AtomicI64::new(i64::MIN),
                telemetry: telemetry::Telemetry::new(),
            }),
        };
        images::sync_configured(&c).await?;
        Ok(c)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This server's Prometheus metrics (`telemetry::render` writes them out).
    pub fn telemetry(&self) -> &telemetry::Telemetry {
        &self.inner.telemetry
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn now(&self) -> i64 {
        self.inner.clock.now_micros()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The configured region named `name`, or an invalid-value error labelled `label`.
    pub fn require_region(&self, label: &str, name: &str) -> nimbus_core::Result<&nimbus_core::catalog::Region> {
        self.config().region(name).ok_or_else(|| nimbus_core::Error::invalid(label, format!("{name:?} is not a region of this cloud")))
    }

    /// This process's name among the server replicas (random per start).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// Answers every agent long-polling this replica now (a shutting-down replica does, so that
    /// its agents move to another at once instead of after their poll window).
    pub fn wake_all_agents(&self) {
        self.inner.hosts.wake_all_local();
    }

    pub(crate) fn liveness_renewed(&self) -> &std::sync::atomic::AtomicI64 {
        &self.inner.liveness_renewed
    }

    pub(crate) fn hosts(&self) -> &notify::HostNotifier {
        &self.inner.hosts
    }
}

/// Appends a tenant-caused event to the outbox inside `tx`.
pub(crate) async fn emit(
    tx: &mut nimbus_store::Conn,
    actor: &nimbus_core::auth::Actor,
    kind: &str,
    resource_type: &str,
    resource_id: &str,
    payload: serde_json::Value,
    now: i64,
) -> nimbus_core::Result<()> {
    Store::event_append_in_txn(
        tx,
        nimbus_store::NewEvent {
            org_id: Some(&actor.org_id),
            kind,
            resource_type,
            resource_id,
            actor_key_id: Some(&actor.key_id),
            payload,
            now,
        },
    )
    .await
}
