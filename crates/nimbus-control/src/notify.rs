//! Wake-up hints for agents long-polling on their desired state. A hint carries no data: the
//! woken agent re-reads the store. Losing a hint (another replica committed the change) only
//! costs latency, because long-polls time out and re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nimbus_core::ids::HostId;
use tokio::sync::Notify;

#[derive(Default)]
pub struct HostNotifier {
    map: Mutex<HashMap<HostId, Arc<Notify>>>,
}

impl HostNotifier {
    pub fn handle(&self, host: &HostId) -> Arc<Notify> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(host.clone()).or_default().clone()
    }

    pub fn wake(&self, host: &HostId) {
        self.handle(host).notify_waiters();
    }
}
