//! The IPVS sync logic against the in-memory twin: first load, idempotence, drains and
//! deletes, restarts, foreign services and out-of-band edits. Over 400 lines because each case
//! spells out its twin state in full; they share nothing worth a fixture builder.

use super::*;
use crate::apply::ipvs::{DestId, Service, ServiceWithDests, TwinBalancer};
use crate::model::{RealKey, VirtualService};
use std::sync::{Arc, Mutex};

fn state(n: usize) -> DesiredState {
    DesiredState::from_rows(&crate::synth::rows_with_services(n))
}

fn twin() -> Arc<Mutex<TwinBalancer>> {
    Arc::new(Mutex::new(TwinBalancer::default()))
}

fn sync_with(t: &Arc<Mutex<TwinBalancer>>, own: Ownership) -> IpvsSync {
    IpvsSync::new(Box::new(t.clone()), own, Duration::from_secs(60))
}

fn step(s: &mut IpvsSync, st: &DesiredState) -> IpvsSyncReport {
    s.step(st, Scope::Everything).expect("step")
}

fn first_real(st: &DesiredState) -> (ServiceId, &VirtualService, RealKey) {
    let (key, svc) = st
        .services
        .iter()
        .find(|(_, s)| s.reals.len() >= 2 && s.reals.iter().all(|(_, r)| r.weight > 0))
        .expect("a service with two weighted reals");
    let id = desired_table(&DesiredState {
        services: [(*key, svc.clone())].into_iter().collect(),
    })
    .into_keys()
    .next()
    .expect("id");
    (id, svc, *svc.reals.keys().next().expect("real"))
}

fn dest_id(rk: RealKey) -> DestId {
    DestId {
        addr: rk.addr,
        port: rk.port.unwrap_or(0),
    }
}

/// The twin's table without connection counters (desired tables have none).
fn kernel(t: &Arc<Mutex<TwinBalancer>>) -> Table {
    let mut table = t.lock().expect("lock").table.clone();
    for entry in table.values_mut() {
        for d in entry.dests.values_mut() {
            d.active_conns = 0;
            d.inact_conns = 0;
        }
    }
    table
}

#[test]
fn first_sync_creates_everything_then_nothing_is_sent() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    let report = step(&mut s, &st);
    assert_eq!(
        report.changed,
        st.services.len() + st.real_server_count(),
        "one add per service and per destination"
    );
    assert_eq!(kernel(&t), desired_table(&st));
    assert_eq!(s.owned().len(), st.services.len());
    assert_eq!(t.lock().expect("lock").batches.len(), 1, "one batch");
    assert_eq!(step(&mut s, &st), IpvsSyncReport::default());
    assert_eq!(
        t.lock().expect("lock").batches.len(),
        1,
        "nothing sent again"
    );
    assert_eq!(
        t.lock().expect("lock").dumps,
        1,
        "the kernel was dumped once"
    );
}

#[test]
fn a_weight_change_is_one_edit() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let mut st = state(20);
    step(&mut s, &st);
    let (id, svc, rk) = first_real(&st);
    let mut svc = svc.clone();
    let mut rs = svc.reals.get(&rk).expect("real").clone();
    rs.weight = 42;
    svc.reals.insert(rk, rs);
    let key = *st
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    st.services.insert(key, svc);
    let report = step(&mut s, &st);
    assert_eq!(report.changed, 1);
    let batches = &t.lock().expect("lock").batches;
    assert!(matches!(&batches[1][..], [IpvsOp::EditDest(s, d)] if *s == id && d.weight == 42));
}

#[test]
fn a_removed_destination_drains_until_idle_then_is_deleted() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    step(&mut s, &st);
    let (id, _, rk) = first_real(&st);
    t.lock().expect("lock").set_active(id, dest_id(rk), 3);

    let mut next = st.clone();
    let key = *next
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    next.services.get_mut(&key).expect("svc").reals.remove(&rk);
    let report = step(&mut s, &next);
    assert_eq!((report.drained, report.deleted, report.draining), (1, 0, 1));
    assert_eq!(
        t.lock().expect("lock").weight(id, dest_id(rk)),
        Some(0),
        "drained, not deleted"
    );

    // Connections still open: a later sync keeps it.
    assert_eq!(s.reap().expect("reap"), (0, 1));
    t.lock().expect("lock").set_active(id, dest_id(rk), 0);
    assert_eq!(s.reap().expect("reap"), (1, 0));
    assert_eq!(
        t.lock().expect("lock").weight(id, dest_id(rk)),
        None,
        "deleted once idle"
    );
    assert_eq!(kernel(&t), desired_table(&next));
}

#[test]
fn the_grace_period_ends_a_drain_with_connections_left() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    step(&mut s, &st);
    let (id, _, rk) = first_real(&st);
    t.lock().expect("lock").set_active(id, dest_id(rk), 7);
    let mut next = st.clone();
    next.services.retain(|_, v| !v.reals.contains_key(&rk));
    let report = step(&mut s, &next);
    assert_eq!(report.deleted, 0, "the service with connections stays");
    assert!(kernel(&t).contains_key(&id));
    assert!(kernel(&t)[&id].dests.values().all(|d| d.weight == 0));
    let later = Instant::now() + Duration::from_secs(61);
    assert_eq!(s.reap_at(later).expect("reap"), (1, 0));
    assert!(!kernel(&t).contains_key(&id));
    assert!(!s.owned().contains(&id), "no longer owned once deleted");
}

#[test]
fn an_idle_removed_service_is_deleted_in_the_same_sync() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    step(&mut s, &st);
    let next = state(10);
    let report = step(&mut s, &next);
    assert!(report.deleted > 0);
    assert_eq!(report.draining, 0);
    assert_eq!(kernel(&t), desired_table(&next));
}

#[test]
fn a_drained_destination_that_comes_back_gets_its_weight_back() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    step(&mut s, &st);
    let (id, _, rk) = first_real(&st);
    t.lock().expect("lock").set_active(id, dest_id(rk), 1);
    let mut next = st.clone();
    let key = *next
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    next.services.get_mut(&key).expect("svc").reals.remove(&rk);
    step(&mut s, &next);
    assert_eq!(t.lock().expect("lock").weight(id, dest_id(rk)), Some(0));
    let report = step(&mut s, &st);
    assert_eq!(report.draining, 0, "no longer draining");
    assert_eq!(kernel(&t), desired_table(&st), "weight restored");
    // And it is not deleted later when its connections end.
    t.lock().expect("lock").set_active(id, dest_id(rk), 0);
    assert_eq!(
        s.reap_at(Instant::now() + Duration::from_secs(3600))
            .expect("reap"),
        (0, 0)
    );
    assert_eq!(kernel(&t), desired_table(&st));
}

#[test]
fn a_restart_restores_weights_stuck_at_zero_and_resumes_drains() {
    let dir = crate::test_dir("ipvs-restart");
    let path = dir.join("ipvs-owned.json");
    let _ = std::fs::remove_dir_all(&dir);
    let t = twin();
    let st = state(20);
    let (id, _, rk) = first_real(&st);
    {
        let mut s = sync_with(&t, Ownership::load(&path).expect("load"));
        step(&mut s, &st);
        t.lock().expect("lock").set_active(id, dest_id(rk), 2);
        let mut next = st.clone();
        let key = *next
            .services
            .iter()
            .find(|(_, v)| v.reals.contains_key(&rk))
            .expect("key")
            .0;
        next.services.get_mut(&key).expect("svc").reals.remove(&rk);
        step(&mut s, &next);
        // The process dies here, the destination drained at weight 0.
    }
    assert_eq!(t.lock().expect("lock").weight(id, dest_id(rk)), Some(0));
    // Restarted with the original export: the weight comes back.
    let mut s = sync_with(&t, Ownership::load(&path).expect("reload"));
    let report = step(&mut s, &st);
    assert_eq!(report.changed, 1, "only the stuck weight is repaired");
    assert_eq!(kernel(&t), desired_table(&st));

    // Restarted with the export that drops it: it drains again and goes once idle.
    let mut next = st.clone();
    let key = *next
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    next.services.get_mut(&key).expect("svc").reals.remove(&rk);
    step(&mut s, &next);
    let mut s = sync_with(&t, Ownership::load(&path).expect("reload"));
    let report = step(&mut s, &next);
    assert_eq!(report.draining, 1, "the drain resumes after the restart");
    t.lock().expect("lock").set_active(id, dest_id(rk), 0);
    assert_eq!(s.reap().expect("reap"), (1, 0));
    assert_eq!(kernel(&t), desired_table(&next));
    let _ = std::fs::remove_dir_all(&dir);
}

fn foreign_service() -> ServiceWithDests {
    let id = ServiceId::Addr {
        proto: Proto::Tcp,
        addr: "203.0.113.7".parse().expect("ip"),
        port: 25,
    };
    let did = DestId {
        addr: "10.99.0.1".parse().expect("ip"),
        port: 25,
    };
    ServiceWithDests {
        service: Service {
            id,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: u32::MAX,
        },
        dests: [(did, Dest::new(did, portcullis_export::Method::Dr, 1))]
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_foreign_service_survives_every_sync() {
    let t = twin();
    let foreign = foreign_service();
    t.lock()
        .expect("lock")
        .table
        .insert(foreign.service.id, foreign.clone());
    let mut s = sync_with(&t, Ownership::in_memory());
    step(&mut s, &state(20));
    step(&mut s, &state(5));
    step(&mut s, &DesiredState::default());
    let k = kernel(&t);
    assert_eq!(k.len(), 1, "only the foreign service is left");
    assert_eq!(k[&foreign.service.id], foreign);
}

#[test]
fn an_export_claiming_a_foreign_service_is_refused_unless_adopting() {
    let t = twin();
    let st = state(20);
    let mut claimed = desired_table(&st).into_values().next().expect("entry");
    claimed.service.scheduler = "rr".into();
    let id = claimed.service.id;
    t.lock().expect("lock").table.insert(id, claimed.clone());
    let mut s = sync_with(&t, Ownership::in_memory());
    let err = s.plan(&st, Scope::Everything).expect_err("refused");
    assert!(matches!(err, IpvsSyncError::Foreign(ref names) if names.contains(&id.to_string())));
    assert_eq!(kernel(&t).len(), 1, "nothing was changed");
    assert!(t.lock().expect("lock").batches.is_empty());

    s.adopt = true;
    step(&mut s, &st);
    assert_eq!(
        kernel(&t),
        desired_table(&st),
        "adopted and brought in line"
    );
    assert!(s.owned().contains(&id));
}

#[test]
fn a_service_deleted_by_hand_is_recreated_after_the_refusal() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let mut st = state(20);
    step(&mut s, &st);
    let (id, svc, rk) = first_real(&st);
    // Out of band: ipvsadm -D on one of ours.
    t.lock().expect("lock").table.remove(&id);
    let mut svc = svc.clone();
    let mut rs = svc.reals.get(&rk).expect("real").clone();
    rs.weight += 1;
    svc.reals.insert(rk, rs);
    let key = *st
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    st.services.insert(key, svc);
    step(&mut s, &st);
    assert_eq!(kernel(&t), desired_table(&st));
    assert_eq!(
        t.lock().expect("lock").dumps,
        2,
        "one re-read after the refusal"
    );
}

#[test]
fn an_audit_repairs_a_weight_edited_by_hand() {
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let st = state(20);
    step(&mut s, &st);
    let (id, _, rk) = first_real(&st);
    // Out of band: ipvsadm -e ... -w 0, invisible to the hot path.
    t.lock()
        .expect("lock")
        .table
        .get_mut(&id)
        .expect("svc")
        .dests
        .get_mut(&dest_id(rk))
        .expect("dest")
        .weight = 0;
    assert_eq!(step(&mut s, &st).changed, 0, "the hot path does not list");
    s.invalidate();
    assert_eq!(step(&mut s, &st).changed, 1, "the audit repairs it");
    assert_eq!(kernel(&t), desired_table(&st));
}

#[test]
fn a_step_scoped_to_the_diff_ends_where_a_full_one_does() {
    use crate::diff::StateDiff;
    let t = twin();
    let mut s = sync_with(&t, Ownership::in_memory());
    let before = state(40);
    step(&mut s, &before);
    // Some services go, some come, one weight changes.
    let mut after = state(44);
    let gone: Vec<_> = after.services.keys().take(3).copied().collect();
    for k in &gone {
        after.services.remove(k);
    }
    let (_, svc, rk) = first_real(&after);
    let key = *after
        .services
        .iter()
        .find(|(_, v)| v.reals.contains_key(&rk))
        .expect("key")
        .0;
    let mut svc = svc.clone();
    let mut rs = svc.reals.get(&rk).expect("real").clone();
    rs.weight = 3;
    svc.reals.insert(rk, rs);
    after.services.insert(key, svc);
    let diff = StateDiff::between(&before, &after);
    let keys: Vec<_> = diff.changes.iter().map(|c| *c.key()).collect();
    assert!(keys.len() < after.services.len() / 2, "the scope is small");
    s.step(&after, Scope::Services(&keys)).expect("scoped");
    assert_eq!(kernel(&t), desired_table(&after));
    assert_eq!(
        t.lock().expect("lock").dumps,
        1,
        "no listing on the hot path"
    );
}
