//! Properties of diff and incremental rendering over generated states:
//! - applying `diff(a, b)` to `a` gives `b`, and `diff(a, a)` is empty;
//! - applying the incremental nft transaction's element operations to the elements of
//!   `full(a)` gives exactly the elements of `full(b)`, with every delete hitting an existing
//!   element and every add a free key (what the kernel would demand).

mod common;

use portcullis::apply::TableState;
use portcullis::diff::StateDiff;
use portcullis::model::{
    DesiredState, Frontend, RealKey, RealServer, ServiceKey, ServiceParams, SortedSet,
    VirtualService,
};
use portcullis::render::nft::{
    self,
    transaction::{Object, Op},
    Backend,
};
use portcullis_export::{InstanceId, Method, PortRange, Proto, Scheduler, ServiceType};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn params() -> impl Strategy<Value = ServiceParams> {
    (
        prop::sample::select(&Scheduler::ALL[..]),
        prop::sample::select(vec![Method::Nat, Method::Dr, Method::Tun]),
        prop::option::of(1u32..5000),
    )
        .prop_map(|(scheduler, method, persistence)| ServiceParams {
            scheduler,
            method,
            persistence,
        })
}

fn reals() -> impl Strategy<Value = BTreeMap<RealKey, RealServer>> {
    prop::collection::btree_map(
        (
            0u8..6,
            prop::option::of(prop::sample::select(vec![80u16, 8080])),
        )
            .prop_map(|(h, port)| RealKey {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, h)),
                port,
            }),
        (0u16..4, 0u8..3).prop_map(|(weight, i)| RealServer {
            weight,
            instance: InstanceId::parse(&format!("inst.{i}")).expect("valid id"),
        }),
        0..5,
    )
}

/// Keys own disjoint frontends (as a valid export guarantees): an address service owns its own
/// vip:port; fwmark `m` owns vips derived from `m`, in one family chosen per state.
fn service(key: ServiceKey) -> BoxedStrategy<VirtualService> {
    let base = (params(), reals(), prop::sample::select(vec!["pgw", "tg"]));
    match key {
        ServiceKey::Addr { proto, vip, port } => base
            .prop_map(move |(params, reals, name)| VirtualService {
                service: ServiceType::parse(name).expect("valid"),
                proto,
                params,
                frontends: [Frontend {
                    vip,
                    ports: PortRange::single(port),
                }]
                .into_iter()
                .collect(),
                reals: reals.into_iter().collect(),
            })
            .boxed(),
        ServiceKey::Fwmark { mark } => (
            base,
            any::<bool>(),
            prop::sample::select(vec![Proto::Tcp, Proto::Udp]),
            prop::collection::btree_set(
                (
                    0u8..3,
                    prop::sample::select(vec![(20000u16, 20099u16), (30000, 30000)]),
                ),
                1..4,
            ),
        )
            .prop_map(move |((params, reals, name), v6, proto, fronts)| {
                let frontends: SortedSet<Frontend> = fronts
                    .into_iter()
                    .map(|(i, (first, last))| Frontend {
                        vip: if v6 {
                            IpAddr::V6(Ipv6Addr::new(
                                0x2001,
                                0xdb8,
                                0,
                                0,
                                0,
                                0,
                                mark as u16,
                                i as u16,
                            ))
                        } else {
                            IpAddr::V4(Ipv4Addr::new(198, 51, mark as u8, i))
                        },
                        ports: PortRange { first, last },
                    })
                    .collect();
                VirtualService {
                    service: ServiceType::parse(name).expect("valid"),
                    proto,
                    params,
                    frontends,
                    reals: reals.into_iter().collect(),
                }
            })
            .boxed(),
    }
}

fn key() -> impl Strategy<Value = ServiceKey> {
    prop_oneof![
        (1u32..6).prop_map(|mark| ServiceKey::Fwmark { mark }),
        (
            prop::sample::select(vec![Proto::Tcp, Proto::Udp]),
            1u8..4,
            prop::sample::select(vec![80u16, 443])
        )
            .prop_map(|(proto, h, port)| ServiceKey::Addr {
                proto,
                vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, h)),
                port,
            }),
    ]
}

fn state() -> impl Strategy<Value = DesiredState> {
    prop::collection::btree_set(key(), 0..8).prop_flat_map(|keys| {
        let keys: Vec<ServiceKey> = keys.into_iter().collect();
        let services: Vec<_> = keys.iter().map(|k| service(*k)).collect();
        services.prop_map(move |svcs| DesiredState {
            services: keys.iter().copied().zip(svcs).collect(),
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn applying_the_diff_yields_the_target(a in state(), b in state()) {
        let d = StateDiff::between(&a, &b);
        prop_assert_eq!(d.apply(&a), b.clone());
        prop_assert!(StateDiff::between(&a, &a).is_empty());
        prop_assert_eq!(d.is_empty(), a == b);
    }

    /// The twin enforces the kernel's rules (no deleting what is absent, no adding what exists,
    /// no deleting a chain still referenced), so this also proves the increment's ordering.
    #[test]
    fn incremental_turns_full_a_into_full_b(a in state(), b in state()) {
        for backend in [Backend::Ipvs, Backend::Nft] {
            let opts = common::render_options(backend, &["eth0"]);
            let full_a = TableState::from_transaction(&nft::full_ruleset(&a, &opts));
            let full_b = TableState::from_transaction(&nft::full_ruleset(&b, &opts));
            prop_assert!(full_a.is_ok() && full_b.is_ok(), "full render inconsistent");
            let inc = nft::incremental_between(&a, &b, backend).expect("no pattern collision");
            let applied = TableState::apply(&full_a.unwrap_or_default(), &inc);
            prop_assert!(applied.is_ok(), "{:?}: {:?}", backend, applied.err());
            prop_assert_eq!(applied.unwrap_or_default(), full_b.unwrap_or_default());
            prop_assert!(inc.ops.iter().all(|op| matches!(op, Op::Add(Object::Element(_)) | Op::Delete(Object::Element(_)))),
                "an incremental sync touches only elements");
        }
    }
}

/// `n` address services of one real server each, service `i` at 10.x.y.z:80 for x.y.z = i.
fn large(n: u32) -> DesiredState {
    DesiredState {
        services: (0..n).map(|i| large_service(i, 1)).collect(),
    }
}

fn large_service(i: u32, weight: u16) -> (ServiceKey, VirtualService) {
    let vip = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | i));
    let key = ServiceKey::Addr {
        proto: Proto::Tcp,
        vip,
        port: 80,
    };
    let service = VirtualService {
        service: ServiceType::parse("pgw").expect("valid"),
        proto: Proto::Tcp,
        params: ServiceParams {
            scheduler: Scheduler::ALL[0],
            method: Method::Nat,
            persistence: None,
        },
        frontends: [Frontend {
            vip,
            ports: PortRange::single(80),
        }]
        .into_iter()
        .collect(),
        reals: [(
            RealKey {
                addr: IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
                port: Some(8080),
            },
            RealServer {
                weight,
                instance: InstanceId::parse(&format!("pgw.{i}")).expect("valid id"),
            },
        )]
        .into_iter()
        .collect(),
    };
    (key, service)
}

/// Large enough that the diff walks two halves on two threads: edits anywhere, the middle
/// key included, come out once each, in key order, and complete.
const LARGE: u32 = 20_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_diff_of_large_states_split_in_halves_is_whole(
        edits in prop::collection::vec((0u32..LARGE + 50, 0u8..3), 0..40),
        around_middle in prop::collection::vec((LARGE / 2 - 3..LARGE / 2 + 3, 0u8..3), 0..6),
    ) {
        let a = large(LARGE);
        let mut b = a.clone();
        for (i, kind) in edits.into_iter().chain(around_middle) {
            let (key, service) = large_service(i, 2);
            match kind {
                0 => { b.services.remove(&key); }
                _ => { b.services.insert(key, service); }
            }
        }
        let d = StateDiff::between(&a, &b);
        prop_assert_eq!(d.apply(&a), b.clone());
        let keys: Vec<_> = d.changes.iter().map(|c| *c.key()).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "changes in key order, once each");
        prop_assert!(StateDiff::between(&b, &b).is_empty());
        prop_assert_eq!(StateDiff::between(&b, &a).apply(&b), a);
    }
}
