//! A typed Rust client for Nimbus, over the same wire types the server uses
//! (`nimbus-api-types`). `LambdaClient` speaks the Lambda Cloud API v1 dialect, `NativeClient`
//! the native API at `/v1`.

mod clusters;
mod native;

pub use clusters::ClustersClient;
pub use native::{ListParams, NativeClient, Page};

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
    key: String,
    http: reqwest::Client,
}

impl LambdaClient {
    /// `root` is the server root, e.g. `http://127.0.0.1:8080`.
    pub fn new(root: &str, api_key: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default();
        LambdaClient { base: format!("{}/api/v1", root.trim_end_matches('/')), key: api_key.to_owned(), http }
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        let resp = rb.bearer_auth(&self.key).send().await.map_err(ClientError::Transport)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(ClientError::Transport)?;
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
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
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
}
