//! Incremental sync: only the set and map elements a diff touches, as one transaction. Chains
//! are static, so a sync never rewrites one, and its size is proportional to the change, never
//! to the table.

use super::balance;
use super::layout::{frontend_element, fwmark_element};
use super::patterns::{self, pattern_elements, PatternIds, PatternIndex};
use super::transaction::{Element, Object, Transaction};
use super::Backend;
use crate::diff::StateDiff;
use crate::model::{DesiredState, ServiceKey, VirtualService};
use std::collections::BTreeSet;

/// Every element a service puts in the table, for `backend`; `ids` are the marks of the
/// bucket patterns of the state the service is part of.
pub fn service_elements(
    key: &ServiceKey,
    svc: &VirtualService,
    backend: Backend,
    ids: &PatternIds,
) -> Vec<Element> {
    // Accepted on input: every frontend for IPVS; on the nft backend those of a service that
    // nothing translates (no server of weight), so the gateway refuses rather than drops.
    let accepted = backend == Backend::Ipvs || !patterns::translated(svc);
    let mut out: Vec<Element> = if accepted {
        svc.frontends
            .iter()
            .map(|f| frontend_element(svc.proto, f))
            .collect()
    } else {
        Vec::new()
    };
    if let ServiceKey::Fwmark { mark } = key {
        out.extend(
            svc.frontends
                .iter()
                .map(|f| fwmark_element(svc.proto, f, *mark)),
        );
    }
    if backend == Backend::Nft {
        out.extend(balance::elements(key, svc, ids));
    }
    out
}

/// An incremental transaction, and the bucket patterns the state has once it is applied.
#[derive(Debug)]
pub struct Increment {
    pub tx: Transaction,
    pub patterns: PatternIndex,
}

/// The transaction from `old` to `new` (`diff` is `StateDiff::between(old, new)`;
/// `patterns` the index of the whole applied state — `old` may be only the part a patch
/// touches): for each changed service, the elements it had and no longer has are deleted,
/// the ones it now has and did not have are added; a bucket pattern's table is added with
/// its first service and deleted with its last. Deletions come first: a key whose value
/// changes (a frontend moving to another fwmark or pattern, a bucket whose server changes)
/// must be gone before it is added back.
///
/// `None` when a new pattern's hash collides with a kept one that then has to move (ids are
/// probed in pattern order): the caller regenerates the table whole (rare: 23 bits per group).
pub fn incremental(
    diff: &StateDiff,
    old: &DesiredState,
    new: &DesiredState,
    backend: Backend,
    patterns: &PatternIndex,
) -> Option<Increment> {
    let mut next = patterns.clone();
    if backend == Backend::Nft {
        for change in &diff.changes {
            let key = change.key();
            if let Some(s) = old.services.get(key) {
                next.remove(key, s);
            }
            if let Some(s) = new.services.get(key) {
                next.add(key, s);
            }
        }
    }
    let (old_ids, new_ids) = (patterns.ids(), next.ids());
    // A pattern kept from `old` to `new` must keep its mark: the services that use it and
    // did not change are not in this transaction. It moves only when a new pattern collides
    // with it and takes its place in the probing order.
    if old_ids
        .iter()
        .any(|(p, mark)| new_ids.get(p).is_some_and(|m| m != mark))
    {
        return None;
    }
    let mut deletes = BTreeSet::new();
    let mut adds = BTreeSet::new();
    for change in &diff.changes {
        let key = change.key();
        let elements = |state: &DesiredState, ids: &PatternIds| -> BTreeSet<Element> {
            state.services.get(key).map_or_else(BTreeSet::new, |s| {
                service_elements(key, s, backend, ids).into_iter().collect()
            })
        };
        let (before, after) = (elements(old, &old_ids), elements(new, &new_ids));
        deletes.extend(before.difference(&after).cloned());
        adds.extend(after.difference(&before).cloned());
    }
    // A kept pattern has the same mark before and after (checked above).
    for (p, &mark) in &old_ids {
        if !new_ids.contains_key(p) {
            deletes.extend(pattern_elements(p, mark));
        }
    }
    for (p, &mark) in &new_ids {
        if !old_ids.contains_key(p) {
            adds.extend(pattern_elements(p, mark));
        }
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
    Some(Increment { tx, patterns: next })
}

/// [`incremental`] from one whole state to another, for callers that hold both (tools, tests,
/// benchmarks): the diff is computed and the index counted from `old`. `None` on a collision,
/// as there.
pub fn incremental_between(
    old: &DesiredState,
    new: &DesiredState,
    backend: Backend,
) -> Option<Transaction> {
    let patterns = match backend {
        Backend::Nft => PatternIndex::of(old),
        Backend::Ipvs => PatternIndex::default(),
    };
    incremental(&StateDiff::between(old, new), old, new, backend, &patterns).map(|inc| inc.tx)
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

    /// The nft backend's increment from `old` to `new`, the index counted from `old`.
    fn increment(old: &DesiredState, new: &DesiredState) -> Increment {
        let diff = StateDiff::between(old, new);
        incremental(&diff, old, new, Backend::Nft, &PatternIndex::of(old)).expect("no collision")
    }

    #[test]
    fn a_drain_changes_the_pattern_and_loads_the_new_one_once() {
        let (old, new) = (eight(None), eight(Some(3)));
        let inc = increment(&old, &new);
        assert_eq!(inc.patterns, PatternIndex::of(&new));
        let (mut deleted, mut added) = (Vec::new(), Vec::new());
        for op in &inc.tx.ops {
            match op {
                Op::Delete(Object::Element(e)) => deleted.push(e.clone()),
                Op::Add(Object::Element(e)) => added.push(e.clone()),
                other => panic!("only element changes: {other}"),
            }
        }
        let sets = |v: &[Element], set: &str| v.iter().filter(|e| e.set == set).count();
        // The service's pattern element, and the 61 buckets of the only pattern in use.
        assert_eq!(sets(&deleted, "lb_pattern_v4"), 1);
        assert_eq!(sets(&added, "lb_pattern_v4"), 1);
        assert_eq!(sets(&deleted, "lb_slot_src_61"), 61);
        assert_eq!(sets(&added, "lb_slot_src_61"), 61);
        assert_eq!(deleted.len() + added.len(), 124, "no real changes");
        // The old and new pattern tables differ only in the drained slot's buckets.
        let table = |v: &[Element]| -> Vec<String> {
            v.iter()
                .filter(|e| e.set == "lb_slot_src_61")
                .map(|e| e.value.clone().unwrap_or_default())
                .collect()
        };
        let moved = table(&deleted)
            .iter()
            .zip(table(&added))
            .filter(|(a, b)| *a != b)
            .count();
        assert!((7..=8).contains(&moved), "{moved}");
    }

    #[test]
    fn a_pattern_shared_with_another_service_stays() {
        let mut old = eight(None);
        let mut other = old.clone();
        let (k, s) = other.services.pop_first().expect("one");
        let ServiceKey::Addr { proto, vip, .. } = k else {
            panic!("addr")
        };
        let k2 = ServiceKey::Addr {
            proto,
            vip,
            port: 81,
        };
        old.services.insert(k2, s);
        let mut new = old.clone();
        new.services.remove(&k2);
        let inc = increment(&old, &new);
        assert!(inc.tx.ops.iter().all(
            |op| !matches!(op, Op::Delete(Object::Element(e)) if e.set.starts_with("lb_slot"))
        ));
        assert_eq!(inc.patterns.len(), 1);
    }
}
