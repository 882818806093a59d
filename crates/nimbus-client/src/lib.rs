//! A typed Rust client for Nimbus (and any endpoint speaking one of its dialects), over the same
//! wire types the server uses (`nimbus-api-types`): a module per dialect — `lambda`
//! (`LambdaClient`, Lambda Cloud API v1), `native` (`NativeClient`, `/v1`), `voltage`
//! (`VoltageClient`, Voltage Park On-Demand), `clusters` (`ClustersClient`, CockroachDB-Cloud-
//! shaped) — sharing `transport` (auth, timeouts, retries honouring `Retry-After`, idempotency
//! keys).
#![doc = include_str!("../../../docs/rust-sdk.md")]

pub mod clusters;
pub mod native;
pub mod transport;
pub mod voltage;

/// The Lambda Cloud API v1 dialect (`LambdaClient`), as a module like the other dialects.
pub mod lambda {
    pub use crate::LambdaClient;
}

pub use clusters::ClustersClient;
pub use native::{ListParams, NativeClient, Page, Pages};
/// The wire types of every dialect (`nimbus-api-types`), the server's own definitions.
pub use nimbus_api_types as types;
pub use transport::{Auth, RetryPolicy};
pub use voltage::VoltageClient;

use reqwest::Method;
use transport::{json_body, Transport};

use std::time::Duration;

use nimbus_api_types::lambda as w;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("transport error: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("unexpected response ({status}): {body}")]
    Unexpected { status: u16, body: String },
    /// A wait gave up: the resource did not reach the wanted status.
    #[error("{id} did not become {wanted} (last status {last})")]
    Wait { id: String, wanted: String, last: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

#[derive(Clone)]
pub struct LambdaClient {
    base: String,
    t: Transport,
}

impl LambdaClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`. Bearer auth, a 60 s timeout and
    /// the default retry policy.
    pub fn new(root: &str, api_key: &str) -> Self {
        Self::with_auth(root, Auth::Bearer(api_key.to_owned()))
    }

    /// With another of the dialect's auth forms (`Auth::Basic` as Lambda's curl recipes use).
    pub fn with_auth(root: &str, auth: Auth) -> Self {
        LambdaClient { base: transport::dialect_base(root, "/api/v1"), t: Transport::with_defaults(auth) }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.t = self.t.with_timeout(timeout);
        self
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Result<T> {
        self.call_q(method, path, &[], body).await
    }

    async fn call_q<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let a = self.t.send(method, &format!("{}{path}", self.base), query, body.as_ref(), None).await?;
        let (status, bytes) = (a.status, a.body);
        if status == 200 {
            let d: w::Data<T> = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(&bytes)) })?;
            return Ok(d.data);
        }
        match serde_json::from_slice::<w::ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api { status, code: e.error.code, message: e.error.message }),
            Err(_) => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(json_body(body)?)).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::PUT, path, Some(json_body(body)?)).await
    }

    async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::PATCH, path, Some(json_body(body)?)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn instance_types(&self) -> Result<std::collections::BTreeMap<String, w::InstanceTypeEntry>> {
        self.get("/instance-types").await
    }

    pub async fn instances(&self) -> Result<Vec<w::Instance>> {
        self.get("/instances").await
    }

    pub async fn instance(&self, id: &str) -> Result<w::Instance> {
        self.get(&format!("/instances/{id}")).await
    }

    pub async fn launch(&self, req: &w::LaunchRequest) -> Result<Vec<String>> {
        let r: w::LaunchResponse = self.post("/instance-operations/launch", req).await?;
        Ok(r.instance_ids)
    }

    pub async fn restart(&self, ids: &[String]) -> Result<Vec<w::Instance>> {
        let r: w::RestartResponse =
            self.post("/instance-operations/restart", &w::InstanceIdsRequest { instance_ids: ids.to_vec() }).await?;
        Ok(r.restarted_instances)
    }

    pub async fn terminate(&self, ids: &[String]) -> Result<Vec<w::Instance>> {
        let r: w::TerminateResponse =
            self.post("/instance-operations/terminate", &w::InstanceIdsRequest { instance_ids: ids.to_vec() }).await?;
        Ok(r.terminated_instances)
    }

    pub async fn ssh_keys(&self) -> Result<Vec<w::SshKey>> {
        self.get("/ssh-keys").await
    }

    /// Adds a public key, or generates a pair when `public_key` is `None`.
    pub async fn ssh_key_add(&self, name: &str, public_key: Option<&str>) -> Result<w::SshKey> {
        self.post("/ssh-keys", &w::AddSshKeyRequest { name: name.to_owned(), public_key: public_key.map(str::to_owned) }).await
    }

    pub async fn ssh_key_delete(&self, id: &str) -> Result<serde_json::Value> {
        self.delete(&format!("/ssh-keys/{id}")).await
    }

    pub async fn file_systems(&self) -> Result<Vec<w::FileSystem>> {
        self.get("/file-systems").await
    }

    pub async fn file_system_create(&self, name: &str, region: &str) -> Result<w::FileSystem> {
        self.post("/filesystems", &w::CreateFileSystemRequest { name: name.to_owned(), region: region.to_owned() }).await
    }

    pub async fn file_system_delete(&self, id: &str) -> Result<w::DeletedIds> {
        self.delete(&format!("/filesystems/{id}")).await
    }

    /// Renames an instance (`None` clears the name).
    pub async fn instance_rename(&self, id: &str, name: Option<&str>) -> Result<w::Instance> {
        self.post(&format!("/instances/{id}"), &w::InstanceModifyRequest { name: name.map(str::to_owned) }).await
    }

    pub async fn images(&self) -> Result<Vec<w::Image>> {
        self.get("/images").await
    }

    pub async fn firewall_rules(&self) -> Result<Vec<w::FirewallRule>> {
        self.get("/firewall-rules").await
    }

    /// Replaces the inbound rules of the region-less (legacy) firewall.
    pub async fn firewall_rules_replace(&self, rules: Vec<w::FirewallRule>) -> Result<Vec<w::FirewallRule>> {
        self.put("/firewall-rules", &w::FirewallRulesPut { data: rules }).await
    }

    pub async fn firewall_rulesets(&self) -> Result<Vec<w::FirewallRuleset>> {
        self.get("/firewall-rulesets").await
    }

    pub async fn firewall_ruleset(&self, id: &str) -> Result<w::FirewallRuleset> {
        self.get(&format!("/firewall-rulesets/{id}")).await
    }

    pub async fn firewall_ruleset_create(&self, req: &w::CreateRulesetRequest) -> Result<w::FirewallRuleset> {
        self.post("/firewall-rulesets", req).await
    }

    pub async fn firewall_ruleset_update(&self, id: &str, req: &w::PatchRulesetRequest) -> Result<w::FirewallRuleset> {
        self.patch(&format!("/firewall-rulesets/{id}"), req).await
    }

    pub async fn firewall_ruleset_delete(&self, id: &str) -> Result<serde_json::Value> {
        self.delete(&format!("/firewall-rulesets/{id}")).await
    }

    pub async fn firewall_ruleset_global(&self) -> Result<w::GlobalFirewallRuleset> {
        self.get("/firewall-rulesets/global").await
    }

    pub async fn firewall_ruleset_global_update(&self, req: &w::PatchRulesetRequest) -> Result<w::GlobalFirewallRuleset> {
        self.patch("/firewall-rulesets/global", req).await
    }

    /// One page of audit events (`page_token` from the previous page).
    pub async fn audit_events(&self, page_token: Option<&str>) -> Result<w::AuditEventsPage> {
        let q: Vec<(String, String)> = page_token.map(|t| ("page_token".to_owned(), t.to_owned())).into_iter().collect();
        self.call_q(Method::GET, "/audit-events", &q, None).await
    }

    /// Every audit event, following `page_token`s.
    pub async fn audit_events_all(&self) -> Result<Vec<w::AuditEvent>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.audit_events(token.as_deref()).await?;
            out.extend(page.events);
            match page.page_token.filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Polls until the instance is `active` (or `timeout` passes).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<w::Instance> {
        transport::poll_until(id, "active", &["terminating", "terminated"], timeout, || self.instance(id), |i| i.status.clone()).await
    }
}
