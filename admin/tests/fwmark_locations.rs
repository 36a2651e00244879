//! A firewall-mark type with instances in two locations: valid, because each location's
//! gateway pair programs only its own export (`?location=`), where the fwmark groups that
//! location's VIPs with that location's real servers. The cloud-wide export would group both
//! halves into one service, so it is refused (409 over HTTP, exit 2 from `export`), naming
//! `?location=`.

use portcullis_admin::serve::{self, AdminState, Options};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The example catalog with app2 in a second location, `ams`, keeping its `tg` instance (tg's
/// entry is `fwm: 100` on both tg-ip addresses).
fn fwmark_in_two_locations() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let dir = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, dir.path()).unwrap();
    let path = dir.path().join("inventory.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let old_location =
        "    ip-labels: { www-ip: [203.0.113.10], tg-ip: [203.0.113.20, 203.0.113.21] }\n";
    let old_server = "app2: { kind: app, location: tcn, address: 10.0.1.12 }";
    assert!(text.contains(old_location) && text.contains(old_server));
    let text = text
        .replace(
            old_location,
            &format!("{old_location}  ams:\n    ip-labels: {{ www-ip: [198.51.100.10], tg-ip: [198.51.100.20] }}\n"),
        )
        .replace(
            old_server,
            "app2: { kind: app, location: ams, address: 10.1.1.12 }",
        );
    std::fs::write(&path, text).unwrap();
    dir
}

/// (service, vip, rip, fwmark) of every row, parsed by the gateway's own validator.
fn rows(csv: &str) -> Vec<(String, String, String, Option<u32>)> {
    let export = portcullis_export::parse(csv.as_bytes()).expect("a valid export");
    export
        .records
        .iter()
        .map(|r| {
            (
                r.row.service.to_string(),
                r.row.vip.to_string(),
                r.row.rip.to_string(),
                r.row.fwmark,
            )
        })
        .collect()
}

#[test]
fn the_catalog_checks_and_each_location_export_stands_alone() {
    let dir = fwmark_in_two_locations();
    let c = portcullis_admin::Catalog::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let spanning =
        portcullis_admin::export::spanning_fwmarks(&c, &portcullis_admin::export::rows(&c));
    assert_eq!(spanning.get(&100).map(Vec::len), Some(2), "{spanning:?}");

    let bin = env!("CARGO_BIN_EXE_portcullis-admin");
    let check = Command::new(bin)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for (location, vip_prefix, rip) in [
        ("tcn", "203.0.113.", "10.0.1.11"),
        ("ams", "198.51.100.", "10.1.1.12"),
    ] {
        let out = Command::new(bin)
            .arg("export")
            .arg(dir.path())
            .args(["--location", location])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows = rows(&String::from_utf8_lossy(&out.stdout));
        assert!(
            rows.iter().any(|r| r.0 == "tg" && r.3 == Some(100)),
            "{location}: {rows:?}"
        );
        assert!(
            rows.iter()
                .all(|r| r.1.starts_with(vip_prefix) && r.2 == rip),
            "{location}: only its VIPs and real servers: {rows:?}"
        );
    }
    let whole = Command::new(bin)
        .arg("export")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(whole.status.code(), Some(2));
    let err = String::from_utf8_lossy(&whole.stderr);
    assert!(
        err.contains("fwmark 100 (tg) in ams and tcn") && err.contains("--location"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_each_location_and_refuses_the_cloud_wide_export() {
    let dir = fwmark_in_two_locations();
    let state = AdminState::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve::spawn(state, listener).unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |q: &str| c.get(format!("{}/v1/export.csv{q}", server.url())).send();

    let mut seen = BTreeSet::new();
    for (location, tg_vips) in [("tcn", 2), ("ams", 1)] {
        let r = get(&format!("?location={location}")).await.unwrap();
        assert_eq!(r.status(), 200);
        let rows = rows(&r.text().await.unwrap());
        let vips: BTreeSet<_> = rows
            .iter()
            .filter(|r| r.0 == "tg")
            .map(|r| r.1.clone())
            .collect();
        assert_eq!(vips.len(), tg_vips, "{location}: {rows:?}");
        // Every location's tg rows carry the one fwmark; no VIP is in two locations' exports.
        assert!(rows
            .iter()
            .filter(|r| r.0 == "tg")
            .all(|r| r.3 == Some(100)));
        for v in vips {
            assert!(seen.insert(v.clone()), "{v} in two locations");
        }
    }

    let r = get("").await.unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    let text = body.to_string();
    assert!(
        text.contains("?location=") && text.contains("fwmark 100"),
        "{text}"
    );
    // A long-poll of the refused export is refused at once too, not held.
    let r = get("?wait=30s").await.unwrap();
    assert_eq!(r.status(), 409);
    let status: serde_json::Value = c
        .get(format!("{}/v1/status", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        status["export_refused"]
            .as_str()
            .is_some_and(|s| s.contains("fwmark 100")),
        "{status:#}"
    );
    server.stop().await.unwrap();
}
