//! Two ADMIN replicas on one real PostgreSQL and the real gateway daemon (nft backend, in a
//! network namespace) whose `source` lists B then A: a drain posted to A reaches the kernel
//! through B; B SIGKILLed → the kernel's rules stay byte for byte (checked at every probe),
//! the daemon switches to A and A answers it within its request timeout, and a change posted
//! to A after that reaches the kernel.
//! Needs root, nft and PostgreSQL's server binaries: skipped loudly without them, failed
//! under CI=true.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../admin/tests/support/pg.rs"]
#[allow(dead_code)] // ADMIN's tests use the rest
mod pg;
#[path = "support/replicas.rs"]
mod replicas;

use replicas::{Admin, Gateway, INSTANCE};
use std::time::{Duration, Instant};

/// The daemon's `--request-timeout`: the bound on its switch to the surviving replica.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits (bounded) until the kernel's listing differs from `from`; returns it.
fn listing_changes(gw: &Gateway, from: &str, what: &str) -> String {
    common::wait_until(30, || Some(gw.listing()).filter(|l| l != from))
        .unwrap_or_else(|| panic!("{what} never reached the kernel:\n{}", gw.log()))
}

#[test]
fn a_killed_replica_leaves_the_rules_and_the_daemon_carries_on_with_the_other() {
    if !common::require_nft() {
        return;
    }
    let Some(pg) = pg::Cluster::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let host_url = runtime.block_on(pg.create_db("gateway"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../admin/example-catalog");
    replicas::admin_cli(&["catalog", "import", example, "--state", &host_url]);

    let ns = replicas::namespace("replicas");
    let logs = tempfile::tempdir().expect("temp dir");
    let state = pg.socket_url("gateway");
    let a = Admin::replica(&ns, &state, 8001, logs.path());
    let mut b = Admin::replica(&ns, &state, 8002, logs.path());
    let http = replicas::client(&ns.name);
    a.ready(&http);
    b.ready(&http);

    let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
    let gw = Gateway::start(&ns, &[&b.export_url(), &a.export_url()], &timeout);
    assert_eq!(gw.source(), Some(b.export_url()), "the first source is B");
    let served = gw.listing();
    assert!(served.contains("table inet portcullis"), "{served}");

    // 1. A drain posted to A reaches the kernel through B (NOTIFY wakes B's held poll).
    a.post(&http, INSTANCE, "drain");
    let drained = listing_changes(&gw, &served, "the drain posted to A");
    assert_eq!(
        gw.source(),
        Some(b.export_url()),
        "applied from B, sticky to it"
    );

    // 2. B killed with the daemon's long-poll held on it: the kernel's rules stay byte for
    // byte (checked at every probe), the daemon turns to A and A answers it (the failure
    // count back at 0) within its request timeout. A serves what B served, so fetching A's
    // export whole changes nothing.
    b.kill();
    let killed = Instant::now();
    let mut asked_a = None;
    let answered = common::wait_until(30, || {
        assert_eq!(gw.listing(), drained, "the rules changed while B was gone");
        let status = gw.status()?;
        if status["source"] != a.export_url() {
            return None;
        }
        asked_a.get_or_insert_with(|| killed.elapsed());
        (status["consecutive_failures"] == 0).then(|| killed.elapsed())
    });
    let Some(took) = answered else {
        panic!("A never answered the daemon:\n{}", gw.log())
    };
    eprintln!(
        "B killed -> the daemon asks A after {} ms, A has answered after {} ms",
        asked_a.unwrap_or(took).as_millis(),
        took.as_millis()
    );
    assert!(
        took <= REQUEST_TIMEOUT,
        "A answered after {took:?}, beyond the request timeout {REQUEST_TIMEOUT:?}"
    );
    assert_eq!(gw.listing(), drained, "rules unchanged across the switch");

    // 3. A change posted to A after that reaches the kernel: the undrain restores the table
    // as it was first served.
    a.post(&http, INSTANCE, "undrain");
    let undrained = listing_changes(&gw, &drained, "the undrain posted to A");
    assert_eq!(undrained, served, "undrained: the table as first served");
    assert_eq!(gw.source(), Some(a.export_url()));
    drop(gw);
    drop((a, b));
    drop(ns);
    drop(pg);
}
