//! A rolling upgrade of 30 instances across 3 servers through ADMIN and the agents, beside the
//! floor it cannot beat: the same 30 process replacements done directly (SIGTERM the old
//! process, start the new one, poll its health test every 200 ms as the agent does), in the
//! same run. Prints the total, the time per instance (p50/max) and the CPU seconds of ADMIN
//! and of each agent during the upgrade.
//!
//! `cargo bench -p portcullis-agent --bench rolling_upgrade` (release build, needs python3).
//!
//! A type's health test names one port, so ten instances on one server cannot be one type:
//! the 30 instances are ten 3-instance types `w0`..`w9` (one instance per server each, each
//! type its own port) upgraded by ten `POST /v1/types/wK/upgrade` one after another — one
//! instance at a time throughout, as one 30-instance rollout would go. ADMIN runs as a process
//! of its own (this binary re-executed) so its CPU time is its own.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const TYPES: usize = 10;
const CHILD_ENV: &str = "PORTCULLIS_BENCH_ADMIN";

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return admin_process(&spec);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// The re-executed binary: ADMIN on `catalog\nstate\naddr` until killed.
fn admin_process(spec: &str) {
    let lines: Vec<&str> = spec.lines().collect();
    let tokens = server_tokens();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _admin = start_admin(
            Path::new(lines[0]),
            Path::new(lines[1]),
            &tokens,
            lines[2].parse().unwrap(),
        )
        .await;
        std::future::pending::<()>().await
    });
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// User and system CPU seconds of `pid` so far.
fn cpu(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let tick = clock_ticks();
    let (u, s): (f64, f64) = (fields[11].parse().unwrap(), fields[12].parse().unwrap());
    (u / tick, s / tick)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn bench() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog");
    let state = dir.path().join("state");
    std::fs::create_dir_all(catalog.join("meta")).unwrap();
    let store = portcullis_admin::versions::Store::new(&state);
    let (v1_tree, v2_tree) = (
        tree(dir.path(), "v1", false, 200),
        tree(dir.path(), "v2", false, 200),
    );
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    let mut ports = Vec::new();
    let mut inv =
        String::from("locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\nservers:\n");
    for (name, addr) in SERVERS {
        inv.push_str(&format!(
            "  {name}: {{ kind: app, location: l1, address: {addr} }}\n"
        ));
    }
    inv.push_str("instances:\n");
    for k in 0..TYPES {
        let t = format!("w{k}");
        v1.push(
            store
                .build(&t, &v1_tree, Some(&format!("{t}-1")))
                .unwrap()
                .id,
        );
        v2.push(
            store
                .build(&t, &v2_tree, Some(&format!("{t}-2")))
                .unwrap()
                .id,
        );
        let port = free_port();
        ports.push(port);
        std::fs::write(
            catalog.join(format!("meta/{t}.yaml")),
            format!(
                "type: {t}\nconfig: {{ greeting: \"hello from ${{id}}\" }}\n\
                 run:\n  command: [{python}, \"${{release}}/server.py\", \"${{host-ip}}\", {port}, \"${{config}}\"]\n  \
                 stop-timeout: 5s\n\
                 tests:\n  - {{ name: health, http: /health, port: {port}, expect: 200 }}\n"
            ),
        )
        .unwrap();
        for (server, _) in SERVERS {
            inv.push_str(&format!(
                "  - {{ type: {t}, server: {server}, version: {} }}\n",
                v1[k]
            ));
        }
    }
    std::fs::write(catalog.join("inventory.yaml"), inv).unwrap();

    let admin_port = free_port();
    let url = format!("http://127.0.0.1:{admin_port}");
    let admin = Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!(
                "{}\n{}\n127.0.0.1:{admin_port}",
                catalog.display(),
                state.display()
            ),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let admin_pid = admin.id();
    let _admin = Killed(vec![admin]);
    let mut cleanup = Cleanup::new();
    let start = Instant::now();
    while client()
        .get(format!("{url}/v1/instances"))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ADMIN never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cleanup.spawn_agents(&url, dir.path());
    let agent_pids: Vec<u32> = cleanup.agents.iter().map(|a| a.id()).collect();
    for (k, version) in v1.iter().enumerate() {
        for (server, _) in SERVERS {
            until(
                &url,
                &format!("w{k}.{server}.1"),
                "v1 running",
                running(version),
            )
            .await;
        }
    }
    eprintln!("30 instances running v1; upgrading");

    // Through ADMIN and the agents.
    let admin_before = cpu(admin_pid);
    let agents_before: Vec<(f64, f64)> = agent_pids.iter().map(|p| cpu(*p)).collect();
    let long = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut per_instance = Vec::new();
    for (k, version) in v2.iter().enumerate() {
        let r = long
            .post(format!("{url}/v1/types/w{k}/upgrade?to={version}&wait=60s"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "w{k}: {}",
            r.text().await.unwrap_or_default()
        );
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        for i in v["instances"].as_array().unwrap() {
            assert_eq!(i["outcome"], "ok", "{i:#}");
            per_instance.push(i["seconds"].as_f64().unwrap());
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let admin_after = cpu(admin_pid);
    let agents_after: Vec<(f64, f64)> = agent_pids.iter().map(|p| cpu(*p)).collect();

    // The floor: the same 30 replacements without ADMIN or agents.
    let base_port = free_port();
    let mut floor = Vec::new();
    let floor_t0 = Instant::now();
    for n in 0..TYPES * SERVERS.len() {
        let (addr, port) = (SERVERS[n % SERVERS.len()].1, base_port);
        let config = dir.path().join("floor-config.json");
        std::fs::write(&config, "{}").unwrap();
        let spawn = |t: &Path| {
            Command::new(&python)
                .arg(t.join("server.py"))
                .args([addr, &port.to_string()])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut old = spawn(&v1_tree);
        healthy(addr, port).await;
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&old),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        old.wait().unwrap();
        let new = Killed(vec![spawn(&v2_tree)]);
        // As the agent's probe: try, and on failure retry after 200 ms.
        while health(addr, port).await.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        floor.push(t.elapsed().as_secs_f64());
        drop(new);
    }
    let floor_total = floor_t0.elapsed().as_secs_f64();

    per_instance.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    let (p50, max) = (
        percentile(&per_instance, 0.5),
        percentile(&per_instance, 1.0),
    );
    let (f50, fmax) = (percentile(&floor, 0.5), percentile(&floor, 1.0));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "rolling upgrade, 30 instances on 3 servers (load average {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| measurement | through ADMIN + agents | floor: SIGTERM, start, health test every 200 ms | ratio |");
    println!("|---|---:|---:|---:|");
    let floor_sum: f64 = floor.iter().sum();
    println!("| total, 30 instances | {total:.2} s | {floor_sum:.2} s (the 30 replacements; {floor_total:.1} s with starting each old one) | {:.2}x |", total / floor_sum);
    println!(
        "| per instance, p50 | {p50:.3} s | {f50:.3} s | {:.2}x |",
        p50 / f50
    );
    println!(
        "| per instance, max | {max:.3} s | {fmax:.3} s | {:.2}x |",
        max / fmax
    );
    println!("| wall time per instance | {:.3} s | — | — |", total / 30.0);
    let (au, asys) = (
        admin_after.0 - admin_before.0,
        admin_after.1 - admin_before.1,
    );
    println!(
        "| ADMIN CPU (user + sys) | {au:.2} + {asys:.2} s ({:.1} ms per instance) | — | — |",
        (au + asys) * 1000.0 / 30.0
    );
    for (n, (server, _)) in SERVERS.iter().enumerate() {
        let (u, s) = (
            agents_after[n].0 - agents_before[n].0,
            agents_after[n].1 - agents_before[n].1,
        );
        println!("| agent {server} CPU (user + sys), 10 instances | {u:.2} + {s:.2} s ({:.1} ms per instance) | — | — |", (u + s) * 1000.0 / 10.0);
    }
    // benches/run's summary table: area, measurement, ours, baseline, its value, factor
    // (how many times better than the baseline; below 1: slower, as against any floor).
    if let Ok(path) = std::env::var("PORTCULLIS_BENCH_SUMMARY") {
        use std::io::Write;
        let line = format!(
            "hosts\trolling upgrade through ADMIN + agents, per instance p50 (30 on 3 servers)\t\
             {:.0} ms\tfloor: SIGTERM, start, health test (no ADMIN, no agent)\t{:.0} ms\t{:.2}×\n",
            p50 * 1000.0,
            f50 * 1000.0,
            f50 / p50
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    drop(cleanup);
}
