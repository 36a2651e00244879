//! The ADMIN server: the catalog's current snapshot (catalog, export CSV, ETag), its reload
//! when files change, state changes written back to `inventory.yaml`, and the HTTP API over
//! them (`http.rs`; the export and its long-poll in `export_poll.rs`).
//!
//! Embedding (what `portcullis-demo` does): open an [`AdminState`], hand a bound listener to
//! [`spawn`] (or build [`router`] into your own server), and change instances with
//! [`AdminState::set_state`] — long-polling gateways see the new export within milliseconds.

mod agent;
mod agent_deploy;
mod agent_hub;
#[cfg(feature = "db")]
mod agent_pg;
mod audit;
mod auth;
mod conn;
#[cfg(feature = "db")]
mod db_api;
mod export_poll;
mod http;
mod inventory_api;
mod mutate;
#[cfg(feature = "db")]
mod shared;
mod snapshot;
mod state;
pub mod tls;
mod versions_api;

pub use agent_hub::{read_tokens, AgentHub, HubError, RunAction};
#[cfg(feature = "db")]
pub(crate) use audit::now as audit_now;
pub use audit::AuditEntry;
pub use http::router;
pub use mutate::Change;
pub use state::{
    revision, AdminState, LocationExport, Mutation, MutationError, Options, ReloadStatus, Snapshot,
};

use std::future::Future;

/// Serves `state` on `listener` until `shutdown` completes, reloading the catalog when its
/// files change. Long-polls are released at shutdown.
/// With `options.tls` set, serves HTTPS.
pub async fn run(
    state: AdminState,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match &state.options().tls {
        Some(files) => Some(tls::acceptor(files)?),
        None => None,
    };
    let reloader = state.spawn_reloader();
    let app = router(state.clone());
    let st = state.clone();
    let stop = async move {
        shutdown.await;
        st.begin_shutdown();
    };
    let limits = conn::Limits {
        max_connections: state.options().max_connections,
        max_per_client: state.options().max_connections_per_client,
        header_timeout: state.options().header_timeout,
    };
    let signal = state.shutdown_signal();
    let stopper = tokio::spawn(stop);
    let result = conn::serve(listener, app, acceptor, limits, signal).await;
    stopper.abort();
    reloader.abort();
    result
}

/// A server running in the background (tests, benches, the demo).
pub struct RunningServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Starts [`run`] on a tokio task; stop it with [`RunningServer::stop`].
pub fn spawn(
    state: AdminState,
    listener: tokio::net::TcpListener,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(state, listener, async move {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(tx),
        task,
    })
}
