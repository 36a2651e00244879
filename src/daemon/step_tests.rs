//! The daemon's step, reload and loop against the kernel twins: what each export does to the
//! (twin) table, the counters and the cache, without a network or root. The real kernel and a
//! real ADMIN are exercised in tests/daemon.rs and tests/daemon_signals.rs.

use super::config::{Config, Role};
use super::{Daemon, Step};
use crate::apply::{Firewall, NftError, RecordingConntrack, SyncOutcome, TableState, TwinFirewall};
use crate::render::nft::{Backend, BasePolicy, Ifname, RenderOptions, Transaction, DEFAULT_POLICY};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn options(external: &[&str]) -> RenderOptions {
    RenderOptions {
        backend: Backend::Nft,
        external_interfaces: external
            .iter()
            .map(|i| Ifname::parse(i).expect("test ifname"))
            .collect(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("shipped policy"),
    }
}

fn export(services: usize) -> Vec<u8> {
    portcullis_export::to_string(&crate::synth::rows_with_services(services))
        .expect("valid")
        .into_bytes()
}

/// A state directory and a `file://` export in it.
struct Bench {
    dir: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        Bench {
            dir: crate::test_dir(&format!("step-{tag}")),
        }
    }

    fn export_path(&self) -> PathBuf {
        self.dir.join("export.csv")
    }

    fn publish(&self, body: &[u8]) {
        std::fs::write(self.export_path(), body).expect("write export");
    }

    fn config(&self, role: Role) -> Config {
        Config {
            source: Some(format!("file://{}", self.export_path().display()).into()),
            state_dir: self.dir.join("state"),
            role,
            ..Config::default()
        }
    }

    fn daemon<F: Firewall>(&self, role: Role, firewall: F) -> Daemon<F, RecordingConntrack> {
        Daemon::new(
            self.config(role),
            firewall,
            RecordingConntrack::default(),
            options(&["eth0"]),
        )
        .expect("daemon")
    }
}

fn table(d: &Daemon<TwinFirewall, RecordingConntrack>) -> Option<TableState> {
    d.syncer.firewall.table.clone()
}

#[tokio::test]
async fn each_export_is_applied_once_and_bad_ones_change_nothing() {
    let b = Bench::new("apply");
    b.publish(&export(10));
    let mut d = b.daemon(Role::Active, TwinFirewall::default());
    assert!(matches!(
        d.start().await,
        Step::Applied(SyncOutcome::Full { .. })
    ));
    assert_eq!(d.poll_once().await, Step::NotModified);

    b.publish(&export(9));
    let step = d.poll_once().await;
    assert!(
        matches!(&step, Step::Applied(SyncOutcome::Incremental { summary, .. }) if summary.services_removed == 1),
        "{step:?}"
    );
    let good = table(&d);

    // Invalid: rejected, the kernel and the last-known-good untouched.
    b.publish(b"not,an,export\n");
    assert!(matches!(d.poll_once().await, Step::Rejected(n) if n > 0));
    assert_eq!(table(&d), good);
    assert_eq!(d.counters.rejected, 1);
    assert_eq!(
        d.state_dir.load().expect("cache").map(|c| c.export),
        Some(export(9)),
        "the cache keeps the last good export"
    );

    // A mass withdrawal: refused by the guard, nothing changes, and counted.
    b.publish(&export(2));
    assert!(matches!(d.poll_once().await, Step::Refused(_)));
    assert_eq!(table(&d), good);
    assert_eq!((d.counters.refused, d.status().services), (1, 9));
    let journal = d.journal.tail(10).expect("journal");
    let results: Vec<_> = journal.iter().map(|e| e.result.as_str()).collect();
    assert_eq!(results, ["applied", "applied", "rejected", "refused"]);
}

#[tokio::test]
async fn a_standby_caches_and_a_promotion_applies_the_cache() {
    let b = Bench::new("standby");
    b.publish(&export(4));
    let mut d = b.daemon(Role::Standby, TwinFirewall::default());
    assert_eq!(d.start().await, Step::Cached);
    assert_eq!(table(&d), None, "a standby never touches the kernel");

    super::role::write_role(&d.config.state_dir, Role::Active).expect("promote");
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Full { .. })
    ));
    assert_eq!(d.status().services, 4);

    super::role::write_role(&d.config.state_dir, Role::Standby).expect("demote");
    assert_eq!(d.poll_once().await, Step::Demoted);
    b.publish(&export(5));
    assert_eq!(d.poll_once().await, Step::Cached);
    assert_eq!(d.status().services, 4, "demoted: rules stay as they were");
}

#[tokio::test]
async fn a_failing_kernel_is_a_failed_step_that_backs_off() {
    let b = Bench::new("fail");
    b.publish(&export(3));
    let mut d = b.daemon(Role::Active, Broken(TwinFirewall::default(), false));
    d.start().await;
    let applied = d.syncer.firewall.0.table.clone();
    b.publish(&export(4));
    d.syncer.firewall.1 = true;
    let step = d.poll_once().await;
    assert!(
        matches!(&step, Step::Failed(e) if e.to_string().contains("kernel says no")),
        "{step:?}"
    );
    assert_eq!(d.counters.consecutive_failures, 1);
    assert!(
        d.next_delay() >= 2 * d.config.interval,
        "backs off after a failure"
    );
    assert_eq!(d.syncer.firewall.0.table, applied);
    assert_eq!(
        d.state_dir.load().expect("cache").map(|c| c.export),
        Some(export(3)),
        "a failed apply is not last-good"
    );
}

#[tokio::test]
async fn reload_changes_what_it_can_and_refuses_restart_only_keys() {
    let b = Bench::new("reload");
    b.publish(&export(4));
    let mut d = b.daemon(Role::Active, TwinFirewall::default());
    d.start().await;
    let before = table(&d);

    let mut moved = d.config.clone();
    moved.backend = Backend::Ipvs;
    moved.interval = Duration::from_secs(9);
    let refused = d
        .reload(moved, options(&["eth0"]))
        .expect_err("backend needs a restart");
    assert!(refused.to_string().contains("backend"), "{refused}");
    assert_eq!(
        d.config.interval,
        Duration::from_secs(3),
        "nothing of it taken"
    );

    let mut next = d.config.clone();
    next.interval = Duration::from_secs(9);
    next.interfaces.external = vec!["eth1".into()];
    let changed = d.reload(next, options(&["eth1"])).expect("reload");
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        ["interfaces", "interval"]
    );
    assert_eq!(d.config.interval, Duration::from_secs(9));
    assert_ne!(
        table(&d),
        before,
        "the table was regenerated for the new interface"
    );
    assert_eq!(
        d.syncer.firewall.applied.len(),
        2,
        "start, then one regeneration"
    );

    // Another source: its ETags mean nothing to the old one, so the export is fetched whole.
    let other = b.dir.join("other.csv");
    std::fs::write(&other, export(4)).expect("write");
    let mut elsewhere = d.config.clone();
    elsewhere.source = Some(format!("file://{}", other.display()).into());
    d.reload(elsewhere, options(&["eth1"])).expect("reload");
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Unchanged)
    ));
}

#[test]
fn changed_keys_names_every_top_level_key_but_the_role() {
    let a = Config::default();
    let mut b = a.clone();
    assert!(super::reload::changed_keys(&a, &b).is_empty());
    b.role = Role::Standby;
    assert!(
        super::reload::changed_keys(&a, &b).is_empty(),
        "promote/demote own the role"
    );
    b.tls.ca_file = Some(Path::new("/etc/ca.pem").to_owned());
    b.metrics = Some("127.0.0.1:9").map(|s| s.parse().expect("addr"));
    let keys: Vec<_> = super::reload::changed_keys(&a, &b).into_iter().collect();
    assert_eq!(keys, ["metrics", "tls"]);
}

/// A firewall that refuses every transaction while `.1` is set.
struct Broken(TwinFirewall, bool);

impl Firewall for Broken {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        if self.1 {
            return Err(NftError::Injected("kernel says no".into()));
        }
        self.0.apply(tx)
    }
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.0.check(tx)
    }
    fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
        self.0.read_table()
    }
    fn delete_table(&mut self) -> Result<bool, NftError> {
        self.0.delete_table()
    }
}

/// A firewall whose applies take long, as nft's do at 100k rows.
struct Slow(TwinFirewall, Duration);

impl Firewall for Slow {
    fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        std::thread::sleep(self.1);
        self.0.apply(tx)
    }
    fn check(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.0.check(tx)
    }
    fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
        self.0.read_table()
    }
    fn delete_table(&mut self) -> Result<bool, NftError> {
        self.0.delete_table()
    }
}

/// A long apply does not stall the listeners on the runtime `portcullis run` uses (a
/// multi-threaded one; on the current-thread runtime it used before, this fails: 0 answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn health_answers_during_a_long_apply() {
    let b = Bench::new("healthz");
    b.publish(&export(3));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let apply_time = Duration::from_secs(2);
    let mut d = b.daemon(Role::Active, Slow(TwinFirewall::default(), apply_time));
    d.config.metrics = Some(([127, 0, 0, 1], port).into());
    let probe = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/healthz");
        let started = std::time::Instant::now();
        let mut answered_during_apply = 0;
        while started.elapsed() < Duration::from_millis(1800) {
            let answer =
                tokio::time::timeout(Duration::from_millis(300), client.get(&url).send()).await;
            if matches!(answer, Ok(Ok(_))) && started.elapsed() > Duration::from_millis(200) {
                answered_during_apply += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered_during_apply
    });
    // The start-up apply alone takes `apply_time`; stop right after it.
    let shutdown = tokio::time::sleep(apply_time + Duration::from_millis(300));
    d.run(shutdown, || Err::<(Config, RenderOptions), _>("no reloads"))
        .await
        .expect("run");
    let answered = probe.await.expect("probe");
    assert!(
        answered >= 5,
        "/healthz answered {answered} times during the apply"
    );
    assert_eq!(d.status().services, 3);
}

/// Issue 16, item 2: a restart must not apply (nor cache) what the running daemon refused.
#[tokio::test]
async fn the_guard_holds_across_a_restart_and_keeps_the_last_good_export() {
    let b = Bench::new("guard-restart");
    b.publish(&export(10));
    let mut first = b.daemon(Role::Active, TwinFirewall::default());
    first.start().await;
    let good = table(&first);
    b.publish(&export(2));
    assert!(matches!(first.poll_once().await, Step::Refused(_)));
    drop(first);

    // Restarted with nothing applied (a reboot): the same export is refused again, the
    // last-known-good export is applied instead and stays the last-known-good.
    let mut restarted = b.daemon(Role::Active, TwinFirewall::default());
    assert!(matches!(restarted.start().await, Step::Refused(_)));
    assert_eq!(table(&restarted), good, "forwarding as before the restart");
    assert_eq!(
        restarted.state_dir.load().expect("cache").map(|c| c.export),
        Some(export(10))
    );
    assert_eq!(
        restarted.poll_once().await,
        Step::NotModified,
        "refused once, not every poll"
    );

    // ADMIN fixes its export: it applies as usual.
    b.publish(&export(9));
    assert!(matches!(
        restarted.poll_once().await,
        Step::Applied(SyncOutcome::Incremental { .. })
    ));
}

#[tokio::test]
async fn a_standby_does_not_cache_a_mass_withdrawal_so_promotion_applies_the_last_good() {
    let b = Bench::new("guard-standby");
    b.publish(&export(10));
    let mut d = b.daemon(Role::Standby, TwinFirewall::default());
    assert_eq!(d.start().await, Step::Cached);
    b.publish(&export(1));
    assert!(matches!(d.poll_once().await, Step::Refused(_)));
    super::role::write_role(&d.config.state_dir, Role::Active).expect("promote");
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Full { .. })
    ));
    assert_eq!(
        d.status().services,
        10,
        "the last good export, not the refused one"
    );
}

/// While an `apply --once` or `flush` holds the state directory, the daemon sends nothing,
/// counts a failure and applies at a later poll.
#[tokio::test]
async fn the_daemon_waits_for_an_apply_in_progress() {
    let b = Bench::new("apply-lock");
    b.publish(&export(4));
    let mut d = b.daemon(Role::Active, TwinFirewall::default());
    d.start().await;
    b.publish(&export(5));
    let held = super::control::ApplyLock::try_take(&d.config.state_dir).expect("lock");
    let step = d.poll_once().await;
    assert!(
        matches!(&step, Step::Failed(e) if e.to_string().contains("another apply")),
        "{step:?}"
    );
    assert_eq!(d.status().services, 4, "nothing sent");
    drop(held);
    // Same ETag as the failed attempt: the export is fetched again and applied.
    assert!(matches!(
        d.poll_once().await,
        Step::Applied(SyncOutcome::Incremental { .. })
    ));
    assert_eq!(d.status().services, 5);
}

#[tokio::test]
async fn a_reload_keeps_the_replica_in_use_unless_the_list_changes() {
    let b = Bench::new("replicas");
    b.publish(&export(3));
    let here = format!("file://{}", b.export_path().display());
    let missing = format!("file://{}", b.dir.join("missing.csv").display());
    let mut config = b.config(Role::Active);
    config.source = Some(super::config::Sources(vec![missing.clone(), here.clone()]));
    let mut d = Daemon::new(
        config.clone(),
        TwinFirewall::default(),
        RecordingConntrack::default(),
        options(&["eth0"]),
    )
    .expect("daemon");
    // The first replica does not answer (no file, no cache yet): the next poll reads the second.
    assert!(matches!(d.start().await, Step::NothingToStartFrom(_)));
    assert_eq!(d.status().source, here);
    assert!(matches!(d.poll_once().await, Step::Applied(_)));
    d.reload(config.clone(), options(&["eth0"]))
        .expect("reload");
    assert_eq!(d.status().source, here, "same list: same replica");
    assert_eq!(
        d.poll_once().await,
        Step::NotModified,
        "and its ETag still holds"
    );
    config.source = Some(super::config::Sources(vec![
        missing.clone(),
        here.clone(),
        here.clone() + "?x",
    ]));
    d.reload(config, options(&["eth0"])).expect("reload");
    assert_eq!(
        d.status().source,
        missing,
        "a new list starts at its first replica"
    );
}
