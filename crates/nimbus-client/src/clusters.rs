//! `ClustersClient`: the clusters dialect (`/api/v1/clusters`, CockroachDB-Cloud-shaped), Bearer
//! auth, errors `{"code", "message"}` as `ClientError::Api` with the gRPC code as the code.
//! Requests and answers are the server's own wire types (`nimbus_api_types::clusters`).

use std::time::Duration;

use nimbus_api_types::clusters as w;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::transport::{dialect_base, json_body, Auth, RetryPolicy, Transport};
use crate::{ClientError, Result};

#[derive(Clone)]
pub struct ClustersClient {
    base: String,
    t: Transport,
}

impl ClustersClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`.
    pub fn new(root: &str, api_key: &str) -> Self {
        ClustersClient { base: dialect_base(root, "/api/v1/clusters"), t: Transport::with_defaults(Auth::Bearer(api_key.to_owned())) }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.t = self.t.with_retry(retry);
        self
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, query: &[(String, String)], body: Option<Value>) -> Result<T> {
        let a = self.t.send(method, &format!("{}{path}", self.base), query, body.as_ref(), None).await?;
        let (status, bytes) = (a.status, a.body);
        if status == 200 {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Unexpected { status, body: format!("{e}: {}", String::from_utf8_lossy(&bytes)) });
        }
        match serde_json::from_slice::<w::ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api { status, code: e.code.to_string(), message: e.message }),
            Err(_) => Err(ClientError::Unexpected { status, body: String::from_utf8_lossy(&bytes).into_owned() }),
        }
    }

    /// `POST /clusters` (`name`, `provider`, `spec`).
    pub async fn create(&self, request: &w::CreateCluster) -> Result<w::Cluster> {
        self.call(Method::POST, "", &[], Some(json_body(request)?)).await
    }

    /// One page (`page` from 1; `limit` 0 is the server's default of 100).
    pub async fn list_page(&self, show_inactive: bool, page: u64, limit: u64) -> Result<w::ClusterList> {
        let q = [
            ("show_inactive".to_owned(), show_inactive.to_string()),
            ("pagination.page".to_owned(), page.to_string()),
            ("pagination.limit".to_owned(), limit.to_string()),
        ];
        self.call(Method::GET, "", &q, None).await
    }

    /// Every cluster, following the pages.
    pub async fn list(&self, show_inactive: bool) -> Result<Vec<w::Cluster>> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let p = self.list_page(show_inactive, page, 500).await?;
            out.extend(p.clusters);
            if p.pagination.next == 0 || p.pagination.next <= page {
                return Ok(out);
            }
            page = p.pagination.next;
        }
    }

    pub async fn get(&self, id: &str) -> Result<w::Cluster> {
        self.call(Method::GET, &format!("/{id}"), &[], None).await
    }

    /// Every node, following the pages.
    pub async fn nodes(&self, id: &str) -> Result<Vec<w::Node>> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let q = [("pagination.page".to_owned(), page.to_string()), ("pagination.limit".to_owned(), "500".to_owned())];
            let p: w::NodeList = self.call(Method::GET, &format!("/{id}/nodes"), &q, None).await?;
            out.extend(p.nodes);
            if p.pagination.next == 0 || p.pagination.next <= page {
                return Ok(out);
            }
            page = p.pagination.next;
        }
    }

    pub async fn set_spend_limit(&self, id: &str, cents: i64) -> Result<()> {
        let body = json_body(&w::SpendLimit { spend_limit: cents })?;
        self.call::<w::Empty>(Method::PUT, &format!("/{id}/spend-limit"), &[], Some(body)).await.map(|_| ())
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        self.call::<w::Empty>(Method::DELETE, &format!("/{id}"), &[], None).await.map(|_| ())
    }

    /// Polls until the cluster is `CREATED` (an error once it is `FAILED` or `timeout` passes).
    pub async fn wait_until_ready(&self, id: &str, timeout: Duration) -> Result<w::Cluster> {
        crate::transport::poll_until(id, "CREATED", &["FAILED", "DELETED"], timeout, || self.get(id), |c| c.state.clone()).await
    }

    pub async fn available_regions(&self, provider: &str) -> Result<Vec<String>> {
        let q = [("provider".to_owned(), provider.to_owned())];
        let r: w::AvailableRegions = self.call(Method::GET, "/available-regions", &q, None).await?;
        Ok(r.regions)
    }
}
