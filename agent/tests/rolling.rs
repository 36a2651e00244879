//! Version changes through the agents, end to end (real ADMIN in process, three agent processes
//! on 127.0.0.1-3, a python service built as versions): a rolling upgrade of a type across the
//! three servers succeeds one instance at a time with new processes; a broken version stops the
//! rollout at the first instance, which rolls back (and its inventory `version:` with it), while
//! the others keep their version and their processes; a single-instance downgrade without `to`
//! goes back to the version the agent last changed from.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::*;

async fn post_json(url: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(format!("{url}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_goes_one_instance_at_a_time_and_stops_at_a_broken_version() {
    let web = WebType::new(GREETING);
    let (dir, catalog, state) = (&web.dir, web.catalog.clone(), web.state.clone());
    let (v1, v2, broken) = (
        web.version("v1", false, 200),
        web.version("v2", false, 200),
        web.version("broken", true, 200),
    );
    inventory(&catalog, &[("a", &v1), ("b", &v1), ("c", &v1)]);
    let tokens = server_tokens();
    let admin = start_admin(&catalog, &state, &tokens, "127.0.0.1:0".parse().unwrap()).await;
    let url = admin.url();
    let mut cleanup = Cleanup::new();
    cleanup.spawn_agents(&url, dir.path());
    let ids: Vec<String> = SERVERS.iter().map(|(s, _)| format!("web.{s}.1")).collect();
    let mut pids = Vec::new();
    for id in &ids {
        pids.push(pid(&until(&url, id, "v1 running", running(&v1)).await));
    }

    // The whole type to v2: every instance ok, in order, each with a new process.
    let (status, r) = post_json(&url, &format!("/v1/types/web/upgrade?to={v2}&wait=60s")).await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["outcome"], "ok");
    // The time per instance (edit → agent's report of the new version tested), for the docs.
    for i in r["instances"].as_array().unwrap() {
        eprintln!("rolling upgrade: {} {:.2} s", i["instance"], i["seconds"]);
    }
    let done: Vec<&str> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["outcome"], "ok", "{i:#}");
            assert_eq!(i["from"], v1.as_str());
            i["instance"].as_str().unwrap()
        })
        .collect();
    assert_eq!(done, ids);
    for (n, id) in ids.iter().enumerate() {
        let v = instance(&url, id).await;
        assert!(running(&v2)(&v), "{v:#}");
        assert_eq!(v["version"], v2.as_str());
        assert_ne!(pid(&v), pids[n], "{id} was not restarted");
        pids[n] = pid(&v);
    }

    // A version that exits at once: the first instance rolls back, the rollout stops there.
    let (status, r) = post_json(&url, &format!("/v1/types/web/upgrade?to={broken}&wait=60s")).await;
    assert_eq!(status, 422, "{r:#}");
    assert_eq!(r["outcome"], "rolled-back");
    assert_eq!(r["instances"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r["instances"][0]["instance"], ids[0].as_str());
    assert_eq!(r["not_attempted"], serde_json::json!(ids[1..]));
    let first = until(&url, &ids[0], "v2 running again", running(&v2)).await;
    assert_eq!(first["version"], v2.as_str(), "the inventory went back too");
    for (n, id) in ids.iter().enumerate().skip(1) {
        let v = instance(&url, id).await;
        assert!(running(&v2)(&v), "{v:#}");
        assert_eq!(v["version"], v2.as_str());
        assert_eq!(pid(&v), pids[n], "{id} was touched by a stopped rollout");
    }

    // One instance back to where its agent came from (v1), without naming it.
    let (status, r) = post_json(&url, &format!("/v1/instances/{}/downgrade", ids[1])).await;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(
        (r["outcome"].as_str(), r["to"].as_str()),
        (Some("ok"), Some(v1.as_str()))
    );
    assert!(running(&v1)(&instance(&url, &ids[1]).await));
    drop(cleanup);
}
