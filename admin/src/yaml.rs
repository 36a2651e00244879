//! YAML text → a small located tree (`Node`): every value and every mapping key keeps its line,
//! column and byte span, so catalog errors can name the exact place, and the inventory can be
//! edited in place without losing its comments.
//!
//! Built on `saphyr-parser`'s event stream rather than a serde deserializer because the catalog
//! needs what serde hides: positions of keys, duplicate-key detection, and every error rather
//! than the first. Scalars are resolved with the YAML 1.2 core schema (plain `80` is an integer,
//! quoted `"80"` a string).

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// 1-based line and column, as an editor shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A located YAML value.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// Byte range of the value in the source text (scalars: the scalar's own text, quotes
    /// included).
    pub span: (usize, usize),
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always text (`80:` in a map of ports becomes "80").
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// A syntax problem: where, and what.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u32,
        col: span.start.col() as u32 + 1,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Kind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "true" | "True" | "TRUE" => return Kind::Bool(true),
        "false" | "False" | "FALSE" => return Kind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Kind::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Kind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Kind::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(v) = text.parse::<i64>() {
            return Kind::Int(v);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(v) = i64::from_str_radix(hex, 16) {
            return Kind::Int(v);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(v) = i64::from_str_radix(oct, 8) {
            return Kind::Int(v);
        }
    }
    let looks_float = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_float {
        if let Ok(v) = text.parse::<f64>() {
            return Kind::Float(v);
        }
    }
    Kind::Str(text.to_owned())
}

/// Most nodes aliases may add to one document.
const MAX_ALIAS_NODES: usize = 100_000;

fn size(n: &Node) -> usize {
    1 + match &n.kind {
        Kind::Seq(items) => items.iter().map(size).sum(),
        Kind::Map(m) => m.iter().map(|(_, v)| size(v)).sum(),
        _ => 0,
    }
}

enum Frame {
    Seq {
        start: (Pos, usize),
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: (Pos, usize),
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

/// Parses one YAML document. An empty text is `Null`. Duplicate keys are reported (the first
/// occurrence is kept) alongside the tree; a syntax error stops parsing.
pub fn parse(text: &str) -> Result<(Node, Vec<SyntaxError>), SyntaxError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: Vec<(usize, Node)> = Vec::new();
    let mut docs: Vec<Node> = Vec::new();
    let mut dups: Vec<SyntaxError> = Vec::new();
    let mut expanded = 0usize;
    // The parser's markers count characters; spans here are bytes, so map char → byte index.
    let char_to_byte: Vec<usize> = if text.is_ascii() {
        Vec::new()
    } else {
        text.char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .collect()
    };
    let byte = |i: usize| -> usize {
        if char_to_byte.is_empty() {
            i.min(text.len())
        } else {
            char_to_byte.get(i).copied().unwrap_or(text.len())
        }
    };

    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line() as u32,
                col: e.marker().col() as u32 + 1,
            },
            message: e.info().to_owned(),
        })?;
        let finished: Option<(Node, usize)> = match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let kind = if style == ScalarStyle::Plain {
                    resolve_plain(&value)
                } else {
                    Kind::Str(value.into_owned())
                };
                Some((
                    Node {
                        pos: pos_of(&span),
                        span: (byte(span.start.index()), byte(span.end.index())),
                        kind,
                    },
                    anchor,
                ))
            }
            Event::Alias(id) => match anchors.iter().rev().find(|(a, _)| *a == id) {
                Some((_, n)) => {
                    // Aliases copy their anchor: bound the expansion ("billion laughs").
                    expanded += size(n);
                    if expanded > MAX_ALIAS_NODES {
                        return Err(SyntaxError {
                            pos: pos_of(&span),
                            message: format!("aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                        });
                    }
                    Some((
                        Node {
                            pos: pos_of(&span),
                            ..n.clone()
                        },
                        0,
                    ))
                }
                None => {
                    return Err(SyntaxError {
                        pos: pos_of(&span),
                        message: "alias to an unknown anchor".into(),
                    })
                }
            },
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    start: (pos_of(&span), byte(span.start.index())),
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    start: (pos_of(&span), byte(span.start.index())),
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    start,
                    anchor,
                    items,
                }) => Some((
                    Node {
                        pos: start.0,
                        span: (start.1, byte(span.end.index())),
                        kind: Kind::Seq(items),
                    },
                    anchor,
                )),
                _ => None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    start,
                    anchor,
                    entries,
                    ..
                }) => Some((
                    Node {
                        pos: start.0,
                        span: (start.1, byte(span.end.index())),
                        kind: Kind::Map(entries),
                    },
                    anchor,
                )),
                _ => None,
            },
            _ => None,
        };
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor != 0 {
            anchors.push((anchor, node.clone()));
        }
        match stack.last_mut() {
            None => docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let name = match &node.kind {
                        Kind::Str(s) => s.clone(),
                        Kind::Int(i) => i.to_string(),
                        Kind::Bool(b) => b.to_string(),
                        Kind::Null => "null".to_owned(),
                        Kind::Float(f) => f.to_string(),
                        Kind::Seq(_) | Kind::Map(_) => {
                            return Err(SyntaxError {
                                pos: node.pos,
                                message: "mapping keys must be scalars".into(),
                            })
                        }
                    };
                    *key = Some(Key {
                        name,
                        pos: node.pos,
                    });
                }
                Some(k) => {
                    if let Some((first, _)) = entries.iter().find(|(e, _)| e.name == k.name) {
                        dups.push(SyntaxError {
                            pos: k.pos,
                            message: format!(
                                "duplicate key {:?} (first at line {})",
                                k.name, first.pos.line
                            ),
                        });
                    } else {
                        entries.push((k, node));
                    }
                }
            },
        }
    }
    if docs.len() > 1 {
        return Err(SyntaxError {
            pos: docs[1].pos,
            message: "expected one YAML document, found several".into(),
        });
    }
    let doc = docs.pop().unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        span: (0, 0),
        kind: Kind::Null,
    });
    Ok((doc, dups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_core_schema() {
        let text = "# c\na: 1\nb:\n  - \"80\"\n  - 20000-29999\n  - true\nc: { 80: 9080 }\n";
        let (n, dups) = parse(text).unwrap();
        assert!(dups.is_empty());
        let a = n.get("a").unwrap();
        assert_eq!((a.pos.line, a.pos.col, &a.kind), (2, 4, &Kind::Int(1)));
        let Kind::Seq(b) = &n.get("b").unwrap().kind else {
            panic!()
        };
        assert_eq!(b[0].kind, Kind::Str("80".into()));
        assert_eq!(b[1].kind, Kind::Str("20000-29999".into()));
        assert_eq!(b[2].kind, Kind::Bool(true));
        assert_eq!(b[1].pos.line, 5);
        let c = n.get("c").unwrap().as_map().unwrap();
        assert_eq!(c[0].0.name, "80");
        assert_eq!(&text[b[0].span.0..b[0].span.1], "\"80\"");
    }

    #[test]
    fn spans_are_bytes_with_non_ascii_text() {
        let text = "# ünïcode comment\nstate: production\n";
        let (n, _) = parse(text).unwrap();
        let s = n.get("state").unwrap();
        assert_eq!(&text[s.span.0..s.span.1], "production");
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let (_, dups) = parse("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].pos.line, 3);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("aliases expand"), "{e:?}");
        let (n, _) = parse("a: &x { k: 1 }\nb: *x\n").unwrap();
        assert_eq!(n.get("b").unwrap().get("k").unwrap().kind, Kind::Int(1));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }
}
