//! 304 throughput of `GET /v1/export.csv` with a matching `If-None-Match` (what every gateway
//! sends between changes), over loopback with keep-alive, against a baseline measured in the
//! same run: a bare axum route answering a constant 304 on the same runtime and client.
//! Goal: ≥ 20k requests/s on this 2-core machine (client and server share the cores).
//!
//! `cargo bench -p portcullis-admin --bench serve_304 [-- SECONDS CONNECTIONS]`

use axum::routing::get;
use portcullis_admin::serve::{self, AdminState, Options};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");

    // Server: one worker thread; client: one. The machine has two cores.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let (admin_url, etag) = server_rt.block_on(async {
        let state = AdminState::open(&dir, Options::default()).expect("example catalog");
        let etag = state.snapshot().etag.clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = serve::spawn(state, l).unwrap();
        let url = format!("{}/v1/export.csv", s.url());
        std::mem::forget(s);
        (url, etag)
    });
    let base_url = server_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/304",
            get(|| async { axum::http::StatusCode::NOT_MODIFIED }),
        );
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/304")
    });

    println!("| endpoint | connections | seconds | requests | req/s | ratio to baseline |");
    println!("|---|---|---|---|---|---|");
    let base = client_rt.block_on(load(&base_url, &etag, conns, secs));
    let admin = client_rt.block_on(load(&admin_url, &etag, conns, secs));
    let rate = |n: u64| n as f64 / secs as f64;
    println!(
        "| baseline: bare axum 304 | {conns} | {secs} | {base} | {:.0} | 1.00 |",
        rate(base)
    );
    println!(
        "| GET /v1/export.csv + If-None-Match → 304 | {conns} | {secs} | {admin} | {:.0} | {:.2} |",
        rate(admin),
        admin as f64 / base.max(1) as f64
    );
}

async fn load(url: &str, etag: &str, conns: usize, secs: u64) -> u64 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, url, etag, count) = (
            client.clone(),
            url.to_owned(),
            etag.to_owned(),
            count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let r = c
                    .get(&url)
                    .header("if-none-match", &etag)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 304);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed)
}
