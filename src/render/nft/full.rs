//! Full regeneration: the whole table as one transaction that replaces whatever is there.
//! Used at start-up and after drift; a steady-state sync uses `incremental` instead.

use super::incremental::service_elements;
use super::layout::{self, chains, interface_element, rule, sets};
use super::patterns::{pattern_elements, PatternIds, PatternIndex};
use super::transaction::{Object, Transaction};
use super::{Backend, RenderOptions};
use crate::model::DesiredState;

/// `add table` first so that `delete table` succeeds on a fresh host, then the table rebuilt
/// from scratch: the kernel swaps old for new atomically at commit, so traffic never sees a
/// half-built table.
pub fn full_ruleset(state: &DesiredState, opts: &RenderOptions) -> Transaction {
    let mut tx = Transaction::new();
    tx.add(Object::Table { comment: None });
    tx.delete(Object::Table { comment: None });
    tx.add(Object::Table {
        comment: Some(layout::TABLE_COMMENT.to_owned()),
    });
    for set in sets(opts.backend) {
        tx.add(Object::Set(set));
    }
    // Chains before rules: a `jump` needs its target to exist.
    for (chain, _) in &opts.policy.chains {
        tx.add(Object::Chain(chain.clone()));
    }
    let static_chains = chains(
        opts.backend,
        opts.policy.has_chain("base_input"),
        !opts.internal_interfaces.is_empty(),
    );
    for (chain, _) in &static_chains {
        tx.add(Object::Chain(chain.clone()));
    }
    for (_, rules) in &opts.policy.chains {
        for r in rules {
            tx.add(Object::Rule(r.clone()));
        }
    }
    for (chain, rules) in static_chains {
        for expr in rules {
            tx.add(rule(&chain, expr));
        }
    }
    for name in &opts.external_interfaces {
        tx.add(Object::Element(interface_element(
            layout::EXTERNAL_IFACES,
            name,
        )));
    }
    for name in &opts.internal_interfaces {
        tx.add(Object::Element(interface_element(
            layout::INTERNAL_IFACES,
            name,
        )));
    }
    // Elements grouped per set (stable sort keeps service order), one statement per set.
    let mut elements = Vec::new();
    let ids = match opts.backend {
        Backend::Nft => PatternIndex::of(state).ids(),
        Backend::Ipvs => PatternIds::new(),
    };
    for (pattern, &mark) in &ids {
        elements.extend(pattern_elements(pattern, mark));
    }
    for (key, svc) in &state.services {
        elements.extend(service_elements(key, svc, opts.backend, &ids));
    }
    elements.sort_by(|a, b| a.set.cmp(&b.set));
    for e in elements {
        tx.add(Object::Element(e));
    }
    tx
}
