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
    if let ServiceKey::Fwmark { mark } = key {
        out.extend(
            svc.frontends
                .iter()
                .map(|f| fwmark_element(svc.proto, f, *mark)),
        );
    }
    if backend == Backend::Nft {
        out.extend(balance::elements(key, svc));
    }
    out
}

/// The transaction from `old` to `new` (`diff` is `StateDiff::between(old, new)`): for each
/// changed service, the elements it had and no longer has are deleted, the ones it now has
/// and did not have are added. Deletions come first: a key whose value changes (a frontend
/// moving to another fwmark, a bucket whose server changes) must be gone before it
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::nft::transaction::Op;

    /// A persistent service of eight real servers, the one at `drained` with weight 0.
    fn eight(drained: Option<usize>) -> DesiredState {
        let mut csv =
            "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence\n"
                .to_owned();
        for i in 0..8 {
            let w = if Some(i) == drained { 0 } else { 1 };
            csv += &format!(
                "web,web.{i},tcp,192.0.2.1,80,,10.0.0.{},8080,{w},sh,nat,300\n",
                i + 1
            );
        }
        let export = portcullis_export::parse(csv.as_bytes()).expect("valid");
        DesiredState::from_export(&export)
    }

    #[test]
    fn a_drain_rewrites_only_the_drained_servers_buckets() {
        let (old, new) = (eight(None), eight(Some(3)));
        let tx = incremental(&StateDiff::between(&old, &new), &old, &new, Backend::Nft);
        let (mut deleted, mut added) = (Vec::new(), Vec::new());
        for op in &tx.ops {
            match op {
                Op::Delete(Object::Element(e)) => deleted.push(e.clone()),
                Op::Add(Object::Element(e)) => added.push(e.clone()),
                other => panic!("only element changes: {other}"),
            }
        }
        let drained_value = Some("10.0.0.4 . 8080".to_owned());
        // 61 buckets over 8 servers: the drained one had 7 or 8; each is deleted and re-added.
        assert!((7..=8).contains(&deleted.len()), "{deleted:?}");
        assert!(deleted.iter().all(|e| e.value == drained_value));
        let keys = |v: &[Element]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&deleted), keys(&added));
        assert!(added.iter().all(|e| e.value != drained_value));
    }
}
