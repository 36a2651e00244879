//! IPVS against a real kernel. The host has no IPVS, so this test boots Debian's kernel under
//! qemu (tests/vm/run.sh) and runs inside it: this binary's client checks (below, when
//! `PORTCULLIS_VM_GUEST` is set) and tests/vm/guest.sh (portcullis apply, ipvsadm-save,
//! traffic between namespaces, drains). `PORTCULLIS_VM_MODE=bench` runs tests/vm/bench.sh.

use portcullis::apply::ipvs::{
    desired_table, Balancer, Dest, DestId, IpvsNetlink, IpvsOp, IpvsSync, Ownership, Scope,
    Service, ServiceId, SyncDaemon, Timeouts,
};
use portcullis::model::DesiredState;
use portcullis_export::{Method, Proto};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    if let Some(csv) = std::env::var_os("PORTCULLIS_VM_BENCH") {
        return bench(std::path::Path::new(&csv));
    }
    if std::env::var_os("PORTCULLIS_VM_GUEST").is_some() {
        return guest();
    }
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list`: one test.
        println!("ipvs_vm: test");
        return ExitCode::SUCCESS;
    }
    host()
}

fn host() -> ExitCode {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/run.sh");
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ipvs_vm: cannot find my own binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mode = std::env::var("PORTCULLIS_VM_MODE").unwrap_or_else(|_| "checks".into());
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(script)
        .arg(&me)
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .arg(&mode)
        .status();
    match status {
        Ok(s) if s.success() => {
            println!(
                "test ipvs_vm ... ok ({:.1}s)\n\ntest result: ok. 1 passed; 0 failed",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Ok(s) => {
            eprintln!("ipvs_vm: the VM suite failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ipvs_vm: cannot run {script}: {e}");
            ExitCode::FAILURE
        }
    }
}

type Check = fn() -> Result<(), String>;

/// Runs in the guest, as root, with IPVS loaded and an empty table.
fn guest() -> ExitCode {
    let checks: &[(&str, Check)] = &[
        ("client-tcp-service-and-dests", tcp_service_and_dests),
        ("client-udp-ipv6-service", udp_ipv6_service),
        ("client-fwmark-services-v4-v6", fwmark_services),
        ("client-batch-reports-each-refusal", batch_refusals),
        ("client-timeouts", timeouts),
        ("client-sync-daemon", sync_daemon),
        ("reconcile-synthetic-export-roundtrip", reconcile_roundtrip),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        let started = Instant::now();
        let result = check();
        // Every check starts from an empty table.
        if let Ok(mut nl) = IpvsNetlink::open() {
            let _ = nl.flush();
        }
        match result {
            Ok(()) => println!("{name} PASS ({:.2}s)", started.elapsed().as_secs_f64()),
            Err(why) => {
                failed += 1;
                println!("{name} FAIL {why}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn e<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err}")
}

fn ensure(cond: bool, what: String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what)
    }
}

fn find(nl: &mut IpvsNetlink, id: ServiceId) -> Result<Option<Service>, String> {
    Ok(nl
        .services()
        .map_err(e("list"))?
        .into_iter()
        .find(|s| s.id == id))
}

fn dests(nl: &mut IpvsNetlink, id: ServiceId) -> Result<Vec<Dest>, String> {
    let mut d = nl.dests(id).map_err(e("list dests"))?;
    d.sort_by_key(|d| d.id);
    Ok(d)
}

fn tcp_service_and_dests() -> Result<(), String> {
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    let id = ServiceId::Addr {
        proto: Proto::Tcp,
        addr: "192.0.2.10".parse().map_err(e("ip"))?,
        port: 443,
    };
    let mut svc = Service {
        id,
        scheduler: "wlc".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    nl.new_service(&svc).map_err(e("add service"))?;
    let got = find(&mut nl, id)?.ok_or("service not listed after add")?;
    ensure(got.same_settings(&svc), format!("read back {got:?}"))?;
    // Edit: scheduler and persistence with a /24 netmask.
    svc.scheduler = "sh".into();
    svc.flags = 1;
    svc.timeout = 600;
    svc.netmask = 0xffff_ff00;
    nl.set_service(&svc).map_err(e("edit service"))?;
    let got = find(&mut nl, id)?.ok_or("service gone after edit")?;
    ensure(
        got.same_settings(&svc),
        format!("edit not read back: {got:?}"),
    )?;
    // Destinations: each forwarding method, thresholds.
    let mut nat = Dest::new(
        DestId {
            addr: "10.10.1.11".parse().map_err(e("ip"))?,
            port: 8443,
        },
        Method::Nat,
        100,
    );
    nat.u_thresh = 500;
    nat.l_thresh = 100;
    let dr = Dest::new(
        DestId {
            addr: "10.10.1.12".parse().map_err(e("ip"))?,
            port: 443,
        },
        Method::Dr,
        50,
    );
    let tun = Dest::new(
        DestId {
            addr: "10.10.1.13".parse().map_err(e("ip"))?,
            port: 443,
        },
        Method::Tun,
        1,
    );
    for d in [&nat, &dr, &tun] {
        nl.new_dest(id, d).map_err(e("add dest"))?;
    }
    let got = dests(&mut nl, id)?;
    ensure(
        got.len() == 3
            && got[0].same_settings(&nat)
            && got[1].same_settings(&dr)
            && got[2].same_settings(&tun),
        format!("dests read back as {got:?}"),
    )?;
    // Edit a weight, then delete one destination and the service.
    let mut heavier = dr.clone();
    heavier.weight = 7;
    nl.set_dest(id, &heavier).map_err(e("edit dest"))?;
    let got = dests(&mut nl, id)?;
    ensure(got[1].weight == 7, format!("weight not edited: {got:?}"))?;
    nl.del_dest(id, nat.id).map_err(e("delete dest"))?;
    ensure(dests(&mut nl, id)?.len() == 2, "dest not deleted".into())?;
    nl.del_service(id).map_err(e("delete service"))?;
    ensure(find(&mut nl, id)?.is_none(), "service not deleted".into())
}

fn udp_ipv6_service() -> Result<(), String> {
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    let id = ServiceId::Addr {
        proto: Proto::Udp,
        addr: "2001:db8::514".parse().map_err(e("ip"))?,
        port: 514,
    };
    let svc = Service {
        id,
        scheduler: "rr".into(),
        flags: 1,
        timeout: 120,
        netmask: 64,
    };
    nl.new_service(&svc).map_err(e("add"))?;
    let d = Dest::new(
        DestId {
            addr: "fd00:10::61".parse().map_err(e("ip"))?,
            port: 5514,
        },
        Method::Nat,
        2,
    );
    nl.new_dest(id, &d).map_err(e("add dest"))?;
    let got = find(&mut nl, id)?.ok_or("not listed")?;
    ensure(got.same_settings(&svc), format!("read back {got:?}"))?;
    let got = dests(&mut nl, id)?;
    ensure(
        got.len() == 1 && got[0].same_settings(&d) && got[0].id == d.id,
        format!("dest {got:?}"),
    )?;
    nl.del_service(id).map_err(e("delete"))?;
    ensure(find(&mut nl, id)?.is_none(), "not deleted".into())
}

fn fwmark_services() -> Result<(), String> {
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    for ipv6 in [false, true] {
        let id = ServiceId::Fwmark { mark: 7, ipv6 };
        let svc = Service {
            id,
            scheduler: "sh".into(),
            flags: 0,
            timeout: 0,
            netmask: if ipv6 { 128 } else { u32::MAX },
        };
        nl.new_service(&svc).map_err(e("add fwmark"))?;
        let real: std::net::IpAddr = if ipv6 {
            "fd00:10::21".parse().map_err(e("ip"))?
        } else {
            "10.10.2.21".parse().map_err(e("ip"))?
        };
        // Port 0: the client's destination port is kept.
        let d = Dest::new(
            DestId {
                addr: real,
                port: 0,
            },
            Method::Nat,
            10,
        );
        nl.new_dest(id, &d).map_err(e("add dest"))?;
        let got = dests(&mut nl, id)?;
        ensure(
            got.len() == 1 && got[0].id == d.id && got[0].weight == 10,
            format!("dests {got:?}"),
        )?;
    }
    let listed: Vec<ServiceId> = nl
        .services()
        .map_err(e("list"))?
        .into_iter()
        .map(|s| s.id)
        .collect();
    ensure(
        listed.contains(&ServiceId::Fwmark {
            mark: 7,
            ipv6: false,
        }) && listed.contains(&ServiceId::Fwmark {
            mark: 7,
            ipv6: true,
        }),
        format!("listed {listed:?}"),
    )?;
    nl.del_service(ServiceId::Fwmark {
        mark: 7,
        ipv6: true,
    })
    .map_err(e("delete v6"))?;
    let left = nl.services().map_err(e("list"))?;
    ensure(
        left.len() == 1 && !left[0].id.is_ipv6(),
        format!("left {left:?}"),
    )
}

fn batch_refusals() -> Result<(), String> {
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    let svc = |port| Service {
        id: ServiceId::Addr {
            proto: Proto::Tcp,
            addr: "198.18.0.1".parse().expect("literal"),
            port,
        },
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: u32::MAX,
    };
    let ops = vec![
        IpvsOp::AddService(svc(1)),
        IpvsOp::AddService(svc(1)), // EEXIST
        IpvsOp::AddService(svc(2)),
        IpvsOp::DelService(svc(3).id), // ESRCH
    ];
    let results = Balancer::apply(&mut nl, &ops).map_err(e("batch"))?;
    let errnos: Vec<Option<i32>> = results
        .iter()
        .map(|r| r.as_ref().err().and_then(|e| e.errno()))
        .collect();
    ensure(
        errnos == [None, Some(17), None, Some(3)],
        format!("errnos {errnos:?}"),
    )?;
    ensure(
        nl.services().map_err(e("list"))?.len() == 2,
        "the requests after a refusal were not applied".into(),
    )
}

fn timeouts() -> Result<(), String> {
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    let want = Timeouts {
        tcp: 901,
        tcp_fin: 121,
        udp: 301,
    };
    nl.set_timeouts(want).map_err(e("set"))?;
    let got = nl.timeouts().map_err(e("get"))?;
    ensure(got == want, format!("read back {got:?}"))
}

fn sync_daemon() -> Result<(), String> {
    let out = Command::new("/sbin/ip")
        .args(["link", "add", "sync0", "type", "dummy"])
        .output()
        .map_err(e("ip"))?;
    ensure(out.status.success(), "ip link add sync0".into())?;
    // The sync thread needs an address on its interface to send from.
    for args in [
        &["link", "set", "sync0", "multicast", "on", "up"][..],
        &["addr", "add", "10.255.255.1/24", "dev", "sync0"][..],
    ] {
        let ok = Command::new("/sbin/ip")
            .args(args)
            .status()
            .map_err(e("ip"))?;
        ensure(ok.success(), format!("ip {args:?}"))?;
    }
    let mut nl = IpvsNetlink::open().map_err(e("open"))?;
    let d = SyncDaemon {
        backup: false,
        interface: "sync0".into(),
        sync_id: 5,
    };
    nl.start_daemon(&d).map_err(e("start"))?;
    let running = nl.daemons().map_err(e("list"))?;
    ensure(running == [d.clone()], format!("running {running:?}"))?;
    // Stopping a sync thread that has not run yet hung this kernel (6.1, one emulated CPU)
    // in kthread_stop: let it start first.
    std::thread::sleep(Duration::from_secs(1));
    nl.stop_daemon(false).map_err(e("stop"))?;
    let running = nl.daemons().map_err(e("list"))?;
    ensure(running.is_empty(), format!("still running {running:?}"))
}

/// The reconcile logic against the real kernel: a synthetic export loads, reads back equal,
/// and a smaller one leaves exactly its table.
fn reconcile_roundtrip() -> Result<(), String> {
    let dir = std::env::temp_dir().join("reconcile-roundtrip");
    let _ = std::fs::remove_dir_all(&dir);
    let state = |n| DesiredState::from_rows(&portcullis::synth::rows_with_services(n));
    let mut sync = IpvsSync::new(
        Box::new(IpvsNetlink::open().map_err(e("open"))?),
        Ownership::load(&dir.join("owned.json")).map_err(e("ownership"))?,
        Duration::from_secs(60),
    );
    for n in [200, 120] {
        let st = state(n);
        sync.step(&st, Scope::Everything).map_err(e("step"))?;
        let mut live = IpvsNetlink::open()
            .map_err(e("open"))?
            .table()
            .map_err(e("dump"))?;
        for entry in live.values_mut() {
            for d in entry.dests.values_mut() {
                d.active_conns = 0;
                d.inact_conns = 0;
            }
        }
        let want = desired_table(&st);
        ensure(
            live.len() == want.len(),
            format!("{} services live, {} wanted", live.len(), want.len()),
        )?;
        for (id, w) in &want {
            let l = live.get(id).ok_or(format!("{id} missing"))?;
            ensure(
                l.service.same_settings(&w.service),
                format!("{id}: {:?} vs {:?}", l.service, w.service),
            )?;
            ensure(l.dests == w.dests, format!("{id}: dests differ"))?;
        }
    }
    Ok(())
}

/// Benchmark in the guest (tests/vm/bench.sh runs it in a fresh network namespace): cold load
/// of the export `csv`, then one changed weight (`csv` with `.changed` appended), then a full
/// dump. Prints `bench NAME SECONDS` lines.
fn bench(csv: &std::path::Path) -> ExitCode {
    let load = |p: &std::path::Path| -> Result<DesiredState, String> {
        let bytes = std::fs::read(p).map_err(e("read"))?;
        let export = portcullis_export::parse(&bytes).map_err(|errs| format!("{errs:?}"))?;
        Ok(DesiredState::from_export(&export))
    };
    let run = || -> Result<(), String> {
        let base = load(csv)?;
        let mut changed_path = csv.as_os_str().to_owned();
        changed_path.push(".changed");
        let changed = load(std::path::Path::new(&changed_path))?;
        let mut sync = IpvsSync::new(
            Box::new(IpvsNetlink::open().map_err(e("open"))?),
            Ownership::in_memory(),
            Duration::from_secs(60),
        );
        let t = Instant::now();
        sync.step(&base, Scope::Everything).map_err(e("cold"))?;
        println!("bench cold {:.3}", t.elapsed().as_secs_f64());
        // The daemon's hot path: diff the two states, step only through what changed.
        let t = Instant::now();
        let diff = portcullis::diff::StateDiff::between(&base, &changed);
        let keys: Vec<_> = diff.changes.iter().map(|c| *c.key()).collect();
        let ops = sync
            .step(&changed, Scope::Services(&keys))
            .map_err(e("change"))?
            .changed;
        println!("bench one_weight {:.4}", t.elapsed().as_secs_f64());
        ensure(ops == 1, format!("one weight change sent {ops} operations"))?;
        let t = Instant::now();
        let table = IpvsNetlink::open()
            .map_err(e("open"))?
            .table()
            .map_err(e("dump"))?;
        println!("bench dump {:.3}", t.elapsed().as_secs_f64());
        ensure(
            table.len() == changed.services.len(),
            format!("{} services dumped", table.len()),
        )
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            println!("bench FAIL {why}");
            ExitCode::FAILURE
        }
    }
}
