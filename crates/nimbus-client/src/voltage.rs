//! `VoltageClient`: the Voltage Park On-Demand dialect (`/api/v1`, seed 004): `x-api-token` (or
//! Bearer) auth, FastAPI-style errors as `ClientError::Api` (code `validation_error` for a 422,
//! else `http_<status>`, with the `detail` text), `limit`/`offset` pages (`all` follows them).
//! Requests and answers are the wire types of `nimbus_api_types::voltage`, the ones the server
//! renders (docs/voltage-park.md).

use std::time::Duration;

use nimbus_api_types::voltage as w;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::transport::{dialect_base, json_body, Auth, RetryPolicy, Transport};
use crate::{ClientError, Result};

#[derive(Clone)]
pub struct VoltageClient {
    base: String,
    t: Transport,
}

/// The text of a FastAPI error body: the message, or each invalid value as `loc: msg`.
fn detail_message(bytes: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<w::ValidationErrorBody>(bytes) {
        let issues: Vec<String> = v
            .detail
            .iter()
            .map(|d| format!("{}: {}", d.loc.iter().map(ToString::to_string).collect::<Vec<_>>().join("."), d.msg))
            .collect();
        return Some(issues.join("; "));
    }
    if let Ok(e) = serde_json::from_slice::<w::ErrorBody>(bytes) {
        return Some(e.detail);
    }
    // Another `detail` (FastAPI allows any JSON there): kept as JSON text.
    let v = serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
    v.get("detail").map(ToString::to_string)
}

impl VoltageClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`; the key goes in `x-api-token`.
    pub fn new(root: &str, api_key: &str) -> Self {
        Self::with_auth(root, Auth::XApiToken(api_key.to_owned()))
    }

    pub fn with_auth(root: &str, auth: Auth) -> Self {
        VoltageClient { base: dialect_base(root, "/api/v1"), t: Transport::with_defaults(auth) }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    /// The answer's body, read as `T` (an empty body reads as JSON `null`, so `()` takes the
    /// bodiless answers).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let a = self.t.send(method, &format!("{}{path}", self.base), query, body.as_ref(), None).await?;
        let (status, bytes) = (a.status, a.body);
        if (200..300).contains(&status) {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| ClientError::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(bytes)) });
        }
        match detail_message(&bytes) {
            Some(message) => Err(ClientError::Api {
                status,
                code: if status == 422 { "validation_error".into() } else { format!("http_{status}") },
                message,
            }),
            None => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, &[], None).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(&self, method: Method, path: &str, body: &B) -> Result<T> {
        self.call(method, path, &[], Some(json_body(body)?)).await
    }

    fn page(limit: Option<u32>, offset: Option<u32>) -> Vec<(String, String)> {
        let mut q = Vec::new();
        if let Some(l) = limit {
            q.push(("limit".to_owned(), l.to_string()));
        }
        if let Some(o) = offset {
            q.push(("offset".to_owned(), o.to_string()));
        }
        q
    }

    /// One page of a list endpoint (`/virtual-machines/`, `/storage/`, …).
    pub async fn list<T: DeserializeOwned>(&self, path: &str, limit: Option<u32>, offset: Option<u32>) -> Result<w::Page<T>> {
        self.call(Method::GET, path, &Self::page(limit, offset), None).await
    }

    /// Every `results` item of a list endpoint, page after page.
    pub async fn all<T: DeserializeOwned>(&self, path: &str, limit: u32) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut offset = 0u32;
        loop {
            let page: w::Page<T> = self.list(path, Some(limit), Some(offset)).await?;
            let n = u32::try_from(page.results.len()).unwrap_or(u32::MAX);
            out.extend(page.results);
            if !page.has_next || n == 0 {
                return Ok(out);
            }
            offset = offset.saturating_add(n);
        }
    }

    // Locations, hostnodes, presets.
    pub async fn locations(&self, limit: Option<u32>, offset: Option<u32>) -> Result<w::Page<w::Location>> {
        self.list("/locations/", limit, offset).await
    }
    pub async fn location(&self, id: &str) -> Result<w::Location> {
        self.get(&format!("/locations/{id}")).await
    }
    pub async fn hostnode(&self, id: &str) -> Result<w::HostNode> {
        self.get(&format!("/hostnodes/{id}")).await
    }
    /// Public (no key needed). `Some(true)`: the presets that fit somewhere now.
    pub async fn presets(&self, available: Option<bool>) -> Result<Vec<w::Preset>> {
        let q: Vec<(String, String)> = available.map(|a| ("available".to_owned(), a.to_string())).into_iter().collect();
        self.call(Method::GET, "/instant-deploy-presets/", &q, None).await
    }
    pub async fn preset(&self, id: &str) -> Result<w::Preset> {
        self.get(&format!("/instant-deploy-presets/{id}")).await
    }

    // Virtual machines.
    /// `POST /virtual-machines/instant`: launches one VM of the preset `req.config_id`.
    pub async fn vm_create(&self, req: &w::VmCreateRequest) -> Result<w::VmCreated> {
        self.send(Method::POST, "/virtual-machines/instant", req).await
    }
    pub async fn vms(&self, limit: Option<u32>, offset: Option<u32>) -> Result<w::Page<w::VirtualMachine>> {
        self.list("/virtual-machines/", limit, offset).await
    }
    pub async fn vm(&self, id: &str) -> Result<w::VirtualMachine> {
        self.get(&format!("/virtual-machines/{id}")).await
    }
    /// Renames the VM and/or replaces its tags (`None` fields stay).
    pub async fn vm_update(&self, id: &str, req: &w::NameTagsUpdate) -> Result<w::NameTags> {
        self.send(Method::PATCH, &format!("/virtual-machines/{id}"), req).await
    }
    pub async fn vm_delete(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/virtual-machines/{id}"), &[], None).await.map(|_| ())
    }
    /// `started`, `stopped` or `stopped_disassociated`.
    pub async fn vm_power(&self, id: &str, status: &str) -> Result<w::PowerStatus> {
        self.send(Method::PUT, &format!("/virtual-machines/{id}/power-status"), &w::PowerStatus { status: status.to_owned() }).await
    }
    /// Opens a port of the VM's public address to its `internal_port` (Nimbus extension).
    pub async fn port_forward_create(&self, id: &str, internal_port: u16) -> Result<w::PortForward> {
        let body = w::PortForwardCreate { internal_port: i64::from(internal_port) };
        self.send(Method::POST, &format!("/virtual-machines/{id}/port-forwards"), &body).await
    }
    /// Closes the forward from `external_port` (Nimbus extension).
    pub async fn port_forward_delete(&self, id: &str, external_port: u16) -> Result<()> {
        let path = format!("/virtual-machines/{id}/port-forwards/{external_port}");
        self.call::<serde_json::Value>(Method::DELETE, &path, &[], None).await.map(|_| ())
    }
    /// Polls until the VM is `Running` (or `timeout` passes).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<w::VirtualMachine> {
        crate::transport::poll_until(id, "Running", &["Error", "Terminating"], timeout, || self.vm(id), |v| v.status.clone()).await
    }

    // Bare metal.
    /// Public (no key needed).
    pub async fn bare_metal_locations(&self) -> Result<w::Page<w::BareMetalLocation>> {
        self.get("/bare-metal/locations").await
    }
    pub async fn bare_metal_create(&self, req: &w::BareMetalCreateRequest) -> Result<w::BareMetalCreated> {
        self.send(Method::POST, "/bare-metal/", req).await
    }
    pub async fn bare_metal(&self, limit: Option<u32>, offset: Option<u32>) -> Result<w::Page<w::BareMetalRental>> {
        self.list("/bare-metal/", limit, offset).await
    }
    /// Renames the rental and/or replaces its tags (`None` fields stay).
    pub async fn bare_metal_update(&self, id: &str, req: &w::NameTagsUpdate) -> Result<w::NameTags> {
        self.send(Method::PATCH, &format!("/bare-metal/{id}"), req).await
    }
    pub async fn bare_metal_delete(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/bare-metal/{id}"), &[], None).await.map(|_| ())
    }
    /// `started` or `stopped`, for every node.
    pub async fn bare_metal_power(&self, id: &str, status: &str) -> Result<()> {
        let body = w::PowerStatus { status: status.to_owned() };
        self.send::<_, serde_json::Value>(Method::PUT, &format!("/bare-metal/{id}/power-status"), &body).await.map(|_| ())
    }
    pub async fn bare_metal_reboot(&self, id: &str, public_ips: &[String]) -> Result<()> {
        let body = w::RebootRequest { public_ips: public_ips.to_vec() };
        self.send::<_, serde_json::Value>(Method::POST, &format!("/bare-metal/{id}/reboot"), &body).await.map(|_| ())
    }

    // Organization SSH keys, cloud-init.
    pub async fn ssh_keys(&self) -> Result<w::Page<w::OrgSshKey>> {
        self.list("/organization/ssh-keys", None, None).await
    }
    pub async fn ssh_key_add(&self, name: &str, content: &str) -> Result<w::OrgSshKey> {
        let body = w::OrgSshKeyCreateRequest { name: name.to_owned(), content: content.to_owned() };
        self.send(Method::POST, "/organization/ssh-keys", &body).await
    }
    pub async fn ssh_key_delete(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/organization/ssh-keys/{id}"), &[], None).await.map(|_| ())
    }
    /// Public (no key needed). `kind` `instant-vm` or `bare-metal`; `content` a string or a
    /// cloud-config object.
    pub async fn validate_cloudinit(&self, req: &w::CloudInitValidateRequest) -> Result<w::CloudInitValidation> {
        self.send(Method::POST, "/validate/cloudinit", req).await
    }

    // Storage.
    pub async fn storage_hourly_rate(&self) -> Result<w::StorageHourlyRate> {
        self.get("/storage/hourly-rate").await
    }
    pub async fn storage_create(&self, req: &w::StorageCreateRequest) -> Result<w::Storage> {
        self.send(Method::POST, "/storage/", req).await
    }
    pub async fn storage_list(&self, limit: Option<u32>, offset: Option<u32>) -> Result<w::Page<w::Storage>> {
        self.list("/storage/", limit, offset).await
    }
    pub async fn storage(&self, id: &str) -> Result<w::StorageDetail> {
        self.get(&format!("/storage/{id}")).await
    }
    /// Grows, renames and/or re-attaches (`None` parts stay).
    pub async fn storage_update(&self, id: &str, req: &w::StorageUpdateRequest) -> Result<w::Storage> {
        self.send(Method::PATCH, &format!("/storage/{id}"), req).await
    }
    pub async fn storage_delete(&self, id: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/storage/{id}"), &[], None).await.map(|_| ())
    }

    // Billing.
    pub async fn billing_hourly_rate(&self) -> Result<w::BillingHourlyRate> {
        self.get("/billing/hourly-rate").await
    }
    /// `earliest`/`latest` as `YYYY-MM-DD`.
    pub async fn billing_transactions(
        &self,
        earliest: Option<&str>,
        latest: Option<&str>,
        limit: Option<u32>,
    ) -> Result<w::Page<w::Transaction>> {
        let mut q = Self::page(limit, None);
        q.extend(earliest.map(|e| ("earliest".to_owned(), e.to_owned())));
        q.extend(latest.map(|l| ("latest".to_owned(), l.to_owned())));
        self.call(Method::GET, "/billing/transactions", &q, None).await
    }
    pub async fn billing_month_report(&self, year: i32, month: u32) -> Result<w::MonthReport> {
        self.get(&format!("/billing/reports/{year}/{month}/transactions")).await
    }
}
