//! Incremental sync: only the set elements a diff touches, as one transaction. Its size is
//! proportional to the change, never to the table; chains are static and never rewritten.

use super::layout::{frontend_element, fwmark_element};
use super::transaction::{Element, Object, Transaction};
use crate::diff::{ServiceChange, StateDiff};
use crate::model::{Frontend, ServiceKey};
use portcullis_export::Proto;

/// Deletions come before additions: a frontend that moves from one fwmark service to another
/// is the same map key, and must be gone before it can be added with its new mark.
pub fn incremental(diff: &StateDiff) -> Transaction {
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    for change in &diff.changes {
        match change {
            ServiceChange::Added { key, service } => {
                elements(&mut adds, key, service.proto, &service.frontends)
            }
            ServiceChange::Removed { key, service } => {
                elements(&mut deletes, key, service.proto, &service.frontends)
            }
            ServiceChange::Replaced { key, old, new } => {
                elements(&mut deletes, key, old.proto, &old.frontends);
                elements(&mut adds, key, new.proto, &new.frontends);
            }
            ServiceChange::Modified(u) => {
                elements(&mut deletes, &u.key, u.proto, &u.frontends_removed);
                elements(&mut adds, &u.key, u.proto, &u.frontends_added);
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
    for e in adds {
        tx.add(Object::Element(e));
    }
    tx
}

fn elements<'a>(
    out: &mut Vec<Element>,
    key: &ServiceKey,
    proto: Proto,
    frontends: impl IntoIterator<Item = &'a Frontend>,
) {
    for f in frontends {
        out.push(frontend_element(proto, f));
        if let ServiceKey::Fwmark { mark } = key {
            out.push(fwmark_element(proto, f, *mark));
        }
    }
}
