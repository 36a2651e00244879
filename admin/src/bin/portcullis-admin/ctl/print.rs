//! `ctl`'s human output: aligned tables for listings, `key: value` lines for one thing, one
//! line per change. (`--json` prints the server's JSON instead.)

use serde_json::Value;

/// A JSON value as a table cell: strings bare, null as `-`, lists comma-separated.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell; the last one is not padded.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

fn rows(list: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|item| keys.iter().map(|k| cell(&item[*k])).collect())
        .collect()
}

pub fn instances(v: &Value) {
    let keys = [
        "id", "type", "server", "location", "state", "version", "exported",
    ];
    table(
        &[
            "ID", "TYPE", "SERVER", "LOCATION", "STATE", "VERSION", "EXPORTED",
        ],
        rows(&v["instances"], &keys),
    );
}

pub fn servers(v: &Value) {
    let keys = ["name", "kind", "location", "address", "instances"];
    table(
        &["NAME", "KIND", "LOCATION", "ADDRESS", "INSTANCES"],
        rows(&v["servers"], &keys),
    );
}

/// One object as `key: value` lines, nested objects as compact JSON.
pub fn object(v: &Value) {
    match v.as_object() {
        Some(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in map {
                let text = match val {
                    Value::Object(_) => val.to_string(),
                    Value::Array(a) if a.iter().any(Value::is_object) => val.to_string(),
                    other => cell(other),
                };
                println!("{:<width$}  {text}", format!("{k}:"), width = width + 1);
            }
        }
        None => println!("{v}"),
    }
}

/// `OPERATION TARGET: BEFORE → AFTER (revision R)`.
pub fn change(v: &Value) {
    let what = |side: &Value| match side {
        Value::Null => "-".to_owned(),
        s if s.get("state").is_some() => format!(
            "{} on {} ({})",
            cell(&s["id"]),
            cell(&s["server"]),
            cell(&s["state"])
        ),
        s => format!(
            "{} {} at {}",
            cell(&s["name"]),
            cell(&s["kind"]),
            cell(&s["address"])
        ),
    };
    let outcome = if v["changed"] == Value::Bool(false) {
        "unchanged".to_owned()
    } else {
        format!("{} → {}", what(&v["before"]), what(&v["after"]))
    };
    println!(
        "{} {}: {outcome} (revision {})",
        cell(&v["operation"]),
        cell(&v["target"]),
        cell(&v["revision"])
    );
}

pub fn audit(v: &Value) {
    let keys = ["time", "identity", "operation", "target", "revision_after"];
    table(
        &["TIME", "IDENTITY", "OPERATION", "TARGET", "REVISION"],
        rows(&v["entries"], &keys),
    );
}

/// A located catalog error from the server as `check` prints it:
/// `file:line:column: key: message [kind]`.
pub fn located_error(e: &Value) -> Option<String> {
    let key = e["key"].as_str().unwrap_or_default();
    Some(format!(
        "{}:{}:{}: {}{}{} [{}]",
        e["file"].as_str()?,
        e["line"],
        e["column"],
        key,
        if key.is_empty() { "" } else { ": " },
        e["message"].as_str()?,
        e["kind"].as_str()?,
    ))
}

/// A rolling change: `INSTANCE OLD NEW RESULT SECONDS`, then what was not attempted.
pub fn rollout(v: &Value) {
    let rows = v["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    vec![
                        cell(&i["instance"]),
                        cell(&i["from"]),
                        cell(&i["to"]),
                        cell(&i["outcome"]),
                        i["seconds"]
                            .as_f64()
                            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["INSTANCE", "OLD", "NEW", "RESULT", "SECONDS"], rows);
    for id in v["not_attempted"].as_array().into_iter().flatten() {
        println!("{}: not attempted (keeps its version)", cell(id));
    }
    println!(
        "{} -> {}: {}",
        cell(&v["type"]),
        cell(&v["to"]),
        cell(&v["outcome"])
    );
}
