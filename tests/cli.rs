//! The netops commands as an operator runs them: exit codes, where output goes, JSON shapes.

mod common;

use common::repo;
use std::process::{Command, Output};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(repo())
        .env_remove("PORTCULLIS_LOG")
        .output()
        .expect("run portcullis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_accepts_the_examples() {
    for f in [
        "rules/examples/export.csv",
        "rules/examples/export-next.csv",
    ] {
        let out = portcullis(&["check", f]);
        assert_eq!(out.status.code(), Some(0), "{f}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("valid"));
    }
    let out = portcullis(&["check", "--json", "rules/examples/export.csv"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["services"], 5);
}

#[test]
fn check_rejects_every_bad_export_with_located_errors_on_stderr() {
    let dir = repo().join("export/tests/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("catalog") {
        let path = entry.expect("entry").path();
        let out = portcullis(&["check", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert!(out.stdout.is_empty(), "errors belong on stderr");
        let err = text(&out.stderr);
        assert!(
            err.contains(": line "),
            "{}: unlocated: {err}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 25);
}

#[test]
fn check_json_lists_errors() {
    let out = portcullis(&[
        "check",
        "--json",
        "export/tests/bad/46-every-error-reported.csv",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 5);
    assert_eq!(errors[0]["line"], 7);
    assert_eq!(errors[0]["column"]["name"], "proto");
    assert_eq!(errors[0]["kind"], "bad-value");
}

#[test]
fn render_formats() {
    let nft = portcullis(&["render", "--source", "rules/examples/export.csv"]);
    assert_eq!(nft.status.code(), Some(0));
    assert!(
        text(&nft.stdout).starts_with("add table inet portcullis\ndelete table inet portcullis\n")
    );
    let ipvs = portcullis(&[
        "render",
        "--source",
        "rules/examples/export.csv",
        "--format",
        "ipvsadm",
    ]);
    assert!(text(&ipvs.stdout).contains("-A -f 7 -s sh\n"));
    let json = portcullis(&["render", "--source", "rules/examples/export.csv", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["services"].as_array().map(Vec::len), Some(5));
    let inc = portcullis(&[
        "render",
        "--source",
        "rules/examples/export-next.csv",
        "--incremental-from",
        "rules/examples/export.csv",
    ]);
    assert_eq!(inc.status.code(), Some(0));
    assert!(
        !text(&inc.stdout).contains("table"),
        "incremental must not touch the table"
    );
}

#[test]
fn render_refuses_bad_input_and_bad_options_without_output() {
    let bad = portcullis(&[
        "render",
        "--source",
        "export/tests/bad/01-service-injection.csv",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        bad.stdout.is_empty(),
        "a rejected export must never reach a renderer"
    );
    let iface = portcullis(&[
        "render",
        "--source",
        "rules/examples/export.csv",
        "--external-iface",
        "eth0\"; flush",
    ]);
    assert_eq!(iface.status.code(), Some(2));
    assert!(iface.stdout.is_empty());
    let missing = portcullis(&["render", "--source", "no/such/file.csv"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no/such/file.csv"));
}

#[test]
fn diff_exit_codes_follow_diff1() {
    let same = portcullis(&[
        "diff",
        "rules/examples/export.csv",
        "rules/examples/export.csv",
    ]);
    assert_eq!(same.status.code(), Some(0));
    assert!(same.stdout.is_empty());
    let changed = portcullis(&[
        "diff",
        "rules/examples/export.csv",
        "rules/examples/export-next.csv",
    ]);
    assert_eq!(changed.status.code(), Some(1));
    let out = text(&changed.stdout);
    assert!(
        out.contains("~ real 10.10.1.12:8080 weight 100 -> 0 (pgw.app2.1)"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no colour when stdout is not a TTY");
    let coloured = portcullis(&[
        "diff",
        "--color",
        "always",
        "rules/examples/export.csv",
        "rules/examples/export-next.csv",
    ]);
    assert!(text(&coloured.stdout).contains('\x1b'));
    let json = portcullis(&[
        "diff",
        "--json",
        "rules/examples/export.csv",
        "rules/examples/export-next.csv",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["summary"]["services_added"], 1);
    let bad = portcullis(&[
        "diff",
        "rules/examples/export.csv",
        "export/tests/bad/07-vport-too-big.csv",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn reads_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let csv = std::fs::read(repo().join("rules/examples/export.csv")).expect("example");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&csv)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn synth_writes_a_valid_export_of_the_requested_size() {
    let out = portcullis(&["synth", "--rows", "777"]);
    assert_eq!(out.status.code(), Some(0));
    let export = portcullis_export::parse(&out.stdout).expect("valid synthetic export");
    assert_eq!(export.records.len(), 777);
}

#[test]
fn large_exports_are_parsed_in_parallel_with_exact_line_numbers() {
    // Big enough (> 512 KiB) for the parser to split the body between threads.
    let rows = portcullis::synth::rows(20_000);
    let text = portcullis_export::to_string(&rows).expect("valid");
    assert!(text.len() > 1024 * 1024);
    let export = portcullis_export::parse(text.as_bytes()).expect("valid");
    let lines: Vec<&str> = text.lines().collect();
    for rec in &export.records {
        let line = lines[rec.line as usize - 1];
        assert!(
            line.contains(&format!(",{},", rec.row.instance)),
            "line {} is {line:?}",
            rec.line
        );
    }
    // Damage one row in each half: both are reported at their own lines.
    // (Plain pgw rows, so no follow-on errors about fwmark frontends.)
    let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let targets: Vec<usize> = [5_000usize, 17_321]
        .iter()
        .map(|&n| {
            n + lines[n - 1..]
                .iter()
                .position(|l| l.starts_with("pgw,"))
                .expect("a pgw row")
        })
        .collect();
    for &n in &targets {
        damaged[n - 1] = damaged[n - 1].replacen(",tcp,", ",sctp,", 1);
    }
    let errors = portcullis_export::parse(damaged.join("\n").as_bytes()).expect_err("damaged");
    let at: Vec<u64> = errors.errors.iter().map(|e| e.line).collect();
    assert_eq!(
        at,
        targets.iter().map(|&n| n as u64).collect::<Vec<_>>(),
        "{errors}"
    );
}

/// A one-thread HTTP server on loopback answering every request with `status` and `body`.
fn serve_once_per_request(status: &'static str, body: Vec<u8>, requests: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming().take(requests).flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}/export.csv")
}

#[test]
fn sources_can_be_urls() {
    let csv = std::fs::read(repo().join("rules/examples/export.csv")).expect("example");
    let url = serve_once_per_request("200 OK", csv, 2);
    let out = portcullis(&["check", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = portcullis(&["render", "--source", &url, "--format", "ipvsadm"]);
    assert!(text(&out.stdout).contains("-A -f 7 -s sh"));

    let missing = serve_once_per_request("404 Not Found", b"nope".to_vec(), 1);
    let out = portcullis(&["check", &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("HTTP 404"),
        "{}",
        text(&out.stderr)
    );

    let file_url = format!(
        "file://{}",
        repo().join("rules/examples/export.csv").display()
    );
    assert_eq!(portcullis(&["check", &file_url]).status.code(), Some(0));
}

/// Issue 16 item 7: `check /dev/zero` grew without bound; a file over the cap is refused with
/// exit 2 before it is read whole.
#[test]
fn inputs_over_the_size_cap_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "/dev/zero"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dev/zero: export larger than 67108864 bytes, refused"),
        "{err}"
    );
}

#[test]
fn sync_config_renders_conntrackd_from_the_sync_section() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = dir.path().join("portcullis.toml");
    std::fs::write(
        &toml,
        "backend = \"nft\"\n[sync]\ninterface = \"eth2\"\nlocal_address = \"192.168.250.1\"\n\
         peer_address = \"192.168.250.2\"\n",
    )
    .expect("write config");
    let toml = toml.to_str().expect("utf-8 path");
    let out = portcullis(&["sync-config", "--config", toml]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let conf = text(&out.stdout);
    assert!(
        conf.contains("IPv4_Destination_Address 192.168.250.2") && conf.contains("Interface eth2"),
        "{conf}"
    );
    // -o writes the same text to the file, nothing to stdout.
    let target = dir.path().join("conntrackd.conf");
    let target_arg = target.to_str().expect("utf-8 path");
    let out = portcullis(&["sync-config", "--config", toml, "-o", target_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&target).expect("written"), conf);
    // A file without [sync] is a usage error (2), and the old output stays.
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "backend = \"nft\"\n").expect("write config");
    let bare = bare.to_str().expect("utf-8 path");
    let out = portcullis(&["sync-config", "--config", bare, "-o", target_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("[sync]"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&target).expect("kept"), conf);
}

/// `portcullis status | head -1` and friends: a reader that goes away is not an error. The
/// pipe's read end is closed before the command writes, so its write fails with EPIPE (Rust
/// ignores SIGPIPE), where `println!` used to panic with exit status 101.
#[test]
fn status_and_log_end_quietly_when_the_reader_went_away() {
    use portcullis::daemon::journal::{Entry, Journal, Status};
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = Journal::new(dir.path());
    journal
        .write_status(&Status {
            role: "active".into(),
            source: "file:///nowhere.csv".into(),
            ..Status::default()
        })
        .expect("status");
    journal
        .append(&Entry {
            time_unix: 1,
            etag: None,
            result: "applied".into(),
            detail: "a change".into(),
            summary: None,
            duration_ms: 1.0,
        })
        .expect("journal");
    let state_dir = dir.path().to_str().expect("utf-8 path");
    // An empty configuration: no [sync] section to query.
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "").expect("config");
    let config = config.to_str().expect("utf-8 path");
    for args in [
        vec!["status", "--state-dir", state_dir, "--config", config],
        vec![
            "status",
            "--json",
            "--state-dir",
            state_dir,
            "--config",
            config,
        ],
        vec!["log", "--state-dir", state_dir],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run portcullis");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
