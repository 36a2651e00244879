//! Per-location exports over a real server: two locations, each gateway pair fetching only
//! its own VIPs, with an ETag and a long-poll that only that location's changes move.

use portcullis_admin::serve::{self, AdminState, Options};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";

/// The example catalog with app2 in a second location, `ams`, with its own addresses. (No tg
/// instance there, so the cloud-wide export stays servable: a fwmark type in two locations is
/// tests/fwmark_locations.rs.)
fn two_locations() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let dir = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, dir.path()).unwrap();
    let path = dir.path().join("inventory.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "    ip-labels: { www-ip: [203.0.113.10], tg-ip: [203.0.113.20, 203.0.113.21] }\n",
            "    ip-labels: { www-ip: [203.0.113.10], tg-ip: [203.0.113.20, 203.0.113.21] }\n  ams:\n    ip-labels: { www-ip: [198.51.100.10], tg-ip: [198.51.100.20] }\n",
        )
        .replace(
            "app2: { kind: app, location: tcn, address: 10.0.1.12 }",
            "app2: { kind: app, location: ams, address: 10.1.1.12 }",
        )
        .replace(
            "  - { type: tg, server: app2, state: production, version: tg-2.8.0 }\n",
            "",
        );
    std::fs::write(&path, text).unwrap();
    dir
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_owned()
}

/// (instance, vip, weight) of every row.
fn rows(csv: &str) -> Vec<(String, String, u32)> {
    let export = portcullis_export::parse(csv.as_bytes()).expect("a valid export");
    export
        .records
        .iter()
        .map(|r| {
            (
                r.row.instance.as_str().to_owned(),
                r.row.vip.to_string(),
                r.row.weight as u32,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_location_gets_its_own_rows_etag_and_long_poll() {
    let dir = two_locations();
    let options = Options {
        token: Some(TOKEN.into()),
        ..Options::default()
    };
    let state = AdminState::open(dir.path(), options).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state.clone(), listener).unwrap();
    let c = client();
    let url = |q: &str| format!("{}/v1/export.csv{q}", server.url());

    let r = c.get(url("?location=ams")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ams_tag = etag(&r);
    let ams = rows(&r.text().await.unwrap());
    assert_eq!(
        ams,
        [
            ("pgw.app2.1".into(), "198.51.100.10".into(), 1),
            ("pgw.app2.1".into(), "198.51.100.10".into(), 1),
        ]
    );
    let r = c.get(url("?location=tcn")).send().await.unwrap();
    let tcn_tag = etag(&r);
    let tcn = rows(&r.text().await.unwrap());
    assert!(
        tcn.iter()
            .all(|(id, vip, _)| id.contains(".app1.") && vip.starts_with("203.0.113.")),
        "{tcn:?}"
    );
    assert_eq!(tcn.len(), 4);
    // Together they are the whole export.
    let all = rows(&c.get(url("")).send().await.unwrap().text().await.unwrap());
    assert_eq!(all.len(), ams.len() + tcn.len());
    let r = c.get(url("?location=mars")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // ams's gateways long-poll; a change in tcn must not answer them.
    let poll = {
        let (c, u, tag) = (c.clone(), url("?location=ams&wait=60s"), ams_tag.clone());
        tokio::spawn(async move { c.get(u).header("if-none-match", tag).send().await.unwrap() })
    };
    let tcn_poll = {
        let (c, u, tag) = (c.clone(), url("?location=tcn&wait=60s"), tcn_tag.clone());
        tokio::spawn(async move { c.get(u).header("if-none-match", tag).send().await.unwrap() })
    };
    while held(&c, &server.url()).await < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = |id: &'static str| {
        let c = c.clone();
        let u = format!("{}/v1/instances/{id}/drain", server.url());
        async move {
            let r = c.post(u).bearer_auth(TOKEN).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    drain("pgw.app1.1").await;
    let r = tcn_poll.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(etag(&r), tcn_tag);
    // ams's ETag did not move, so its poll is still held.
    let r = c
        .get(url("?location=ams"))
        .header("if-none-match", &ams_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(!poll.is_finished());

    drain("pgw.app2.1").await;
    let r = poll.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(etag(&r), ams_tag);
    let ams = rows(&r.text().await.unwrap());
    assert_eq!(ams[0], ("pgw.app2.1".into(), "198.51.100.10".into(), 0));
    server.stop().await.unwrap();
}

/// Long-polls currently held (from `/v1/status`).
async fn held(c: &reqwest::Client, base: &str) -> u64 {
    let s: serde_json::Value = c
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["long_polls"].as_u64().unwrap()
}
