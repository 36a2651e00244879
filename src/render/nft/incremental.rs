//! Incremental sync: only what a diff touches, as one transaction. Its size is proportional to
//! the change, never to the table: set and map elements, and for the nft backend the chains
//! of the services and real servers that changed. Static chains are never rewritten.

use super::balance;
use super::layout::{frontend_element, fwmark_element};
use super::transaction::{Element, Object, Transaction};
use super::Backend;
use crate::diff::{ServiceChange, StateDiff};
use crate::model::{DesiredState, Frontend, ServiceKey, VirtualService};

/// Order inside the transaction, so every reference is valid when the kernel checks it:
/// 1. element deletions (a frontend moving between services is the same key: it must be gone
///    before it is added back with its new mark or chain);
/// 2. new chains (real servers, services) and rewritten service rules;
/// 3. element additions, now pointing at chains that exist;
/// 4. removal of chains nothing points at any more.
///
/// `new` is the state the diff leads to: a modified service's rule is rendered from it.
pub fn incremental(diff: &StateDiff, new: &DesiredState, backend: Backend) -> Transaction {
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    let mut chains = Transaction::new();
    let mut removals = Transaction::new();
    for change in &diff.changes {
        match change {
            ServiceChange::Added { key, service } => {
                elements(&mut adds, key, service, &service.frontends, backend);
                if backend == Backend::Nft {
                    balance::add_service(&mut chains, key, service);
                }
            }
            ServiceChange::Removed { key, service } => {
                elements(&mut deletes, key, service, &service.frontends, backend);
                if backend == Backend::Nft {
                    balance::remove_service(&mut removals, key, service);
                }
            }
            ServiceChange::Replaced { key, old, new } => {
                elements(&mut deletes, key, old, &old.frontends, backend);
                elements(&mut adds, key, new, &new.frontends, backend);
                if backend == Backend::Nft {
                    balance::add_service(&mut chains, key, new);
                    balance::remove_service(&mut removals, key, old);
                }
            }
            ServiceChange::Modified(u) => {
                // Modified services exist in `new` by construction of the diff.
                let Some(svc) = new.services.get(&u.key) else {
                    continue;
                };
                elements(&mut deletes, &u.key, svc, &u.frontends_removed, backend);
                elements(&mut adds, &u.key, svc, &u.frontends_added, backend);
                let reals_changed = !u.reals_added.is_empty()
                    || !u.reals_removed.is_empty()
                    || u.reals_changed.iter().any(|r| r.old.weight != r.new.weight);
                if backend == Backend::Nft && (reals_changed || u.params.is_some()) {
                    balance::update_service(
                        &mut chains,
                        &u.key,
                        svc,
                        u.reals_added.iter().map(|r| &r.key),
                        u.reals_removed.iter().map(|r| &r.key),
                    );
                }
            }
        }
    }
    // Group per set so each set is one statement.
    deletes.sort_by(|a, b| a.set.cmp(&b.set));
    adds.sort_by(|a, b| a.set.cmp(&b.set));
    let mut tx = Transaction::new();
    for e in deletes {
        tx.delete(Object::Element(e));
    }
    tx.ops.extend(chains.ops);
    for e in adds {
        tx.add(Object::Element(e));
    }
    tx.ops.extend(removals.ops);
    tx
}

fn elements<'a>(
    out: &mut Vec<Element>,
    key: &ServiceKey,
    svc: &VirtualService,
    frontends: impl IntoIterator<Item = &'a Frontend>,
    backend: Backend,
) {
    for f in frontends {
        out.push(frontend_element(svc.proto, f));
        match (backend, key) {
            (Backend::Ipvs, ServiceKey::Fwmark { mark }) => {
                out.push(fwmark_element(svc.proto, f, *mark))
            }
            (Backend::Ipvs, ServiceKey::Addr { .. }) => {}
            (Backend::Nft, _) => out.push(balance::service_element(key, svc, f)),
        }
    }
}
