//! `portcullis-admin install|upgrade|downgrade` as clients of a running ADMIN, end to end: the
//! built `portcullis-admin` binary against a real ADMIN (in process) and a real agent process
//! with the python test service. The command sets the version and waits for the agent's
//! report: exit 0 with a new process running the new version, 1 when the agent rolled back or
//! did not report within `--timeout`, 2 for a wrong token or an unknown version (nothing
//! changed).
//!
//! The ADMIN binary is another package's: it is taken from beside this package's agent binary
//! (`target/debug/`), where `cargo test --workspace` (CI, scripts/test) builds it. Alone, run
//! `cargo build -p portcullis-admin` first.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use support::*;

fn admin_binary() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_portcullis-agent"));
    let path = agent.with_file_name("portcullis-admin");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p portcullis-admin` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// `portcullis-admin ARGS… --url URL` with `token` in the environment; runs off the async
/// runtime's threads (the ADMIN it talks to is served from them).
async fn admin(url: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(admin_binary());
    cmd.args(args)
        .args(["--url", url])
        .env("PORTCULLIS_ADMIN_TOKEN", token)
        .env_remove("PORTCULLIS_ADMIN_URL")
        .env("NO_PROXY", "*");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn code(out: &Output, want: i32) -> String {
    let text = format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(want), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_downgrade_wait_for_the_agents_report() {
    let web = WebType::new("");
    let (dir, catalog, state) = (&web.dir, web.catalog.clone(), web.state.clone());
    let (v1, v2, broken) = (
        web.version("v1", false, 200),
        web.version("v2", false, 200),
        web.version("broken", true, 200),
    );
    inventory(&catalog, &[("a", &v1)]);
    let tokens = vec![("a".to_owned(), "token-a".to_owned())];
    let server = start_admin(&catalog, &state, &tokens, "127.0.0.1:0".parse().unwrap()).await;
    let url = server.url();
    let root = dir.path().join("root-a");
    let token_file = dir.path().join("token-a");
    std::fs::write(&token_file, "token-a\n").unwrap();
    let mut cleanup = Cleanup {
        agents: vec![spawn_agent(&url, "a", &root, &token_file)],
        roots: vec![root.clone()],
    };
    let id = "web.a.1";
    let first = pid(&until(&url, id, "v1 running", running(&v1)).await);

    // Upgrade: exit 0 once the agent reports v2 tested, on a new process.
    let out = admin(
        &url,
        ADMIN_TOKEN,
        &["upgrade", id, "--to", &v2, "--timeout", "60s"],
    )
    .await;
    let text = code(&out, 0);
    assert!(text.contains("ok"), "{text}");
    let v = instance(&url, id).await;
    assert!(running(&v2)(&v), "{v:#}");
    assert_ne!(pid(&v), first, "the upgrade restarted the service");

    // A version that exits at once: the agent rolls back, the command exits 1 with the report.
    let out = admin(
        &url,
        ADMIN_TOKEN,
        &["upgrade", id, "--to", &broken, "--json"],
    )
    .await;
    let text = code(&out, 1);
    assert!(text.contains("rolled-back"), "{text}");
    let v = until(&url, id, "v2 running again", running(&v2)).await;
    assert_eq!(v["version"], v2.as_str(), "the inventory went back too");
    // (The rollback restarted v2: this is its process now.)
    let restored = pid(&v);

    // Refused before anything changed: a wrong token, an unknown version (exit 2).
    code(
        &admin(&url, "wrong", &["downgrade", id, "--to", &v1]).await,
        2,
    );
    code(
        &admin(&url, ADMIN_TOKEN, &["upgrade", id, "--to", "web-nope_00"]).await,
        2,
    );
    assert_eq!(
        pid(&instance(&url, id).await),
        restored,
        "refusals restart nothing"
    );

    // No agent to report: ADMIN gives up after --timeout (504), the command exits 1 and the
    // inventory keeps the new version for the agent to apply when it comes back.
    for a in &mut cleanup.agents {
        a.kill().unwrap();
        a.wait().unwrap();
    }
    let out = admin(
        &url,
        ADMIN_TOKEN,
        &["downgrade", id, "--to", &v1, "--timeout", "1s"],
    )
    .await;
    let text = code(&out, 1);
    assert!(text.contains("timeout") || text.contains("504"), "{text}");
    assert_eq!(instance(&url, id).await["version"], v1.as_str());
    cleanup.agents = vec![spawn_agent(&url, "a", &root, &token_file)];
    until(
        &url,
        id,
        "v1 running after the agent's return",
        running(&v1),
    )
    .await;
    drop(cleanup);
}
