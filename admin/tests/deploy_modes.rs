//! `install|upgrade|downgrade` choose their mode explicitly: a client of a running ADMIN by
//! default (the end-to-end test with an agent is agent/tests/deploy_cli.rs), materialising on
//! this host only with `--local`. The local-only flags without `--local` are a usage error
//! (exit 2) rather than a silent switch of mode, and an unreachable ADMIN is exit 1.

use std::process::{Command, Output};

fn admin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis-admin"))
        .args(args)
        .env_remove("PORTCULLIS_ADMIN_URL")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env("NO_PROXY", "*")
        .output()
        .unwrap()
}

fn failed(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn local_flags_need_local_and_local_needs_a_catalog() {
    let err = failed(
        &admin(&["upgrade", "tg.app1.1", "--to", "x", "--catalog", "c"]),
        2,
    );
    assert!(err.contains("--local"), "{err}");
    let err = failed(&admin(&["upgrade", "tg.app1.1", "--to", "x", "--local"]), 2);
    assert!(err.contains("--catalog"), "{err}");
    // A rolling change goes through ADMIN only.
    let err = failed(
        &admin(&[
            "upgrade",
            "--type",
            "tg",
            "--to",
            "x",
            "--local",
            "--catalog",
            "c",
        ]),
        2,
    );
    assert!(err.contains("--type") || err.contains("--local"), "{err}");
}

#[test]
fn an_unreachable_admin_is_exit_1() {
    // A port just released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = failed(
        &admin(&[
            "install",
            "tg.app1.1",
            "--to",
            "x",
            "--url",
            &url,
            "--timeout",
            "1s",
        ]),
        1,
    );
    assert!(err.contains(&url), "{err}");
}
