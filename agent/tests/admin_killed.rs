//! ADMIN killed (SIGKILL) in the middle of a rolling upgrade of a type, end to end: ADMIN runs as
//! a process of its own (this test binary re-executed, see [`admin_process`]), three agent
//! processes on 127.0.0.1-3 run a python service whose new version takes 1.5 s to listen.
//!
//! ADMIN is killed once the second instance's agent has switched to the new release. While
//! ADMIN is down every instance keeps serving: the first on the new version, the second
//! finishes its change on its own, the third on the old version, the agents alive. When ADMIN
//! is back, every report agrees with the inventory ADMIN recorded; re-issuing the same rollout
//! skips the two done (`unchanged`, same pids) and upgrades only the third. Killed again
//! while the first instance changes to a version that fails: its agent rolls back alone, and
//! the re-issued rollout puts the inventory back to the version that runs and stops there.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::*;

const CHILD_ENV: &str = "PORTCULLIS_TEST_ADMIN_PROCESS";

/// Not a test of its own: when the parent test re-executes this binary with `CHILD_ENV` set
/// (`catalog`, `state` and the listen address, one per line), it serves ADMIN until killed.
/// A real process, so it can be SIGKILLed; the same ADMIN code and options as the other tests.
#[test]
fn admin_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut lines = spec.lines();
    let (Some(catalog), Some(state), Some(addr)) = (lines.next(), lines.next(), lines.next())
    else {
        panic!("{CHILD_ENV}: expected catalog, state and address lines");
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _admin = start_admin(
            Path::new(catalog),
            Path::new(state),
            &tokens(),
            addr.parse().unwrap(),
        )
        .await;
        std::future::pending::<()>().await
    });
}

fn tokens() -> Vec<(String, String)> {
    SERVERS
        .iter()
        .map(|(s, _)| (s.to_string(), format!("token-{s}")))
        .collect()
}

struct AdminProcess(Child);

impl Drop for AdminProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts ADMIN as a process on `port` and waits until it answers.
async fn spawn_admin(catalog: &Path, state: &Path, port: u16, log: &Path) -> AdminProcess {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "admin_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!(
                "{}\n{}\n127.0.0.1:{port}\n",
                catalog.display(),
                state.display()
            ),
        )
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::options().append(true).open(log).unwrap())
        .spawn()
        .unwrap();
    let admin = AdminProcess(child);
    let start = Instant::now();
    loop {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/v1/instances/web.a.1"))
            .send()
            .await;
        if r.is_ok() {
            return admin;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ADMIN did not answer on port {port} within 20 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The release `<root>/instances/<id>/current` points at (its last path component).
fn current(root: &Path, id: &str) -> Option<String> {
    let target = std::fs::read_link(root.join("instances").join(id).join("current")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The pid in a healthy answer of the test service (`<tag> <pid>`).
fn answer_pid(body: &str) -> i32 {
    body.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_killed_mid_rollout_agents_keep_serving_and_reissuing_completes_it() {
    let web = WebType::new(GREETING);
    let (dir, catalog, state, port) = (&web.dir, web.catalog.clone(), web.state.clone(), web.port);
    let v1 = web.version("v1", false, 200);
    // v2 sleeps before it listens: its health test takes 1.5 s, a window to kill ADMIN in.
    let slow = tree(dir.path(), "v2", false, 200);
    let script = std::fs::read_to_string(slow.join("server.py")).unwrap();
    std::fs::write(
        slow.join("server.py"),
        format!("import time\ntime.sleep(1.5)\n{script}"),
    )
    .unwrap();
    let v2 = web.version_of("v2", &slow);
    inventory(&catalog, &[("a", &v1), ("b", &v1), ("c", &v1)]);
    let admin_port = free_port();
    let url = format!("http://127.0.0.1:{admin_port}");
    let admin_log = dir.path().join("admin.log");
    let admin = spawn_admin(&catalog, &state, admin_port, &admin_log).await;
    let mut cleanup = Cleanup::new();
    let roots = cleanup.spawn_agents(&url, dir.path());
    let ids: Vec<String> = SERVERS.iter().map(|(s, _)| format!("web.{s}.1")).collect();
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(pid(&until(&url, id, "v1 running", running(&v1)).await));
    }

    // The rollout, in the background: its request dies with ADMIN.
    let rollout = {
        let url = url.clone();
        let v2 = v2.clone();
        tokio::spawn(async move {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .post(format!("{url}/v1/types/web/upgrade?to={v2}&wait=60s"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
        })
    };
    // Kill ADMIN once the second instance's agent switched to v2 (its new process not yet
    // listening): the first is done, the second half-way, the third not started.
    let start = Instant::now();
    while current(&roots[1], &ids[1]).as_deref() != Some(v2.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never switched to {v2}; ADMIN log: {}",
            ids[1],
            std::fs::read_to_string(&admin_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = admin;
    admin.0.kill().unwrap(); // SIGKILL
    admin.0.wait().unwrap();
    assert!(
        rollout.await.unwrap().is_err(),
        "the rollout request ended with ADMIN"
    );
    assert_eq!(current(&roots[0], &ids[0]).as_deref(), Some(v2.as_str()));
    assert_eq!(current(&roots[2], &ids[2]).as_deref(), Some(v1.as_str()));

    // ADMIN down: all three serve. The first and third with the processes they had, the
    // second finishes its change on its own (a new process, on v2).
    let (a, b, c) = (SERVERS[0].1, SERVERS[1].1, SERVERS[2].1);
    let first = healthy(a, port).await;
    assert!(first.starts_with("v2 "), "{first}");
    let a_pid = answer_pid(&first);
    assert_ne!(a_pid, pids[0], "{} was upgraded before the kill", ids[0]);
    let second = healthy(b, port).await;
    assert!(second.starts_with("v2 "), "{second}");
    let b_pid = answer_pid(&second);
    assert_ne!(b_pid, pids[1]);
    assert_eq!(healthy(c, port).await, format!("v1 {}", pids[2]));
    assert!(health(a, port)
        .await
        .is_some_and(|h| answer_pid(&h) == a_pid));
    for agent in &mut cleanup.agents {
        assert!(agent.try_wait().unwrap().is_none(), "an agent exited");
    }
    let down = client().get(format!("{url}/v1/instances/{}", ids[0]));
    assert!(down.send().await.is_err(), "ADMIN is down");

    // ADMIN back on the same state: the reports agree with its inventory, nothing restarted.
    let admin = spawn_admin(&catalog, &state, admin_port, &admin_log).await;
    let want = [(&v2, a_pid), (&v2, b_pid), (&v1, pids[2])];
    for (id, (version, p)) in ids.iter().zip(want) {
        let v = until(&url, id, "its report agreeing with the inventory", |v| {
            running(version)(v) && v["version"] == version.as_str()
        })
        .await;
        assert_eq!(pid(&v), p, "{id} was restarted");
        assert_eq!(v["observed"]["tests"][0]["ok"], true, "{v:#}");
    }

    // The same rollout again: the two done are skipped, only the third changes.
    let r = client_long()
        .post(format!("{url}/v1/types/web/upgrade?to={v2}&wait=60s"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let outcomes: Vec<(&str, &str)> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["instance"].as_str().unwrap(),
                i["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (ids[0].as_str(), "unchanged"),
            (ids[1].as_str(), "unchanged"),
            (ids[2].as_str(), "ok")
        ],
        "{r:#}"
    );
    for (id, p) in ids.iter().zip([a_pid, b_pid]) {
        let v = instance(&url, id).await;
        assert!(running(&v2)(&v), "{v:#}");
        assert_eq!(pid(&v), p, "{id} was restarted by the re-issued rollout");
    }
    let third = instance(&url, &ids[2]).await;
    assert!(running(&v2)(&third), "{third:#}");
    assert_eq!(third["version"], v2.as_str());
    assert_ne!(pid(&third), pids[2]);

    // Killed again, mid-change to a version that exits after 1.5 s: the agent rolls back on its
    // own while ADMIN is down, and the inventory names the broken version when ADMIN returns.
    // The re-issued rollout learns the verdict from the report, puts the inventory back to
    // what runs, and stops there.
    let sick = tree(dir.path(), "sick", true, 200);
    let script = std::fs::read_to_string(sick.join("server.py")).unwrap();
    std::fs::write(
        sick.join("server.py"),
        format!("import time\ntime.sleep(1.5)\n{script}"),
    )
    .unwrap();
    let sick = web.version_of("sick", &sick);
    let rollout = {
        let url = url.clone();
        let sick = sick.clone();
        tokio::spawn(async move {
            client_long()
                .post(format!("{url}/v1/types/web/upgrade?to={sick}&wait=60s"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
        })
    };
    let start = Instant::now();
    while current(&roots[0], &ids[0]).as_deref() != Some(sick.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never switched to {sick}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = admin;
    admin.0.kill().unwrap();
    admin.0.wait().unwrap();
    assert!(rollout.await.unwrap().is_err());
    // Back on v2 without ADMIN.
    let body = healthy(a, port).await;
    assert!(body.starts_with("v2 "), "{body}");
    assert_eq!(current(&roots[0], &ids[0]).as_deref(), Some(v2.as_str()));
    let admin = spawn_admin(&catalog, &state, admin_port, &admin_log).await;
    assert_eq!(instance(&url, &ids[0]).await["version"], sick.as_str());
    let r = client_long()
        .post(format!("{url}/v1/types/web/upgrade?to={sick}&wait=60s"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(r["outcome"], "rolled-back", "{r:#}");
    assert_eq!(r["not_attempted"], serde_json::json!(ids[1..]));
    let first = until(&url, &ids[0], "v2 running", running(&v2)).await;
    assert_eq!(
        first["version"],
        v2.as_str(),
        "the inventory went back to what runs"
    );
    for id in &ids[1..] {
        assert_eq!(instance(&url, id).await["version"], v2.as_str());
    }
    drop(cleanup);
    drop(admin);
}

fn client_long() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}
