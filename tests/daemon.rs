//! The daemon's cycle against a real HTTP server on loopback and the in-memory twin of the
//! kernel: conditional GET, applying only changes, keeping rules through every kind of ADMIN
//! failure, starting from the last-known-good export, standby, and the guard.

mod common;

use portcullis::apply::{RecordingConntrack, SyncOutcome, TwinFirewall};
use portcullis::daemon::config::{Config, Role};
use portcullis::daemon::{Daemon, Step};
use portcullis::render::nft::Backend;
use std::sync::Arc;
use std::time::Duration;

use common::stub_admin::{Mode, Stub};

fn admin(body: &[u8]) -> (String, Arc<Stub>) {
    common::stub_admin::start(body)
}

fn export(services: usize) -> Vec<u8> {
    portcullis_export::to_string(&portcullis::synth::rows_with_services(services))
        .expect("valid")
        .into_bytes()
}

fn publish(served: &Stub, body: Vec<u8>, etag: &str) {
    served.publish(body, etag);
}

fn daemon(
    url: &str,
    state_dir: &std::path::Path,
    role: Role,
) -> Daemon<TwinFirewall, RecordingConntrack> {
    let config = Config {
        source: Some(url.into()),
        request_timeout: Duration::from_secs(2),
        // The stub long-polls; these tests step the daemon poll by poll.
        long_poll: Duration::ZERO,
        max_body_bytes: 1 << 20,
        state_dir: state_dir.to_owned(),
        role,
        ..Config::default()
    };
    Daemon::new(
        config,
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["eth0"]),
    )
    .expect("daemon")
}

fn tmp(tag: &str) -> std::path::PathBuf {
    common::tmp_dir(&format!("daemon-{tag}"))
}

#[tokio::test]
async fn polls_conditionally_and_applies_only_changes() {
    let (url, served) = admin(&export(10));
    let mut d = daemon(&url, &tmp("cond"), Role::Active);
    assert!(matches!(
        d.start().await,
        Step::Applied(SyncOutcome::Full { .. })
    ));
    assert_eq!(
        d.poll_once().await,
        Step::NotModified,
        "same ETag: a 304, nothing parsed or applied"
    );
    assert_eq!(d.syncer.firewall.applied.len(), 1);
    publish(&served, export(11), "\"v2\"");
    match d.poll_once().await {
        Step::Applied(SyncOutcome::Incremental { summary, .. }) => {
            assert_eq!(summary.services_added, 1)
        }
        other => panic!("expected an incremental apply, got {other:?}"),
    }
    assert_eq!(d.syncer.firewall.applied.len(), 2);
    assert_eq!(d.poll_once().await, Step::NotModified);
    // A 304 changes only counters: the status file is refreshed at most once a second for
    // those (usually not for the one right after the apply); a second later it is.
    let on_disk = |d: &Daemon<TwinFirewall, RecordingConntrack>| {
        let text = std::fs::read_to_string(d.config.state_dir.join("status.json")).expect("status");
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["polls"].clone()
    };
    assert!(on_disk(&d) == 3 || on_disk(&d) == 4);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(d.poll_once().await, Step::NotModified);
    assert_eq!(on_disk(&d), 5, "written a second later");

    // netops read what happened from the state directory.
    let dir = d.config.state_dir.to_str().expect("utf-8 path").to_owned();
    let portcullis = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .output()
            .expect("run portcullis")
    };
    let log = portcullis(&["log", "--state-dir", &dir, "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&log.stdout).expect("json");
    let entries = entries.as_array().expect("list");
    assert_eq!(
        entries.len(),
        2,
        "one full, one incremental; 304s are not journaled: {entries:?}"
    );
    assert_eq!(entries[1]["detail"], "incremental");
    assert_eq!(entries[1]["etag"], "\"v2\"");
    assert_eq!(entries[1]["summary"]["services_added"], 1);
    let text =
        String::from_utf8_lossy(&portcullis(&["log", "--state-dir", &dir]).stdout).into_owned();
    assert!(
        text.contains("applied") && text.contains("services +1"),
        "{text}"
    );
    let status = portcullis(&["status", "--state-dir", &dir, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(status["services"], 11);
    assert_eq!(status["polls"], 5);
    assert_eq!(status["not_modified"], 3);
    assert_eq!(status["etag"], "\"v2\"");
    let missing = portcullis(&["status", "--state-dir", "/nonexistent/portcullis"]);
    assert_eq!(missing.status.code(), Some(1));

    let metrics = d.metrics.render();
    assert!(
        metrics.contains("portcullis_polls_total{outcome=\"not_modified\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_polls_total{outcome=\"applied\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_virtual_services 11"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_and_health_are_served_over_http() {
    let metrics = portcullis::daemon::metrics::Metrics::default();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::spawn(metrics.clone().serve(addr));
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            for _ in 0..50 {
                if let Ok(r) = client.get(format!("http://{addr}{path}")).send().await {
                    return (r.status().as_u16(), r.text().await.unwrap_or_default());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("metrics listener did not come up");
        }
    };
    assert_eq!(
        get("/healthz").await.0,
        503,
        "unhealthy before the first sync"
    );
    metrics.synced();
    metrics.poll("applied");
    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("portcullis_polls_total{outcome=\"applied\"} 1"),
        "{body}"
    );
}

#[tokio::test]
async fn admin_failures_leave_the_rules_as_they_are() {
    let (url, served) = admin(&export(10));
    let mut d = daemon(&url, &tmp("fail"), Role::Active);
    d.start().await;
    let table = d.syncer.firewall.table.clone();
    let cases: Vec<(Mode, Option<Vec<u8>>)> = vec![
        (Mode::Error500, None),
        (Mode::Truncated, Some(export(12))),
        (Mode::HangUp, None),
        (
            Mode::Normal,
            Some(b"service,instance\nnot,an export".to_vec()),
        ),
        (Mode::Normal, Some(vec![b'x'; 2 << 20])),
    ];
    for (i, (mode, body)) in cases.into_iter().enumerate() {
        {
            let mut s = served.lock().expect("lock");
            s.mode = mode;
            if let Some(b) = body {
                s.body = b;
                s.etag = format!("\"bad{i}\"");
            }
        }
        let step = d.poll_once().await;
        assert!(
            matches!(step, Step::Failed(_) | Step::Rejected(_)),
            "case {i}: {step:?}"
        );
        assert_eq!(d.syncer.firewall.table, table, "case {i}: rules unchanged");
        assert_eq!(
            d.syncer.firewall.applied.len(),
            1,
            "case {i}: nothing sent to the kernel"
        );
    }
    assert!(d.counters.failed >= 3 && d.counters.rejected >= 1);
    assert!(d.next_delay() > d.config.interval, "failures back off");
}

#[tokio::test]
async fn a_restart_with_admin_down_starts_from_the_last_known_good_export() {
    let dir = tmp("lkg");
    let (url, served) = admin(&export(7));
    let mut first = daemon(&url, &dir, Role::Active);
    first.start().await;
    served.lock().expect("lock").mode = Mode::Error500;
    // A new process: empty kernel model, ADMIN failing.
    let mut restarted = daemon(&url, &dir, Role::Active);
    assert!(
        matches!(restarted.start().await, Step::Applied(_)),
        "applied from cache"
    );
    assert_eq!(restarted.syncer.firewall.table, first.syncer.firewall.table);

    // A corrupt cache is reported and never applied.
    let file = dir.join("last-good.csv");
    let mut bytes = std::fs::read(&file).expect("cache file");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");
    let mut third = daemon(&url, &dir, Role::Active);
    match third.start().await {
        Step::NothingToStartFrom(why) => {
            assert!(why.to_string().contains("corrupt"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(third.syncer.firewall.table, None, "nothing applied");
}

#[tokio::test]
async fn standby_caches_without_touching_the_kernel() {
    let dir = tmp("standby");
    let (url, _served) = admin(&export(5));
    let mut d = daemon(&url, &dir, Role::Standby);
    assert_eq!(d.start().await, Step::Cached);
    assert!(d.syncer.firewall.applied.is_empty() && d.syncer.firewall.table.is_none());
    assert!(
        dir.join("last-good.csv").exists(),
        "the cache is kept fresh for a promotion"
    );
}

#[tokio::test]
async fn the_guard_refuses_a_mass_withdrawal() {
    let (url, served) = admin(&export(10));
    let mut d = daemon(&url, &tmp("guard"), Role::Active);
    d.start().await;
    let table = d.syncer.firewall.table.clone();
    publish(&served, export(2), "\"v2\"");
    assert!(matches!(d.poll_once().await, Step::Refused(_)));
    assert_eq!(d.syncer.firewall.table, table);
    assert_eq!(
        d.poll_once().await,
        Step::NotModified,
        "the refused export is not re-parsed every poll"
    );
    assert_eq!(d.counters.refused, 1);
    // A 304 for the refused export must not count as "rules current" for alerting.
    let synced = d.metrics.last_sync_unix();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(d.poll_once().await, Step::NotModified);
    assert_eq!(d.metrics.last_sync_unix(), synced);
    assert!(d
        .metrics
        .render()
        .contains("portcullis_guard_refusals_total 1"));
}

#[tokio::test]
async fn file_sources_are_reread_only_when_their_content_changes() {
    let dir = tmp("file");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("export.csv");
    std::fs::write(&path, export(4)).expect("write");
    let mut d = daemon(
        &format!("file://{}", path.display()),
        &dir.join("state"),
        Role::Active,
    );
    assert!(matches!(d.start().await, Step::Applied(_)));
    assert_eq!(d.poll_once().await, Step::NotModified);
    std::fs::write(&path, export(5)).expect("write");
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Incremental { .. })
    ));
}

/// `portcullis run` for real in a network namespace: it applies, keeps the rules when stopped,
/// and after a "reboot" (table gone) with its source unreachable, restores them from the
/// last-known-good export.
#[test]
fn the_daemon_restores_rules_from_cache_after_a_reboot_with_admin_down() {
    if !common::require_nft() {
        return;
    }
    use std::process::Stdio;
    let ns = common::Netns::new("run");
    let dir = tmp("run");
    std::fs::create_dir_all(&dir).expect("dir");
    let source = dir.join("export.csv");
    std::fs::write(&source, export(6)).expect("write");
    let start = || {
        ns.command(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--source")
            .arg(format!("file://{}", source.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--interval", "200ms", "--external-iface", "lo"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portcullis run")
    };
    let listing = || {
        ns.command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // A listing taken while the kernel commits can show half of the transaction (the
    // commit activates its objects one by one after bumping the generation, so nft's
    // generation check does not see it): seen in CI as the bare `add table` that opens the
    // full script. A table counts as applied once two listings 200 ms apart agree.
    let settled_listing = || {
        let first = listing()?;
        std::thread::sleep(Duration::from_millis(200));
        (listing()? == first).then_some(first)
    };
    let wait_for_table =
        || common::wait_until(5, settled_listing).expect("the daemon did not apply within 5 s");
    let stop = |child: &mut std::process::Child| {
        let status = common::terminate(child);
        assert!(status.success(), "clean exit on SIGTERM: {status}");
    };

    let mut daemon = start();
    let applied = wait_for_table();
    std::thread::sleep(Duration::from_millis(300));
    stop(&mut daemon);
    assert_eq!(
        listing().as_deref(),
        Some(applied.as_str()),
        "rules stay in place after SIGTERM"
    );

    // Reboot: the kernel forgets, ADMIN is down.
    ns.exec(&["nft", "delete", "table", "inet", "portcullis"]);
    std::fs::remove_file(&source).expect("take the source away");
    let mut daemon = start();
    let restored = common::wait_until(5, || listing().filter(|l| *l == applied));
    let last = listing();
    stop(&mut daemon);
    assert!(
        restored.is_some(),
        "not restored from the last-known-good export within 5 s; the table is now:\n{last:?}\nexpected:\n{applied}"
    );
}

#[tokio::test]
async fn promote_applies_the_cached_export_at_once_and_demote_stops_applying() {
    use portcullis::daemon::role::write_role;
    let dir = tmp("promote");
    let (url, served) = admin(&export(6));
    let mut d = daemon(&url, &dir, Role::Standby);
    assert_eq!(d.start().await, Step::Cached);
    assert!(d.syncer.firewall.table.is_none());

    // What `portcullis promote` does, through the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["promote", "--state-dir", dir.to_str().expect("utf-8")])
        .output()
        .expect("run promote");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        matches!(d.poll_once().await, Step::Applied(_)),
        "promoted: cache applied at once"
    );
    assert_eq!(d.syncer.firewall.applied.len(), 1);
    assert!(d.syncer.firewall.table.is_some());

    write_role(&dir, Role::Standby).expect("demote");
    assert_eq!(d.poll_once().await, Step::Demoted);
    let table = d.syncer.firewall.table.clone();
    publish(&served, export(7), "\"v2\"");
    assert_eq!(
        d.poll_once().await,
        Step::Cached,
        "standby again: cached, not applied"
    );
    assert_eq!(d.syncer.firewall.table, table, "rules stay as they were");
}

/// The real daemon in standby keeps the kernel untouched; `portcullis promote` wakes it through
/// its control socket and it applies within moments, although its poll interval is a minute.
/// At the default log level its log says what it applied.
#[test]
fn promote_wakes_a_standby_daemon_at_once() {
    if !common::require_nft() {
        return;
    }
    use std::process::{Command, Stdio};
    let ns = common::Netns::new("promote");
    let dir = tmp("promote-real");
    std::fs::create_dir_all(&dir).expect("dir");
    let source = dir.join("export.csv");
    std::fs::write(&source, export(3)).expect("write");
    let state = dir.join("state");
    let mut daemon = ns
        .command(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--role", "standby"])
        .arg("--source")
        .arg(format!("file://{}", source.display()))
        .arg("--state-dir")
        .arg(&state)
        .args(["--interval", "60s", "--external-iface", "lo"])
        .env_remove("PORTCULLIS_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis run");
    let table = || {
        ns.command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Wait until the standby has cached the export (and written its pid).
    common::wait_until(5, || {
        (state.join("last-good.csv").exists() && state.join("portcullis.pid").exists())
            .then_some(())
    });
    assert!(
        state.join("last-good.csv").exists(),
        "standby caches the export"
    );
    assert!(!table(), "standby does not touch the kernel");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["promote", "--state-dir", state.to_str().expect("utf-8")])
        .output()
        .expect("promote");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("woken"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let applied = common::wait_until(5, || table().then_some(())).is_some();
    common::terminate(&mut daemon);
    let mut log = String::new();
    if let Some(mut e) = daemon.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut log);
    }
    assert!(
        applied,
        "promoted daemon applied within 5 s (interval is 60 s): {log}"
    );
    assert!(
        log.contains("export applied: table regenerated whole") && log.contains("ms="),
        "the apply is in the log at the default level: {log}"
    );
}

#[tokio::test]
async fn the_audit_repairs_hand_edits_and_leaves_a_clean_table_alone() {
    let (url, _served) = admin(&export(5));
    let mut d = daemon(&url, &tmp("audit"), Role::Active);
    d.start().await;
    assert_eq!(d.audit(), None, "nothing to repair, nothing sent");
    assert_eq!(d.syncer.firewall.applied.len(), 1);
    // Someone deletes one of our elements by hand.
    let expected = d.syncer.firewall.table.clone();
    let set = d
        .syncer
        .firewall
        .table
        .as_mut()
        .and_then(|t| t.sets.get_mut("lb_real_v4"))
        .expect("our set");
    let first = set.elements.keys().next().cloned().expect("an element");
    set.elements.remove(&first);
    assert!(matches!(
        d.audit(),
        Some(Step::Applied(SyncOutcome::Full { .. }))
    ));
    assert_eq!(
        d.syncer.firewall.table, expected,
        "repaired by a full regeneration"
    );
}

/// A promotion reaches a standby daemon whose poll is stuck on an ADMIN that stopped answering
/// (the host died with the other gateway): the poll is abandoned and the cached export applied
/// at once, not after the request timeout.
#[test]
fn promote_interrupts_a_poll_stuck_on_a_silent_admin() {
    if !common::require_nft() {
        return;
    }
    use std::process::{Command, Stdio};
    let ns = common::Netns::new("stuck");
    ns.command("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("lo up");
    let dir = tmp("promote-stuck");
    let state = dir.join("state");
    portcullis::daemon::cache::StateDir::new(&state)
        .save(&export(3), Some("\"v1\""), 0)
        .expect("seed the cache");
    // ADMIN inside the namespace: the first request is refused at once (start-up falls back to
    // the cache), every later one is accepted and never answered.
    let listener = common::lab::in_netns(&ns.name, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
    });
    let port = listener.local_addr().expect("addr").port();
    let stalled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = stalled.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().flatten().enumerate() {
            if i > 0 {
                held.lock().expect("lock").push(conn);
            }
        }
    });
    let mut daemon = ns
        .command(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--role", "standby"])
        .arg("--source")
        .arg(format!("http://127.0.0.1:{port}/export.csv"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--interval", "100ms", "--request-timeout", "60s"])
        .args(["--external-iface", "lo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start portcullis run");
    let stuck = common::wait_until(10, || {
        (!stalled.lock().expect("lock").is_empty() && state.join("portcullis.pid").exists())
            .then_some(())
    });
    let table = || {
        ns.command("nft")
            .args(["list", "table", "inet", "portcullis"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let standby_untouched = !table();
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["promote", "--state-dir", state.to_str().expect("utf-8")])
        .output()
        .expect("promote");
    let applied = common::wait_until(5, || table().then_some(())).is_some();
    common::terminate(&mut daemon);
    assert!(
        stuck.is_some(),
        "the daemon's second poll reached the silent ADMIN"
    );
    assert!(standby_untouched, "standby does not touch the kernel");
    assert!(
        applied,
        "promoted daemon applied its cache within 5 s although its poll waits up to 60 s"
    );
}
