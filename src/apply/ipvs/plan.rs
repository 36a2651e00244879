//! One IPVS step, decided before anything is sent: what to add and edit before the nft swap,
//! what to drain after it. Pure: computed from the in-memory view of the services portcullis
//! owns and the desired table; [`super::IpvsSync`] reads the kernel (when it has to) before
//! calling it and executes the result.

use super::{DestId, IpvsOp, ServiceId, ServiceWithDests, Table};
use crate::model::ServiceKey;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A drain in progress: a whole service (`None`) or one destination of it.
pub type Drain = (ServiceId, Option<DestId>);

/// Which services a step looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// All of them: the whole desired table against every owned service (start-up, audits).
    Everything,
    /// Only those the model keys name (the ones a diff says changed): O(changes). Falls back
    /// to [`Scope::Everything`] when the kernel has to be read first.
    Services(&'a [ServiceKey]),
}

/// What one IPVS step will do, in the order it does it.
#[derive(Debug, Default)]
pub struct IpvsPlan {
    /// Foreign services the state claims, taken over because adoption is on (as the kernel
    /// had them when it was last read).
    pub(super) adopt: Table,
    /// Adds and edits (weights restored from a drain included): sent before the nft swap, so
    /// the services exist before nftables marks packets for them.
    pub(super) before_swap: Vec<IpvsOp>,
    /// Drains that end because the state wants the service or destination again.
    pub(super) drains_ended: Vec<Drain>,
    /// What is gone: drained (weight 0) after the swap, deleted once idle.
    pub(super) drains: Vec<Drain>,
    /// The weight-0 edits of `drains` (those not at weight 0 already).
    pub(super) after_swap: Vec<IpvsOp>,
}

impl IpvsPlan {
    /// The adds and edits sent before the nft swap.
    pub fn before_swap(&self) -> &[IpvsOp] {
        &self.before_swap
    }

    /// The drains (weight 0) sent after the nft swap.
    pub fn after_swap(&self) -> &[IpvsOp] {
        &self.after_swap
    }

    /// Services and destinations newly drained by this step.
    pub fn drains(&self) -> &[Drain] {
        &self.drains
    }

    /// The services this plan creates: recorded as owned *before* they are sent (intent
    /// first), so a crash after the add never leaves a service we cannot recognise.
    pub(super) fn added_services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.before_swap.iter().filter_map(|op| match op {
            IpvsOp::AddService(s) => Some(s.id),
            _ => None,
        })
    }
}

/// The plan that brings the owned `view` (plus the `adopt`ed foreign services) to `desired`.
/// With a `scope`, only those service identities of the view are considered for removal.
/// `draining` is what still drains from earlier steps.
pub(super) fn plan(
    view: &Table,
    adopt: Table,
    desired: &Table,
    scope: Option<&BTreeSet<ServiceId>>,
    draining: &BTreeMap<Drain, Instant>,
) -> IpvsPlan {
    let have = |id: &ServiceId| view.get(id).or_else(|| adopt.get(id));
    let mut before_swap = Vec::new();
    let mut drains = Vec::new();
    for (id, want) in desired {
        match have(id) {
            None => {
                before_swap.push(IpvsOp::AddService(want.service.clone()));
                before_swap.extend(want.dests.values().map(|d| IpvsOp::AddDest(*id, d.clone())));
            }
            Some(have) => {
                if !want.service.same_settings(&have.service) {
                    before_swap.push(IpvsOp::EditService(want.service.clone()));
                }
                for d in want.dests.values() {
                    match have.dests.get(&d.id) {
                        None => before_swap.push(IpvsOp::AddDest(*id, d.clone())),
                        Some(h) if !d.same_settings(h) => {
                            before_swap.push(IpvsOp::EditDest(*id, d.clone()))
                        }
                        Some(_) => {}
                    }
                }
                drains.extend(
                    have.dests
                        .keys()
                        .filter(|d| !want.dests.contains_key(d))
                        .map(|d| (*id, Some(*d))),
                );
            }
        }
    }
    // Adopted services are all desired, so only the view can hold services that are gone.
    let gone = |id: &&ServiceId| view.contains_key(id) && !desired.contains_key(id);
    match scope {
        None => drains.extend(view.keys().filter(gone).map(|id| (*id, None))),
        Some(ids) => drains.extend(ids.iter().filter(gone).map(|id| (*id, None))),
    }
    // The adds and edits above never touch what drains (it is not desired), so the weight-0
    // edits can be worked out now from what the kernel has.
    let after_swap = drains
        .iter()
        .filter_map(|(svc, dest)| Some((*svc, *dest, have(svc)?)))
        .flat_map(|(svc, dest, entry)| {
            entry
                .dests
                .values()
                .filter(move |d| dest.is_none_or(|id| id == d.id) && d.weight != 0)
                .map(move |d| {
                    let mut zero = d.clone();
                    zero.weight = 0;
                    IpvsOp::EditDest(svc, zero)
                })
        })
        .collect();
    let drains_ended = draining
        .keys()
        .filter(|(svc, dest)| match desired.get(svc) {
            None => false,
            Some(entry) => dest.is_none_or(|d| entry.dests.contains_key(&d)),
        })
        .copied()
        .collect();
    IpvsPlan {
        adopt,
        before_swap,
        drains_ended,
        drains,
        after_swap,
    }
}

/// Mirrors an acknowledged operation into the view, so the next plan starts from what the
/// kernel now has without reading it.
pub(super) fn mirror(view: &mut Table, op: &IpvsOp) {
    match op {
        IpvsOp::AddService(s) | IpvsOp::EditService(s) => {
            view.entry(s.id)
                .or_insert_with(|| ServiceWithDests {
                    service: s.clone(),
                    dests: BTreeMap::new(),
                })
                .service = s.clone();
        }
        IpvsOp::DelService(id) => {
            view.remove(id);
        }
        IpvsOp::AddDest(svc, d) | IpvsOp::EditDest(svc, d) => {
            if let Some(e) = view.get_mut(svc) {
                e.dests.insert(d.id, d.clone());
            }
        }
        IpvsOp::DelDest(svc, id) => {
            if let Some(e) = view.get_mut(svc) {
                e.dests.remove(id);
            }
        }
    }
}
