//! `ClustersClient`: the clusters dialect (`/api/v1/clusters`, CockroachDB-Cloud-shaped), Bearer
//! auth, errors `{"code", "message"}` as `ClientError::Api` with the gRPC code as the code.

use std::time::Duration;

use serde_json::{json, Value};

use reqwest::Method;

use crate::transport::{Auth, RetryPolicy, Transport};
use crate::{ClientError, Result};

#[derive(Clone)]
pub struct ClustersClient {
    base: String,
    t: Transport,
}

impl ClustersClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`.
    pub fn new(root: &str, api_key: &str) -> Self {
        ClustersClient {
            base: format!("{}/api/v1/clusters", root.trim_end_matches('/')),
            t: Transport::new(Auth::Bearer(api_key.to_owned()), Duration::from_secs(60), RetryPolicy::default()),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    async fn call(&self, method: Method, path: &str, query: &[(String, String)], body: Option<Value>) -> Result<Value> {
        let a = self.t.send(method, &format!("{}{path}", self.base), query, body.as_ref(), None).await?;
        let (status, bytes) = (a.status, a.body);
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
        self.call(Method::POST, "", &[], Some(request.clone())).await
    }

    pub async fn list(&self, show_inactive: bool) -> Result<Value> {
        self.call(Method::GET, "", &[("show_inactive".to_owned(), show_inactive.to_string())], None).await
    }

    pub async fn get(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/{id}"), &[], None).await
    }

    pub async fn nodes(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &format!("/{id}/nodes"), &[], None).await
    }

    pub async fn set_spend_limit(&self, id: &str, cents: i64) -> Result<()> {
        self.call(Method::PUT, &format!("/{id}/spend-limit"), &[], Some(json!({"spendLimit": cents}))).await.map(|_| ())
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        self.call(Method::DELETE, &format!("/{id}"), &[], None).await.map(|_| ())
    }

    /// Polls until the cluster is `CREATED` (an error once it is `FAILED` or `timeout` passes).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<Value> {
        crate::transport::poll_until(
            id,
            "CREATED",
            &["FAILED", "DELETED"],
            timeout,
            || self.get(id),
            |v| v["state"].as_str().unwrap_or_default().to_owned(),
        )
        .await
    }

    pub async fn available_regions(&self, provider: &str) -> Result<Vec<String>> {
        let v = self.call(Method::GET, "/available-regions", &[("provider".to_owned(), provider.to_owned())], None).await?;
        Ok(v["regions"].as_array().map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect()).unwrap_or_default())
    }
}
