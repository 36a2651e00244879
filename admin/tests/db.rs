//! DB patching against the real engines: a throwaway PostgreSQL cluster (support/pg.rs) and
//! SQLite files. The same scenarios run on both: from scratch, incremental, idempotent rerun,
//! baseline install, failing patch rolled back, drift/missing/gap refused, concurrent runs.
#![cfg(feature = "db")]

mod support;

use portcullis_admin::db::{self, plan::Allow, DbError, RunOptions, Target};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::pg::Cluster;

/// A catalog directory holding only patches for type `web`.
struct Patches {
    dir: tempfile::TempDir,
}

impl Patches {
    fn new() -> Patches {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("patches/web")).unwrap();
        Patches { dir }
    }
    fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.dir.path().join("patches/web").join(name), sql).unwrap();
    }
    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join("patches/web").join(name)).unwrap();
    }
    fn target(&self, url: &str) -> Target {
        Target::explicit(self.dir.path(), "web", url).unwrap()
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

const P1: &str = "CREATE TABLE devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
                  INSERT INTO devices (id, name) VALUES (1, 'first');\n";
const P2: &str =
    "ALTER TABLE devices ADD COLUMN seen TEXT;\nCREATE INDEX devices_name ON devices (name);\n";
const P3: &str = "CREATE TABLE readings (device INTEGER NOT NULL, value INTEGER NOT NULL);\n";

async fn patch(t: &Target) -> Result<db::PatchReport, DbError> {
    db::patch(t, RunOptions::default()).await
}

fn numbers(r: &db::PatchReport) -> Vec<u32> {
    r.applied.iter().map(|a| a.number).collect()
}

/// Names of the user tables, sorted (engine-specific catalog queries).
async fn tables(url: &str) -> Vec<String> {
    use sqlx::Connection;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    }
}

async fn columns_of_devices(url: &str) -> usize {
    use sqlx::Connection;
    if url.starts_with("sqlite://") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pragma_table_info('devices')")
            .fetch_one(&mut c)
            .await
            .unwrap();
        n as usize
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'devices'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        n as usize
    }
}

/// From scratch, idempotent rerun, incremental.
async fn scratch_rerun_incremental(url: &str) {
    let p = Patches::new();
    p.write("0001_devices.sql", P1);
    p.write("0002_seen.sql", P2);
    let t = p.target(url);
    let s = db::status(&t).await.unwrap();
    assert_eq!(s.status.pending.len(), 2);
    assert!(s.status.applied.is_empty() && s.clean);

    let r = patch(&t).await.unwrap();
    assert_eq!((r.outcome, numbers(&r)), ("applied", vec![1, 2]));
    assert_eq!(tables(url).await, ["devices", "portcullis_patches"]);
    let applied = &r.after.status.applied;
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[0].name, "0001_devices.sql");
    assert_eq!(applied[0].sha256, db::patches::sha256_hex(P1.as_bytes()));
    assert_eq!(applied[0].via, "patch");
    assert!(applied[0].applied_at.ends_with('Z') && applied[0].applied_at.len() == 20);

    let again = patch(&t).await.unwrap();
    assert_eq!(again.outcome, "nothing");
    assert!(again.applied.is_empty());
    assert_eq!(again.after.status.applied, r.after.status.applied);

    p.write("0003_readings.sql", P3);
    let t = p.target(url);
    assert_eq!(db::status(&t).await.unwrap().status.pending.len(), 1);
    let r = patch(&t).await.unwrap();
    assert_eq!(numbers(&r), [3]);
    assert_eq!(
        tables(url).await,
        ["devices", "portcullis_patches", "readings"]
    );
}

/// schema.sql installs an empty database in one step; later patches follow.
async fn baseline(url: &str) {
    let p = Patches::new();
    p.write("0001_devices.sql", P1);
    p.write("0002_seen.sql", P2);
    p.write("0003_readings.sql", P3);
    p.write(
        "schema.sql",
        "-- portcullis-baseline: 2\n\
         CREATE TABLE devices (id INTEGER PRIMARY KEY, name TEXT NOT NULL, seen TEXT);\n\
         CREATE INDEX devices_name ON devices (name);\n",
    );
    let t = p.target(url);
    assert_eq!(db::status(&t).await.unwrap().status.baseline, Some(2));
    let r = patch(&t).await.unwrap();
    assert_eq!(numbers(&r), [2, 3]);
    assert_eq!(r.applied[0].via, "baseline");
    let vias: Vec<_> = r
        .after
        .status
        .applied
        .iter()
        .map(|a| a.via.as_str())
        .collect();
    assert_eq!(vias, ["baseline", "baseline", "patch"]);
    assert_eq!(columns_of_devices(url).await, 3);
    assert_eq!(patch(&t).await.unwrap().outcome, "nothing");
}

/// A failing patch rolls back whole (its first statement too) and stops the run.
async fn failing_patch_rolls_back(url: &str) {
    let p = Patches::new();
    p.write("0001_devices.sql", P1);
    p.write(
        "0002_broken.sql",
        "ALTER TABLE devices ADD COLUMN seen TEXT;\nCREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1);\n",
    );
    p.write("0003_readings.sql", P3);
    let t = p.target(url);
    let r = patch(&t).await.unwrap();
    assert_eq!(r.outcome, "failed");
    assert_eq!(numbers(&r), [1]);
    let f = r.failed.as_ref().unwrap();
    assert_eq!((f.number, f.name.as_str()), (2, "0002_broken.sql"));
    assert!(f.error.contains("nowhere"), "{}", f.error);
    assert_eq!(tables(url).await, ["devices", "portcullis_patches"]);
    assert_eq!(
        columns_of_devices(url).await,
        2,
        "patch 2's ALTER was not rolled back"
    );
    let s = db::status(&t).await.unwrap();
    assert_eq!(s.status.applied.len(), 1);
    assert_eq!(s.status.pending.len(), 2);
}

/// Drift, a missing file and a gap are refused and change nothing; --allow overrides.
async fn refusals(url: &str) {
    let p = Patches::new();
    p.write("0001_devices.sql", P1);
    p.write("0003_readings.sql", P3);
    patch(&p.target(url)).await.unwrap();

    p.write(
        "0001_devices.sql",
        &format!("{P1}-- edited after the fact\n"),
    );
    let t = p.target(url);
    let s = db::status(&t).await.unwrap();
    assert!(!s.clean);
    assert_eq!(s.status.drifted[0].number, 1);
    match patch(&t).await {
        Err(DbError::Refused(why)) => {
            assert!(why.contains("patch 1 (0001_devices.sql) changed"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    p.write("0001_devices.sql", P1);

    p.write("0002_seen.sql", P2);
    p.write("0004_more.sql", "CREATE TABLE more (x INTEGER);\n");
    let t = p.target(url);
    match patch(&t).await {
        Err(DbError::Refused(why)) => assert!(
            why.contains("patch 2 (0002_seen.sql) was never applied"),
            "{why}"
        ),
        other => panic!("expected a gap refusal, got {other:?}"),
    }
    assert_eq!(
        tables(url).await,
        ["devices", "portcullis_patches", "readings"]
    );
    let opts = RunOptions {
        allow: Allow {
            gap: true,
            ..Allow::default()
        },
        ..RunOptions::default()
    };
    let r = db::patch(&t, opts).await.unwrap();
    assert_eq!(numbers(&r), [2, 4]);

    p.remove("0003_readings.sql");
    let t = p.target(url);
    match patch(&t).await {
        Err(DbError::Refused(why)) => assert!(why.contains("its file is gone"), "{why}"),
        other => panic!("expected a missing-file refusal, got {other:?}"),
    }
    assert_eq!(db::status(&t).await.unwrap().status.missing[0].number, 3);
}

/// Two `portcullis-admin db patch` processes at once: both succeed, each patch runs once (the
/// patches are not idempotent: a second CREATE TABLE would fail).
fn concurrent_cli_runs(catalog: &Path, url: &str, slow_sql: &str) {
    let dir = catalog.join("patches/web");
    std::fs::write(dir.join("0001_devices.sql"), format!("{P1}{slow_sql}")).unwrap();
    std::fs::write(dir.join("0002_seen.sql"), format!("{P2}{slow_sql}")).unwrap();
    std::fs::write(dir.join("0003_readings.sql"), P3).unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .args(["db", "patch", "--catalog"])
            .arg(catalog)
            .args(["--type", "web", "--url", url, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut applied = Vec::new();
    for out in [&a, &b] {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for s in v["applied"].as_array().unwrap() {
            applied.push(s["number"].as_u64().unwrap());
        }
        assert_eq!(v["after"]["applied"].as_array().unwrap().len(), 3);
    }
    applied.sort();
    assert_eq!(
        applied,
        [1, 2, 3],
        "every patch applied exactly once across both runs"
    );
}

/// Exit codes of the CLI: 0 done, 1 failed and rolled back, 2 refused.
fn cli_exit_codes(catalog: &Path, url: &str) {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
            .args(["db"])
            .args(args)
            .arg("--catalog")
            .arg(catalog)
            .args(["--type", "web", "--url", url])
            .output()
            .unwrap()
    };
    let dir = catalog.join("patches/web");
    std::fs::write(dir.join("0001_devices.sql"), P1).unwrap();
    let out = run(&["patch"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied    1 0001_devices.sql"));
    std::fs::write(dir.join("0002_bad.sql"), "CREATE TABLE x (;\n").unwrap();
    let out = run(&["patch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED     2 0002_bad.sql"));
    std::fs::write(dir.join("0002_bad.sql"), P2).unwrap();
    std::fs::write(dir.join("0001_devices.sql"), "-- changed\n").unwrap();
    let out = run(&["patch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed after it was applied"));
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DRIFTED"));
    std::fs::write(dir.join("bad name.sql"), "").unwrap();
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected NNNN_description.sql"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_patching() {
    let Some(pg) = Cluster::start() else { return };
    scratch_rerun_incremental(&pg.create_db("scratch").await).await;
    baseline(&pg.create_db("baseline").await).await;
    failing_patch_rolls_back(&pg.create_db("failing").await).await;
    refusals(&pg.create_db("refusals").await).await;

    // A failing first patch leaves the database as it was: no table, no record table.
    let url = pg.create_db("failfirst").await;
    let p = Patches::new();
    p.write(
        "0001_bad.sql",
        "CREATE TABLE t1 (x INTEGER);\nSELECT * FROM missing_table;\n",
    );
    assert_eq!(patch(&p.target(&url)).await.unwrap().outcome, "failed");
    assert!(tables(&url).await.is_empty());

    // A run that cannot get the lock within its timeout is refused, and applies nothing.
    let url = pg.create_db("locked").await;
    let p = Patches::new();
    p.write("0001_devices.sql", P1);
    let mut holder = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&url).await.unwrap()
    };
    let opts = RunOptions {
        lock_timeout: Duration::from_millis(500),
        ..RunOptions::default()
    };
    assert_eq!(
        db::patch(&p.target(&url), opts).await.unwrap().outcome,
        "applied"
    );
    // Hold the runners' advisory lock ("portcull") from another session.
    sqlx::query("SELECT pg_advisory_lock(8101820098873224300)")
        .execute(&mut holder)
        .await
        .unwrap();
    p.write("0002_seen.sql", P2);
    match db::patch(&p.target(&url), opts).await {
        Err(e @ DbError::LockTimeout(_)) => assert_eq!(e.exit_code(), 2),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert_eq!(columns_of_devices(&url).await, 2);

    let c = Patches::new();
    let url = pg.create_db("concurrent").await;
    tokio::task::spawn_blocking({
        let path = c.path().to_owned();
        move || concurrent_cli_runs(&path, &url, "SELECT pg_sleep(0.5);\n")
    })
    .await
    .unwrap();
    let c = Patches::new();
    let url = pg.create_db("cli").await;
    let path = c.path().to_owned();
    tokio::task::spawn_blocking(move || cli_exit_codes(&path, &url))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_patching() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    scratch_rerun_incremental(&url("scratch.db")).await;
    baseline(&url("baseline.db")).await;
    failing_patch_rolls_back(&url("failing.db")).await;
    refusals(&url("refusals.db")).await;

    let u = url("failfirst.db");
    let p = Patches::new();
    p.write(
        "0001_bad.sql",
        "CREATE TABLE t1 (x INTEGER);\nSELECT * FROM missing_table;\n",
    );
    assert_eq!(patch(&p.target(&u)).await.unwrap().outcome, "failed");
    assert!(tables(&u).await.is_empty());

    // Status never creates a database file: a missing one reads as empty.
    let none = url("absent.db");
    assert_eq!(
        db::status(&p.target(&none))
            .await
            .unwrap()
            .status
            .pending
            .len(),
        1
    );
    assert!(!dir.path().join("absent.db").exists());

    // Busy-loop SQL: a slow patch without a sleep function.
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT count(*) FROM c;\n";
    let c = Patches::new();
    let u = url("concurrent.db");
    let path = c.path().to_owned();
    tokio::task::spawn_blocking(move || concurrent_cli_runs(&path, &u, slow))
        .await
        .unwrap();
    let c = Patches::new();
    let u = url("cli.db");
    let path = c.path().to_owned();
    tokio::task::spawn_blocking(move || cli_exit_codes(&path, &u))
        .await
        .unwrap();
}
