//! Versions end to end on real files and real loopback services: the store (determinism,
//! dedup, gc), install/upgrade/downgrade with the type's HTTP and TCP tests against listeners
//! this test runs, rollback on a failing test, a corrupt blob, and concurrent upgrades.

use portcullis_admin::versions::{Action, Deployer, Store, VersionError};
use portcullis_admin::Catalog;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A fake service on loopback: `/health` answers `status`, after `delay_ms`; and a TCP port.
struct Service {
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    http_port: u16,
    tcp_port: u16,
}

async fn service() -> Service {
    let status = Arc::new(AtomicU16::new(200));
    let delay_ms = Arc::new(AtomicU64::new(0));
    let (s, d) = (status.clone(), delay_ms.clone());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (s, d) = (s.clone(), d.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst))).await;
                axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(http, app).await });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    tokio::spawn(async move { while let Ok((_s, _)) = tcp.accept().await {} });
    Service {
        status,
        delay_ms,
        http_port,
        tcp_port,
    }
}

/// A catalog with one `web` instance on a loopback server, tested on the service's ports.
fn catalog(dir: &Path, svc: &Service) -> Catalog {
    std::fs::create_dir_all(dir.join("meta")).unwrap();
    std::fs::write(
        dir.join("inventory.yaml"),
        "locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\n\
         servers:\n  s1: { kind: app, location: l1, address: 127.0.0.1 }\n\
         instances:\n  - { type: web, server: s1 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("meta/web.yaml"),
        format!(
            "type: web\ninstall:\n  mkdir: [log]\n  link: {{ data: /srv/web-data }}\n\
             tests:\n  - {{ name: health, http: /health, port: {}, expect: 200 }}\n  - {{ name: port, tcp: {} }}\n",
            svc.http_port, svc.tcp_port
        ),
    )
    .unwrap();
    Catalog::load(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A build tree: `bin/web` (0755) with `tag` in it, and shared resources.
fn tree(base: &Path, tag: &str) -> PathBuf {
    let d = base.join(format!("tree-{tag}"));
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::create_dir_all(d.join("share/static")).unwrap();
    std::fs::write(d.join("bin/web"), format!("#!/bin/sh\necho {tag}\n")).unwrap();
    std::fs::set_permissions(d.join("bin/web"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.join("share/static/app.css"), "body { color: black }\n").unwrap();
    std::fs::write(d.join("share/README"), "shared by every build\n").unwrap();
    d
}

fn deployer(state: &Path) -> Deployer {
    let mut d = Deployer::new(state, &state.join("roots"));
    d.test_deadline = Duration::from_millis(800);
    d.test_interval = Duration::from_millis(100);
    d
}

fn current(d: &Deployer) -> String {
    std::fs::read_link(d.root("web.s1.1").join("current"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn builds_are_deterministic_deduplicated_and_collected() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(&tmp.path().join("state"));
    let t1 = tree(tmp.path(), "one");
    let a = store.build("web", &t1, Some("web-2026.11.21-1")).unwrap();
    assert!(a.id.starts_with("web-2026.11.21-1_") && a.id.len() == "web-2026.11.21-1_".len() + 12);
    assert_eq!((a.files, a.new_blobs, a.created), (3, 3, true));
    let again = store.build("web", &t1, Some("web-2026.11.21-1")).unwrap();
    assert_eq!(again.id, a.id, "same tree, same id");
    assert_eq!((again.new_blobs, again.created), (0, false));

    // The same content elsewhere (different mtimes, path of the tree) gives the same id.
    let copy = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&copy).unwrap();
    let t1b = tree(&copy, "one");
    assert_eq!(
        store
            .build("web", &t1b, Some("web-2026.11.21-1"))
            .unwrap()
            .id,
        a.id
    );

    // One changed file: a new id, one new blob; the rest is shared.
    let t2 = tree(tmp.path(), "two");
    let b = store.build("web", &t2, Some("web-2026.11.21-2")).unwrap();
    assert_ne!(b.id, a.id);
    assert_eq!(b.new_blobs, 1);
    // A mode change alone is a new version too.
    std::fs::set_permissions(t2.join("bin/web"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let c = store.build("web", &t2, Some("web-2026.11.21-2")).unwrap();
    assert_ne!(c.id, b.id);
    assert_eq!(c.new_blobs, 0);

    let m = store.manifest(&a.id).unwrap();
    let bin = m.files.iter().find(|f| f.path == "bin/web").unwrap();
    assert_eq!((bin.mode, bin.size), (0o755, 19));
    assert_eq!(store.list(Some("web")).unwrap().len(), 3);
    assert!(store.list(Some("other")).unwrap().is_empty());

    // gc keeps everything a version uses; after rm, only that version's own blob goes.
    assert_eq!(store.gc().unwrap().0, 0);
    store.remove(&a.id).unwrap();
    assert_eq!(store.gc().unwrap().0, 1);
    assert!(matches!(
        store.manifest(&a.id),
        Err(VersionError::NotFound(_))
    ));
    for f in store.manifest(&b.id).unwrap().files {
        assert!(store.blob_path(&f.sha256).exists());
    }

    let bad = store.build("web", &t1, Some("no spaces")).unwrap_err();
    assert!(bad.to_string().contains("label"), "{bad}");
    std::os::unix::fs::symlink("/etc/passwd", t1.join("link")).unwrap();
    let bad = store.build("web", &t1, None).unwrap_err();
    assert!(bad.to_string().contains("symlink"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_downgrade_and_rollback() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service().await;
    let cat = catalog(&tmp.path().join("catalog"), &svc);
    let d = deployer(&tmp.path().join("state"));
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|t| {
            d.store
                .build("web", &tree(tmp.path(), t), Some(&format!("web-{t}")))
                .unwrap()
                .id
        })
        .collect();

    macro_rules! upgrade {
        ($a:expr, $to:expr) => {
            d.deploy(&cat, "web.s1.1", $a, $to)
        };
    }
    assert!(upgrade!(Action::Upgrade, Some(&ids[1]))
        .await
        .unwrap_err()
        .to_string()
        .contains("use install"));
    let r = upgrade!(Action::Install, Some(&ids[0])).await.unwrap();
    assert_eq!(r.outcome, "ok");
    assert!(r.tests.iter().all(|t| t.ok) && r.tests.len() == 2);
    let root = d.root("web.s1.1");
    assert_eq!(current(&d), format!("releases/{}", ids[0]));
    assert_eq!(
        std::fs::read_to_string(root.join("current/bin/web")).unwrap(),
        "#!/bin/sh\necho one\n"
    );
    let mode = std::fs::metadata(root.join("current/bin/web"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert!(root.join("log").is_dir());
    assert_eq!(
        std::fs::read_link(root.join("data")).unwrap(),
        Path::new("/srv/web-data")
    );
    assert!(upgrade!(Action::Install, Some(&ids[1]))
        .await
        .unwrap_err()
        .to_string()
        .contains("already has"));

    assert_eq!(
        upgrade!(Action::Upgrade, Some(&ids[1]))
            .await
            .unwrap()
            .outcome,
        "ok"
    );
    assert_eq!(
        upgrade!(Action::Upgrade, Some(&ids[1]))
            .await
            .unwrap()
            .outcome,
        "unchanged"
    );
    assert_eq!(
        upgrade!(Action::Upgrade, Some(&ids[2]))
            .await
            .unwrap()
            .outcome,
        "ok"
    );
    assert_eq!(current(&d), format!("releases/{}", ids[2]));

    // A failing test: switched back, recorded, `current` as before.
    svc.status.store(503, Ordering::SeqCst);
    let r = upgrade!(Action::Downgrade, None).await.unwrap();
    assert_eq!(r.outcome, "rolled-back");
    let health = r.tests.iter().find(|t| t.name == "health").unwrap();
    assert!(
        !health.ok && health.detail.contains("HTTP 503 (expected 200)"),
        "{}",
        health.detail
    );
    assert!(health.attempts > 1, "retried until the deadline");
    assert_eq!(current(&d), format!("releases/{}", ids[2]));
    svc.status.store(200, Ordering::SeqCst);

    // Downgrade without --to walks back through what was active.
    assert_eq!(upgrade!(Action::Downgrade, None).await.unwrap().to, ids[1]);
    assert_eq!(upgrade!(Action::Downgrade, None).await.unwrap().to, ids[0]);
    assert_eq!(current(&d), format!("releases/{}", ids[0]));
    assert!(upgrade!(Action::Downgrade, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("no previous version"));

    let v = d.versions_of("web.s1.1").unwrap();
    let outcomes: Vec<_> = v.history.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "ok", "ok", "rolled-back", "ok", "ok"]);
    assert_eq!(v.current.as_deref(), Some(ids[0].as_str()));

    // Wrong type, unknown version, unknown instance: refused, nothing changes.
    let other = d
        .store
        .build("api", &tree(tmp.path(), "one"), None)
        .unwrap()
        .id;
    assert!(upgrade!(Action::Upgrade, Some(&other))
        .await
        .unwrap_err()
        .to_string()
        .contains("not of web"));
    assert!(matches!(
        upgrade!(Action::Upgrade, Some("web_0123456789ab")).await,
        Err(VersionError::NotFound(_))
    ));
    assert!(matches!(
        d.deploy(&cat, "web.s9.1", Action::Upgrade, Some(&ids[1]))
            .await,
        Err(VersionError::NotFound(_))
    ));
    assert_eq!(current(&d), format!("releases/{}", ids[0]));

    // A failing first install leaves no `current` at all.
    let tmp2 = tempfile::tempdir().unwrap();
    let d2 = deployer(&tmp2.path().join("state"));
    let id = d2
        .store
        .build("web", &tree(tmp2.path(), "one"), None)
        .unwrap()
        .id;
    svc.status.store(500, Ordering::SeqCst);
    assert_eq!(
        d2.deploy(&cat, "web.s1.1", Action::Install, Some(&id))
            .await
            .unwrap()
            .outcome,
        "rolled-back"
    );
    assert!(d2
        .root("web.s1.1")
        .join("current")
        .symlink_metadata()
        .is_err());
    svc.status.store(200, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_never_becomes_current() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service().await;
    let cat = catalog(&tmp.path().join("catalog"), &svc);
    let d = deployer(&tmp.path().join("state"));
    let one = d
        .store
        .build("web", &tree(tmp.path(), "one"), None)
        .unwrap()
        .id;
    let two = d
        .store
        .build("web", &tree(tmp.path(), "two"), Some("web-two"))
        .unwrap()
        .id;
    d.deploy(&cat, "web.s1.1", Action::Install, Some(&one))
        .await
        .unwrap();

    let bin = d
        .store
        .manifest(&two)
        .unwrap()
        .files
        .into_iter()
        .find(|f| f.path == "bin/web")
        .unwrap();
    let blob = d.store.blob_path(&bin.sha256);
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, "#!/bin/sh\necho evil\n").unwrap();
    let e = d
        .deploy(&cat, "web.s1.1", Action::Upgrade, Some(&two))
        .await
        .unwrap_err();
    assert!(matches!(e, VersionError::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("is corrupt"), "{e}");
    assert_eq!(current(&d), format!("releases/{one}"));
    let releases = d.root("web.s1.1").join("releases");
    let names: Vec<_> = std::fs::read_dir(&releases)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [std::ffi::OsString::from(&one)],
        "no partial release left"
    );
    let v = d.versions_of("web.s1.1").unwrap();
    assert_eq!(v.history.last().unwrap().outcome, "failed");

    // A materialised release edited in place is rebuilt from the store before use.
    std::fs::write(releases.join(&one).join("share/README"), "edited\n").unwrap();
    d.deploy(&cat, "web.s1.1", Action::Downgrade, Some(&one))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upgrades_of_one_instance_are_serialized() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service().await;
    svc.delay_ms.store(300, Ordering::SeqCst);
    let cat_dir = tmp.path().join("catalog");
    let cat = catalog(&cat_dir, &svc);
    let state = tmp.path().join("state");
    let d = deployer(&state);
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|t| {
            d.store
                .build("web", &tree(tmp.path(), t), Some(&format!("web-{t}")))
                .unwrap()
                .id
        })
        .collect();
    d.deploy(&cat, "web.s1.1", Action::Install, Some(&ids[0]))
        .await
        .unwrap();

    let spawn = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .args(["upgrade", "web.s1.1", "--to", to, "--local", "--catalog"])
            .arg(&cat_dir)
            .arg("--state")
            .arg(&state)
            .args(["--test-timeout", "5s"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| spawn(&ids[1]).unwrap());
        let b = s.spawn(|| spawn(&ids[2]).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let h = d.versions_of("web.s1.1").unwrap().history;
    assert_eq!(h.len(), 3);
    // Each upgrade saw the state the other left: the second starts where the first ended.
    assert_eq!(h[1].from.as_deref(), Some(ids[0].as_str()));
    assert_eq!(h[2].from.as_deref(), Some(h[1].to.as_str()));
    assert_eq!(current(&d), format!("releases/{}", h[2].to));

    // The CLI's exit code for a rollback is 1.
    svc.status.store(503, Ordering::SeqCst);
    svc.delay_ms.store(0, Ordering::SeqCst);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
        .args(["downgrade", "web.s1.1", "--local", "--catalog"])
        .arg(&cat_dir)
        .arg("--state")
        .arg(&state)
        .args(["--test-timeout", "300ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed its tests; switched back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_endpoints_deploy_with_the_token() {
    use portcullis_admin::serve::{self, AdminState, Options};
    let tmp = tempfile::tempdir().unwrap();
    let svc = service().await;
    let cat_dir = tmp.path().join("catalog");
    catalog(&cat_dir, &svc);
    let d = deployer(&tmp.path().join("state"));
    let one = d
        .store
        .build("web", &tree(tmp.path(), "one"), Some("web-1"))
        .unwrap()
        .id;
    let two = d
        .store
        .build("web", &tree(tmp.path(), "two"), Some("web-2"))
        .unwrap()
        .id;
    let state = AdminState::open(
        &cat_dir,
        Options {
            token: Some("tok".into()),
            versions: Some(d.clone()),
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();
    let base = server.url();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();

    let v: serde_json::Value = c
        .get(format!("{base}/v1/versions?type=web"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let m: serde_json::Value = c
        .get(format!("{base}/v1/versions/{one}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 3);
    assert_eq!(
        c.get(format!("{base}/v1/versions/web_0123456789ab"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let install = format!("{base}/v1/instances/web.s1.1/install?to={one}");
    assert_eq!(c.post(&install).send().await.unwrap().status(), 401);
    let r = c.post(&install).bearer_auth("tok").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(current(&d), format!("releases/{one}"));

    svc.status.store(503, Ordering::SeqCst);
    let r = c
        .post(format!("{base}/v1/instances/web.s1.1/upgrade?to={two}"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(current(&d), format!("releases/{one}"));
    let h: serde_json::Value = c
        .get(format!("{base}/v1/instances/web.s1.1/versions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["current"], one.as_str());
    assert_eq!(h["history"][1]["outcome"], "rolled-back");
    assert_eq!(h["history"][1]["tests"][0]["ok"], false);
    let r = c
        .post(format!("{base}/v1/instances/web.s1.1/upgrade"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "upgrade needs ?to=");
    server.stop().await.unwrap();
}
