//! The Lambda Cloud API v1 dialect at `/api/v1` (`shared/reference/lambda-cloud-api.md`): the
//! primary dialect, which real Lambda clients and orchestrators use unchanged.

mod error;
mod extract;
mod handlers;
mod render;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::routing::{delete, get, post};
use axum::Router;
use bytes::Bytes;
use nimbus_core::ids::OrgId;

pub use error::LambdaError;

use crate::ApiState;

pub fn router() -> Router<ApiState> {
    use handlers::*;
    Router::new()
        .route("/instance-types", get(instance_types))
        .route("/instances", get(instances_list))
        .route("/instances/{id}", get(instance_get).post(instance_modify))
        .route("/instance-operations/launch", post(launch))
        .route("/instance-operations/restart", post(restart))
        .route("/instance-operations/terminate", post(terminate))
        .route("/ssh-keys", get(ssh_keys_list).post(ssh_key_add))
        .route("/ssh-keys/{id}", delete(ssh_key_delete))
        // Lambda lists at /file-systems and creates/deletes at /filesystems; serve both everywhere.
        .route("/file-systems", get(file_systems_list).post(file_system_create))
        .route("/filesystems", get(file_systems_list).post(file_system_create))
        .route("/file-systems/{id}", delete(file_system_delete))
        .route("/filesystems/{id}", delete(file_system_delete))
        .route("/images", get(images_list))
        .route("/firewall-rules", get(firewall_rules_get).put(firewall_rules_put))
        .route("/firewall-rulesets", get(rulesets_list).post(ruleset_create))
        .route("/firewall-rulesets/global", get(global_ruleset_get).patch(global_ruleset_patch))
        .route("/firewall-rulesets/{id}", get(ruleset_get).patch(ruleset_patch).delete(ruleset_delete))
        .route("/audit-events", get(audit_events))
        .method_not_allowed_fallback(method_not_allowed)
}

/// Rendered `GET /instances` bodies per org, valid while the org's instances generation is
/// unchanged. The generation is read from the store on every request, so the cache is never
/// staler than the database, survives nothing across restarts, and is correct with several
/// replicas (each keeps its own copy).
#[derive(Default)]
pub struct ListCache {
    map: Mutex<HashMap<OrgId, (i64, Bytes)>>,
}

impl ListCache {
    fn get(&self, org: &OrgId, generation: i64) -> Option<Bytes> {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.get(org).filter(|(g, _)| *g == generation).map(|(_, b)| b.clone())
    }

    fn put(&self, org: &OrgId, generation: i64, body: Bytes) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(org.clone(), (generation, body));
    }
}
