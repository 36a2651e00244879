//! The `portcullis-admin` binary: exit codes and outputs of check, export and config.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
}

fn example() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/example-catalog")
}

#[test]
fn check_exits_0_for_the_example_and_2_with_located_errors() {
    let out = bin().args(["check", example()]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("meta")).unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        "locations: {}\nservers: {}\ninstances:\n  - { type: web, server: s1 }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("meta/web.yaml"),
        "type: web\nsort-order: early\n",
    )
    .unwrap();
    let out = bin().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("meta/web.yaml:2:13: sort-order: expected an integer"),
        "{err}"
    );
    assert!(
        err.contains("inventory.yaml:4:5: instances[0].server: unknown server \"s1\""),
        "{err}"
    );
    let out = bin()
        .arg("check")
        .arg("--json")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"][0]["kind"], "unknown-reference");
    assert_eq!(v["errors"][0]["line"], 4);
}

#[test]
fn export_and_config_print_the_derivations() {
    let out = bin().args(["export", example()]).output().unwrap();
    assert!(out.status.success());
    let golden =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/export.csv"))
            .unwrap();
    assert_eq!(out.stdout, golden);
    let out = bin()
        .args(["config", example(), "pgw", "app2", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let golden = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/config/pgw.app2.1.yaml"),
    )
    .unwrap();
    assert_eq!(out.stdout, golden);
    let out = bin()
        .args(["config", example(), "pgw", "app2", "1", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["http"]["listen"], "0.0.0.0:9443");
    let out = bin()
        .args(["config", example(), "pgw", "app9", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn duration_flags_take_humantime_and_name_the_flag_when_refused() {
    // humantime wants a unit: the plain number the old parser read as seconds is refused by
    // clap, with the flag named, before anything starts. (The missing token file makes a
    // regression fail with another message instead of serving forever.)
    let serve = |interval: &str| {
        bin()
            .args(["serve", "--catalog", example(), "--listen", "127.0.0.1:0"])
            .args([
                "--token-file",
                "/nonexistent/token",
                "--reload-interval",
                interval,
            ])
            .output()
            .unwrap()
    };
    let out = serve("30");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'--reload-interval <RELOAD_INTERVAL>'"),
        "{err}"
    );
    // A zero interval parses but would make the reloader spin.
    let out = serve("0s");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("portcullis-admin: --reload-interval: must be more than zero"),
        "{err}"
    );
}

#[test]
fn failures_are_reported_once_with_the_program_name() {
    let out = bin()
        .args(["config", example(), "pgw", "app9", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("portcullis-admin: ").count(), 1, "{err}");
    assert!(err.contains("no instance pgw.app9.1 in "), "{err}");
}

/// `--auth-reads` without a token would serve every read to anyone: refused at start.
#[test]
fn auth_reads_without_a_token_file_is_refused() {
    let out = bin()
        .args([
            "serve",
            "--catalog",
            example(),
            "--auth-reads",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--token-file"), "{err}");
}
