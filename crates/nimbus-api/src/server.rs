//! Running the HTTP server: bind, serve the router with graceful shutdown, and start the
//! control plane's background loops.

use std::net::SocketAddr;

use nimbus_control::Control;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{router, ApiState};

pub struct ServerHandle {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, stops background loops.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        for b in &self.background {
            b.abort();
        }
        self.task.await.unwrap_or(Ok(()))
    }

    /// Resolves when the server stops on its own (an accept error).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Serves the API on `listener` and starts the reconcilers.
pub fn start(control: Control, listener: TcpListener) -> std::io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (tx, mut rx) = watch::channel(false);
    let app = router(ApiState::new(control.clone()));
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
    });
    let background = vec![nimbus_control::reconcile::spawn(control.clone()), nimbus_control::webhook_delivery::spawn(control)];
    Ok(ServerHandle { addr, shutdown: tx, task, background })
}
