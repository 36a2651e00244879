//! Typed reading of located YAML: one helper per value shape, each reporting a located error
//! (file, line, column, key path) and carrying on, so a file with five mistakes shows five.

use crate::error::{CatalogError, ErrorKind};
use crate::yaml::{Key, Kind, Node, Pos};

pub(crate) struct Reader<'e> {
    pub file: String,
    pub errors: &'e mut Vec<CatalogError>,
}

/// Appends a key segment to a path: `gateway[0]` + `ports` → `gateway[0].ports`.
pub(crate) fn join(path: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let seg = if simple {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        seg
    } else {
        format!("{path}.{seg}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Reader<'_> {
    pub fn error(&mut self, pos: Pos, key: &str, kind: ErrorKind, message: impl Into<String>) {
        self.errors.push(CatalogError {
            file: self.file.clone(),
            line: pos.line,
            column: pos.col,
            key: key.to_owned(),
            kind,
            message: message.into(),
        });
    }

    pub fn bad(&mut self, node: &Node, key: &str, expected: &str) {
        let found = match &node.kind {
            Kind::Str(s) => format!("{s:?}"),
            Kind::Int(i) => i.to_string(),
            _ => node.type_name().to_owned(),
        };
        self.error(
            node.pos,
            key,
            ErrorKind::BadValue,
            format!("expected {expected}, found {found}"),
        );
    }

    /// The entries of a mapping whose keys must be among `allowed`; unknown keys are reported
    /// and skipped.
    pub fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<Vec<&'n (Key, Node)>> {
        let Some(entries) = node.as_map() else {
            if node.kind == Kind::Null {
                return Some(Vec::new());
            }
            self.bad(node, path, "a mapping");
            return None;
        };
        let mut out = Vec::new();
        for e in entries {
            if allowed.is_empty() || allowed.contains(&e.0.name.as_str()) {
                out.push(e);
            } else {
                self.error(
                    e.0.pos,
                    &join(path, &e.0.name),
                    ErrorKind::UnknownKey,
                    format!(
                        "unknown key {:?}; expected one of: {}",
                        e.0.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(out)
    }

    pub fn require<'n>(
        &mut self,
        owner: &Node,
        entries: &[&'n (Key, Node)],
        path: &str,
        key: &str,
    ) -> Option<&'n Node> {
        let found = find(entries, key);
        if found.is_none() {
            self.error(
                owner.pos,
                &join(path, key),
                ErrorKind::MissingKey,
                format!("missing required key {key:?}"),
            );
        }
        found
    }

    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.kind {
            Kind::Str(s) => Some(s.clone()),
            _ => {
                self.bad(node, path, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.kind {
            Kind::Bool(b) => Some(b),
            _ => {
                self.bad(node, path, "true or false");
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        match node.kind {
            Kind::Int(i) if (min..=max).contains(&i) => Some(i),
            _ => {
                self.bad(node, path, &format!("an integer {min}-{max}"));
                None
            }
        }
    }

    /// A list; a null (an empty key) is an empty list.
    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Seq(items) => Some(items),
            Kind::Null => Some(&[]),
            _ => {
                self.bad(node, path, "a list");
                None
            }
        }
    }

    /// A list of strings, or a single string.
    pub fn strings(&mut self, node: &Node, path: &str) -> Vec<(String, Pos)> {
        if let Kind::Str(s) = &node.kind {
            return vec![(s.clone(), node.pos)];
        }
        let Some(items) = self.list(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.string(n, &index(path, i)).map(|s| (s, n.pos)))
            .collect()
    }
}

pub(crate) fn find<'n>(entries: &[&'n (Key, Node)], key: &str) -> Option<&'n Node> {
    entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}

/// Names of servers, locations and IP labels: they become parts of instance ids and keys.
pub(crate) fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}
