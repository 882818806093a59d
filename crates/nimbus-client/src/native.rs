//! `NativeClient`: the native API (`/v1`) with its envelope, pagination, idempotency keys and
//! `wait_until_ready`.

use std::time::{Duration, Instant};

use nimbus_api_types::native as w;
use serde::de::DeserializeOwned;
use serde::Serialize;

use reqwest::Method;

use crate::transport::{dialect_base, json_body, Auth, RetryPolicy, Transport};
use crate::{ClientError, Result};

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: Option<w::Pagination>,
}

/// Query of a list endpoint: page, limit, sorting and `field=value` filters.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub page: Option<u32>,
    pub limit: Option<u32>,
    pub sort: Option<String>,
    /// `asc` or `desc`.
    pub order: Option<String>,
    pub filters: Vec<(String, String)>,
}

impl ListParams {
    fn pairs(&self) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(p) = self.page {
            q.push(("page".to_owned(), p.to_string()));
        }
        if let Some(l) = self.limit {
            q.push(("limit".to_owned(), l.to_string()));
        }
        if let Some(s) = &self.sort {
            q.push(("sort".to_owned(), s.clone()));
        }
        if let Some(o) = &self.order {
            q.push(("order".to_owned(), o.clone()));
        }
        q.extend(self.filters.iter().cloned());
        q
    }
}

#[derive(serde::Deserialize)]
struct ErrEnvelope {
    error: w::ErrorInfo,
}

#[derive(Clone)]
pub struct NativeClient {
    base: String,
    t: Transport,
}

impl NativeClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`. Bearer auth, a 60 s timeout and
    /// the default retry policy; see `with_retry`/`with_timeout`.
    pub fn new(root: &str, api_key: &str) -> Self {
        NativeClient { base: dialect_base(root, "/v1"), t: Transport::with_defaults(Auth::Bearer(api_key.to_owned())) }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.t = self.t.with_timeout(timeout);
        self
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
        idem: Option<&str>,
    ) -> Result<w::Envelope<T>> {
        let a = self.t.send(method, &self.url(path), query, body.as_ref(), idem).await?;
        let (status, bytes) = (a.status, a.body);
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(&bytes)) });
        }
        match serde_json::from_slice::<ErrEnvelope>(&bytes) {
            Ok(e) => Err(ClientError::Api { status, code: e.error.code, message: e.error.message }),
            Err(_) => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.call(Method::GET, path, &[], None, None).await?.data)
    }

    async fn get_query<T: DeserializeOwned>(&self, path: &str, q: &[(String, String)]) -> Result<T> {
        Ok(self.call(Method::GET, path, q, None, None).await?.data)
    }

    async fn list<T: DeserializeOwned>(&self, path: &str, p: &ListParams) -> Result<Page<T>> {
        let env: w::Envelope<Vec<T>> = self.call(Method::GET, path, &p.pairs(), None, None).await?;
        Ok(Page { items: env.data, pagination: env.pagination })
    }

    /// A cursor over a list's pages (`p`'s filters, sort and page size), fetched one at a time
    /// as `next` is awaited: `while let Some(page) = pages.next().await? { … }`.
    pub fn pages<T: DeserializeOwned>(&self, path: &str, p: &ListParams) -> Pages<'_, T> {
        let mut q = p.clone();
        q.page = Some(p.page.unwrap_or(1));
        Pages { client: self, path: path.to_owned(), q, done: false, _t: std::marker::PhantomData }
    }

    /// Every item of a list, page after page, with `p`'s filters.
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str, p: &ListParams) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut pages = self.pages(path, p);
        while let Some(items) = pages.next().await? {
            out.extend(items);
        }
        Ok(out)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: Option<&B>, idem: Option<&str>) -> Result<T> {
        let body = body.map(json_body).transpose()?;
        Ok(self.call(Method::POST, path, &[], body, idem).await?.data)
    }

    async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Ok(self.call(Method::PATCH, path, &[], Some(json_body(body)?), None).await?.data)
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.call(Method::DELETE, path, &[], None, None).await?.data)
    }

    // Instances.

    /// Creates an instance; with `idempotency_key`, a retried call returns the first response.
    pub async fn instance_create(&self, req: &w::InstanceCreate, idempotency_key: Option<&str>) -> Result<w::Instance> {
        self.post("/instances", Some(req), idempotency_key).await
    }
    pub async fn instances(&self, p: &ListParams) -> Result<Page<w::Instance>> {
        self.list("/instances", p).await
    }
    pub async fn instance(&self, id: &str) -> Result<w::Instance> {
        self.get(&format!("/instances/{id}")).await
    }
    pub async fn instance_update(&self, id: &str, req: &w::InstanceUpdate) -> Result<w::Instance> {
        self.patch(&format!("/instances/{id}"), req).await
    }
    pub async fn instance_delete(&self, id: &str) -> Result<w::Instance> {
        self.delete(&format!("/instances/{id}")).await
    }
    pub async fn instance_start(&self, id: &str) -> Result<w::Instance> {
        self.post::<(), _>(&format!("/instances/{id}/start"), None, None).await
    }
    pub async fn instance_stop(&self, id: &str) -> Result<w::Instance> {
        self.post::<(), _>(&format!("/instances/{id}/stop"), None, None).await
    }
    pub async fn instance_restart(&self, id: &str) -> Result<w::Instance> {
        self.post::<(), _>(&format!("/instances/{id}/restart"), None, None).await
    }
    pub async fn instance_resize(&self, id: &str, instance_type: &str) -> Result<w::Instance> {
        let body = w::InstanceResize { instance_type: instance_type.to_owned() };
        self.post(&format!("/instances/{id}/resize"), Some(&body), None).await
    }
    pub async fn instance_network(&self, id: &str) -> Result<w::InstanceNetwork> {
        self.get(&format!("/instances/{id}/network")).await
    }
    /// Its GPUs (or MIG devices) with their health.
    pub async fn instance_gpus(&self, id: &str) -> Result<Vec<w::InstanceGpu>> {
        self.get(&format!("/instances/{id}/gpus")).await
    }

    /// Polls until the instance reaches `status` (e.g. `running`, `stopped`), failing early when
    /// it is terminating or terminated and `status` is neither, or after `timeout`.
    pub async fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> Result<w::Instance> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let i = self.instance(id).await?;
            if i.status == status {
                return Ok(i);
            }
            if matches!(i.status.as_str(), "terminating" | "terminated") && !matches!(status, "terminating" | "terminated") {
                return Err(ClientError::Wait { id: id.to_owned(), wanted: status.to_owned(), last: i.status });
            }
            if start.elapsed() >= timeout {
                return Err(ClientError::Wait { id: id.to_owned(), wanted: status.to_owned(), last: i.status });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits until the instance is `running` (SSH answers; see the container driver).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<w::Instance> {
        self.wait_for_status(id, "running", timeout).await
    }

    // Volumes and snapshots.

    pub async fn volume_create(&self, req: &w::VolumeCreate) -> Result<w::Volume> {
        self.post("/volumes", Some(req), None).await
    }
    pub async fn volumes(&self, p: &ListParams) -> Result<Page<w::Volume>> {
        self.list("/volumes", p).await
    }
    pub async fn volume(&self, id: &str) -> Result<w::Volume> {
        self.get(&format!("/volumes/{id}")).await
    }
    pub async fn volume_delete(&self, id: &str) -> Result<w::Volume> {
        self.delete(&format!("/volumes/{id}")).await
    }
    pub async fn volume_attach(&self, id: &str, instance_id: &str) -> Result<w::Volume> {
        let body = w::VolumeAttach { instance_id: instance_id.to_owned() };
        self.post(&format!("/volumes/{id}/attach"), Some(&body), None).await
    }
    pub async fn volume_detach(&self, id: &str) -> Result<w::Volume> {
        self.post::<(), _>(&format!("/volumes/{id}/detach"), None, None).await
    }
    pub async fn volume_resize(&self, id: &str, size_gib: i64) -> Result<w::Volume> {
        self.post(&format!("/volumes/{id}/resize"), Some(&w::VolumeResize { size_gib }), None).await
    }
    pub async fn snapshot_create(&self, req: &w::SnapshotCreate) -> Result<w::Snapshot> {
        self.post("/snapshots", Some(req), None).await
    }
    pub async fn snapshots(&self, p: &ListParams) -> Result<Page<w::Snapshot>> {
        self.list("/snapshots", p).await
    }
    pub async fn snapshot(&self, id: &str) -> Result<w::Snapshot> {
        self.get(&format!("/snapshots/{id}")).await
    }
    pub async fn snapshot_delete(&self, id: &str) -> Result<w::Snapshot> {
        self.delete(&format!("/snapshots/{id}")).await
    }
    pub async fn snapshot_restore(&self, id: &str, req: &w::SnapshotRestore) -> Result<w::RestoreResult> {
        self.post(&format!("/snapshots/{id}/restore"), Some(req), None).await
    }

    // Firewall and account.

    pub async fn firewall_rules(&self, p: &ListParams) -> Result<Page<w::FirewallRule>> {
        self.list("/firewall/rules", p).await
    }
    pub async fn firewall_rule_create(&self, req: &w::FirewallRuleCreate) -> Result<w::FirewallRule> {
        self.post("/firewall/rules", Some(req), None).await
    }
    pub async fn firewall_rule_delete(&self, id: &str) -> Result<w::FirewallRule> {
        self.delete(&format!("/firewall/rules/{id}")).await
    }
    /// Usage in `[start, end)` (RFC 3339; defaults: the current month to now).
    pub async fn billing_usage(&self, start: Option<&str>, end: Option<&str>) -> Result<w::Usage> {
        let mut q = Vec::new();
        if let Some(s) = start {
            q.push(("start", s));
        }
        if let Some(e) = end {
            q.push(("end", e));
        }
        let q: Vec<(String, String)> = q.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        self.get_query("/billing/usage", &q).await
    }
    pub async fn billing_invoices(&self) -> Result<Vec<w::Invoice>> {
        self.get("/billing/invoices").await
    }
    pub async fn billing_invoice(&self, id: &str) -> Result<w::Invoice> {
        self.get(&format!("/billing/invoices/{id}")).await
    }
    pub async fn billing_estimate(&self, instance_type: Option<&str>, hours: Option<i64>) -> Result<w::Estimate> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(t) = instance_type {
            q.push(("instance_type", t.to_owned()));
        }
        if let Some(h) = hours {
            q.push(("hours", h.to_string()));
        }
        let q: Vec<(String, String)> = q.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        self.get_query("/billing/estimate", &q).await
    }
    // Webhooks, VPNs and metrics.

    pub async fn webhook_create(&self, req: &nimbus_api_types::webhooks::WebhookCreate) -> Result<nimbus_api_types::webhooks::Webhook> {
        self.post("/webhooks", Some(req), None).await
    }
    pub async fn webhooks(&self, p: &ListParams) -> Result<Page<nimbus_api_types::webhooks::Webhook>> {
        self.list("/webhooks", p).await
    }
    pub async fn webhook_delete(&self, id: &str) -> Result<nimbus_api_types::webhooks::Webhook> {
        self.delete(&format!("/webhooks/{id}")).await
    }
    pub async fn webhook_deliveries(&self, id: &str, p: &ListParams) -> Result<Page<nimbus_api_types::webhooks::WebhookDelivery>> {
        self.list(&format!("/webhooks/{id}/deliveries"), p).await
    }
    pub async fn vpn_create(&self, req: &w::VpnCreate) -> Result<w::VpnCreated> {
        self.post("/vpn", Some(req), None).await
    }
    pub async fn webhook(&self, id: &str) -> Result<nimbus_api_types::webhooks::Webhook> {
        self.get(&format!("/webhooks/{id}")).await
    }
    /// Queues a delivery of the same event again.
    pub async fn webhook_redeliver(&self, id: &str, delivery_id: &str) -> Result<nimbus_api_types::webhooks::WebhookDelivery> {
        self.post::<(), _>(&format!("/webhooks/{id}/deliveries/{delivery_id}/redeliver"), None, None).await
    }
    pub async fn vpns(&self, p: &ListParams) -> Result<Page<w::Vpn>> {
        self.list("/vpn", p).await
    }
    pub async fn vpn(&self, id: &str) -> Result<w::Vpn> {
        self.get(&format!("/vpn/{id}")).await
    }
    pub async fn vpn_delete(&self, id: &str) -> Result<w::Vpn> {
        self.delete(&format!("/vpn/{id}")).await
    }
    /// Means per `step_seconds` over the last hour (or fewer steps' worth).
    pub async fn instance_metrics(&self, id: &str, step_seconds: i64) -> Result<w::InstanceMetrics> {
        self.get(&format!("/instances/{id}/metrics?step={step_seconds}")).await
    }
    pub async fn account(&self) -> Result<w::Account> {
        self.get("/account").await
    }
    pub async fn account_update(&self, req: &w::AccountUpdate) -> Result<w::Account> {
        self.patch("/account", req).await
    }
    pub async fn quota(&self) -> Result<Vec<w::Quota>> {
        self.get("/account/quota").await
    }
    pub async fn api_keys(&self, p: &ListParams) -> Result<Page<w::ApiKey>> {
        self.list("/account/api-keys", p).await
    }
    pub async fn api_key_create(&self, req: &w::ApiKeyCreate) -> Result<w::ApiKeyWithSecret> {
        self.post("/account/api-keys", Some(req), None).await
    }
    pub async fn api_key_delete(&self, id: &str) -> Result<w::ApiKey> {
        self.delete(&format!("/account/api-keys/{id}")).await
    }

    // Service accounts (ADMIN keys only).

    pub async fn service_accounts(&self, p: &ListParams) -> Result<Page<w::ServiceAccount>> {
        self.list("/service-accounts", p).await
    }
    pub async fn service_account_create(&self, req: &w::ServiceAccountCreate) -> Result<w::ServiceAccount> {
        self.post("/service-accounts", Some(req), None).await
    }
    pub async fn service_account(&self, id: &str) -> Result<w::ServiceAccount> {
        self.get(&format!("/service-accounts/{id}")).await
    }
    pub async fn service_account_update(&self, id: &str, req: &w::ServiceAccountUpdate) -> Result<w::ServiceAccount> {
        self.patch(&format!("/service-accounts/{id}"), req).await
    }
    /// Deletes the account and revokes all of its keys.
    pub async fn service_account_delete(&self, id: &str) -> Result<w::ServiceAccount> {
        self.delete(&format!("/service-accounts/{id}")).await
    }
    pub async fn service_account_api_keys(&self, id: &str, p: &ListParams) -> Result<Page<w::ApiKey>> {
        self.list(&format!("/service-accounts/{id}/api-keys"), p).await
    }
    /// A new key of the account; its secret is in the answer, and only there.
    pub async fn service_account_api_key_create(&self, id: &str, req: &w::ServiceAccountKeyCreate) -> Result<w::ApiKeyWithSecret> {
        self.post(&format!("/service-accounts/{id}/api-keys"), Some(req), None).await
    }
    pub async fn service_account_api_key_delete(&self, id: &str, key_id: &str) -> Result<w::ApiKey> {
        self.delete(&format!("/service-accounts/{id}/api-keys/{key_id}")).await
    }
}

/// The pages of one list (`NativeClient::pages`): each `next` fetches the following page; `None`
/// after the last (the server's `has_next`, or an empty page).
pub struct Pages<'c, T> {
    client: &'c NativeClient,
    path: String,
    q: ListParams,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Pages<'_, T> {
    pub async fn next(&mut self) -> Result<Option<Vec<T>>> {
        if self.done {
            return Ok(None);
        }
        let page: Page<T> = self.client.list(&self.path, &self.q).await?;
        if page.items.is_empty() {
            self.done = true;
            return Ok(None);
        }
        if page.pagination.as_ref().is_some_and(|pg| pg.has_next) {
            self.q.page = self.q.page.map(|x| x + 1);
        } else {
            self.done = true;
        }
        Ok(Some(page.items))
    }
}
