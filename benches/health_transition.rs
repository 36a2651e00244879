//! What a health transition costs the data plane (issue 17: at most 25 ms at 100k rows), on
//! the nft backend in a network namespace (needs root):
//!
//! - portcullis: the daemon's path for one real server found down (then up again) — the
//!   services the changed target touches, overlaid anew (`model::health::overlay_changes`),
//!   then `Syncer::sync_services` of those: diff, render of the increment, `nft -f`;
//! - floor: `nft -f` alone, of the very transaction that sync sends, in the same table;
//! - baseline: the seed's way, where any change is a reload of every row with
//!   `iptables-restore`.
//!
//! `cargo bench --bench health_transition` prints a table; `-- --quick` skips 100k rows.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/seed.rs"]
mod seed;
#[path = "summary.rs"]
mod summary;

use common::Netns;
use portcullis::apply::{ConntrackNetlink, Guard, NftCli, Syncer};
use portcullis::model::health::{
    by_target, overlay, overlay_changes, targets, ExportedChecks, ServiceOverlay, Target,
};
use portcullis::model::DesiredState;
use portcullis::render::nft::{incremental_between, Backend};
use portcullis_export::Check;
use seed::{baseline, median, ms, nft_file};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Times of one size: the transitions through portcullis, and nft alone for the same scripts.
struct Measured {
    down: Duration,
    up: Duration,
    floor: Duration,
}

/// `nft -f` of `script` in `ns`, timed.
fn nft_script(ns: &Netns, script: &str) -> Duration {
    let file = std::env::temp_dir().join(format!("pc-health-{}.nft", std::process::id()));
    std::fs::write(&file, script).expect("write script");
    let took = nft_file(ns, &file);
    let _ = std::fs::remove_file(&file);
    took
}

fn measure(reps: usize, exported: &DesiredState) -> Measured {
    let opts = common::render_options(Backend::Nft, &["eth0"]);
    // Every real server probed over TCP (the gateway's default); the first one fails.
    let probed = targets(exported, &ExportedChecks::default(), Some(&Check::Tcp));
    // The first serving server of a service with another one serving (the synthetic export
    // drains a few, and a service's last serving server is kept: it fails open).
    let victim: Target = probed
        .iter()
        .find(|((key, real), _)| {
            let reals = &exported.services[key].reals;
            let serving = reals.iter().filter(|(_, r)| r.weight > 0).count();
            serving >= 2 && reals.get(real).is_some_and(|r| r.weight > 0)
        })
        .map(|(_, target)| target.clone())
        .expect("a serving probed server");
    let down = BTreeSet::from([victim]);
    let ns = Netns::new("health");
    let mut s = Syncer::new(
        NftCli::in_netns(&ns.name),
        ConntrackNetlink::in_netns(&ns.name).expect("conntrack socket"),
        opts,
    );
    // The daemon's syncer has the withdrawal guard on.
    s.set_guard(Some(Guard::default()));
    s.sync(exported.clone()).expect("load");
    let (mut down_times, mut up_times, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let inverse = by_target(&probed);
    let up = BTreeSet::new();
    // As `Daemon::on_health_change` does: the services the changed targets touch, overlaid
    // anew, and a sync of those services only.
    let transition = |s: &mut Syncer<NftCli, ConntrackNetlink>, from, to| {
        let changes = overlay_changes(exported, &inverse, from, to);
        let held = changes
            .iter()
            .filter(|(_, _, effect)| matches!(effect, ServiceOverlay::HeldDown(_)))
            .count();
        let patch = changes.into_iter().map(|(k, svc, _)| (k, svc)).collect();
        s.sync_services(patch)
            .expect("a state is applied")
            .expect("transition");
        held
    };
    for _ in 0..reps {
        let t = Instant::now();
        let held = transition(&mut s, &up, &down);
        down_times.push(t.elapsed());
        assert_eq!(held, 1, "one server held down");

        let t = Instant::now();
        transition(&mut s, &down, &up);
        up_times.push(t.elapsed());
    }
    // The floor: the same down transaction by nft alone, then back up, in the same table.
    let held = overlay(exported, &probed, &down).state;
    for _ in 0..reps {
        let there = incremental_between(exported, &held, Backend::Nft).expect("no collision");
        let back = incremental_between(&held, exported, Backend::Nft).expect("no collision");
        floor.push(nft_script(&ns, &there.to_nft()));
        nft_script(&ns, &back.to_nft());
    }
    Measured {
        down: median(down_times),
        up: median(up_times),
        floor: median(floor),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !common::require_nft() {
        eprintln!("health_transition: needs root and nft; nothing measured");
        return;
    }
    let reps = if quick { 3 } else { 7 };
    println!("## A health transition on the nft backend (median of {reps})\n");
    println!("One real server found down (its weight 0 in the overlay), then up again, in a table of N rows (2 real servers per service, every server probed). Baseline: the seed's way, any change reloads every row with `iptables-restore`. {}.\n", seed::tuned_as_the_daemon());
    println!("| rows | portcullis: down | portcullis: up | floor: `nft -f` of the same increment | baseline: iptables-restore reload | baseline ÷ portcullis (down) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    for &rows_n in sizes {
        let rows = portcullis::synth::rows_with_services(rows_n / 2);
        let exported = DesiredState::from_rows(&rows);
        let m = measure(reps, &exported);
        let (_, reload) = baseline(reps.min(3), &rows, rows_n);
        println!(
            "| {rows_n} | {} | {} | {} | {} | {:.1}× |",
            ms(m.down),
            ms(m.up),
            ms(m.floor),
            ms(reload),
            reload.as_secs_f64() / m.down.as_secs_f64()
        );
        summary::times(
            "health",
            &format!("a real server found down → applied, {rows_n} rows"),
            m.down,
            "seed: reload everything with iptables-restore",
            reload,
        );
    }
}
