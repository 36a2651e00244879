//! Computing a diff, and applying one (the inverse, used to prove the diff complete).

use super::{Change, RealEntry, RealUpdate, ServiceChange, ServiceUpdate, StateDiff};
use crate::model::{DesiredState, ServiceKey, VirtualService};
use std::cmp::Ordering;

/// From this many services in the old state on, the walk is split at the middle key and the
/// halves are compared on two threads. Comparing an unchanged service chases a few heap
/// objects of each state (names, frontends, real servers), so the walk is bound by memory
/// latency: 6–7 ms for 50k services on the benchmark machine, a quarter of a one-change
/// sync's budget at 100k rows. Below this the thread costs more than it saves.
const PARALLEL_FROM: usize = 16_384;

impl StateDiff {
    /// What turns `old` into `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> StateDiff {
        let (a, b) = (&old.services, &new.services);
        let middle = (a.len() >= PARALLEL_FROM)
            .then(|| a.keys().nth(a.len() / 2))
            .flatten();
        let Some(middle) = middle else {
            return StateDiff {
                changes: walk(a.iter(), b.iter()),
            };
        };
        let changes = std::thread::scope(|scope| {
            let upper = std::thread::Builder::new()
                .name("diff".into())
                .spawn_scoped(scope, || walk(a.range(middle..), b.range(middle..)));
            let mut changes = walk(a.range(..middle), b.range(..middle));
            match upper {
                Ok(upper) => match upper.join() {
                    Ok(rest) => changes.extend(rest),
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                // No thread to be had: the same walk, here.
                Err(_) => changes.extend(walk(a.range(middle..), b.range(middle..))),
            }
            changes
        });
        StateDiff { changes }
    }

    /// `old` with this diff applied. `StateDiff::between(a, b).apply(a) == b` for all states.
    pub fn apply(&self, old: &DesiredState) -> DesiredState {
        let mut state = old.clone();
        for change in &self.changes {
            match change {
                ServiceChange::Added { key, service }
                | ServiceChange::Replaced {
                    key, new: service, ..
                } => {
                    state.services.insert(*key, service.clone());
                }
                ServiceChange::Removed { key, .. } => {
                    state.services.remove(key);
                }
                ServiceChange::Modified(u) => {
                    if let Some(svc) = state.services.get_mut(&u.key) {
                        apply_update(svc, u);
                    }
                }
            }
        }
        state
    }
}

/// The changes between two walks over the same key range of two states, in key order.
fn walk<'a>(
    a: impl Iterator<Item = (&'a ServiceKey, &'a VirtualService)>,
    b: impl Iterator<Item = (&'a ServiceKey, &'a VirtualService)>,
) -> Vec<ServiceChange> {
    let mut changes = Vec::new();
    let (mut a, mut b) = (a.peekable(), b.peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                let (key, service) = a.next().expect("peeked");
                changes.push(ServiceChange::Removed {
                    key: *key,
                    service: service.clone(),
                });
            }
            Ordering::Greater => {
                let (key, service) = b.next().expect("peeked");
                changes.push(ServiceChange::Added {
                    key: *key,
                    service: service.clone(),
                });
            }
            Ordering::Equal => {
                let (key, sa) = a.next().expect("peeked");
                let (_, sb) = b.next().expect("peeked");
                if sa != sb {
                    changes.push(service_change(key, sa, sb));
                }
            }
        }
    }
    changes
}

fn service_change(key: &ServiceKey, old: &VirtualService, new: &VirtualService) -> ServiceChange {
    if old.proto != new.proto || old.is_ipv6() != new.is_ipv6() {
        return ServiceChange::Replaced {
            key: *key,
            old: old.clone(),
            new: new.clone(),
        };
    }
    let mut update = ServiceUpdate {
        key: *key,
        proto: new.proto,
        service: changed(old.service.clone(), new.service.clone()),
        params: changed(old.params, new.params),
        frontends_added: new.frontends.difference(&old.frontends).copied().collect(),
        frontends_removed: old.frontends.difference(&new.frontends).copied().collect(),
        reals_added: Vec::new(),
        reals_removed: Vec::new(),
        reals_changed: Vec::new(),
    };
    for (k, rs) in &new.reals {
        match old.reals.get(k) {
            None => update.reals_added.push(RealEntry {
                key: *k,
                server: rs.clone(),
            }),
            Some(prev) if prev != rs => update.reals_changed.push(RealUpdate {
                key: *k,
                old: prev.clone(),
                new: rs.clone(),
            }),
            Some(_) => {}
        }
    }
    for (k, rs) in &old.reals {
        if !new.reals.contains_key(k) {
            update.reals_removed.push(RealEntry {
                key: *k,
                server: rs.clone(),
            });
        }
    }
    ServiceChange::Modified(update)
}

fn changed<T: PartialEq>(old: T, new: T) -> Option<Change<T>> {
    (old != new).then_some(Change { old, new })
}

fn apply_update(svc: &mut VirtualService, u: &ServiceUpdate) {
    if let Some(c) = &u.service {
        svc.service = c.new.clone();
    }
    if let Some(c) = &u.params {
        svc.params = c.new;
    }
    for f in &u.frontends_removed {
        svc.frontends.remove(f);
    }
    for f in &u.frontends_added {
        svc.frontends.insert(*f);
    }
    let reals = &mut svc.reals;
    for r in &u.reals_removed {
        reals.remove(&r.key);
    }
    for r in &u.reals_added {
        reals.insert(r.key, r.server.clone());
    }
    for r in &u.reals_changed {
        reals.insert(r.key, r.new.clone());
    }
}
