//! `ClustersClient`: the clusters dialect (`/api/v1/clusters`, CockroachDB-Cloud-shaped), Bearer
//! auth, errors `{"code", "message"}` as `ClientError::Api` with the gRPC code as the code.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{ClientError, Result};

#[derive(Clone)]
pub struct ClustersClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ClustersClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`.
    pub fn new(root: &str, api_key: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default();
        ClustersClient { base: format!("{}/api/v1/clusters", root.trim_end_matches('/')), key: api_key.to_owned(), http }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Value> {
        let resp = rb.bearer_auth(&self.key).send().await.map_err(ClientError::Transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(ClientError::Transport)?;
        let v: Option<Value> = serde_json::from_slice(&bytes).ok();
        match (status, v) {
            (200, Some(v)) => Ok(v),
            (_, Some(e)) if e.get("code").is_some_and(Value::is_i64) => {
                Err(ClientError::Api { status, code: e["code"].to_string(), message: e["message"].as_str().unwrap_or_default().to_owned() })
            }
            _ => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    /// `POST /clusters` with a request in the seed's shape (`name`, `provider`, `spec`).
    pub async fn create(&self, request: &Value) -> Result<Value> {
        self.send(self.http.post(&self.base).json(request)).await
    }

    pub async fn list(&self, show_inactive: bool) -> Result<Value> {
        self.send(self.http.get(&self.base).query(&[("show_inactive", show_inactive.to_string())])).await
    }

    pub async fn get(&self, id: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}/{id}", self.base))).await
    }

    pub async fn nodes(&self, id: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}/{id}/nodes", self.base))).await
    }

    pub async fn set_spend_limit(&self, id: &str, cents: i64) -> Result<()> {
        self.send(self.http.put(format!("{}/{id}/spend-limit", self.base)).json(&json!({"spendLimit": cents}))).await.map(|_| ())
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        self.send(self.http.delete(format!("{}/{id}", self.base))).await.map(|_| ())
    }

    pub async fn available_regions(&self, provider: &str) -> Result<Vec<String>> {
        let v = self.send(self.http.get(format!("{}/available-regions", self.base)).query(&[("provider", provider)])).await?;
        Ok(v["regions"].as_array().map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect()).unwrap_or_default())
    }
}
