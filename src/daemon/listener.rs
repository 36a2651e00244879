//! Serving the metrics listener without letting it starve the daemon. A plain `axum::serve`
//! keeps every connection a client opens, for as long as the client likes: ~1100 idle
//! connections to `/metrics` exhausted the process's descriptors, and the next export change,
//! journal and status writes failed with "Too many open files" (issue 16). Here at most
//! [`MAX_CONNECTIONS`] are open at once (further clients wait in the kernel's backlog, costing
//! the daemon nothing), a request's head must arrive within [`HEADER_TIMEOUT`], and no
//! connection lives longer than [`CONNECTION_LIFETIME`]. A scraper needs one connection.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const MAX_CONNECTIONS: usize = 32;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` within the bounds above, until the process ends.
pub async fn serve_bounded(listener: TcpListener, router: axum::Router) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: the descriptor is only taken then.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off rather than spin; the daemon comes first.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}
