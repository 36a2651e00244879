//! An nftables transaction as a list of typed operations on the table portcullis owns, and
//! their rendering to `nft -f` text (one file = one kernel transaction).
//!
//! Modelled on knftables: static chains, dynamic sets and maps, and a small closed set of
//! verbs and objects. Keeping operations typed (rather than building text directly) lets the
//! in-memory twin used by unit tests apply exactly what the kernel would be sent, and keeps
//! every object scoped to our own table: there is no way to express another table here.

use std::fmt::{self, Write};

/// Family and name of the one table portcullis owns. `inet` covers IPv4 and IPv6.
pub const FAMILY: &str = "inet";
pub const TABLE: &str = "portcullis";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Add(Object),
    Flush(Object),
    Delete(Object),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Table { comment: Option<String> },
    Chain(Chain),
    Rule(Rule),
    Set(Set),
    Element(Element),
}

/// A chain; base chains carry a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<Hook>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`.
    pub hook: &'static str,
    /// Numeric or named priority (`mangle`, `filter`, `dstnat`, …).
    pub priority: &'static str,
    /// `accept` or `drop`.
    pub policy: &'static str,
}

/// A rule appended to a chain. `expr` is built only from typed values by the renderers, or
/// comes from the operator's static policy file (checked to hold a single statement).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub expr: String,
}

/// A named set, or a map when it declares a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    pub decl: SetDecl,
    pub interval: bool,
    pub comment: Option<&'static str>,
}

/// How a set's key (and a map's value) is declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetDecl {
    /// `type KEY` or `type KEY : VALUE` with nft data types.
    Type {
        key: &'static str,
        value: Option<&'static str>,
    },
    /// `typeof KEY-EXPR : VALUE-EXPR`, always a map here.
    Typeof(String),
}

impl Set {
    pub fn is_map(&self) -> bool {
        match &self.decl {
            SetDecl::Type { value, .. } => value.is_some(),
            SetDecl::Typeof(_) => true,
        }
    }
}

/// One element of a set or map (`value` only for maps; ignored on delete).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub set: String,
    pub key: String,
    pub value: Option<String>,
}

/// Most elements written in one `add element`/`delete element` statement. nft 1.0.6 (Debian
/// 12) corrupts an interval element whose key ends in a 32-bit host-order integer range (the
/// earlier interval slot maps) when one statement is large enough to be split across netlink
/// messages: seen at element 965 of a 1342-element statement, `43690-65535` stored as
/// `2863267840-4294901760`. Statements of 800 were clean; 500 leaves a margin. The kernel
/// read-back tests (`tests/nft_check.rs`) would show a corrupted element as drift. The bucket
/// maps have no intervals, but larger statements would not help them: 5000 per statement
/// loaded 150k bucket elements no faster.
pub const ELEMENTS_PER_STATEMENT: usize = 500;

/// An ordered list of operations applied as one atomic batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn add(&mut self, o: Object) -> &mut Self {
        self.ops.push(Op::Add(o));
        self
    }
    pub fn flush(&mut self, o: Object) -> &mut Self {
        self.ops.push(Op::Flush(o));
        self
    }
    pub fn delete(&mut self, o: Object) -> &mut Self {
        self.ops.push(Op::Delete(o));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The `nft -f` script for this transaction. Consecutive element operations on the same
    /// set are merged into statements of up to [`ELEMENTS_PER_STATEMENT`] elements: nft parses
    /// a statement of many elements an order of magnitude faster than one per element.
    pub fn to_nft(&self) -> String {
        let mut out = String::with_capacity(64 * self.ops.len() + 64);
        let mut i = 0;
        while i < self.ops.len() {
            if let Some((verb, first)) = element_op(&self.ops[i]) {
                let mut j = i + 1;
                while j < self.ops.len()
                    && j - i < ELEMENTS_PER_STATEMENT
                    && element_op(&self.ops[j])
                        .is_some_and(|(v, e)| v == verb && e.set == first.set)
                {
                    j += 1;
                }
                let _ = writeln!(out, "{verb} element {FAMILY} {TABLE} {} {{", first.set);
                for (n, op) in self.ops[i..j].iter().enumerate() {
                    let (_, e) = element_op(op).expect("checked above");
                    let sep = if n + 1 == j - i { "" } else { "," };
                    match (&e.value, verb) {
                        (Some(v), "add") => {
                            let _ = writeln!(out, "\t{} : {v}{sep}", e.key);
                        }
                        _ => {
                            let _ = writeln!(out, "\t{}{sep}", e.key);
                        }
                    }
                }
                out.push_str("}\n");
                i = j;
            } else {
                let _ = writeln!(out, "{}", self.ops[i]);
                i += 1;
            }
        }
        out
    }
}

fn element_op(op: &Op) -> Option<(&'static str, &Element)> {
    match op {
        Op::Add(Object::Element(e)) => Some(("add", e)),
        Op::Delete(Object::Element(e)) => Some(("delete", e)),
        _ => None,
    }
}

impl fmt::Display for Op {
    /// One op as one nft command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, obj) = match self {
            Op::Add(o) => ("add", o),
            Op::Flush(o) => ("flush", o),
            Op::Delete(o) => ("delete", o),
        };
        let adding = matches!(self, Op::Add(_));
        match obj {
            Object::Table { comment } => {
                write!(f, "{verb} table {FAMILY} {TABLE}")?;
                match comment {
                    Some(c) if adding => write!(f, " {{ comment \"{c}\"; }}"),
                    _ => Ok(()),
                }
            }
            Object::Chain(c) => {
                write!(f, "{verb} chain {FAMILY} {TABLE} {}", c.name)?;
                match &c.hook {
                    Some(h) if adding => write!(
                        f,
                        " {{ type {} hook {} priority {}; policy {}; }}",
                        h.kind, h.hook, h.priority, h.policy
                    ),
                    _ => Ok(()),
                }
            }
            Object::Rule(r) => write!(f, "{verb} rule {FAMILY} {TABLE} {} {}", r.chain, r.expr),
            Object::Set(s) => {
                let what = if s.is_map() { "map" } else { "set" };
                write!(f, "{verb} {what} {FAMILY} {TABLE} {}", s.name)?;
                if adding {
                    match &s.decl {
                        SetDecl::Type { key, value: None } => write!(f, " {{ type {key};")?,
                        SetDecl::Type {
                            key,
                            value: Some(v),
                        } => write!(f, " {{ type {key} : {v};")?,
                        SetDecl::Typeof(expr) => write!(f, " {{ typeof {expr};")?,
                    }
                    if s.interval {
                        write!(f, " flags interval;")?;
                    }
                    if let Some(c) = s.comment {
                        write!(f, " comment \"{c}\";")?;
                    }
                    write!(f, " }}")?;
                }
                Ok(())
            }
            Object::Element(e) => {
                write!(f, "{verb} element {FAMILY} {TABLE} {} {{ {}", e.set, e.key)?;
                if let (Some(v), true) = (&e.value, adding) {
                    write!(f, " : {v}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elem(set: &str, key: &str) -> Object {
        Object::Element(Element {
            set: set.into(),
            key: key.into(),
            value: None,
        })
    }

    #[test]
    fn consecutive_elements_of_one_set_share_a_statement() {
        let mut tx = Transaction::new();
        tx.delete(elem("a", "1"))
            .add(elem("a", "2"))
            .add(elem("a", "3"))
            .add(elem("b", "4"));
        assert_eq!(
            tx.to_nft(),
            "delete element inet portcullis a {\n\t1\n}\n\
             add element inet portcullis a {\n\t2,\n\t3\n}\n\
             add element inet portcullis b {\n\t4\n}\n"
        );
    }

    #[test]
    fn objects_render_as_nft_commands() {
        let chain = Chain {
            name: "input".into(),
            hook: Some(Hook {
                kind: "filter",
                hook: "input",
                priority: "filter",
                policy: "accept",
            }),
        };
        assert_eq!(
            Op::Add(Object::Chain(chain.clone())).to_string(),
            "add chain inet portcullis input { type filter hook input priority filter; policy accept; }"
        );
        assert_eq!(
            Op::Flush(Object::Chain(chain)).to_string(),
            "flush chain inet portcullis input"
        );
        let map = Set {
            name: "m".into(),
            decl: SetDecl::Type {
                key: "ipv4_addr",
                value: Some("mark"),
            },
            interval: true,
            comment: None,
        };
        assert_eq!(
            Op::Add(Object::Set(map.clone())).to_string(),
            "add map inet portcullis m { type ipv4_addr : mark; flags interval; }"
        );
        assert_eq!(
            Op::Delete(Object::Set(map)).to_string(),
            "delete map inet portcullis m"
        );
        assert_eq!(
            Op::Delete(Object::Table {
                comment: Some("x".into())
            })
            .to_string(),
            "delete table inet portcullis"
        );
    }
}
