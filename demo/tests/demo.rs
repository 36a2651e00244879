//! `portcullis-demo`, the README's run command: ADMIN in-process, the daemon long-polling it,
//! and the scripted drain flowing through — on the twin, and (root) into a real namespace.

// The gateway's test helpers (require_nft): shared, not copied.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;

fn demo(extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-demo"))
        .args(["--pace", "300ms"])
        .args(extra)
        .output()
        .expect("portcullis-demo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn assert_the_story(text: &str) {
    let order = [
        "applied the export (full table)",
        "pgw.app1.1 drained",
        "weight 1 -> 0 (pgw.app1.1)",
        "pgw.app1.1 back in production",
        "weight 0 -> 1 (pgw.app1.1)",
        "pgw.app1.1 in maintenance",
        "- real 10.0.1.11:9080",
        "+ real 10.0.1.11:9080",
    ];
    let mut at = 0;
    for step in order {
        match text[at..].find(step) {
            Some(i) => at += i + step.len(),
            None => panic!("expected {step:?} after byte {at} of:\n{text}"),
        }
    }
}

#[test]
fn the_demo_shows_a_drain_flowing_from_admin_to_the_rules() {
    let (ok, text) = demo(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("in-memory twin"), "{text}");
    assert_the_story(&text);
}

#[test]
fn the_demo_applies_into_a_real_namespace_with_netns() {
    if !common::require_nft() {
        return;
    }
    let (ok, text) = demo(&["--netns"]);
    assert!(ok, "{text}");
    assert_the_story(&text);
    assert!(
        text.contains("the kernel's table inet portcullis"),
        "{text}"
    );
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains("portcullis-demo-"),
        "the namespace is removed"
    );
}
