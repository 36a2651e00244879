//! The Syncer against the twins: full, incremental and unchanged syncs, adoption, the
//! fallback to a full regeneration, the guard, and the order of IPVS and nft steps.

use super::*;
use crate::apply::ipvs::{
    Balancer, Dest, IpvsError, IpvsOp, Ownership, ServiceId, Table, TwinBalancer,
};
use crate::apply::{RecordingConntrack, TwinFirewall};
use crate::render::nft::{BasePolicy, DEFAULT_POLICY};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn syncer() -> Syncer<TwinFirewall, RecordingConntrack> {
    let opts = RenderOptions {
        backend: Backend::Nft,
        external_interfaces: Vec::new(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
    };
    Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts)
}

fn state(n: usize) -> DesiredState {
    DesiredState::from_rows(&crate::synth::rows_with_services(n))
}

#[test]
fn first_sync_is_full_then_incremental_then_unchanged() {
    let mut s = syncer();
    assert!(matches!(
        s.sync(state(10)).expect("sync"),
        SyncOutcome::Full { .. }
    ));
    let outcome = s.sync(state(9)).expect("sync");
    let SyncOutcome::Incremental {
        summary,
        conntrack_flushed,
        ..
    } = outcome
    else {
        panic!("expected incremental, got {outcome:?}");
    };
    assert_eq!(summary.services_removed, 1);
    assert_eq!(conntrack_flushed, 2, "both servers of the removed service");
    assert_eq!(s.sync(state(9)).expect("sync"), SyncOutcome::Unchanged);
    // The twin holds exactly what a full render of the new state describes.
    assert_eq!(
        s.firewall.table,
        s.expected_table(&state(9)).expect("render")
    );
    assert_eq!(
        s.firewall.applied.len(),
        2,
        "one full, one incremental; none for unchanged"
    );
}

#[test]
fn a_matching_table_is_adopted_untouched() {
    let mut first = syncer();
    first.sync(state(5)).expect("sync");
    let mut restarted = syncer();
    restarted.firewall.table = first.firewall.table.clone();
    assert_eq!(
        restarted.sync(state(5)).expect("sync"),
        SyncOutcome::Adopted
    );
    assert!(restarted.firewall.applied.is_empty());
}

#[test]
fn a_refused_increment_falls_back_to_a_full_regeneration() {
    let mut s = syncer();
    s.sync(state(5)).expect("sync");
    s.firewall.fail_next = Some("someone edited the table".into());
    assert!(matches!(
        s.sync(state(6)).expect("sync"),
        SyncOutcome::Full { .. }
    ));
    assert_eq!(
        s.firewall.table,
        s.expected_table(&state(6)).expect("render")
    );
}

/// Records the order in which the two kernels were changed.
struct Logged<T> {
    inner: T,
    log: Arc<Mutex<Vec<String>>>,
}

impl Firewall for Logged<TwinFirewall> {
    fn apply(&mut self, tx: &crate::render::nft::Transaction) -> Result<(), NftError> {
        self.log.lock().expect("lock").push("nft".into());
        self.inner.apply(tx)
    }
    fn check(&mut self, tx: &crate::render::nft::Transaction) -> Result<(), NftError> {
        self.inner.check(tx)
    }
    fn read_table(&mut self) -> Result<Option<TableState>, NftError> {
        self.inner.read_table()
    }
    fn delete_table(&mut self) -> Result<bool, NftError> {
        self.log.lock().expect("lock").push("nft".into());
        self.inner.delete_table()
    }
}

impl Balancer for Logged<TwinBalancer> {
    fn table(&mut self) -> Result<Table, IpvsError> {
        self.inner.table()
    }
    fn dests(&mut self, svc: ServiceId) -> Result<Vec<Dest>, IpvsError> {
        self.inner.dests(svc)
    }
    fn apply(&mut self, ops: &[IpvsOp]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        let mut log = self.log.lock().expect("lock");
        for op in ops {
            log.push(match op {
                IpvsOp::AddService(_) | IpvsOp::AddDest(..) => "ipvs add".into(),
                IpvsOp::EditDest(_, d) if d.weight == 0 => "ipvs drain".into(),
                IpvsOp::EditService(_) | IpvsOp::EditDest(..) => "ipvs edit".into(),
                IpvsOp::DelService(_) | IpvsOp::DelDest(..) => "ipvs delete".into(),
            });
        }
        drop(log);
        self.inner.apply(ops)
    }
}

type LoggedSyncer = Syncer<Logged<TwinFirewall>, RecordingConntrack>;

/// An IPVS-backend syncer whose two kernels record their changes, in order, in `log`.
fn logged_ipvs_syncer(log: &Arc<Mutex<Vec<String>>>) -> LoggedSyncer {
    let opts = RenderOptions {
        backend: Backend::Ipvs,
        external_interfaces: Vec::new(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
    };
    let firewall = Logged {
        inner: TwinFirewall::default(),
        log: log.clone(),
    };
    let mut s = Syncer::new(firewall, RecordingConntrack::default(), opts);
    let balancer = Logged {
        inner: TwinBalancer::default(),
        log: log.clone(),
    };
    s.set_ipvs(IpvsSync::new(
        Box::new(balancer),
        Ownership::in_memory(),
        Duration::from_secs(60),
    ));
    s
}

#[test]
fn planning_changes_nothing_and_the_plan_lists_what_execute_does() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut s = logged_ipvs_syncer(&log);
    s.sync(state(10)).expect("first sync");
    log.lock().expect("lock").clear();
    let mut next = state(12);
    let gone = *next.services.keys().next().expect("a service");
    next.services.remove(&gone);

    let plan = s.plan_sync(next.clone()).expect("plan");
    assert!(
        log.lock().expect("lock").is_empty(),
        "planning sent nothing"
    );
    assert_eq!(s.applied(), Some(&state(10)), "nor moved the applied state");
    let ipvs = plan.ipvs.as_ref().expect("an IPVS part");
    assert!(ipvs
        .before_swap()
        .iter()
        .all(|op| matches!(op, IpvsOp::AddService(_) | IpvsOp::AddDest(..))));
    assert!(!ipvs.before_swap().is_empty());
    assert!(ipvs
        .after_swap()
        .iter()
        .all(|op| matches!(op, IpvsOp::EditDest(_, d) if d.weight == 0)));
    assert!(!ipvs.after_swap().is_empty());
    assert!(matches!(plan.nft, NftStep::Incremental { .. }));

    s.execute(plan).expect("execute");
    let mut seen = log.lock().expect("lock").clone();
    seen.dedup();
    assert_eq!(seen, ["ipvs add", "nft", "ipvs drain", "ipvs delete"]);
    assert_eq!(s.applied(), Some(&next));
}

#[test]
fn ipvs_adds_before_the_nft_swap_and_drains_and_deletes_after_it() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut s = logged_ipvs_syncer(&log);
    s.sync(state(10)).expect("first sync");
    let mut seen = log.lock().expect("lock").clone();
    seen.dedup();
    assert_eq!(
        seen,
        ["ipvs add", "nft"],
        "services exist before nft marks for them"
    );

    log.lock().expect("lock").clear();
    // One service goes, others come: the new ones first, the old one after the swap.
    let mut next = state(12);
    let gone = *next.services.keys().next().expect("a service");
    next.services.remove(&gone);
    s.sync(next).expect("second sync");
    let mut seen = log.lock().expect("lock").clone();
    seen.dedup();
    assert_eq!(seen, ["ipvs add", "nft", "ipvs drain", "ipvs delete"]);
}

#[test]
fn an_export_claiming_a_foreign_ipvs_service_changes_neither_table() {
    let opts = RenderOptions {
        backend: Backend::Ipvs,
        external_interfaces: Vec::new(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
    };
    let mut s = Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts);
    s.sync(state(5)).expect("first sync");
    let nft_before = s.firewall.table.clone();
    // Someone adds by hand the very service the next export brings.
    let next = state(6);
    let mut claimed = crate::apply::ipvs::desired_table(&next);
    let first = crate::apply::ipvs::desired_table(&state(5));
    claimed.retain(|id, _| !first.contains_key(id));
    let shared = Arc::new(Mutex::new(TwinBalancer {
        table: first.into_iter().chain(claimed).collect(),
        ..Default::default()
    }));
    let mut own = Ownership::in_memory();
    own.extend(crate::apply::ipvs::desired_table(&state(5)).into_keys())
        .expect("in memory");
    s.set_ipvs(IpvsSync::new(
        Box::new(shared.clone()),
        own,
        Duration::from_secs(60),
    ));
    let ipvs_before = shared.lock().expect("lock").table.clone();
    assert!(matches!(
        s.sync(next),
        Err(SyncError::Ipvs(IpvsSyncError::Foreign(_)))
    ));
    assert_eq!(s.firewall.table, nft_before, "nft untouched");
    assert_eq!(
        shared.lock().expect("lock").table,
        ipvs_before,
        "IPVS untouched"
    );
}

#[test]
fn an_ipvs_drain_refused_after_the_swap_is_finished_by_the_next_sync() {
    let opts = RenderOptions {
        backend: Backend::Ipvs,
        external_interfaces: Vec::new(),
        internal_interfaces: Vec::new(),
        policy: BasePolicy::parse(DEFAULT_POLICY).expect("policy"),
    };
    let mut s = Syncer::new(TwinFirewall::default(), RecordingConntrack::default(), opts);
    let twin = Arc::new(Mutex::new(TwinBalancer::default()));
    s.set_ipvs(IpvsSync::new(
        Box::new(twin.clone()),
        Ownership::in_memory(),
        Duration::from_secs(60),
    ));
    s.sync(state(10)).expect("first sync");
    // The drain of the removed service is refused (e.g. ENOMEM): nft has swapped.
    let mut next = state(10);
    let gone = *next.services.keys().next().expect("a service");
    next.services.remove(&gone);
    twin.lock().expect("lock").fail_next = Some(12);
    assert!(matches!(s.sync(next.clone()), Err(SyncError::Ipvs(_))));
    assert_ne!(
        twin.lock().expect("lock").table,
        crate::apply::ipvs::desired_table(&next)
    );
    // Same export again: no nft change, but IPVS is finished from a fresh dump.
    assert_eq!(s.sync(next.clone()).expect("sync"), SyncOutcome::Unchanged);
    assert_eq!(
        twin.lock().expect("lock").table,
        crate::apply::ipvs::desired_table(&next)
    );
}

#[test]
fn the_guard_refuses_and_changes_nothing() {
    let mut s = syncer();
    s.set_guard(Some(Guard::default()));
    s.sync(state(10)).expect("sync");
    let before = s.firewall.table.clone();
    assert!(matches!(s.sync(state(3)), Err(SyncError::Guard(_))));
    assert_eq!(s.firewall.table, before);
    assert_eq!(s.applied(), Some(&state(10)));
    s.set_guard(None);
    assert!(matches!(
        s.sync(state(3)).expect("forced"),
        SyncOutcome::Incremental { .. }
    ));
}

fn chains_named_applied(s: &Syncer<TwinFirewall, RecordingConntrack>) -> Vec<String> {
    s.firewall
        .table
        .iter()
        .flat_map(|t| t.chains.keys())
        .filter(|c| c.starts_with(crate::apply::stamp::PREFIX))
        .cloned()
        .collect()
}

#[test]
fn a_stamped_table_is_trusted_and_only_the_difference_sent() {
    let opts = syncer().options().clone();
    let (a, b) = (Stamp::of(b"a", &opts), Stamp::of(b"b", &opts));
    let mut first = syncer();
    first.set_next_stamp(a.clone());
    first.sync(state(10)).expect("full");
    assert_eq!(chains_named_applied(&first), [a.chain()]);

    // A new process (apply --once): the stamp is found, nothing is read, one increment.
    let mut second = syncer();
    second.firewall = first.firewall.clone();
    second.firewall.dumps = 0;
    assert!(second.assume_stamped(state(10), a.clone()).expect("look"));
    second.set_next_stamp(b.clone());
    let outcome = second.sync(state(9)).expect("sync");
    assert!(
        matches!(outcome, SyncOutcome::Incremental { .. }),
        "{outcome:?}"
    );
    assert_eq!(second.firewall.dumps, 0, "the table was never listed");
    assert_eq!(
        chains_named_applied(&second),
        [b.chain()],
        "the stamp swapped with it"
    );
    // Stamps are not content: the table is still exactly a full render of the state.
    let mut content = second.firewall.table.clone().expect("table");
    content
        .chains
        .retain(|c, _| !c.starts_with(crate::apply::stamp::PREFIX));
    assert_eq!(
        Some(content),
        second.expected_table(&state(9)).expect("render")
    );

    // Another export's stamp proves nothing.
    let mut third = syncer();
    third.firewall = second.firewall.clone();
    assert!(!third.assume_stamped(state(9), a).expect("look"));
}

#[test]
fn a_change_without_a_stamp_removes_the_stamp() {
    let mut s = syncer();
    s.set_next_stamp(Stamp::of(b"a", s.options()));
    s.sync(state(10)).expect("full");
    // The daemon: no export digest to stamp with; its increment drops the old one.
    s.sync(state(9)).expect("incremental");
    assert!(chains_named_applied(&s).is_empty());
    // And a reconcile that adopts a stamped table drops it too.
    let mut stamped = syncer();
    stamped.set_next_stamp(Stamp::of(b"b", stamped.options()));
    stamped.sync(state(9)).expect("full");
    let mut daemon = syncer();
    daemon.firewall = stamped.firewall.clone();
    assert_eq!(
        daemon.reconcile(state(9)).expect("adopt"),
        SyncOutcome::Adopted
    );
    assert!(chains_named_applied(&daemon).is_empty());
}

/// The patch path ends where a whole sync of the patched state ends: the same table, and
/// the same applied state; a patch of what is applied sends nothing; without an applied
/// state it does nothing.
#[test]
fn a_service_patch_is_a_whole_sync_of_the_patched_state() {
    let mut s = syncer();
    assert!(s.sync_services(Vec::new()).is_none(), "nothing applied yet");
    let before = state(20);
    s.sync(before.clone()).expect("load");
    let (key, svc) = before
        .services
        .iter()
        .find(|(_, svc)| svc.reals.iter().filter(|(_, r)| r.weight > 0).count() >= 2)
        .map(|(k, v)| (*k, v.clone()))
        .expect("a service with two serving servers");
    let mut drained = svc.clone();
    let (real, mut rs) = drained
        .reals
        .iter()
        .find(|(_, r)| r.weight > 0)
        .map(|(k, r)| (*k, r.clone()))
        .expect("serving");
    rs.weight = 0;
    drained.reals.insert(real, rs);
    let mut after = before.clone();
    after.services.insert(key, drained.clone());

    let outcome = s
        .sync_services(vec![(key, drained.clone())])
        .expect("applied")
        .expect("synced");
    assert!(
        matches!(outcome, SyncOutcome::Incremental { .. }),
        "{outcome:?}"
    );
    assert_eq!(s.applied(), Some(&after));
    assert_eq!(s.firewall.table, s.expected_table(&after).expect("render"));
    let sent = s.firewall.applied.len();
    assert_eq!(
        s.sync_services(vec![(key, drained)])
            .expect("applied")
            .expect("synced"),
        SyncOutcome::Unchanged
    );
    assert_eq!(s.firewall.applied.len(), sent, "nothing sent for no change");
    // And back: the table is the original one again.
    s.sync_services(vec![(key, svc)])
        .expect("applied")
        .expect("synced");
    assert_eq!(s.applied(), Some(&before));
    assert_eq!(s.firewall.table, s.expected_table(&before).expect("render"));
}
