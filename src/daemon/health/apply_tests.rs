//! The daemon's health path against the kernel twin: a transition is applied as weight 0,
//! every new export is overlaid again (ADMIN stays the source of truth), and a service whose
//! every server is down fails open. The probes are simulated on the board: the tasks sleep
//! (interval 1 h) and real probing is tested in `probe.rs`, `checker.rs` and tests/health.rs.

use crate::apply::{RecordingConntrack, TwinFirewall};
use crate::daemon::config::{Config, Role};
use crate::daemon::health::probe::ProbeError;
use crate::daemon::Daemon;
use crate::model::health::{Probe, Target};
use std::time::Duration;

/// Two loopback real servers (nothing is ever sent anywhere else), both checked by TCP.
fn export(w1: u16, w2: u16) -> String {
    format!(
        "# portcullis-export 1.1\n\
         service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check\n\
         web,web.1,tcp,192.0.2.10,80,,127.0.0.11,8080,{w1},wlc,nat,,tcp\n\
         web,web.2,tcp,192.0.2.10,80,,127.0.0.12,8080,{w2},wlc,nat,,tcp\n"
    )
}

fn target(n: u8) -> Target {
    Target {
        endpoint: std::net::SocketAddr::from(([127, 0, 0, 10 + n], 8080)),
        probe: Probe::Tcp,
    }
}

fn weights(d: &Daemon<TwinFirewall, RecordingConntrack>) -> Vec<u16> {
    d.syncer
        .applied()
        .expect("applied")
        .services
        .values()
        .flat_map(|s| s.reals.iter().map(|(_, r)| r.weight))
        .collect()
}

/// `n` probe results for target `t` with the config's rise 2 / fall 3.
fn probes(d: &Daemon<TwinFirewall, RecordingConntrack>, t: u8, pass: bool, n: usize) {
    for _ in 0..n {
        let refused = ProbeError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        let result = if pass { Ok(()) } else { Err(&refused) };
        d.health
            .board()
            .record(&target(t), result, Duration::ZERO, 2, 3, 1);
    }
}

#[test]
fn transitions_drain_and_restore_and_every_export_is_overlaid_again() {
    let dir = crate::test_dir("health-apply");
    let source = dir.join("export.csv");
    let publish = |text: String| std::fs::write(&source, text).expect("write");
    publish(export(10, 10));
    let mut config = Config {
        source: Some(format!("file://{}", source.display()).into()),
        state_dir: dir.join("state"),
        role: Role::Active,
        ..Config::default()
    };
    config.health.interval = Duration::from_secs(3600);
    let mut d = Daemon::new(
        config,
        TwinFirewall::default(),
        RecordingConntrack::default(),
        crate::daemon::step_tests::options(&["eth0"]),
    )
    .expect("daemon");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(d.start());
    assert_eq!(weights(&d), [10, 10]);
    assert_eq!(d.health.probed(), 2);

    // web.1 fails three probes in a row: out.
    probes(&d, 1, false, 2);
    assert_eq!(
        d.on_health_change(),
        None,
        "two failures are not yet fall = 3"
    );
    probes(&d, 1, false, 1);
    assert!(matches!(
        d.on_health_change(),
        Some(crate::daemon::Step::Applied(_))
    ));
    assert_eq!(weights(&d), [0, 10]);
    assert_eq!(
        d.status().health.down,
        ["tcp 192.0.2.10:80 127.0.0.11:8080 (web.1)"]
    );

    // A new export is overlaid again: web.1 stays out while its check fails.
    publish(export(10, 20));
    rt.block_on(d.poll_once());
    assert_eq!(weights(&d), [0, 20]);

    // ADMIN drains web.1; its check recovering does not bring it back.
    publish(export(0, 20));
    rt.block_on(d.poll_once());
    probes(&d, 1, true, 2);
    d.on_health_change();
    assert_eq!(weights(&d), [0, 20]);
    assert!(d.status().health.down.is_empty());

    // ADMIN restores it, and it is up: its weight returns.
    publish(export(10, 20));
    rt.block_on(d.poll_once());
    assert_eq!(weights(&d), [10, 20]);

    // Both down: the service fails open, every server keeps its exported weight.
    probes(&d, 1, false, 3);
    probes(&d, 2, false, 3);
    d.on_health_change();
    assert_eq!(weights(&d), [10, 20]);
    assert_eq!(d.status().health.fail_open, ["tcp 192.0.2.10:80"]);
    // One comes back: the other is held down again.
    probes(&d, 2, true, 2);
    d.on_health_change();
    assert_eq!(weights(&d), [0, 20]);

    let journal = std::fs::read_to_string(dir.join("state/journal.jsonl")).expect("journal");
    let health_lines = journal
        .lines()
        .filter(|l| l.contains("\"result\":\"health\""))
        .count();
    // down, up, down, down, up.
    assert_eq!(health_lines, 5, "{journal}");
}
