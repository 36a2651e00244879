//! A model of the portcullis table's contents, and the transaction semantics of the kernel
//! applied to it. The in-memory twin is this model; read-back fills it from the live kernel;
//! drift is the difference between the two.

use crate::render::nft::transaction::{Element, Object, Op, Transaction};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub chains: BTreeMap<String, ChainState>,
    pub sets: BTreeMap<String, SetState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainState {
    /// `(type, hook)` for base chains.
    pub hook: Option<(String, String)>,
    /// Rule texts as we wrote them (twin) or as nft's JSON lists them (read-back): compare
    /// counts, not texts, across the two.
    pub rules: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetState {
    pub is_map: bool,
    /// Normalized key → value (see [`normalize`]).
    pub elements: BTreeMap<String, Option<String>>,
}

/// Element text as both sides spell it: no quotes (nft's JSON gives interface names bare).
pub fn normalize(text: &str) -> String {
    text.replace('"', "")
}

/// Chains an expression sends packets to (`goto X`, `jump X`): a chain must not be deleted
/// while one of these still names it.
fn targets(expr: &str) -> impl Iterator<Item = &str> {
    let words: Vec<&str> = expr
        .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
        .collect();
    let mut out = Vec::new();
    for w in words.windows(2) {
        if w[0] == "goto" || w[0] == "jump" {
            out.push(w[1]);
        }
    }
    out.into_iter()
}

/// Why the kernel's rules refuse one operation of a transaction on a table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableRefusal {
    #[error("no such table")]
    NoTable,
    #[error("no such chain")]
    NoChain,
    #[error("chain is not empty")]
    ChainNotEmpty,
    #[error("chain is still a jump/goto target")]
    ChainReferenced,
    #[error("{what} targets missing chain {chain}")]
    MissingTarget { what: &'static str, chain: String },
    #[error("no such set")]
    NoSet,
    #[error("no such element")]
    NoElement,
    #[error("element exists")]
    ElementExists,
    #[error("map elements need a value, set elements must not have one")]
    MapValueMismatch,
    #[error("not an operation portcullis uses")]
    Unsupported,
}

/// A transaction refused: which operation, and why. Nothing of it applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{op}`: {reason}")]
pub struct TransactionRefused {
    /// The operation as nft text.
    pub op: String,
    pub reason: TableRefusal,
}

impl TableState {
    /// Applies `tx` to `table` (`None` = no table) as one all-or-nothing batch, with the
    /// kernel's rules: objects must exist to be flushed, deleted or filled; a chain must be
    /// empty and unreferenced to be deleted; elements must not exist to be added nor be
    /// missing to be deleted. Stricter than the kernel on duplicate adds, never looser.
    pub fn apply(
        table: &Option<TableState>,
        tx: &Transaction,
    ) -> Result<Option<TableState>, TransactionRefused> {
        let mut t = table.clone();
        for op in &tx.ops {
            step(&mut t, op).map_err(|reason| TransactionRefused {
                op: op.to_string(),
                reason,
            })?;
        }
        Ok(t)
    }

    /// The table a transaction builds from nothing (what a full render describes).
    pub fn from_transaction(tx: &Transaction) -> Result<Option<TableState>, TransactionRefused> {
        Self::apply(&None, tx)
    }

    pub fn rule_counts(&self) -> BTreeMap<&str, usize> {
        self.chains
            .iter()
            .map(|(n, c)| (n.as_str(), c.rules.len()))
            .collect()
    }

    fn referenced(&self, chain: &str) -> bool {
        self.chains
            .values()
            .flat_map(|c| c.rules.iter())
            .any(|r| targets(r).any(|t| t == chain))
            || self
                .sets
                .values()
                .flat_map(|s| s.elements.values().flatten())
                .any(|v| targets(v).any(|t| t == chain))
    }
}

fn step(t: &mut Option<TableState>, op: &Op) -> Result<(), TableRefusal> {
    if let Op::Add(Object::Table { .. }) = op {
        t.get_or_insert_with(TableState::default);
        return Ok(());
    }
    if let Op::Delete(Object::Table { .. }) = op {
        return t.take().map(|_| ()).ok_or(TableRefusal::NoTable);
    }
    let table = t.as_mut().ok_or(TableRefusal::NoTable)?;
    match op {
        Op::Add(Object::Chain(c)) => {
            let hook = c
                .hook
                .as_ref()
                .map(|h| (h.kind.to_owned(), h.hook.to_owned()));
            table.chains.entry(c.name.clone()).or_insert(ChainState {
                hook,
                rules: Vec::new(),
            });
        }
        Op::Flush(Object::Chain(c)) => {
            table
                .chains
                .get_mut(&c.name)
                .ok_or(TableRefusal::NoChain)?
                .rules
                .clear();
        }
        Op::Delete(Object::Chain(c)) => {
            let chain = table.chains.get(&c.name).ok_or(TableRefusal::NoChain)?;
            if !chain.rules.is_empty() {
                return Err(TableRefusal::ChainNotEmpty);
            }
            if table.referenced(&c.name) {
                return Err(TableRefusal::ChainReferenced);
            }
            table.chains.remove(&c.name);
        }
        Op::Add(Object::Rule(r)) => {
            if let Some(missing) = targets(&r.expr).find(|t| !table.chains.contains_key(*t)) {
                return Err(TableRefusal::MissingTarget {
                    what: "rule",
                    chain: missing.to_owned(),
                });
            }
            table
                .chains
                .get_mut(&r.chain)
                .ok_or(TableRefusal::NoChain)?
                .rules
                .push(r.expr.clone());
        }
        Op::Add(Object::Set(s)) => {
            table.sets.entry(s.name.clone()).or_insert(SetState {
                is_map: s.is_map(),
                elements: BTreeMap::new(),
            });
        }
        Op::Flush(Object::Set(s)) => table
            .sets
            .get_mut(&s.name)
            .ok_or(TableRefusal::NoSet)?
            .elements
            .clear(),
        Op::Delete(Object::Set(s)) => {
            table.sets.remove(&s.name).ok_or(TableRefusal::NoSet)?;
        }
        Op::Add(Object::Element(e)) => add_element(table, e)?,
        Op::Delete(Object::Element(e)) => {
            let set = table.sets.get_mut(&e.set).ok_or(TableRefusal::NoSet)?;
            set.elements
                .remove(&normalize(&e.key))
                .ok_or(TableRefusal::NoElement)?;
        }
        Op::Flush(Object::Element(_))
        | Op::Flush(Object::Rule(_))
        | Op::Delete(Object::Rule(_)) => return Err(TableRefusal::Unsupported),
        Op::Flush(Object::Table { .. }) => {
            for c in table.chains.values_mut() {
                c.rules.clear();
            }
            for s in table.sets.values_mut() {
                s.elements.clear();
            }
        }
        Op::Add(Object::Table { .. }) | Op::Delete(Object::Table { .. }) => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

fn add_element(table: &mut TableState, e: &Element) -> Result<(), TableRefusal> {
    if let Some(v) = &e.value {
        if let Some(missing) = targets(v).find(|t| !table.chains.contains_key(*t)) {
            return Err(TableRefusal::MissingTarget {
                what: "element",
                chain: missing.to_owned(),
            });
        }
    }
    let set = table.sets.get_mut(&e.set).ok_or(TableRefusal::NoSet)?;
    if set.is_map != e.value.is_some() {
        return Err(TableRefusal::MapValueMismatch);
    }
    let key = normalize(&e.key);
    if set.elements.contains_key(&key) {
        return Err(TableRefusal::ElementExists);
    }
    set.elements.insert(key, e.value.as_deref().map(normalize));
    Ok(())
}

/// What differs between the table portcullis expects and the live one, for humans: empty
/// when they match. Rules are compared by count per chain (nft rewrites rule text when it
/// lists it); chains, sets and every element are compared exactly.
pub fn drift(expected: &Option<TableState>, live: &Option<TableState>) -> Vec<String> {
    let (e, l) = match (expected, live) {
        (None, None) => return Vec::new(),
        (Some(_), None) => return vec!["table is missing".into()],
        (None, Some(_)) => return vec!["table exists but should not".into()],
        (Some(e), Some(l)) => (e, l),
    };
    let mut out = Vec::new();
    let (ec, mut lc) = (e.rule_counts(), l.rule_counts());
    // Stamps say which export the table was rendered from; they are not part of its content.
    lc.retain(|name, _| !name.starts_with(super::stamp::PREFIX));
    for (name, n) in &ec {
        match lc.get(name) {
            None => out.push(format!("chain {name} is missing")),
            Some(m) if m != n => out.push(format!("chain {name} has {m} rules, expected {n}")),
            Some(_) => {}
        }
    }
    out.extend(
        lc.keys()
            .filter(|n| !ec.contains_key(*n))
            .map(|n| format!("unexpected chain {n}")),
    );
    for (name, set) in &e.sets {
        let Some(live) = l.sets.get(name) else {
            out.push(format!("set {name} is missing"));
            continue;
        };
        for (k, v) in &set.elements {
            match live.elements.get(k) {
                None => out.push(format!("{name}: element {k} is missing")),
                Some(lv) if lv != v => {
                    out.push(format!("{name}: element {k} is {lv:?}, expected {v:?}"))
                }
                Some(_) => {}
            }
        }
        out.extend(
            live.elements
                .keys()
                .filter(|k| !set.elements.contains_key(*k))
                .map(|k| format!("{name}: unexpected element {k}")),
        );
    }
    out.extend(
        l.sets
            .keys()
            .filter(|n| !e.sets.contains_key(*n))
            .map(|n| format!("unexpected set {n}")),
    );
    out
}
