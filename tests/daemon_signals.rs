//! The daemon's responsiveness and its run-time configuration: long-polling against a server
//! that holds requests (and plain polling against one that does not), SIGHUP reloads (good
//! and bad edits), interface changes regenerating the table, and TLS to ADMIN with a private
//! CA and a client certificate (against `openssl s_server`, an independent TLS server).

mod common;

use common::stub_admin::{self, Mode};
use portcullis::apply::{RecordingConntrack, TwinFirewall};
use portcullis::daemon::cache::StateDir;
use portcullis::daemon::config::Config;
use portcullis::daemon::fetch::{FetchError, Fetched, Fetcher};
use portcullis::daemon::Daemon;
use portcullis::render::nft::Backend;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn export(services: usize) -> Vec<u8> {
    portcullis_export::to_string(&portcullis::synth::rows_with_services(services))
        .expect("valid")
        .into_bytes()
}

fn tmp(tag: &str) -> PathBuf {
    common::tmp_dir(&format!("signals-{tag}"))
}

fn config(source: &str, state_dir: &Path) -> Config {
    Config {
        source: Some(source.into()),
        request_timeout: Duration::from_secs(2),
        state_dir: state_dir.to_owned(),
        ..Config::default()
    }
}

#[tokio::test]
async fn the_fetcher_long_polls_and_notices_servers_that_do_not() {
    let (url, stub) = stub_admin::start(&export(3));
    let dir = tmp("fetcher");
    let fetcher = Fetcher::from_config(&Config {
        long_poll: Duration::from_millis(600),
        ..config(&url, &dir)
    })
    .expect("fetcher");
    let Ok(Fetched::New {
        etag: Some(etag), ..
    }) = fetcher.fetch(None).await
    else {
        panic!("first fetch brings the export");
    };
    // Unchanged: the server holds the request for the whole wait.
    assert_eq!(
        fetcher.fetch(Some(&etag)).await.expect("304"),
        Fetched::NotModified { long_polled: true }
    );
    // A change during the wait is answered with the new export.
    let publisher = {
        let stub = stub.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            stub.publish(export(4), "\"v2\"");
        })
    };
    match fetcher.fetch(Some(&etag)).await.expect("200") {
        Fetched::New {
            body,
            etag,
            long_polled,
        } => {
            assert_eq!((body, etag.as_deref()), (export(4), Some("\"v2\"")));
            assert!(long_polled, "the server says it long-polls");
        }
        other => panic!("expected the new export, got {other:?}"),
    }
    publisher.join().expect("publisher");
    // A server that ignores `wait` answers at once: not held, so the interval applies.
    stub.lock().expect("lock").mode = Mode::NoLongPoll;
    assert_eq!(
        fetcher.fetch(Some("\"v2\"")).await.expect("304"),
        Fetched::NotModified { long_polled: false }
    );
}

/// With a 60 s poll interval, only a held request can bring a change within the test's time.
#[tokio::test]
async fn a_long_polling_daemon_applies_a_change_without_waiting_for_the_interval() {
    let (url, stub) = stub_admin::start(&export(10));
    let dir = tmp("longpoll");
    let mut daemon = Daemon::new(
        Config {
            interval: Duration::from_secs(60),
            long_poll: Duration::from_secs(20),
            ..config(&url, &dir)
        },
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["eth0"]),
    )
    .expect("daemon");
    let publisher = {
        let stub = stub.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            stub.publish(export(11), "\"v2\"");
        })
    };
    let cache = StateDir::new(&dir);
    let applied_v2 = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if cache
                .load()
                .ok()
                .flatten()
                .is_some_and(|c| c.etag.as_deref() == Some("\"v2\""))
            {
                return;
            }
        }
    };
    let no_reload = || Err("no reloads in this test".to_owned());
    let ran =
        tokio::time::timeout(Duration::from_secs(20), daemon.run(applied_v2, no_reload)).await;
    publisher.join().expect("publisher");
    assert!(
        matches!(ran, Ok(Ok(()))),
        "the change arrived through the held request"
    );
    assert_eq!(daemon.syncer.applied().map(|s| s.services.len()), Some(11));
    let requests = stub.lock().expect("lock").requests;
    assert!(
        requests <= 4,
        "a held request, not a busy loop: {requests} requests"
    );
}

/// A server that ignores ETags answers every poll with the whole export: the daemon must fall
/// back to its interval instead of re-polling at once forever.
#[tokio::test]
async fn a_server_ignoring_etags_does_not_make_the_daemon_spin() {
    let (url, stub) = stub_admin::start(&export(3));
    stub.lock().expect("lock").mode = Mode::Unconditional;
    let dir = tmp("unconditional");
    let mut daemon = Daemon::new(
        Config {
            interval: Duration::from_secs(60),
            long_poll: Duration::from_secs(10),
            ..config(&url, &dir)
        },
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["eth0"]),
    )
    .expect("daemon");
    let no_reload = || Err("no reloads in this test".to_owned());
    let window = tokio::time::sleep(Duration::from_millis(1500));
    daemon.run(window, no_reload).await.expect("run");
    let requests = stub.lock().expect("lock").requests;
    assert!(
        (1..=2).contains(&requests),
        "start-up, one probe, then the 60 s interval: {requests} requests"
    );
}

#[tokio::test]
async fn a_reload_with_new_interfaces_regenerates_the_table_and_refuses_restart_only_keys() {
    let (url, _stub) = stub_admin::start(&export(4));
    let dir = tmp("reload-ifaces");
    let base = Config {
        long_poll: Duration::ZERO,
        ..config(&url, &dir)
    };
    let mut daemon = Daemon::new(
        base.clone(),
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["eth0"]),
    )
    .expect("daemon");
    daemon.start().await;
    let ifaces = |d: &Daemon<TwinFirewall, RecordingConntrack>| {
        let table = d.syncer.firewall.table.as_ref().expect("table");
        table.sets["external_ifaces"]
            .elements
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(ifaces(&daemon), ["eth0"]);

    let mut moved = base.clone();
    moved.state_dir = dir.join("elsewhere");
    let refused = daemon.reload(moved, common::render_options(Backend::Nft, &["eth0"]));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("state_dir")),
        "state_dir needs a restart"
    );

    let mut renamed = base.clone();
    renamed.interfaces.external = vec!["eth1".into()];
    let changed = daemon
        .reload(renamed, common::render_options(Backend::Nft, &["eth1"]))
        .expect("reload");
    assert_eq!(changed.into_iter().collect::<Vec<_>>(), ["interfaces"]);
    assert_eq!(ifaces(&daemon), ["eth1"], "the table follows the reload");
    assert_eq!(daemon.syncer.applied().map(|s| s.services.len()), Some(4));
}

fn status_source(state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state.join("status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["source"].as_str().map(str::to_owned)
}

/// The real process: SIGHUP re-reads the file; a bad edit is logged and the running
/// configuration stays. Standby role, so no kernel (and no root) is involved.
#[test]
fn sighup_reloads_the_config_file_and_survives_a_bad_edit() {
    let dir = tmp("sighup");
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    std::fs::write(&a, export(3)).expect("a");
    std::fs::write(&b, export(5)).expect("b");
    let state = dir.join("state");
    let conf = dir.join("portcullis.toml");
    let write_conf = |source: &Path| {
        let text = format!(
            "source = \"file://{}\"\nstate_dir = \"{}\"\nrole = \"standby\"\ninterval = \"200ms\"\n",
            source.display(),
            state.display()
        );
        std::fs::write(&conf, text).expect("config");
    };
    write_conf(&a);
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("run")
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portcullis run");
    let pid = child.id().to_string();
    let cached = |want: &[u8]| {
        StateDir::new(&state)
            .load()
            .ok()
            .flatten()
            .is_some_and(|c| c.export == want)
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP");
    };
    let started = common::wait_until(10, || {
        (cached(&export(3)) && state.join("portcullis.pid").exists()).then_some(())
    });

    // A second daemon on the same state directory refuses to start (it would apply every
    // change a second time and overwrite the first one's files).
    let second = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("run")
        .arg("--config")
        .arg(&conf)
        .output()
        .expect("second portcullis run");
    let second_err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{second_err}");
    assert!(
        second_err.contains(&format!("already runs on {} (pid {pid})", state.display())),
        "{second_err}"
    );

    write_conf(&b);
    hup();
    let reloaded =
        started.and_then(|_| common::wait_until(10, || cached(&export(5)).then_some(())));
    let source_b = status_source(&state);

    std::fs::write(&conf, "sorce = \"file:///nowhere\"\n").expect("bad edit");
    hup();
    std::thread::sleep(Duration::from_millis(800));
    let alive = child.try_wait().expect("try_wait").is_none();
    let status = common::terminate(&mut child);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(started.is_some(), "daemon started: {stderr}");
    assert!(
        reloaded.is_some(),
        "SIGHUP switched to the new source: {stderr}"
    );
    assert_eq!(source_b, Some(format!("file://{}", b.display())));
    assert!(alive, "a bad edit does not stop the daemon: {stderr}");
    assert!(
        stderr.contains("not reloaded") && stderr.contains("sorce"),
        "{stderr}"
    );
    assert_eq!(
        status_source(&state),
        source_b,
        "the running configuration stays"
    );
    assert!(status.success() || status.code().is_none(), "{status:?}");
    assert!(
        !state.join("portcullis.pid").exists() && !state.join("control.sock").exists(),
        "a daemon that stopped leaves no pid file or socket behind"
    );
}

/// A private CA and a client certificate: ADMIN behind mutual TLS, served by
/// `openssl s_server -WWW` from a directory holding the export.
#[tokio::test]
async fn tls_uses_the_configured_ca_and_client_certificate() {
    if !common::require_tool("openssl", "openssl") {
        return;
    }
    let dir = tmp("tls");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&dir)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subj = |cn: &str| format!("-subj /CN={cn}");
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 {} \
           -keyout ca.key -out ca.pem 2>/dev/null
         for who in server client; do
           openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes {} \
             -keyout $who.key -out $who.csr 2>/dev/null
         done
         printf 'subjectAltName=IP:127.0.0.1\\n' > server.ext
         printf 'extendedKeyUsage=clientAuth\\n' > client.ext
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile server.ext -out server.pem 2>/dev/null
         openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
           -extfile client.ext -out client.pem 2>/dev/null
         openssl pkcs8 -topk8 -nocrypt -in client.key -out client.pk8",
        subj("portcullis-test-ca"),
        subj("portcullis-test")
    ));
    std::fs::write(dir.join("export.csv"), export(3)).expect("export");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-WWW", "-quiet", "-naccept", "10"])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "server.pem", "-key", "server.key"])
        .args(["-CAfile", "ca.pem", "-Verify", "1"])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    common::wait_until(10, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });

    let url = format!("https://127.0.0.1:{port}/export.csv");
    let mut c = config(&url, &dir);
    c.long_poll = Duration::ZERO;
    c.tls.ca_file = Some(dir.join("ca.pem"));
    c.tls.client_cert = Some(dir.join("client.pem"));
    c.tls.client_key = Some(dir.join("client.pk8"));
    let with_all = Fetcher::from_config(&c).expect("fetcher").fetch(None).await;

    let mut no_client = c.clone();
    no_client.tls.client_cert = None;
    no_client.tls.client_key = None;
    let without_cert = Fetcher::from_config(&no_client)
        .expect("fetcher")
        .fetch(None)
        .await;

    let mut system_roots = c.clone();
    system_roots.tls.ca_file = None;
    let untrusted = Fetcher::from_config(&system_roots)
        .expect("fetcher")
        .fetch(None)
        .await;
    let _ = server.kill();
    let _ = server.wait();

    match with_all {
        Ok(Fetched::New { body, .. }) => assert_eq!(body, export(3)),
        other => panic!("mutual TLS with the private CA: {other:?}"),
    }
    assert!(
        matches!(without_cert, Err(FetchError::Request(_))),
        "the server requires a client certificate: {without_cert:?}"
    );
    match untrusted {
        Err(FetchError::Request(why)) => {
            assert!(why.to_lowercase().contains("certificate"), "{why}")
        }
        other => panic!("the system roots do not know the private CA: {other:?}"),
    }

    let mut missing = c.clone();
    missing.tls.ca_file = Some(dir.join("no-such-ca.pem"));
    assert!(
        matches!(Fetcher::from_config(&missing), Err(FetchError::Setup(e)) if e.contains("no-such-ca.pem")),
        "a missing CA file fails at start-up, naming the file"
    );
}

/// SIGTERM leaves the rules in place by default (traffic flows through a restart); with
/// `--flush-on-exit true` it removes them, as `portcullis flush` does.
#[test]
fn sigterm_leaves_the_rules_unless_flush_on_exit() {
    if !common::require_nft() {
        return;
    }
    let dir = tmp("exit");
    let source = dir.join("export.csv");
    std::fs::write(&source, export(3)).expect("export");
    for (flush, table_after) in [("false", true), ("true", false)] {
        let ns = common::Netns::new(&format!("exit-{flush}"));
        let state = dir.join(format!("state-{flush}"));
        let mut child = ns
            .command(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--external-iface", "lo", "--flush-on-exit", flush])
            .arg("--source")
            .arg(format!("file://{}", source.display()))
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis run");
        let table = || {
            ns.command("nft")
                .args(["list", "table", "inet", "portcullis"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let applied = common::wait_until(10, || table().then_some(())).is_some();
        let status = common::terminate(&mut child);
        assert!(applied, "flush_on_exit={flush}: applied");
        assert!(
            status.success(),
            "flush_on_exit={flush}: clean exit {status:?}"
        );
        assert_eq!(table(), table_after, "flush_on_exit={flush}");
    }
}

/// Issue 16, item 3: idle connections to the metrics port must not take the descriptors the
/// daemon needs. The daemon runs with 256 descriptors; 400 idle connections used to exhaust
/// them, and the next export change could not be saved ("Too many open files").
#[test]
fn a_flood_of_idle_metrics_connections_does_not_stop_the_daemon() {
    let dir = tmp("flood");
    let source = dir.join("export.csv");
    std::fs::write(&source, export(3)).expect("export");
    let state = dir.join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 256 && exec "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--role", "standby", "--interval", "200ms"])
        .arg(format!("--source=file://{}", source.display()))
        .arg(format!("--state-dir={}", state.display()))
        .arg(format!("--metrics=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("portcullis run");
    let cached = |want: &[u8]| {
        StateDir::new(&state)
            .load()
            .ok()
            .flatten()
            .is_some_and(|c| c.export == want)
    };
    let started = common::wait_until(10, || cached(&export(3)).then_some(()));
    let mut idle = Vec::new();
    for _ in 0..400 {
        // Once the kernel's backlog is full, connecting waits for SYN retries: stop there.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => idle.push(c),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    std::fs::write(&source, export(5)).expect("new export");
    let followed = common::wait_until(10, || cached(&export(5)).then_some(()));
    drop(idle);
    let _ = common::terminate(&mut child);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(started.is_some(), "daemon started: {stderr}");
    assert!(
        descriptors < 100,
        "{descriptors} descriptors open under the flood: {stderr}"
    );
    assert!(
        followed.is_some(),
        "the export change was cached under the flood: {stderr}"
    );
}
