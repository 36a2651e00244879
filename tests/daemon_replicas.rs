//! Several ADMIN replicas behind `source`: the daemon applies from the first, keeps its rules
//! when that one goes away, fetches from the next within an interval, and applies what the new
//! one serves — against two real HTTP servers on loopback and the in-memory twin of the kernel.

mod common;

use portcullis::apply::{RecordingConntrack, SyncOutcome, TwinFirewall};
use portcullis::daemon::config::{Config, Role, Sources};
use portcullis::daemon::{Daemon, Step};
use portcullis::render::nft::{Backend, RenderOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use common::stub_admin::{self, Mode, Stub};

fn export(services: usize) -> Vec<u8> {
    portcullis_export::to_string(&portcullis::synth::rows_with_services(services))
        .expect("valid")
        .into_bytes()
}

fn daemon(
    urls: [&str; 2],
    state_dir: &Path,
    long_poll: Duration,
) -> Daemon<TwinFirewall, RecordingConntrack> {
    let config = Config {
        source: Some(Sources(urls.iter().map(|u| (*u).to_owned()).collect())),
        interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        long_poll,
        max_body_bytes: 1 << 20,
        state_dir: state_dir.to_owned(),
        role: Role::Active,
        ..Config::default()
    };
    Daemon::new(
        config,
        TwinFirewall::default(),
        RecordingConntrack::default(),
        common::render_options(Backend::Nft, &["eth0"]),
    )
    .expect("daemon")
}

/// Replica A "dies": connections it holds and new ones are closed unanswered.
fn kill(a: &Stub) {
    a.lock().expect("lock").mode = Mode::HangUp;
    // Wakes a long-poll held by A, which then hangs up as a dying process's socket would.
    let body = a.lock().expect("lock").body.clone();
    a.publish(body, "\"gone\"");
}

#[tokio::test]
async fn fails_over_to_the_next_replica_keeping_the_rules_and_ignoring_its_etag_once() {
    let (url_a, a) = stub_admin::start(&export(10));
    // B numbers its ETags like A ("v1") but serves another export under it: a daemon that
    // sent A's ETag to B would get a 304 and miss the difference.
    let (url_b, b) = stub_admin::start(&export(12));
    let mut d = daemon(
        [&url_a, &url_b],
        &common::tmp_dir("replicas-step"),
        Duration::ZERO,
    );
    assert!(matches!(
        d.start().await,
        Step::Applied(SyncOutcome::Full { .. })
    ));
    assert_eq!(d.poll_once().await, Step::NotModified, "sticky to A");
    assert_eq!(
        b.lock().expect("lock").requests,
        0,
        "B untouched while A answers"
    );
    let table = d.syncer.firewall.table.clone();

    kill(&a);
    assert!(matches!(d.poll_once().await, Step::Failed(_)));
    assert_eq!(
        d.syncer.firewall.applied.len(),
        1,
        "rules kept: nothing sent"
    );
    assert_eq!(d.syncer.firewall.table, table);
    assert_eq!(d.status().source, url_b, "the next poll asks B");
    assert_eq!(d.status().replicas, [url_a.clone(), url_b.clone()]);
    assert!(
        d.next_delay() <= Duration::from_millis(1100),
        "the next replica is tried after one interval, not a backoff: {:?}",
        d.next_delay()
    );

    match d.poll_once().await {
        Step::Applied(SyncOutcome::Incremental { summary, .. }) => {
            assert_eq!(summary.services_added, 2, "B's export, fetched whole")
        }
        other => panic!("expected B's export applied, got {other:?}"),
    }
    assert_eq!(
        d.poll_once().await,
        Step::NotModified,
        "then conditional on B"
    );
    b.publish(export(13), "\"v2\"");
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Incremental { .. })
    ));
    let a_requests = a.lock().expect("lock").requests;
    assert_eq!(d.poll_once().await, Step::NotModified);
    assert_eq!(a.lock().expect("lock").requests, a_requests, "sticky to B");

    // The operator sees it: status names the replica in use, /metrics too.
    let text = d.metrics.render();
    assert!(
        text.contains(&format!("portcullis_source{{url=\"{url_b}\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains("portcullis_source_switches_total 1"),
        "{text}"
    );
    let dir = d.config.state_dir.to_str().expect("utf-8 path").to_owned();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--state-dir", &dir])
        .output()
        .expect("run portcullis");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("{url_b} (ADMIN replica 2 of 2)")),
        "{status}"
    );
}

fn status_of(dir: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v["source"].as_str()?.to_owned(), v["services"].as_u64()?))
}

/// The daemon's own loop, long-polling A: A dies with the poll held, and B takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_daemon_switches_to_the_replica_that_answers() {
    let (url_a, a) = stub_admin::start(&export(10));
    let (url_b, b) = stub_admin::start(&export(10));
    b.publish(export(12), "\"b1\"");
    let state = common::tmp_dir("replicas-run");
    let mut d = daemon([&url_a, &url_b], &state, Duration::from_secs(5));
    let scenario = {
        let (state, url_a, url_b) = (state.clone(), url_a.clone(), url_b.clone());
        async move {
            let until = |want: (String, u64)| {
                let state = state.clone();
                tokio::task::spawn_blocking(move || {
                    common::wait_until(15, || (status_of(&state)? == want).then_some(()))
                })
            };
            let applied_from_a = until((url_a, 10)).await.expect("join");
            assert!(applied_from_a.is_some(), "never applied A's export");
            // Let the daemon's long-poll reach A, then kill A under it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let killed = Instant::now();
            kill(&a);
            let switched = until((url_b.clone(), 12)).await.expect("join");
            let took = killed.elapsed();
            assert!(switched.is_some(), "never switched to B");
            eprintln!("A killed -> B's export applied in {} ms", took.as_millis());
            b.publish(export(13), "\"b2\"");
            let changed = until((url_b, 13)).await.expect("join");
            assert!(changed.is_some(), "B's change never applied");
        }
    };
    let no_reload = || Err::<(Config, RenderOptions), _>("no reload in this test");
    d.run(scenario, no_reload).await.expect("run");
    let applied = d.syncer.firewall.applied.len();
    assert_eq!(applied, 3, "A's, B's, B's change; A's death sent nothing");
}
