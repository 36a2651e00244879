//! Computing a diff, and applying one (the inverse, used to prove the diff complete).

use super::{Change, RealEntry, RealUpdate, ServiceChange, ServiceUpdate, StateDiff};
use crate::model::{DesiredState, ServiceKey, VirtualService};
use std::cmp::Ordering;

impl StateDiff {
    /// What turns `old` into `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> StateDiff {
        let mut changes = Vec::new();
        let mut a = old.services.iter().peekable();
        let mut b = new.services.iter().peekable();
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
