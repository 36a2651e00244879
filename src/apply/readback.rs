//! Reading our table back from the kernel: `nft -j list table inet portcullis` (our table
//! only, never the whole ruleset) parsed into a [`TableState`]. Used at start-up and by the
//! slow periodic audit to detect hand edits; never on the hot path (listing a 100k-element
//! table takes seconds).

use super::error::NftError;
use super::table::{normalize, SetState, TableState};
use serde_json::Value;

pub fn parse_table(json: &str) -> Result<TableState, NftError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| NftError::Output(format!("not JSON: {e}")))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| NftError::Output("no `nftables` array".into()))?;
    let mut t = TableState::default();
    for item in items {
        if let Some(c) = item.get("chain") {
            let name = str_field(c, "name")?;
            let hook = match (
                c.get("type").and_then(Value::as_str),
                c.get("hook").and_then(Value::as_str),
            ) {
                (Some(ty), Some(h)) => Some((ty.to_owned(), h.to_owned())),
                _ => None,
            };
            t.chains.entry(name).or_default().hook = hook;
        } else if let Some(r) = item.get("rule") {
            let chain = str_field(r, "chain")?;
            t.chains
                .entry(chain)
                .or_default()
                .rules
                .push(r["expr"].to_string());
        } else if let Some((s, is_map)) = item
            .get("set")
            .map(|s| (s, false))
            .or_else(|| item.get("map").map(|m| (m, true)))
        {
            let name = str_field(s, "name")?;
            let mut set = SetState {
                is_map,
                ..SetState::default()
            };
            for elem in s
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (k, v) = if is_map {
                    let pair = elem.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
                        NftError::Output(format!("map element is not a [key, value] pair: {elem}"))
                    })?;
                    (value_text(&pair[0])?, Some(value_text(&pair[1])?))
                } else {
                    (value_text(elem)?, None)
                };
                set.elements.insert(normalize(&k), v.map(|v| normalize(&v)));
            }
            t.sets.insert(name, set);
        }
    }
    Ok(t)
}

/// The names of `table`'s chains in `nft -j list chains FAMILY` (every table's chains).
pub fn chain_names(json: &str, table: &str) -> Result<Vec<String>, NftError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|e| NftError::Output(format!("not JSON: {e}")))?;
    let items = doc["nftables"]
        .as_array()
        .ok_or_else(|| NftError::Output("no `nftables` array".into()))?;
    items
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c.get("table").and_then(Value::as_str) == Some(table))
        .map(|c| str_field(c, "name"))
        .collect()
}

fn str_field(v: &Value, key: &str) -> Result<String, NftError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| NftError::Output(format!("missing `{key}` in {v}")))
}

/// An element key or value in the text form the renderer writes: `a . b . c` for
/// concatenations, `FIRST-LAST` for ranges, `goto CHAIN` for verdicts, decimal numbers.
fn value_text(v: &Value) -> Result<String, NftError> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(Value::as_array) {
                parts
                    .iter()
                    .map(value_text)
                    .collect::<Result<Vec<_>, _>>()?
                    .join(" . ")
            } else if let Some(r) = o
                .get("range")
                .and_then(Value::as_array)
                .filter(|r| r.len() == 2)
            {
                format!("{}-{}", value_text(&r[0])?, value_text(&r[1])?)
            } else if let Some(target) = o.get("goto").or_else(|| o.get("jump")) {
                let verb = if o.contains_key("goto") {
                    "goto"
                } else {
                    "jump"
                };
                format!("{verb} {}", str_field(target, "target")?)
            } else if let Some(inner) = o.get("elem") {
                // Elements with a timeout or comment come wrapped.
                value_text(&inner["val"])?
            } else {
                return Err(NftError::Output(format!("unknown element form {v}")));
            }
        }
        other => return Err(NftError::Output(format!("unknown element form {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sets_maps_and_chains_as_nft_lists_them() {
        // Captured from nft 1.0.6 (`nft -j list table inet portcullis`), trimmed.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "portcullis", "handle": 1}},
          {"map": {"family": "inet", "name": "services_v4", "table": "portcullis", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "verdict", "flags": ["interval"],
            "elem": [[{"concat": ["192.0.2.10", "tcp", 443]}, {"goto": {"target": "svc_a"}}], [{"concat": ["192.0.2.20", "tcp", {"range": [20000, 29999]}]}, {"goto": {"target": "svc_b"}}]]}},
          {"map": {"family": "inet", "name": "fwmarks_v4", "table": "portcullis", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "mark", "elem": [[{"concat": ["192.0.2.20", "tcp", {"range": [20000, 29999]}]}, 7]]}},
          {"set": {"family": "inet", "name": "external_ifaces", "table": "portcullis", "type": "ifname", "elem": ["eth0"]}},
          {"chain": {"family": "inet", "table": "portcullis", "name": "prerouting_dnat", "handle": 3, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
          {"chain": {"family": "inet", "table": "portcullis", "name": "svc_a", "handle": 10}},
          {"rule": {"family": "inet", "table": "portcullis", "chain": "prerouting_dnat", "handle": 21, "expr": [{"vmap": {}}]}}]}"#;
        let t = parse_table(json).expect("parses");
        let services = &t.sets["services_v4"];
        assert!(services.is_map);
        assert_eq!(
            services.elements["192.0.2.20 . tcp . 20000-29999"],
            Some("goto svc_b".into())
        );
        assert_eq!(
            services.elements["192.0.2.10 . tcp . 443"],
            Some("goto svc_a".into())
        );
        assert_eq!(
            t.sets["fwmarks_v4"].elements["192.0.2.20 . tcp . 20000-29999"],
            Some("7".into())
        );
        assert!(t.sets["external_ifaces"].elements.contains_key("eth0"));
        assert_eq!(
            t.chains["prerouting_dnat"].hook,
            Some(("nat".into(), "prerouting".into()))
        );
        assert_eq!(t.chains["prerouting_dnat"].rules.len(), 1);
        assert!(t.chains["svc_a"].rules.is_empty());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse_table("not json").is_err());
        assert!(
            parse_table(r#"{"nftables": [{"set": {"name": "s", "elem": [{"weird": 1}]}}]}"#)
                .is_err()
        );
    }

    #[test]
    fn chain_names_are_our_tables_only() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"chain": {"family": "inet", "table": "portcullis", "name": "applied_ab12", "handle": 3}},
          {"chain": {"family": "inet", "table": "other", "name": "applied_ab12", "handle": 4}},
          {"chain": {"family": "inet", "table": "portcullis", "name": "input", "handle": 5, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}]}"#;
        assert_eq!(
            chain_names(json, "portcullis").expect("parses"),
            vec!["applied_ab12", "input"]
        );
        assert_eq!(
            chain_names(json, "none").expect("parses"),
            Vec::<String>::new()
        );
        assert!(chain_names("[]", "portcullis").is_err());
    }
}
