//! Kernel-side cost of the nft backend, measured in network namespaces (needs root):
//!
//! 1. cold full apply and one-change incremental applies at 1k, 10k and 100k services, beside
//!    the raw floor — `nft -f` of the very same script, from a file — in the same run;
//! 2. new TCP connections per second from a client namespace through the gateway, with 10
//!    and 50k services in the map design, beside a naive chain of one DNAT rule per service.
//!
//! `cargo bench --bench nft_apply` prints a table; `-- --quick` skips 100k services;
//! `-- --svg FILE` also plots apply time against services. The baseline — the seed's
//! one-iptables-rule-per-row file reloaded by `iptables-restore` — needs Debian's `iptables`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/seed.rs"]
mod seed;
#[path = "support/shapes.rs"]
mod shapes;
#[path = "summary.rs"]
mod summary;

use common::lab::{Lab, VIP1};
use common::Netns;
use portcullis::apply::{ConntrackNetlink, NftCli, Syncer};
use portcullis::model::DesiredState;
use portcullis::render::nft::{full_ruleset, Backend};
use seed::{baseline, flipped, median, ms, nft_file};
use shapes::persistent_rows;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn state_with(n: usize) -> DesiredState {
    DesiredState::from_rows(&portcullis::synth::rows_with_services(n))
}

fn apply_table(reps: usize, sizes: &[usize]) -> Vec<ApplyRow> {
    println!("\n## Apply (nft backend, one namespace per cold run, median of {reps})\n");
    println!("Baseline: the seed's way — one iptables DNAT rule per export row, the whole file reloaded by `iptables-restore` on every change.\n");
    println!("| services | cold: raw `nft -f` floor | cold: portcullis full | ratio | cold: baseline iptables-restore | sync floor: nft add / delete 1 element | sync: drain 1 server (delete+add) | sync: add 1 service (adds) | 1 change: baseline reload | baseline ÷ portcullis (1 change) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    let opts = common::render_options(Backend::Nft, &["eth0"]);
    for &n in sizes {
        let rows = portcullis::synth::rows_with_services(n);
        let state = DesiredState::from_rows(&rows);
        let script = full_ruleset(&state, &opts).to_nft();
        let file = std::env::temp_dir().join(format!("pc-bench-{}-{n}.nft", std::process::id()));
        std::fs::write(&file, &script).expect("write script");

        let mut floor = Vec::new();
        let mut cold = Vec::new();
        for rep in 0..reps {
            let ns = Netns::new(&format!("floor{rep}"));
            floor.push(nft_file(&ns, &file));
            drop(ns);

            let ns = Netns::new(&format!("cold{rep}"));
            let mut s = Syncer::new(
                NftCli::in_netns(&ns.name),
                ConntrackNetlink::in_netns(&ns.name).expect("conntrack socket"),
                opts.clone(),
            );
            let st = state.clone();
            let t = Instant::now();
            s.sync(st).expect("cold apply");
            cold.push(t.elapsed());
        }
        // Incremental syncs against the loaded table.
        let ns = Netns::new("incr");
        let mut s = Syncer::new(
            NftCli::in_netns(&ns.name),
            ConntrackNetlink::in_netns(&ns.name).expect("conntrack socket"),
            opts.clone(),
        );
        s.sync(state.clone()).expect("load");
        let mut drain = Vec::new();
        let mut add = Vec::new();
        // The rows of one more service than the table has.
        let extra = portcullis::synth::rows_with_services(n + 1).split_off(2 * n);
        for round in 0..reps.max(5) {
            let next_rows = flipped(&rows, round);
            let next = DesiredState::from_rows(&next_rows);
            let t = Instant::now();
            s.sync(next).expect("drain");
            drain.push(t.elapsed());
            let grown = DesiredState::from_rows(next_rows.iter().chain(&extra));
            let t = Instant::now();
            s.sync(grown).expect("add");
            add.push(t.elapsed());
            s.sync(DesiredState::from_rows(&next_rows))
                .expect("shrink back");
        }
        // The floor for a sync: nft itself adding, then deleting, one balancing element.
        let (mut raw_add, mut raw_del) = (Vec::new(), Vec::new());
        for _ in 0..reps.max(5) {
            let one = "198.51.100.1 . tcp . 80 . 2013265920";
            for (verb, times, text) in [
                (
                    "add",
                    &mut raw_add,
                    format!("add element inet portcullis lb_real_v4 {{ {one} : 10.1.1.1 . 80 }}"),
                ),
                (
                    "delete",
                    &mut raw_del,
                    format!("delete element inet portcullis lb_real_v4 {{ {one} }}"),
                ),
            ] {
                let (took, out) = seed::run_in(&ns, "nft", &[text.as_ref()]);
                times.push(took);
                assert!(
                    out.status.success(),
                    "{verb}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let (f, c) = (median(floor), median(cold));
        let (base_cold, base_reload) = baseline(reps, &rows, n);
        let drain = median(drain);
        println!(
            "| {n} | {} | {} | {:.2}× | {} | {} / {} | {} | {} | {} | {:.1}× |",
            ms(f),
            ms(c),
            c.as_secs_f64() / f.as_secs_f64(),
            ms(base_cold),
            ms(median(raw_add)),
            ms(median(raw_del)),
            ms(drain),
            ms(median(add)),
            ms(base_reload),
            base_reload.as_secs_f64() / drain.as_secs_f64()
        );
        for (what, ours, baseline, theirs) in [
            ("cold full apply", c, "raw `nft -f` of the same script", f),
            (
                "cold full apply",
                c,
                "seed: iptables-restore, one rule per row",
                base_cold,
            ),
            (
                "one change (drain a server)",
                drain,
                "seed: reload everything with iptables-restore",
                base_reload,
            ),
        ] {
            let what = format!("{what}, {n} services");
            summary::times("nft apply", &what, ours, baseline, theirs);
        }
        results.push(ApplyRow {
            services: n,
            floor: f,
            cold: c,
            baseline_cold: base_cold,
            one_change: drain,
            baseline_one_change: base_reload,
        });
        let _ = std::fs::remove_file(&file);
    }
    results
}

/// The worst case of the earlier interval layout: draining one of 40 servers of a persistent
/// service moved every slot boundary of that service (~40 interval-element deletions, each
/// costing in proportion to the whole map). With exact-match buckets the drain deletes and
/// re-adds only the drained server's buckets (about 1/40 of the service's 193).
fn persistent_drain_table(reps: usize, sizes: &[usize]) {
    println!("\n## Worst case: drain 1 of 40 servers of a persistent service (nft backend, median of {reps})\n");
    println!("| rows (40 servers per service) | portcullis: the drain | baseline: iptables-restore reload | baseline ÷ portcullis |");
    println!("|---:|---:|---:|---:|");
    let opts = common::render_options(Backend::Nft, &["eth0"]);
    for &n in sizes {
        let rows = persistent_rows(n, None);
        let drained = DesiredState::from_rows(&persistent_rows(n, Some(1)));
        let ns = Netns::new("persist");
        let mut s = Syncer::new(
            NftCli::in_netns(&ns.name),
            ConntrackNetlink::in_netns(&ns.name).expect("conntrack socket"),
            opts.clone(),
        );
        s.sync(DesiredState::from_rows(&rows)).expect("load");
        let mut times = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            s.sync(drained.clone()).expect("drain");
            times.push(t.elapsed());
            s.sync(DesiredState::from_rows(&rows)).expect("undrain");
        }
        drop(ns);
        let ours = median(times);
        let (_, reload) = baseline(reps, &rows, n + 1);
        println!(
            "| {n} | {} | {} | {:.2}× |",
            ms(ours),
            ms(reload),
            reload.as_secs_f64() / ours.as_secs_f64()
        );
        summary::times(
            "nft apply",
            &format!("worst case: drain 1 of 40 servers of a persistent service, {n} rows"),
            ours,
            "seed: reload everything with iptables-restore",
            reload,
        );
    }
}

/// One size's results, for the plots.
struct ApplyRow {
    services: usize,
    floor: Duration,
    cold: Duration,
    baseline_cold: Duration,
    one_change: Duration,
    baseline_one_change: Duration,
}

/// Apply time against the number of services, log-log: portcullis, the raw nft floor and the
/// iptables-restore baseline, cold and for one change.
fn plot(results: &[ApplyRow], path: &std::path::Path) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (820, 480)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let secs = |d: Duration| d.as_secs_f64().max(1e-4);
    let max_n = results.iter().map(|r| r.services).max().unwrap_or(1) as f64;
    let max_t = results
        .iter()
        .map(|r| {
            secs(r.baseline_cold)
                .max(secs(r.baseline_one_change))
                .max(secs(r.cold))
        })
        .fold(0.01, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Apply time vs services (nft backend)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (500f64..max_n * 1.5).log_scale(),
            (0.001f64..max_t * 2.0).log_scale(),
        )
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("virtual services")
        .y_desc("seconds")
        .x_label_formatter(&|n| human_count(*n))
        .y_label_formatter(&|s| human_seconds(*s))
        .draw()
        .expect("mesh");
    type Series = (&'static str, RGBColor, fn(&ApplyRow) -> Duration);
    let series: [Series; 5] = [
        ("baseline: iptables-restore, cold", RED, |r| r.baseline_cold),
        ("baseline: iptables-restore, 1 change", MAGENTA, |r| {
            r.baseline_one_change
        }),
        ("raw nft -f floor, cold", BLACK, |r| r.floor),
        ("portcullis, cold full", BLUE, |r| r.cold),
        ("portcullis, 1 change (incremental)", GREEN, |r| {
            r.one_change
        }),
    ];
    for (label, color, get) in series {
        let points: Vec<(f64, f64)> = results
            .iter()
            .map(|r| (r.services as f64, secs(get(r))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .expect("line")
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .expect("points");
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .expect("legend");
    root.present().expect("write svg");
    println!("\nplot: {}", path.display());
}

/// 1000 → "1k", 100000 → "100k": plotters' log axis otherwise prints raw floats.
fn human_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn human_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

/// Connections per second from the client through the gateway during `window`.
fn connection_rate(lab: &Lab, vip: &str, port: u16, window: Duration) -> f64 {
    let addr: SocketAddr = format!("{vip}:{port}").parse().expect("addr");
    common::lab::in_netns(&lab.client.name, move || {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < window {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("connect");
            c.write_all(b"who\n").expect("write");
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line).expect("read");
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// The naive design: one DNAT rule per service in one chain, the probed service last.
fn naive_table(n: usize) -> String {
    let mut s = String::from(
        "add table inet naive\nadd chain inet naive pre { type nat hook prerouting priority dstnat; policy accept; }\n",
    );
    for (key, _) in state_with(n - 1).services.iter() {
        if let portcullis::model::ServiceKey::Addr { vip, port, .. } = key {
            s.push_str(&format!("add rule inet naive pre ip daddr {vip} tcp dport {port} dnat ip to 10.200.1.2:8080\n"));
        }
    }
    s.push_str(&format!(
        "add rule inet naive pre ip daddr {VIP1} tcp dport 80 dnat ip to 10.200.1.2:8080\n"
    ));
    s
}

/// A lab whose client can open connections quickly and many times over.
fn rate_lab(tag: &str) -> Lab {
    let lab = Lab::new(tag, 1);
    lab.client
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]);
    lab.client
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    lab
}

fn rate_table(sizes: &[usize], window: Duration) {
    println!(
        "\n## New TCP connections per second through the gateway ({}s per cell)\n",
        window.as_secs()
    );
    println!("| services | map design (portcullis) | naive: one rule per service | map / naive |");
    println!("|---:|---:|---:|---:|");
    let opts = common::render_options(Backend::Nft, &["g0"]);
    for &n in sizes {
        // Each design in a lab of its own, so neither inherits the other's connection state.
        let naive = {
            let lab = rate_lab(&format!("naive{n}"));
            let mut child = Command::new("ip")
                .args(["netns", "exec", &lab.gw.name, "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(naive_table(n).as_bytes())
                .expect("write");
            assert!(child.wait().expect("nft").success());
            connection_rate(&lab, VIP1, 80, window)
        };
        let map = {
            let lab = rate_lab(&format!("map{n}"));
            let mut rows = portcullis::synth::rows_with_services(n - 1);
            let probe = format!(
                "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n\
                 web,web.1,tcp,{VIP1},80,,10.200.1.2,8080,1,rr,nat,\n"
            );
            rows.extend(
                portcullis_export::parse(probe.as_bytes())
                    .expect("valid")
                    .rows(),
            );
            let mut s = Syncer::new(
                NftCli::in_netns(&lab.gw.name),
                ConntrackNetlink::in_netns(&lab.gw.name).expect("conntrack socket"),
                opts.clone(),
            );
            s.sync(DesiredState::from_rows(&rows)).expect("apply");
            connection_rate(&lab, VIP1, 80, window)
        };
        println!("| {n} | {map:.0}/s | {naive:.0}/s | {:.2}× |", map / naive);
        summary::record(
            "data plane",
            &format!("new TCP connections/s through the gateway, {n} services"),
            &format!("{map:.0}/s (maps)"),
            Some(("one DNAT rule per service", &format!("{naive:.0}/s"))),
            summary::factor(map, naive, summary::Better::Higher),
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !common::require_nft() {
        eprintln!("nft_apply: needs root and nft; nothing measured");
        return;
    }
    println!("# portcullis nft backend: apply and data-plane benchmark");
    println!("{}", seed::machine());
    println!("{}", seed::tuned_as_the_daemon());
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let results = apply_table(3, sizes);
    if let Some(path) = std::env::args().skip_while(|a| a != "--svg").nth(1) {
        plot(&results, std::path::Path::new(&path));
    }
    persistent_drain_table(3, sizes);
    rate_table(
        &[10, 50_000],
        Duration::from_secs(if quick { 1 } else { 3 }),
    );
}
