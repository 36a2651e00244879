//! The agent must pull in neither ADMIN's HTTP server nor sqlx (issue 18): read from the
//! dependency graph cargo resolves, so a new path to them is caught too.

use std::process::Command;

#[test]
fn the_agent_links_neither_admin_nor_its_server_nor_sqlx() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "-p", "portcullis-agent"])
        .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"portcullis-agent-proto"),
        "the tree is read"
    );
    // (tower-http is there as reqwest's client middleware; axum is the server.)
    for unwanted in ["portcullis-admin", "axum", "sqlx", "sqlx-core"] {
        assert!(
            !crates.contains(&unwanted),
            "portcullis-agent depends on {unwanted}"
        );
    }
}
