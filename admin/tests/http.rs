//! The HTTP API over real loopback sockets: ETag and 304, long-poll woken by a drain, auth,
//! reload of edited files (good and bad), and readers running while the catalog reloads.

use portcullis_admin::serve::{self, AdminState, Options, RunningServer};
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";

fn copy_example() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let dir = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, dir.path()).unwrap();
    dir
}

async fn start(dir: &Path, options: Options) -> (AdminState, RunningServer) {
    let state = AdminState::open(dir, options).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state.clone(), listener).unwrap();
    (state, server)
}

fn with_token() -> Options {
    Options {
        token: Some(TOKEN.into()),
        reload_interval: Duration::from_millis(50),
        ..Options::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn etag(r: &reqwest::Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_has_a_strong_etag_and_if_none_match_gives_304() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let url = format!("{}/v1/export.csv", server.url());
    let c = client();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let tag = etag(&r);
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
        "{tag}"
    );
    let body = r.text().await.unwrap();
    portcullis_export::parse(body.as_bytes()).expect("the gateway accepts the served export");
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/export.csv"),
    )
    .unwrap();
    assert_eq!(body, golden);

    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"other\", {tag}"),
        "*".into(),
    ] {
        let r = c
            .get(&url)
            .header("if-none-match", &inm)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "If-None-Match: {inm}");
        assert_eq!(etag(&r), tag);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    let r = c
        .get(&url)
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_the_new_export_when_an_instance_is_drained() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let url = format!("{}/v1/export.csv", server.url());
    let tag = etag(&c.get(&url).send().await.unwrap());

    let poll = {
        let (c, url, tag) = (c.clone(), url.clone(), tag.clone());
        tokio::spawn(async move {
            c.get(format!("{url}?wait=30s"))
                .header("if-none-match", tag)
                .send()
                .await
                .unwrap()
        })
    };
    // Let the poll be held (it is counted in /v1/status), then drain.
    for _ in 0..200 {
        let s: serde_json::Value = c
            .get(format!("{}/v1/status", server.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["long_polls"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c
        .post(format!("{}/v1/instances/pgw.app1.1/drain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (
            m["previous"].as_str(),
            m["state"].as_str(),
            m["changed"].as_bool()
        ),
        (Some("production"), Some("drained"), Some(true))
    );

    // A 200 (not the 304 of a timeout) means the drain woke it.
    let r = poll.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["preference-applied"], "wait=30");
    let new_tag = etag(&r);
    assert_ne!(new_tag, tag);
    assert_eq!(m["etag"].as_str(), Some(new_tag.as_str()));
    let body = r.text().await.unwrap();
    let export = portcullis_export::parse(body.as_bytes()).unwrap();
    for rec in &export.records {
        let w = if rec.row.instance.as_str() == "pgw.app1.1" {
            0
        } else {
            1
        };
        assert_eq!(rec.row.weight, w, "{:?}", rec.row);
    }

    // The inventory on disk says so, with its comments and layout intact.
    let text = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    assert!(
        text.contains(
            "- { type: pgw, server: app1, index: 1, state: drained, version: pgw-1.4.2 }"
        ),
        "{text}"
    );
    assert!(text.contains("# The REST entrance: one per application server."));
    let before = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog/inventory.yaml"),
    )
    .unwrap();
    assert_eq!(
        text.replacen("state: drained", "state: production", 1),
        before,
        "a one-word change"
    );

    // Draining again changes nothing; undrain restores the original ETag.
    let r = c
        .post(format!("{}/v1/instances/pgw.app1.1/drain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(m["changed"], false);
    let r = c
        .post(format!("{}/v1/instances/pgw.app1.1/undrain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(m["etag"].as_str(), Some(tag.as_str()));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_without_change_ends_in_304_and_bad_wait_is_400() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let url = format!("{}/v1/export.csv", server.url());
    let tag = etag(&c.get(&url).send().await.unwrap());
    let r = c
        .get(format!("{url}?wait=300ms"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(etag(&r), tag);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    // What the gateway daemon sends: milliseconds in the query, the last ETag, a bearer token.
    let r = c
        .get(format!("{url}?wait=400ms"))
        .header("if-none-match", &tag)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers().contains_key("preference-applied")
        ),
        (304, true)
    );
    // RFC 7240's header form.
    let r = c
        .get(&url)
        .header("if-none-match", &tag)
        .header("prefer", "respond-async, wait=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["preference-applied"], "wait=1");
    // No wait: no hold, no Preference-Applied.
    let r = c
        .get(&url)
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(!r.headers().contains_key("preference-applied"));
    // Without If-None-Match (or with another tag) there is nothing to wait for.
    let r = c.get(format!("{url}?wait=30s")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{url}?wait=soon")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("wait"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_token_and_reads_can_too() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let drain = format!("{}/v1/instances/tg.app1.1/drain", server.url());
    let r = c.post(&drain).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c.post(&drain).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Its own client: the server closes the connection of a refused oversized body, and a
    // pooled connection reused by the next request would fail with a broken pipe (seen in CI).
    let r = client()
        .post(&drain)
        .bearer_auth(TOKEN)
        .body(vec![b'x'; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "body limit");
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("body"));
    let r = c
        .post(format!("{}/v1/instances/nope.app1.1/drain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{}/v1/instances/tg.app1.1/explode", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{}/v1/export.csv", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reads are open by default");
    let text = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    assert!(
        !text.contains("state: drained"),
        "refused changes wrote nothing"
    );
    server.stop().await.unwrap();

    // Reads tokened too.
    let (_s, server) = start(
        dir.path(),
        Options {
            auth_reads: true,
            ..with_token()
        },
    )
    .await;
    let url = format!("{}/v1/export.csv", server.url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await.unwrap();

    // Reads tokened but no token to check against (a library user's mistake): closed.
    let (_s, server) = start(
        dir.path(),
        Options {
            auth_reads: true,
            ..Options::default()
        },
    )
    .await;
    let url = format!("{}/v1/export.csv", server.url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 503);
    server.stop().await.unwrap();

    // No token configured: changes are off.
    let (_s, server) = start(dir.path(), Options::default()).await;
    let r = c
        .post(format!("{}/v1/instances/tg.app1.1/drain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_edit_is_rejected_and_the_last_good_catalog_kept() {
    let dir = copy_example();
    let (state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let url = format!("{}/v1/export.csv", server.url());
    let tag = etag(&c.get(&url).send().await.unwrap());
    let pgw = dir.path().join("meta/pgw.yaml");
    let good = std::fs::read_to_string(&pgw).unwrap();
    std::fs::write(&pgw, good.replace("proto: tcp", "proto: sctp")).unwrap();
    let status = wait_status(&c, &server, |s| s["reload"]["ok"] == false).await;
    let err = &status["reload"]["errors"][0];
    assert_eq!(
        (
            err["file"].as_str(),
            err["line"].as_u64(),
            err["kind"].as_str()
        ),
        (Some("meta/pgw.yaml"), Some(18), Some("bad-value")),
        "{status}"
    );
    assert_eq!(
        etag(&c.get(&url).send().await.unwrap()),
        tag,
        "still serving the last good export"
    );
    // While the files are invalid, changes are refused with the errors.
    let r = c
        .post(format!("{}/v1/instances/tg.app1.1/drain", server.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // A good edit is picked up.
    std::fs::write(
        &pgw,
        good.replace(
            "ports: [80, 443], to: { 80: 9080, 443: 9443 }",
            "ports: [443], to: 9443",
        ),
    )
    .unwrap();
    wait_status(&c, &server, |s| s["reload"]["ok"] == true).await;
    let r = c.get(&url).send().await.unwrap();
    assert_ne!(etag(&r), tag);
    assert!(!r.text().await.unwrap().contains(",80,"));
    assert!(state.reload_status().errors.is_none());
    server.stop().await.unwrap();
}

async fn wait_status(
    c: &reqwest::Client,
    server: &RunningServer,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..500 {
        let s: serde_json::Value = c
            .get(format!("{}/v1/status", server.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("status never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_always_get_a_whole_valid_export_while_the_catalog_reloads() {
    let dir = copy_example();
    let (state, server) = start(dir.path(), with_token()).await;
    let inv_path = dir.path().join("inventory.yaml");
    let original = std::fs::read_to_string(&inv_path).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for n in 0..4 {
        let (c, base, stop) = (client(), server.url(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut count = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.get(format!("{base}/v1/export.csv")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let tag = etag(&r);
                let body = r.bytes().await.unwrap();
                portcullis_export::parse(&body[..]).expect("a whole, valid export");
                seen.insert((tag, body));
                let r = c
                    .get(format!("{base}/v1/config/pgw/app{}/1", 1 + n % 2))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                count += 1;
            }
            (seen, count)
        }));
    }
    // Operators edit the file by hand (non-atomically) while the API changes states.
    for round in 0..10 {
        let state_word = if round % 2 == 0 {
            "maintenance"
        } else {
            "production"
        };
        let text = original.replacen(
            "type: tg, server: app2, state: production",
            &format!("type: tg, server: app2, state: {state_word}"),
            1,
        );
        std::fs::write(&inv_path, text).unwrap();
        let s = state.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload_if_changed()).await;
        let _ = state
            .set_state(
                "pgw.app2.1",
                if round % 3 == 0 {
                    portcullis_admin::State::Drained
                } else {
                    portcullis_admin::State::Production
                },
            )
            .await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut tags = std::collections::HashMap::new();
    for r in readers {
        let (seen, count) = r.await.unwrap();
        assert!(count > 0);
        for (tag, body) in seen {
            // One ETag, one body: never a tag from one snapshot with the body of another.
            assert_eq!(tags.entry(tag).or_insert_with(|| body.clone()), &body);
        }
    }
    assert!(tags.len() >= 2, "readers saw the catalog change");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_listings_and_errors() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let base = server.url();
    let r = c
        .get(format!("{base}/v1/config/mdb/db1/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/yaml");
    let tag = etag(&r);
    let yaml = r.text().await.unwrap();
    let golden = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config/mdb.db1.2.yaml"),
    )
    .unwrap();
    assert_eq!(yaml, golden);
    let r = c
        .get(format!("{base}/v1/config/mdb/db1/2"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let j: serde_json::Value = c
        .get(format!("{base}/v1/config/mdb/db1/2?format=json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(j["db"]["data"], "/mnt/drive2/mdb-2");
    let r = c
        .get(format!("{base}/v1/config/mdb/db1/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "no instance mdb.db1.9");

    let s: serde_json::Value = c
        .get(format!("{base}/v1/services"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        s["merge_order"],
        serde_json::json!(["default", "mdb", "pgw", "tg", "logger"])
    );
    let pgw = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"] == "pgw")
        .unwrap();
    assert_eq!(pgw["instances"], 2);
    assert_eq!(pgw["gateway"][0]["ports"], serde_json::json!(["80", "443"]));
    let i: serde_json::Value = c
        .get(format!("{base}/v1/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(i["instances"].as_array().unwrap().len(), 8);
    let one: serde_json::Value = c
        .get(format!("{base}/v1/instances/tg.app2.1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["address"].as_str(), one["exported"].as_bool()),
        (Some("10.0.1.12"), Some(true))
    );
    let sv: serde_json::Value = c
        .get(format!("{base}/v1/servers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sv["servers"].as_array().unwrap().len(), 4);
    let r = c.get(format!("{base}/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_held_long_polls() {
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let c = client();
    let url = format!("{}/v1/export.csv", server.url());
    let tag = etag(&c.get(&url).send().await.unwrap());
    let poll = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(format!("{url}?wait=60s"))
                .header("if-none-match", tag)
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("stops without waiting out the poll")
        .unwrap();
    let r = poll.await.unwrap().unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = copy_example();
    let options = Options {
        header_timeout: Duration::from_millis(300),
        max_connections: 2,
        ..with_token()
    };
    let (_state, server) = start(dir.path(), options).await;
    // Half a request line, then silence: the server hangs up after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /v1/export.csv HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf))
        .await
        .expect("the server closes a connection that never finishes its headers");
    assert!(n.is_ok());
    // Two idle connections fill the cap; a third is closed without an answer.
    let _a = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let _b = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let _ = c
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    server.stop().await.unwrap();
}

/// A chunked body (no Content-Length) over the 16 KiB limit is refused even by an endpoint
/// that reads no body (a 200 MB one used to be accepted); the Bearer scheme is
/// case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_limited_and_the_bearer_scheme_is_case_insensitive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = copy_example();
    let (_state, server) = start(dir.path(), with_token()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /v1/instances/tg.app1.1/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 8192];
    let mut answer = Vec::new();
    // Up to 1 MiB in chunks; the server answers (and may close) once past the limit.
    for _ in 0..128 {
        let sent = async {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await
        };
        if sent.await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let inventory = std::fs::read_to_string(dir.path().join("inventory.yaml")).unwrap();
    assert!(
        !inventory.contains("state: drained"),
        "the refused drain wrote nothing"
    );

    let r = client()
        .post(format!("{}/v1/instances/tg.app1.1/drain", server.url()))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "lower-case scheme accepted");
    server.stop().await.unwrap();
}

/// One client address cannot take every connection slot: past its own limit its connections
/// are closed, while another address is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = copy_example();
    let options = Options {
        max_connections: 8,
        max_connections_per_client: 2,
        ..with_token()
    };
    let (_state, server) = start(dir.path(), options).await;
    let port = server.addr().port();
    let _a = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _b = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = |from: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut c = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let _ = c
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    let third = status("127.0.0.1").await;
    assert!(!third.starts_with("HTTP/1.1 200"), "{third}");
    let other = status("127.0.0.2").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    server.stop().await.unwrap();
}
