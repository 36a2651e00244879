//! The `inventory.yaml` text of an edited inventory. An operator's file has comments and a
//! layout git diffs should keep, so an edit touches only its own lines when it can: a new
//! instance or server is one line after the last one, a deleted one loses its lines, a move or
//! state change rewrites its own entry. Every in-place result is read back and must give
//! exactly the intended inventory; otherwise the whole file is written canonically
//! ([`crate::inventory::to_yaml`], comments lost) — never a file that says something else.

use super::Edit;
use crate::inventory::{self, instance_flow, server_flow, Inventory};
use crate::read::Reader;
use crate::value::quote_if_needed;
use crate::yaml::{Kind, Node};

/// The text to write for `after`, the result of applying `edit` to the inventory read from
/// `before_text` (which must be a valid catalog's inventory: its entries map one to one onto
/// the parsed nodes).
pub fn render(before_text: &str, before: &Inventory, edit: &Edit, after: &Inventory) -> String {
    in_place(before_text, before, edit, after)
        .filter(|text| reads_as(text, after))
        .unwrap_or_else(|| inventory::to_yaml(after))
}

fn in_place(text: &str, before: &Inventory, edit: &Edit, after: &Inventory) -> Option<String> {
    let (doc, _) = crate::yaml::parse(text).ok()?;
    let instances = || match &doc.get("instances")?.kind {
        Kind::Seq(items) if items.len() == before.instances.len() => Some(items),
        _ => None,
    };
    let servers = || match &doc.get("servers")?.kind {
        Kind::Map(entries) if entries.len() == before.servers.len() => Some(entries),
        _ => None,
    };
    let node_of = |id: &str| {
        let at = before.instances.iter().position(|i| i.id == id)?;
        instances()?.get(at)
    };
    match edit {
        Edit::SetState { id, state } => inventory::with_state(text, before, id, *state),
        Edit::CreateInstance(_) => {
            let new = after.instances.last()?;
            let last = instances()?.last()?;
            insert_after(text, last, &instance_flow(new), "-")
        }
        Edit::DeleteInstance { id } => remove_lines(text, node_of(id)?, "-"),
        // A version change rewrites its own entry, like a move.
        Edit::MoveInstance { id, .. } | Edit::SetVersion { id, .. } => {
            let at = before.instances.iter().position(|i| i.id == *id)?;
            let node = node_of(id)?;
            let moved = after.instances.get(at)?;
            Some(replace(text, node.span, &instance_flow(moved)))
        }
        Edit::AddServer(spec) => {
            let (_, last) = servers()?.last()?;
            let server = after.servers.get(&spec.name)?;
            let line = format!("{}: {}", quote_if_needed(&spec.name), server_flow(server));
            insert_after(text, last, &line, "")
        }
        Edit::RemoveServer { name } => {
            let (key, node) = servers()?.iter().find(|(k, _)| k.name == *name)?;
            remove_lines(text, node, &format!("{}:", quote_if_needed(&key.name)))
        }
    }
}

/// Whether `text` reads back (no errors at all) as exactly `want`.
fn reads_as(text: &str, want: &Inventory) -> bool {
    let Ok((doc, dups)) = crate::yaml::parse(text) else {
        return false;
    };
    let mut errors = Vec::new();
    let got = {
        let mut r = Reader {
            file: crate::catalog::INVENTORY_FILE.into(),
            errors: &mut errors,
        };
        inventory::read_inventory(&mut r, &doc)
    };
    dups.is_empty() && errors.is_empty() && same(&got, want)
}

/// Equal in everything the file says (positions aside).
fn same(a: &Inventory, b: &Inventory) -> bool {
    let given = |inv: &Inventory| {
        inv.instances
            .iter()
            .map(|i| i.index_given)
            .collect::<Vec<_>>()
    };
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok() && given(a) == given(b)
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |p| p + 1)
}

/// The end of the line holding byte `at`, past its newline.
fn line_end(text: &str, at: usize) -> usize {
    text[at..].find('\n').map_or(text.len(), |p| at + p + 1)
}

/// The last byte of a node (a block node's span can end at the start of the next line).
fn last_byte(node: &Node) -> usize {
    node.span.1.max(node.span.0 + 1) - 1
}

/// Inserts `entry` on a new line after `last`'s, with `last`'s indentation and, when `marker`
/// is `-`, its list dash. Only when `last`'s line starts with the indentation then `marker`.
fn insert_after(text: &str, last: &Node, entry: &str, marker: &str) -> Option<String> {
    let start = line_start(text, last.span.0);
    let prefix = &text[start..last.span.0];
    let indent_len = prefix.len() - prefix.trim_start().len();
    let indent = &prefix[..indent_len];
    if !prefix.trim_start().starts_with(marker) {
        return None;
    }
    let lead = if marker == "-" {
        format!("{indent}- ")
    } else {
        indent.to_owned()
    };
    let at = line_end(text, last_byte(last));
    let mut out = String::with_capacity(text.len() + entry.len() + 8);
    out.push_str(&text[..at]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&lead);
    out.push_str(entry);
    out.push('\n');
    out.push_str(&text[at..]);
    Some(out)
}

/// Removes the lines `node` spans, when what precedes it on its first line is indentation and
/// then `marker` (`-` for a list item, `name:` for a mapping entry).
fn remove_lines(text: &str, node: &Node, marker: &str) -> Option<String> {
    let start = line_start(text, node.span.0);
    let prefix = text[start..node.span.0].trim();
    if prefix != marker {
        return None;
    }
    let end = line_end(text, last_byte(node));
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    out.push_str(&text[end..]);
    Some(out)
}

fn replace(text: &str, span: (usize, usize), with: &str) -> String {
    format!("{}{with}{}", &text[..span.0], &text[span.1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::{apply, Edit, InstanceSpec};
    use crate::{Catalog, Sources};

    fn example() -> (Sources, Catalog) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example-catalog");
        let sources = Sources::read(&dir).unwrap();
        let catalog = Catalog::from_sources(&sources).unwrap();
        (sources, catalog)
    }

    fn rendered(edit: Edit) -> (String, String) {
        let (sources, catalog) = example();
        let applied = apply(&catalog, &edit).unwrap();
        let text = render(
            &sources.inventory,
            &catalog.inventory,
            &edit,
            &applied.inventory,
        );
        (sources.inventory, text)
    }

    /// Lines only in `a` and only in `b`, the way a diff shows them.
    fn diff(a: &str, b: &str) -> (Vec<String>, Vec<String>) {
        let only = |x: &str, y: &str| {
            x.lines()
                .filter(|l| !y.lines().any(|m| m == *l))
                .map(str::to_owned)
                .collect()
        };
        (only(a, b), only(b, a))
    }

    #[test]
    fn a_new_instance_is_one_added_line_and_comments_survive() {
        let (before, after) = rendered(Edit::CreateInstance(InstanceSpec {
            type_name: "mdb".into(),
            server: "db1".into(),
            index: None,
            state: None,
            version: None,
        }));
        let (removed, added) = diff(&before, &after);
        assert!(removed.is_empty(), "{removed:?}");
        assert_eq!(
            added,
            ["  - { type: mdb, server: db1, index: 4, state: production }"]
        );
        assert!(after.contains("# The one log collector."));
    }

    #[test]
    fn delete_move_and_server_edits_touch_only_their_lines() {
        let (before, after) = rendered(Edit::DeleteInstance {
            id: "tg.app2.1".into(),
        });
        let (removed, added) = diff(&before, &after);
        assert_eq!(
            removed,
            ["  - { type: tg, server: app2, state: production, version: tg-2.8.0 }"]
        );
        assert!(added.is_empty());

        let (before, after) = rendered(Edit::MoveInstance {
            id: "mdb.db1.3".into(),
            server: "app1".into(),
            index: None,
        });
        let (removed, added) = diff(&before, &after);
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(
            added,
            ["  - { type: mdb, server: app1, index: 3, state: production, version: mdb-5.1.0 }"]
        );

        let (before, after) = rendered(Edit::AddServer(crate::edit::ServerSpec {
            name: "app3".into(),
            kind: crate::inventory::ServerKind::App,
            location: "tcn".into(),
            address: "10.0.1.13".parse().unwrap(),
            drives: vec![],
            archive: None,
        }));
        let (removed, added) = diff(&before, &after);
        assert!(removed.is_empty());
        assert_eq!(
            added,
            ["  app3: { kind: app, location: tcn, address: 10.0.1.13 }"]
        );
        let edit = Edit::RemoveServer {
            name: "app3".into(),
        };
        let with_app3 = Catalog::from_sources(&Sources {
            inventory: after.clone(),
            metas: example().0.metas,
        })
        .unwrap();
        let applied = apply(&with_app3, &edit).unwrap();
        let back = render(&after, &with_app3.inventory, &edit, &applied.inventory);
        assert_eq!(back, before);
    }
}
