//! Real ADMIN, real agents, real processes, on three servers: each server (a, b, c) is a
//! network namespace of its own, joined to the root namespace by a veth pair, with its own root
//! and its own `portcullis-agent` process inside it; ADMIN runs in the test, in the root
//! namespace, and each agent reaches it over its link. A small python HTTP service built as a
//! version listens on its server's address. Installed everywhere and healthy; stopped via REST
//! and gone; started and restarted; a broken version rolls back on its instance only; an upgrade
//! restarts with a new pid; a killed and restarted agent restarts nothing; with ADMIN down, a
//! crashed service is restarted from the cached desired state and a version changed meanwhile
//! is installed once ADMIN returns; a removed instance is uninstalled.
//!
//! Needs root for the namespaces (skipped without, failing under `CI=true`). The other agent
//! suites run their servers on loopback addresses: they test ADMIN-side logic, for which
//! separate addresses and roots are enough.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::netns::{require_netns, Netns};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_install_run_stop_roll_back_and_survive_restarts() {
    if !require_netns() {
        return;
    }
    let web = WebType::new("install: { mkdir: [data] }\nuninstall: [\"${instance-dir}/data\"]\nconfig: { greeting: \"hello from ${id}\" }\n");
    let (dir, catalog, state, port) = (&web.dir, web.catalog.clone(), web.state.clone(), web.port);
    let v1 = web.version("v1", false, 200);
    let v2 = web.version("v2", false, 200);
    let unhealthy = web.version("sick", false, 503);
    let broken = web.version("broken", true, 200);
    // Declared before `cleanup`, so dropped after it: the agents and services are ended first,
    // then the namespaces go (ending anything still left in them).
    let servers: Vec<Netns> = SERVERS.iter().map(|(s, _)| Netns::new(s)).collect();
    let addresses: Vec<(&str, String)> = SERVERS
        .iter()
        .zip(&servers)
        .map(|((s, _), n)| (*s, n.inside.to_string()))
        .collect();
    let (addr_a, addr_b, addr_c) = (&addresses[0].1, &addresses[1].1, &addresses[2].1);
    let inventory = |versions: &[(&str, &str)]| inventory_at(&catalog, &addresses, versions);
    inventory(&[("a", &v1), ("b", &v1), ("c", &v1)]);
    let tokens = server_tokens();
    // On every address: each agent reaches ADMIN at the root namespace's end of its own link,
    // the test at 127.0.0.1.
    let admin = start_admin(&catalog, &state, &tokens, "0.0.0.0:0".parse().unwrap()).await;
    let admin_addr = admin.addr();
    let url = format!("http://127.0.0.1:{}", admin_addr.port());
    let spawn = |netns: &Netns, server: &str, root: &Path, token_file: &Path| {
        let admin_url = format!("http://{}:{}", netns.outside, admin_addr.port());
        spawn_agent_with(
            netns.command(AGENT_BIN),
            &admin_url,
            server,
            root,
            token_file,
        )
    };
    let mut cleanup = Cleanup::new();
    let mut token_files = Vec::new();
    for ((server, _), netns) in SERVERS.iter().zip(&servers) {
        let root = dir.path().join(format!("root-{server}"));
        let token_file = dir.path().join(format!("token-{server}"));
        std::fs::write(&token_file, format!("token-{server}\n")).unwrap();
        cleanup.roots.push(root.clone());
        cleanup
            .agents
            .push(spawn(netns, server, &root, &token_file));
        token_files.push(token_file);
    }

    // Installed on every server, running, and answering its health test (over the link).
    let mut pids = Vec::new();
    for (server, addr) in &addresses {
        let id = format!("web.{server}.1");
        let v = until(&url, &id, "v1 running", running(&v1)).await;
        assert_eq!(v["observed"]["tests"][0]["ok"], true, "{v:#}");
        assert_eq!(v["observed"]["last_change"]["outcome"], "ok");
        let body = healthy(addr, port).await;
        assert_eq!(body, format!("v1 {}", pid(&v)));
        pids.push(pid(&v));
    }
    // Each agent is the child itself (`ip netns exec` execs it: killing the child below kills
    // the agent), and it and its service are in their server's namespace, not in the test's.
    let agent_exe = std::fs::canonicalize(AGENT_BIN).unwrap();
    let own_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut seen = std::collections::HashSet::new();
    for (i, agent) in cleanup.agents.iter().enumerate() {
        let exe = std::fs::read_link(format!("/proc/{}/exe", agent.id())).unwrap();
        assert_eq!(
            exe, agent_exe,
            "the child of `ip netns exec` is not the agent"
        );
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", agent.id())).unwrap();
        let service_netns = std::fs::read_link(format!("/proc/{}/ns/net", pids[i])).unwrap();
        assert_ne!(netns, own_netns, "agent {i} runs in the test's namespace");
        assert_eq!(
            service_netns, netns,
            "service {i} is not in its agent's namespace"
        );
        assert!(seen.insert(netns), "two agents share a namespace");
    }
    let root_a = &cleanup.roots[0];
    let config: Value = serde_json::from_slice(
        &std::fs::read(root_a.join("instances/web.a.1/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["greeting"], "hello from web.a.1");
    assert!(root_a.join("instances/web.a.1/data").is_dir());

    // Stop via REST: the process is gone within 2 s (the held long-poll returns at once).
    let stopped_at = Instant::now();
    post(&url, "/v1/instances/web.a.1/stop").await;
    while alive(pids[0]) && stopped_at.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = stopped_at.elapsed();
    assert!(!alive(pids[0]), "web.a.1 still running 2 s after stop");
    eprintln!("stop via REST -> process gone: {gone_after:?}");
    until(&url, "web.a.1", "stopped", |v| {
        v["observed"]["state"] == "stopped"
    })
    .await;
    assert!(health(addr_a, port).await.is_none());
    // Start: back, as a new process.
    post(&url, "/v1/instances/web.a.1/start").await;
    let v = until(&url, "web.a.1", "running again", |v| {
        running(&v1)(v) && pid(v) != pids[0]
    })
    .await;
    pids[0] = pid(&v);
    assert_eq!(healthy(addr_a, port).await, format!("v1 {}", pids[0]));
    // Restart: once, with a new pid. (The restarted agent below must not repeat it.)
    post(&url, "/v1/instances/web.a.1/restart").await;
    let v = until(&url, "web.a.1", "restarted", |v| {
        running(&v1)(v) && pid(v) != pids[0]
    })
    .await;
    assert!(!alive(pids[0]));
    pids[0] = pid(&v);

    // A broken version on b only: it exits at once, b goes back to v1; a and c untouched.
    inventory(&[("a", &v1), ("b", &broken), ("c", &v1)]);
    let v = until(&url, "web.b.1", "rolled back", |v| {
        v["observed"]["last_change"]["outcome"] == "rolled-back" && running(&v1)(v)
    })
    .await;
    assert_eq!(v["observed"]["last_change"]["to"], broken.as_str());
    assert!(
        v["observed"]["last_change"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("exit"),
        "{v:#}"
    );
    pids[1] = pid(&v);
    assert_eq!(healthy(addr_b, port).await, format!("v1 {}", pids[1]));
    for (i, server) in [(0, "a"), (2, "c")] {
        let v = instance(&url, &format!("web.{server}.1")).await;
        assert_eq!(pid(&v), pids[i], "web.{server}.1 was restarted");
    }

    // A version that runs but fails its health test (503) on a: rolled back after the test
    // deadline, to v1 again; b and c untouched.
    inventory(&[("a", &unhealthy), ("b", &broken), ("c", &v1)]);
    let v = until(&url, "web.a.1", "sick version rolled back", |v| {
        v["observed"]["last_change"]["to"] == unhealthy.as_str()
            && v["observed"]["last_change"]["outcome"] == "rolled-back"
            && running(&v1)(v)
    })
    .await;
    assert!(
        v["observed"]["last_change"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 503"),
        "{v:#}"
    );
    assert_eq!(v["observed"]["tests"][0]["ok"], false);
    pids[0] = pid(&v);
    assert_eq!(healthy(addr_a, port).await, format!("v1 {}", pids[0]));
    assert_eq!(pid(&instance(&url, "web.c.1").await), pids[2]);

    // An upgrade of c: restarted on v2 with a new pid, tested against the new process.
    let upgrade_started = Instant::now();
    inventory(&[("a", &unhealthy), ("b", &broken), ("c", &v2)]);
    let v = until(&url, "web.c.1", "v2 running", |v| {
        running(&v2)(v) && v["observed"]["last_change"]["to"] == v2.as_str()
    })
    .await;
    // A measurement, not an assertion: inventory edit -> reload -> long-poll -> fetch, switch,
    // restart, health test -> report -> ADMIN.
    eprintln!(
        "upgrade of web.c.1 observed after {:?}",
        upgrade_started.elapsed()
    );
    assert_ne!(pid(&v), pids[2]);
    assert_eq!(v["observed"]["last_change"]["outcome"], "ok");
    assert!(healthy(addr_c, port).await.starts_with("v2 "));
    pids[2] = pid(&v);

    // The agent of a killed and restarted: the service keeps its pid.
    let mut old = std::mem::replace(
        &mut cleanup.agents[0],
        Command::new("true").spawn().unwrap(),
    );
    old.kill().unwrap();
    old.wait().unwrap();
    let _ = cleanup.agents[0].wait();
    let before = instance(&url, "web.a.1").await["observed"]["reported_at"]
        .as_u64()
        .unwrap();
    cleanup.agents[0] = spawn(&servers[0], "a", &cleanup.roots[0], &token_files[0]);
    // A fresh report (the first of the new agent), still naming the same process.
    let v = until(&url, "web.a.1", "a report from the new agent", |v| {
        v["observed"]["reported_at"].as_u64() > Some(before + 1) && v["observed"]["restarts"] == 0
    })
    .await;
    assert_eq!(pid(&v), pids[0], "the restarted agent restarted web.a.1");
    assert!(alive(pids[0]));

    // ADMIN down: a crashed service is restarted from the cached desired state.
    admin.stop().await.unwrap();
    kill_group(pids[1]);
    let start = Instant::now();
    let answered = loop {
        if let Some(body) = health(addr_b, port).await {
            if body != format!("v1 {}", pids[1]) {
                break body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "web.b.1 not restarted while ADMIN is down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answered.starts_with("v1 "));
    // ADMIN back on the same address: the agents report again.
    let admin = start_admin(&catalog, &state, &tokens, admin_addr).await;
    let v = until(&url, "web.b.1", "the restart reported", |v| {
        v["observed"]["restarts"].as_u64() >= Some(1) && running(&v1)(v)
    })
    .await;
    assert_ne!(pid(&v), pids[1]);

    // ADMIN down again while b's version is changed (as if killed mid-rollout): b keeps
    // serving v1, and converges to v2 once ADMIN is back.
    admin.stop().await.unwrap();
    inventory(&[("a", &unhealthy), ("b", &v2), ("c", &v2)]);
    assert!(healthy(addr_b, port).await.starts_with("v1 "));
    let admin = start_admin(&catalog, &state, &tokens, admin_addr).await;
    until(&url, "web.b.1", "v2 after ADMIN returned", running(&v2)).await;
    assert!(healthy(addr_b, port).await.starts_with("v2 "));

    // c removed from the inventory: its process ends and its directory (and data) go.
    let c_pid = pids[2];
    inventory(&[("a", &unhealthy), ("b", &v2)]);
    let root_c = cleanup.roots[2].join("instances/web.c.1");
    let start = Instant::now();
    while (root_c.exists() || alive(c_pid)) && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!root_c.exists(), "web.c.1 not uninstalled");
    assert!(!alive(c_pid));
    admin.stop().await.unwrap();
}
