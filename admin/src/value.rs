//! Plain configuration values (what a combined configuration is made of), their merge rule, and
//! their YAML and JSON forms. Maps keep the order keys were first written in, so a combined
//! configuration reads like the meta files it came from.

use indexmap::IndexMap;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(IndexMap<String, Value>),
}

impl Value {
    pub fn map() -> Value {
        Value::Map(IndexMap::new())
    }

    /// Merges `patch` over `self`: maps merge key by key, recursively; a `null` in the patch
    /// removes the key; anything else (scalars, lists, a map over a non-map) replaces. This is
    /// JSON Merge Patch (RFC 7386), which is what operators of such catalogs expect.
    pub fn merge(&mut self, patch: Value) {
        match (self, patch) {
            (Value::Map(dst), Value::Map(src)) => {
                for (k, v) in src {
                    if v == Value::Null {
                        dst.shift_remove(&k);
                    } else if let Some(d) = dst.get_mut(&k) {
                        d.merge(v);
                    } else {
                        dst.insert(k, v.without_nulls());
                    }
                }
            }
            (dst, src) => *dst = src.without_nulls(),
        }
    }

    fn without_nulls(self) -> Value {
        match self {
            Value::Map(m) => Value::Map(
                m.into_iter()
                    .filter(|(_, v)| *v != Value::Null)
                    .map(|(k, v)| (k, v.without_nulls()))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Block-style YAML, strings quoted whenever a plain scalar could be misread.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Value::Map(m) if !m.is_empty() => write_map(&mut out, m, 0),
            Value::List(l) if !l.is_empty() => write_list(&mut out, l, 0),
            other => {
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
        out
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_map(out: &mut String, m: &IndexMap<String, Value>, depth: usize) {
    for (k, v) in m {
        indent(out, depth);
        out.push_str(&quote_if_needed(k));
        out.push(':');
        write_child(out, v, depth);
    }
}

fn write_list(out: &mut String, l: &[Value], depth: usize) {
    for v in l {
        indent(out, depth);
        out.push('-');
        match v {
            Value::Map(m) if !m.is_empty() => {
                // First key on the dash line, the rest aligned under it.
                let mut first = true;
                for (k, v) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        indent(out, depth + 2);
                    }
                    out.push_str(&quote_if_needed(k));
                    out.push(':');
                    write_child(out, v, depth + 2);
                }
            }
            other => write_child(out, other, depth),
        }
    }
}

fn write_child(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Map(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, depth + 2);
        }
        Value::List(l) if !l.is_empty() => {
            out.push('\n');
            write_list(out, l, depth + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_nan() => ".nan".into(),
        Value::Float(f) if f.is_infinite() => if *f > 0.0 { ".inf" } else { "-.inf" }.into(),
        Value::Float(f) => {
            let mut s = f.to_string();
            if !s.contains(['.', 'e', 'E']) {
                s.push_str(".0");
            }
            s
        }
        Value::Str(s) => quote_if_needed(s),
        Value::List(_) => "[]".into(),
        Value::Map(_) => "{}".into(),
    }
}

/// Plain when the text reads back as the same string, else a JSON string (valid YAML).
pub fn quote_if_needed(s: &str) -> String {
    let plain_safe = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'_' | b'-' | b'$' | b'{' | b'}')
        })
        && !s.starts_with(['-', '{', '.'])
        && matches!(crate::yaml::parse(s), Ok((n, _)) if n.kind == crate::yaml::Kind::Str(s.to_owned()));
    if plain_safe {
        s.to_owned()
    } else {
        let mut q = String::new();
        let _ = write!(q, "{}", serde_json::Value::String(s.to_owned()));
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(yaml: &str) -> Value {
        crate::config::plain(&crate::yaml::parse(yaml).unwrap().0)
    }

    #[test]
    fn merge_is_deep_for_maps_and_replaces_lists_and_scalars() {
        let mut a = v("log: { level: info, targets: [a, b] }\nworkers: 4\n");
        a.merge(v("log: { targets: [c] }\nworkers: 1\nextra: { x: 1 }\n"));
        assert_eq!(
            a,
            v("log: { level: info, targets: [c] }\nworkers: 1\nextra: { x: 1 }\n")
        );
    }

    #[test]
    fn null_removes_a_key() {
        let mut a = v("log: { level: info, remote: x }\n");
        a.merge(v("log: { remote: null }\n"));
        assert_eq!(a, v("log: { level: info }\n"));
    }

    #[test]
    fn yaml_round_trips() {
        let src = v("a: 1\nb: \"80\"\nc: [x, { k: true, n: null }, \"yes it is\"]\nd: {}\ne: 1.5\nf: 'true'\n");
        let text = src.to_yaml();
        assert_eq!(v(&text), src, "{text}");
    }
}
