//! Incremental sync: only the set and map elements a diff touches, as one transaction. Chains
//! are static, so a sync never rewrites one, and its size is proportional to the change, never
//! to the table.

use super::balance;
use super::layout::{frontend_element, fwmark_element};
use super::transaction::{Element, Object, Transaction};
use super::Backend;
use crate::diff::StateDiff;
use crate::model::{DesiredState, ServiceKey, VirtualService};
use std::collections::BTreeSet;

/// Every element a service puts in the table, for `backend`.
pub fn service_elements(key: &ServiceKey, svc: &VirtualService, backend: Backend) -> Vec<Element> {
    let mut out: Vec<Element> = svc
        .frontends
        .iter()
        .map(|f| frontend_element(svc.proto, f))
        .collect();
    match (backend, key) {
        (Backend::Ipvs, ServiceKey::Fwmark { mark }) => out.extend(
            svc.frontends
                .iter()
                .map(|f| fwmark_element(svc.proto, f, *mark)),
        ),
        (Backend::Ipvs, ServiceKey::Addr { .. }) => {}
        (Backend::Nft, _) => out.extend(balance::elements(svc)),
    }
    out
}

/// The transaction from `old` to `new` (`diff` is `StateDiff::between(old, new)`): for each
/// changed service, the elements it had and no longer has are deleted, the ones it now has
/// and did not have are added. Deletions come first: a key whose value changes (a frontend
/// moving to another fwmark, a server's slots after a weight change) must be gone before it
/// is added back.
pub fn incremental(
    diff: &StateDiff,
    old: &DesiredState,
    new: &DesiredState,
    backend: Backend,
) -> Transaction {
    let mut deletes = BTreeSet::new();
    let mut adds = BTreeSet::new();
    for change in &diff.changes {
        let key = change.key();
        let elements = |state: &DesiredState| -> BTreeSet<Element> {
            state.services.get(key).map_or_else(BTreeSet::new, |s| {
                service_elements(key, s, backend).into_iter().collect()
            })
        };
        let (before, after) = (elements(old), elements(new));
        deletes.extend(before.difference(&after).cloned());
        adds.extend(after.difference(&before).cloned());
    }
    // Sorted by set, so each set's changes form one statement. An element deleted by one
    // service and added unchanged by another (a frontend moving between services) stays in
    // both lists: it is computed per service.
    let mut tx = Transaction::new();
    for e in deletes {
        tx.delete(Object::Element(e));
    }
    for e in adds {
        tx.add(Object::Element(e));
    }
    tx
}
