use super::*;

const EXPORT: &str = "# portcullis-export 1.1
service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check
web,web.1,tcp,192.0.2.10,80,,10.0.0.1,8080,10,wlc,nat,,http:/health:200
web,web.2,tcp,192.0.2.10,80,,10.0.0.2,8080,10,wlc,nat,,
web,web.3,tcp,192.0.2.10,80,,10.0.0.3,8080,0,wlc,nat,,
web,web.4,tcp,192.0.2.10,80,,10.0.0.4,8080,10,wlc,nat,,none
api,api.1,tcp,192.0.2.11,443,,10.0.0.1,8080,5,rr,nat,,http:/health:200
tg,tg.1,tcp,192.0.2.20,20000-20099,7,10.0.0.5,,1,sh,nat,,tcp
tg,tg.2,tcp,192.0.2.20,20000-20099,7,10.0.0.6,,1,sh,nat,,tcp
dns,dns.1,udp,192.0.2.30,53,,10.0.0.7,,1,rr,nat,,
";

fn load() -> (DesiredState, ExportedChecks) {
    let export = portcullis_export::parse(EXPORT.as_bytes()).expect("valid");
    (
        DesiredState::from_export(&export),
        ExportedChecks::from_export(&export),
    )
}

fn addr(key: &RealKey) -> String {
    key.addr.to_string()
}

fn weights(state: &DesiredState) -> Vec<(String, u16)> {
    state
        .services
        .values()
        .flat_map(|s| s.reals.iter().map(|(k, r)| (addr(k), r.weight)))
        .collect()
}

fn target(map: &TargetMap, ip: &str, port: Option<u16>) -> Target {
    map.iter()
        .find(|((_, r), _)| r.addr.to_string() == ip && r.port == port)
        .map(|(_, t)| t.clone())
        .expect("probed")
}

#[test]
fn explicit_checks_win_and_the_default_covers_tcp_services_only() {
    let (state, checks) = load();
    let none = targets(&state, &checks, None);
    // Only explicit checks without a default: web.1, api.1 (one endpoint, two services), tg.
    assert_eq!(none.len(), 4);
    let tcp = Check::Tcp;
    let all = targets(&state, &checks, Some(&tcp));
    // web.2 and web.3 take the default; web.4 says none; the UDP service is not probed.
    assert_eq!(all.len(), 6);
    assert!(all
        .keys()
        .all(|(_, r)| addr(r) != "10.0.0.4" && addr(r) != "10.0.0.7"));
    assert_eq!(
        target(&all, "10.0.0.2", Some(8080)),
        Target {
            endpoint: "10.0.0.2:8080".parse().expect("addr"),
            probe: Probe::Tcp
        }
    );
    // One endpoint and one probe for web.1 and api.1: the same target, probed once.
    let shared: BTreeSet<&Target> = all
        .iter()
        .filter(|((_, r), _)| addr(r) == "10.0.0.1")
        .map(|(_, t)| t)
        .collect();
    assert_eq!(shared.len(), 1);
    // A port range keeps the client's port: probed on the frontend's first port.
    assert_eq!(
        target(&all, "10.0.0.5", None).endpoint,
        "10.0.0.5:20000".parse().expect("addr")
    );
}

#[test]
fn down_servers_get_weight_zero_and_nothing_else_changes() {
    let (state, checks) = load();
    let map = targets(&state, &checks, Some(&Check::Tcp));
    let down: BTreeSet<Target> = [target(&map, "10.0.0.2", Some(8080))].into();
    let out = overlay(&state, &map, &down);
    assert_eq!(out.held_down.len(), 1);
    assert!(out.fail_open.is_empty());
    let changed: Vec<_> = weights(&state)
        .into_iter()
        .zip(weights(&out.state))
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        changed,
        [(("10.0.0.2".to_owned(), 10), ("10.0.0.2".to_owned(), 0))]
    );
    // Nothing down: the exported state itself.
    assert_eq!(overlay(&state, &map, &BTreeSet::new()).state, state);
}

#[test]
fn a_service_with_every_serving_server_down_fails_open() {
    let (state, checks) = load();
    let map = targets(&state, &checks, Some(&Check::Tcp));
    let down: BTreeSet<Target> = [
        target(&map, "10.0.0.5", None),
        target(&map, "10.0.0.6", None),
        // 10.0.0.1 serves web and api: api has no other server, web has web.2 and web.4.
        target(&map, "10.0.0.1", Some(8080)),
    ]
    .into();
    let out = overlay(&state, &map, &down);
    let fail_open: Vec<String> = out.fail_open.iter().map(ToString::to_string).collect();
    assert_eq!(fail_open, ["fwmark 7", "tcp 192.0.2.11:443"]);
    assert_eq!(out.held_down.len(), 1, "{:?}", out.held_down);
    let web = &out.state.services[&out.held_down[0].0];
    assert_eq!(
        web.reals.get(&out.held_down[0].1).map(|r| r.weight),
        Some(0)
    );
    for key in &out.fail_open {
        assert_eq!(out.state.services[key], state.services[key]);
    }
}

#[test]
fn a_server_drained_in_the_export_stays_drained_and_does_not_count_as_serving() {
    let (state, checks) = load();
    let map = targets(&state, &checks, Some(&Check::Tcp));
    // web.3 (weight 0 in the export) is up; web.1 and web.2 down; web.4 unchecked serves.
    let down: BTreeSet<Target> = [
        target(&map, "10.0.0.1", Some(8080)),
        target(&map, "10.0.0.2", Some(8080)),
    ]
    .into();
    let out = overlay(&state, &map, &down);
    let web_key = ServiceKey::Addr {
        proto: Proto::Tcp,
        vip: "192.0.2.10".parse().expect("ip"),
        port: 80,
    };
    let web: Vec<(String, u16)> = out.state.services[&web_key]
        .reals
        .iter()
        .map(|(k, r)| (addr(k), r.weight))
        .collect();
    assert_eq!(
        web,
        [
            ("10.0.0.1".to_owned(), 0),
            ("10.0.0.2".to_owned(), 0),
            ("10.0.0.3".to_owned(), 0),
            ("10.0.0.4".to_owned(), 10)
        ]
    );
}

/// Every subset of `targets`' distinct targets.
fn every_down_set(targets: &TargetMap) -> Vec<BTreeSet<Target>> {
    let distinct: Vec<Target> = targets
        .values()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    (0..1u32 << distinct.len())
        .map(|bits| {
            distinct
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, t)| t.clone())
                .collect()
        })
        .collect()
}

/// The transition path is the full overlay, computed from the changed targets only: for
/// every pair of down sets (before, after), patching overlay(before) with
/// overlay_changes(before → after) gives overlay(after) — the state, what is held down
/// and what fails open.
#[test]
fn a_transition_patch_gives_the_same_state_as_the_whole_overlay() {
    let (state, checks) = load();
    let map = targets(&state, &checks, Some(&Check::Tcp));
    let inverse = by_target(&map);
    let sets = every_down_set(&map);
    assert!(sets.len() >= 32, "{} down sets", sets.len());
    for before in &sets {
        let from = overlay(&state, &map, before);
        for after in &sets {
            let want = overlay(&state, &map, after);
            let mut patched = from.state.clone();
            let mut held: BTreeSet<(ServiceKey, RealKey)> =
                from.held_down.iter().copied().collect();
            let mut fail_open: BTreeSet<ServiceKey> = from.fail_open.iter().copied().collect();
            for (key, svc, effect) in overlay_changes(&state, &inverse, before, after) {
                patched.services.insert(key, svc);
                held.retain(|(k, _)| *k != key);
                fail_open.remove(&key);
                match effect {
                    ServiceOverlay::Exported => {}
                    ServiceOverlay::HeldDown(reals) => {
                        held.extend(reals.into_iter().map(|r| (key, r)))
                    }
                    ServiceOverlay::FailOpen => {
                        fail_open.insert(key);
                    }
                }
            }
            assert_eq!(patched, want.state, "{before:?} -> {after:?}");
            assert_eq!(
                held,
                want.held_down.iter().copied().collect::<BTreeSet<_>>()
            );
            assert_eq!(
                fail_open,
                want.fail_open.iter().copied().collect::<BTreeSet<_>>()
            );
        }
    }
}
