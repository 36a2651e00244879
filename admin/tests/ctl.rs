//! `portcullis-admin ctl` end to end: the real binary against a real server on loopback —
//! listings, every change, refusals with located errors, a stale `--if-match`, the audit log,
//! and the exit codes (0 done, 1 refused or unreachable, 2 usage or a wrong token).

use portcullis_admin::serve::{self, AdminState, Options};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const TOKEN: &str = "ctl-t0ken";

struct Server {
    url: String,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

/// A server on its own runtime, so the test thread can run the binary synchronously.
fn server() -> Server {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
    let dir = tempfile::tempdir().unwrap();
    portcullis_admin::catalog::copy_files(&src, dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = Options {
        tokens: vec![("operator".into(), TOKEN.into())],
        reload_interval: Duration::from_secs(3600),
        ..Options::default()
    };
    let state = AdminState::open(dir.path(), options).unwrap_or_else(|e| panic!("{e}"));
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = serve::spawn(state, listener).unwrap();
        let url = running.url();
        // Runs until the runtime is dropped with the test.
        std::mem::forget(running);
        url
    });
    Server { url, dir, _rt: rt }
}

/// `portcullis-admin ctl --url URL ARGS…` with the token in the environment.
fn ctl(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-admin"));
    cmd.arg("ctl").arg("--url").arg(url).args(args);
    cmd.env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("PORTCULLIS_ADMIN_URL")
        .env("NO_PROXY", "*");
    if let Some(t) = token {
        cmd.env("PORTCULLIS_ADMIN_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listings_changes_and_refusals_with_exit_codes() {
    let s = server();
    let url = s.url.as_str();
    let t = Some(TOKEN);

    let out = ok(&ctl(url, None, &["instances"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "ID                 TYPE    SERVER    LOCATION  STATE       VERSION       EXPORTED"
    );
    assert_eq!(
        lines[1],
        "pgw.app1.1         pgw     app1      tcn       production  pgw-1.4.2     true"
    );
    assert_eq!(lines.len(), 9);
    let out = ok(&ctl(url, None, &["--json", "servers"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["servers"][0]["name"], "app1");
    let out = ok(&ctl(url, None, &["server", "db1"]));
    assert!(
        out.contains("instances:  mdb.db1.1,mdb.db1.2,mdb.db1.3"),
        "{out}"
    );

    // Changes, each one line.
    let out = ok(&ctl(url, t, &["create", "mdb", "db1"]));
    assert!(
        out.starts_with("create-instance mdb.db1.4: - → mdb.db1.4 on db1 (production) (revision "),
        "{out}"
    );
    let out = ok(&ctl(url, t, &["drain", "pgw.app1.1"]));
    assert!(
        out.starts_with(
            "set-state pgw.app1.1: pgw.app1.1 on app1 (production) → pgw.app1.1 on app1 (drained)"
        ),
        "{out}"
    );
    let out = ok(&ctl(url, t, &["drain", "pgw.app1.1"]));
    assert!(out.starts_with("set-state pgw.app1.1: unchanged"), "{out}");
    ok(&ctl(url, t, &["maintenance", "pgw.app1.1"]));
    ok(&ctl(url, t, &["undrain", "pgw.app1.1"]));
    ok(&ctl(
        url,
        t,
        &[
            "add-server",
            "app3",
            "--kind",
            "app",
            "--location",
            "tcn",
            "--address",
            "10.0.1.13",
        ],
    ));
    let out = ok(&ctl(url, t, &["move", "pgw.app2.1", "app3"]));
    assert!(out.starts_with("move-instance pgw.app3.1: pgw.app2.1 on app2 (production) → pgw.app3.1 on app3 (production)"), "{out}");
    ok(&ctl(url, t, &["move", "pgw.app3.1", "app2"]));
    ok(&ctl(url, t, &["remove-server", "app3"]));
    ok(&ctl(url, t, &["delete", "mdb.db1.4"]));
    let inventory = std::fs::read_to_string(s.dir.path().join("inventory.yaml")).unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog/inventory.yaml"),
    )
    .unwrap();
    assert_eq!(inventory, example, "every change undone, comments and all");

    // A change the catalog checks refuse: exit 1, the located errors as `check` prints them.
    let err = failed(&ctl(url, t, &["create", "logger", "app1"]), 1);
    assert!(err.starts_with("inventory.yaml:26:5: instances[8]: type logger is unique: only one instance in the whole cloud (first is logger.archive1.1 at line 25) [unique]\n\
        inventory.yaml:26:5: instances[8].server: logger links data to Archive (meta/logger.yaml:11) but server app1 has no archive mount [placement]\n"), "{err}");
    assert!(err.contains("portcullis-admin: the change would make the catalog invalid; nothing was written (HTTP 422)"), "{err}");
    let out = ctl(url, t, &["--json", "remove-server", "app1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), v["status"].as_u64()),
        (Some(1), Some(409))
    );
    // A stale revision: 412, exit 1.
    let err = failed(
        &ctl(url, t, &["--if-match", "0123", "drain", "tg.app1.1"]),
        1,
    );
    assert!(err.contains("the catalog changed: revision "), "{err}");
    assert!(err.contains("(HTTP 412)"), "{err}");
    // Routes the server has off answer with its reason: exit 1.
    let err = failed(&ctl(url, t, &["deploy", "upgrade", "pgw.app1.1"]), 1);
    assert!(
        err.contains("versions are not enabled on this server (--state) (HTTP 404)"),
        "{err}"
    );
    let err = failed(&ctl(url, t, &["instance", "pgw.app9.1"]), 1);
    assert!(err.contains("no instance pgw.app9.1 (HTTP 404)"), "{err}");

    // Who did it.
    let out = ok(&ctl(url, t, &["audit", "--limit", "3"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("TIME") && lines[3].contains("operator  delete-instance  mdb.db1.4"),
        "{out}"
    );

    // Wrong or missing token: exit 2 with a message saying so.
    let err = failed(&ctl(url, Some("wrong"), &["drain", "pgw.app1.1"]), 2);
    assert!(
        err.contains("a valid bearer token is required (HTTP 401; check --token-file or $PORTCULLIS_ADMIN_TOKEN)"),
        "{err}"
    );
    failed(&ctl(url, None, &["audit"]), 2);
    // A token file instead of the environment.
    let file = s.dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    ok(&ctl(
        url,
        None,
        &["--token-file", file.to_str().unwrap(), "audit"],
    ));

    // Usage: exit 2; nobody listening: exit 1.
    failed(&ctl(url, t, &["deploy", "sideways", "pgw.app1.1"]), 2);
    failed(&ctl(url, t, &["create", "mdb"]), 2);
    failed(&ctl("ftp://x", t, &["status"]), 2);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    failed(&ctl(&format!("http://{closed}"), t, &["status"]), 1);
}
