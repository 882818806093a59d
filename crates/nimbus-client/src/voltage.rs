//! `VoltageClient`: the Voltage Park On-Demand dialect (`/api/v1`, seed 004): `x-api-token` (or
//! Bearer) auth, FastAPI-style errors as `ClientError::Api` (code `validation_error` for a 422,
//! else `http_<status>`, with the `detail` text), `limit`/`offset` pages (`all` follows them).
//! Answers are JSON values in the seed's shapes (docs/voltage-park.md).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::transport::{Auth, RetryPolicy, Transport};
use crate::{ClientError, Result};

#[derive(Clone)]
pub struct VoltageClient {
    base: String,
    t: Transport,
}

fn detail_message(v: &Value) -> String {
    match &v["detail"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|d| {
                let loc: Vec<String> =
                    d["loc"].as_array().into_iter().flatten().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect();
                format!("{}: {}", loc.join("."), d["msg"].as_str().unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

impl VoltageClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`; the key goes in `x-api-token`.
    pub fn new(root: &str, api_key: &str) -> Self {
        Self::with_auth(root, Auth::XApiToken(api_key.to_owned()))
    }

    pub fn with_auth(root: &str, auth: Auth) -> Self {
        VoltageClient {
            base: format!("{}/api/v1", root.trim_end_matches('/')),
            t: Transport::new(auth, Duration::from_secs(60), RetryPolicy::default()),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    async fn call(&self, method: Method, path: &str, query: &[(String, String)], body: Option<Value>) -> Result<Value> {
        let a = self.t.send(method, &format!("{}{path}", self.base), query, body.as_ref(), None).await?;
        let (status, bytes) = (a.status, a.body);
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(&bytes)) });
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.get("detail").is_some() => Err(ClientError::Api {
                status,
                code: if status == 422 { "validation_error".into() } else { format!("http_{status}") },
                message: detail_message(&v),
            }),
            _ => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, &[], None).await
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

    /// One page of a list endpoint (`results`, `total_result_count`, `has_next`, …).
    pub async fn list(&self, path: &str, limit: Option<u32>, offset: Option<u32>) -> Result<Value> {
        self.call(Method::GET, path, &Self::page(limit, offset), None).await
    }

    /// Every `results` item of a list endpoint, page after page.
    pub async fn all(&self, path: &str, limit: u32) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut offset = 0u32;
        loop {
            let page = self.list(path, Some(limit), Some(offset)).await?;
            let items = page["results"].as_array().cloned().unwrap_or_default();
            let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
            out.extend(items);
            if !page["has_next"].as_bool().unwrap_or(false) || n == 0 {
                return Ok(out);
            }
            offset = offset.saturating_add(n);
        }
    }

    // Locations, hostnodes, presets.
    pub async fn locations(&self, limit: Option<u32>, offset: Option<u32>) -> Result<Value> {
        self.list("/locations/", limit, offset).await
    }
    pub async fn location(&self, id: &str) -> Result<Value> {
        self.get(&format!("/locations/{id}")).await
    }
    pub async fn hostnode(&self, id: &str) -> Result<Value> {
        self.get(&format!("/hostnodes/{id}")).await
    }
    pub async fn presets(&self, available: Option<bool>) -> Result<Value> {
        let q: Vec<(String, String)> = available.map(|a| ("available".to_owned(), a.to_string())).into_iter().collect();
        self.call(Method::GET, "/instant-deploy-presets/", &q, None).await
    }
    pub async fn preset(&self, id: &str) -> Result<Value> {
        self.get(&format!("/instant-deploy-presets/{id}")).await
    }

    // Virtual machines.
    /// `POST /virtual-machines/instant` with the seed's body; answers `{vm_id}`.
    pub async fn vm_create(&self, body: &Value) -> Result<Value> {
        self.call(Method::POST, "/virtual-machines/instant", &[], Some(body.clone())).await
    }
    pub async fn vms(&self, limit: Option<u32>, offset: Option<u32>) -> Result<Value> {
        self.list("/virtual-machines/", limit, offset).await
    }
    pub async fn vm(&self, id: &str) -> Result<Value> {
        self.get(&format!("/virtual-machines/{id}")).await
    }
    pub async fn vm_update(&self, id: &str, name: Option<&str>, tags: Option<&[String]>) -> Result<Value> {
        self.call(Method::PATCH, &format!("/virtual-machines/{id}"), &[], Some(json!({"name": name, "tags": tags}))).await
    }
    pub async fn vm_delete(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/virtual-machines/{id}"), &[], None).await.map(|_| ())
    }
    /// `started`, `stopped` or `stopped_disassociated`.
    pub async fn vm_power(&self, id: &str, status: &str) -> Result<Value> {
        self.call(Method::PUT, &format!("/virtual-machines/{id}/power-status"), &[], Some(json!({"status": status}))).await
    }
    /// Polls until the VM is `Running` (or `timeout` passes).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<Value> {
        crate::transport::poll_until(
            id,
            "Running",
            &["Error", "Terminating"],
            timeout,
            || self.vm(id),
            |v| v["status"].as_str().unwrap_or_default().to_owned(),
        )
        .await
    }

    // Bare metal.
    pub async fn bare_metal_locations(&self) -> Result<Value> {
        self.get("/bare-metal/locations").await
    }
    pub async fn bare_metal_create(&self, body: &Value) -> Result<Value> {
        self.call(Method::POST, "/bare-metal/", &[], Some(body.clone())).await
    }
    pub async fn bare_metal(&self, limit: Option<u32>, offset: Option<u32>) -> Result<Value> {
        self.list("/bare-metal/", limit, offset).await
    }
    pub async fn bare_metal_update(&self, id: &str, name: Option<&str>, tags: Option<&[String]>) -> Result<Value> {
        self.call(Method::PATCH, &format!("/bare-metal/{id}"), &[], Some(json!({"name": name, "tags": tags}))).await
    }
    pub async fn bare_metal_delete(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/bare-metal/{id}"), &[], None).await.map(|_| ())
    }
    pub async fn bare_metal_power(&self, id: &str, status: &str) -> Result<()> {
        self.call(Method::PUT, &format!("/bare-metal/{id}/power-status"), &[], Some(json!({"status": status}))).await.map(|_| ())
    }
    pub async fn bare_metal_reboot(&self, id: &str, public_ips: &[String]) -> Result<()> {
        self.call(Method::POST, &format!("/bare-metal/{id}/reboot"), &[], Some(json!({"public_ips": public_ips}))).await.map(|_| ())
    }

    // Organization SSH keys, cloud-init.
    pub async fn ssh_keys(&self) -> Result<Value> {
        self.list("/organization/ssh-keys", None, None).await
    }
    pub async fn ssh_key_add(&self, name: &str, content: &str) -> Result<Value> {
        self.call(Method::POST, "/organization/ssh-keys", &[], Some(json!({"name": name, "content": content}))).await
    }
    pub async fn ssh_key_delete(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/organization/ssh-keys/{id}"), &[], None).await.map(|_| ())
    }
    /// `kind` `instant-vm` or `bare-metal`; `content` a string or a cloud-config object.
    pub async fn validate_cloudinit(&self, kind: &str, content: &Value) -> Result<Value> {
        self.call(Method::POST, "/validate/cloudinit", &[], Some(json!({"type": kind, "content": content}))).await
    }

    // Storage.
    pub async fn storage_hourly_rate(&self) -> Result<Value> {
        self.get("/storage/hourly-rate").await
    }
    pub async fn storage_create(&self, size_in_gb: i64, name: &str, order_ids: &[String]) -> Result<Value> {
        self.call(Method::POST, "/storage/", &[], Some(json!({"size_in_gb": size_in_gb, "name": name, "order_ids": order_ids}))).await
    }
    pub async fn storage_list(&self, limit: Option<u32>, offset: Option<u32>) -> Result<Value> {
        self.list("/storage/", limit, offset).await
    }
    pub async fn storage(&self, id: &str) -> Result<Value> {
        self.get(&format!("/storage/{id}")).await
    }
    pub async fn storage_update(
        &self,
        id: &str,
        size_in_gb: Option<i64>,
        name: Option<&str>,
        order_ids: Option<&[String]>,
    ) -> Result<Value> {
        let body = json!({"size_in_gb": size_in_gb, "name": name, "order_ids": order_ids});
        self.call(Method::PATCH, &format!("/storage/{id}"), &[], Some(body)).await
    }
    pub async fn storage_delete(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/storage/{id}"), &[], None).await.map(|_| ())
    }

    // Billing.
    pub async fn billing_hourly_rate(&self) -> Result<Value> {
        self.get("/billing/hourly-rate").await
    }
    /// `earliest`/`latest` as `YYYY-MM-DD`.
    pub async fn billing_transactions(&self, earliest: Option<&str>, latest: Option<&str>, limit: Option<u32>) -> Result<Value> {
        let mut q = Self::page(limit, None);
        q.extend(earliest.map(|e| ("earliest".to_owned(), e.to_owned())));
        q.extend(latest.map(|l| ("latest".to_owned(), l.to_owned())));
        self.call(Method::GET, "/billing/transactions", &q, None).await
    }
    pub async fn billing_month_report(&self, year: i32, month: u32) -> Result<Value> {
        self.get(&format!("/billing/reports/{year}/{month}/transactions")).await
    }
}
