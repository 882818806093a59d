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
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::LambdaError;

use crate::ApiState;

/// The Lambda router and its OpenAPI document, built from the same handler list so that the
/// document cannot miss a route. Lambda's second spellings (`/filesystems` for listing,
/// `/file-systems` for create/delete) are served as undocumented aliases.
pub fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    use handlers::*;
    let (router, doc) = OpenApiRouter::with_openapi(doc_base())
        .routes(routes!(instance_types))
        .routes(routes!(instances_list))
        .routes(routes!(instance_get, instance_modify))
        .routes(routes!(launch))
        .routes(routes!(restart))
        .routes(routes!(terminate))
        .routes(routes!(ssh_keys_list, ssh_key_add))
        .routes(routes!(ssh_key_delete))
        .routes(routes!(file_systems_list))
        .routes(routes!(file_system_create))
        .routes(routes!(file_system_delete))
        .routes(routes!(images_list))
        .routes(routes!(firewall_rules_get, firewall_rules_put))
        .routes(routes!(rulesets_list, ruleset_create))
        .routes(routes!(global_ruleset_get, global_ruleset_patch))
        .routes(routes!(ruleset_get, ruleset_patch, ruleset_delete))
        .routes(routes!(audit_events))
        .split_for_parts();
    let router = router
        .route("/filesystems", get(file_systems_list))
        .route("/file-systems", post(file_system_create))
        .route("/file-systems/{id}", delete(file_system_delete))
        .method_not_allowed_fallback(method_not_allowed);
    (router, doc)
}

pub fn router() -> Router<ApiState> {
    api().0
}

fn doc_base() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
    crate::openapi::base(
        "Nimbus: Lambda Cloud API v1 dialect",
        "Lambda Cloud API v1 as served by Nimbus at /api/v1. Generated from code; see docs/lambda-compatibility.md.",
        "/api/v1",
        vec![
            ("basicAuth", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic))),
            ("bearerAuth", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer))),
        ],
    )
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
