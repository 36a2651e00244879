//! Combined configurations: for one instance, the `config` sections of every active meta file,
//! merged in (sort-order, type) order, with variables substituted. This is exactly what a
//! service fetches at start (`GET /v1/config/{type}/{server}/{index}`).

use crate::catalog::Catalog;
use crate::error::{CatalogError, ErrorKind};
use crate::inventory::Instance;
use crate::meta::Meta;
use crate::read::{index, join};
use crate::value::Value;
use crate::yaml::{Kind, Node};
use indexmap::IndexMap;

/// Variables every instance has. `version`, `drive` and `archive` exist only when the instance
/// has a version, or its server has drives or an archive mount.
pub const BUILTINS: &[&str] = &[
    "type",
    "id",
    "server",
    "host",
    "host-ip",
    "location",
    "app-index",
    "version",
    "drive",
    "archive",
];

/// Converts a YAML node to a value without substitution.
pub fn plain(node: &Node) -> Value {
    match &node.kind {
        Kind::Null => Value::Null,
        Kind::Bool(b) => Value::Bool(*b),
        Kind::Int(i) => Value::Int(*i),
        Kind::Float(f) => Value::Float(*f),
        Kind::Str(s) => Value::Str(s.clone()),
        Kind::Seq(items) => Value::List(items.iter().map(plain).collect()),
        Kind::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.name.clone(), plain(v))).collect()),
    }
}

/// Where variables come from: the instance being configured (none when only checking names),
/// and the type whose `vars` apply.
#[derive(Clone, Copy)]
struct Scope<'a> {
    catalog: &'a Catalog,
    instance: Option<&'a Instance>,
    vars_of: Option<&'a Meta>,
    /// References followed so far: `${logger:port}` whose value is `${logger:port}` must end.
    depth: u8,
    /// In `run` and `uninstall`: the host paths only the agent knows (`${config}`, ...) stay
    /// as written, for the agent to substitute.
    agent_vars: bool,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Result<Value, String> {
        if self.depth > 4 {
            return Err(format!(
                "${{{name}}}: variables refer to each other in a loop"
            ));
        }
        if let Some((t, inner)) = name.split_once(':') {
            let Some(meta) = self.catalog.meta(t) else {
                return Err(format!("${{{name}}}: unknown type {t:?}"));
            };
            if !meta.unique {
                return Err(format!(
                    "${{{name}}}: type {t} is not unique, so \"its\" {inner} is ambiguous"
                ));
            }
            if inner.contains(':') {
                return Err(format!("${{{name}}}: references do not nest"));
            }
            let instance = match self.instance {
                None => None,
                Some(_) => Some(
                    self.catalog
                        .instances_of(t)
                        .next()
                        .ok_or_else(|| format!("${{{name}}}: there is no instance of {t}"))?,
                ),
            };
            return Scope {
                catalog: self.catalog,
                instance,
                vars_of: Some(meta),
                depth: self.depth + 1,
                agent_vars: self.agent_vars,
            }
            .lookup(inner);
        }
        if self.agent_vars && portcullis_agent_proto::AGENT_VARIABLES.contains(&name) {
            return Ok(Value::Str(format!("${{{name}}}")));
        }
        if BUILTINS.contains(&name) {
            let Some(i) = self.instance else {
                return Ok(Value::Str(String::new()));
            };
            return builtin(self.catalog, i, name);
        }
        if let Some(meta) = self.vars_of {
            if let Some((_, node)) = meta.vars.iter().find(|(k, _)| k == name) {
                // A type variable may use built-ins (not other variables: no chains to untangle).
                let inner = Scope {
                    vars_of: None,
                    depth: self.depth + 1,
                    ..*self
                };
                return match &node.kind {
                    Kind::Str(s) => substitute(s, &inner),
                    _ => Ok(plain(node)),
                };
            }
        }
        let mut known: Vec<String> = BUILTINS.iter().map(|s| s.to_string()).collect();
        if let Some(m) = self.vars_of {
            known.extend(m.vars.iter().map(|(k, _)| k.clone()));
        }
        Err(format!(
            "unknown variable ${{{name}}}; known here: {}, or ${{TYPE:NAME}} of a unique type",
            known.join(", ")
        ))
    }
}

fn builtin(catalog: &Catalog, i: &Instance, name: &str) -> Result<Value, String> {
    let server = catalog
        .inventory
        .servers
        .get(&i.server)
        .ok_or_else(|| format!("unknown server {}", i.server))?;
    Ok(match name {
        "type" => Value::Str(i.type_name.clone()),
        "id" => Value::Str(i.id.clone()),
        "server" | "host" => Value::Str(i.server.clone()),
        "host-ip" => Value::Str(server.address.to_string()),
        "location" => Value::Str(server.location.clone()),
        "app-index" => Value::Int(i.index as i64),
        "version" => Value::Str(
            i.version
                .clone()
                .ok_or_else(|| format!("${{version}}: instance {} has no version", i.id))?,
        ),
        "drive" => {
            if server.drives.is_empty() {
                return Err(format!("${{drive}}: server {} has no drives", server.name));
            }
            // Instances spread over the drives by index: index 1 → first drive.
            let d = &server.drives[(i.index as usize - 1) % server.drives.len()];
            Value::Str(d.clone())
        }
        "archive" => {
            Value::Str(server.archive.clone().ok_or_else(|| {
                format!("${{archive}}: server {} has no archive mount", server.name)
            })?)
        }
        _ => return Err(format!("unknown variable ${{{name}}}")),
    })
}

/// Replaces every `${name}` in `s` (`$${` is a literal `${`). A string that is exactly one
/// variable takes that variable's type (`port: "${port}"` gives an integer).
fn substitute(s: &str, scope: &Scope) -> Result<Value, String> {
    if !s.contains('$') {
        return Ok(Value::Str(s.to_owned()));
    }
    if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !name.contains(['{', '}', '$']) {
            return scope.lookup(name);
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(r) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
        } else if let Some(r) = after.strip_prefix("${") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unterminated variable in {s:?}"))?;
            match scope.lookup(&r[..end])? {
                Value::Str(v) => out.push_str(&v),
                Value::Int(v) => out.push_str(&v.to_string()),
                Value::Bool(v) => out.push_str(&v.to_string()),
                other => out.push_str(&format!("{other:?}")),
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Value::Str(out))
}

fn resolve(
    node: &Node,
    path: &str,
    file: &str,
    scope: &Scope,
    errors: &mut Vec<CatalogError>,
) -> Value {
    match &node.kind {
        Kind::Str(s) => match substitute(s, scope) {
            Ok(v) => v,
            Err(message) => {
                errors.push(CatalogError {
                    file: file.to_owned(),
                    line: node.pos.line,
                    column: node.pos.col,
                    key: path.to_owned(),
                    kind: ErrorKind::UnknownVariable,
                    message: match scope.instance {
                        Some(i) => format!("{message} (configuring {})", i.id),
                        None => message,
                    },
                });
                Value::Null
            }
        },
        Kind::Seq(items) => Value::List(
            items
                .iter()
                .enumerate()
                .map(|(n, v)| resolve(v, &index(path, n), file, scope, errors))
                .collect(),
        ),
        Kind::Map(m) => Value::Map(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.name.clone(),
                        resolve(v, &join(path, &k.name), file, scope, errors),
                    )
                })
                .collect::<IndexMap<_, _>>(),
        ),
        _ => plain(node),
    }
}

/// The layers that configure instances of `type_name`, in merge order: (file, key path, node).
pub(crate) fn layers<'c>(
    catalog: &'c Catalog,
    type_name: &str,
) -> Vec<(&'c Meta, String, Layer<'c>)> {
    let mut out = Vec::new();
    for t in &catalog.merge_order {
        let Some(f) = catalog.meta(t) else { continue };
        if let Some(all) = &f.config.all {
            out.push((f, "config.\"*\"".to_owned(), Layer::Node(all)));
        }
        for (target, _, node) in &f.config.for_types {
            if target == type_name {
                out.push((f, format!("config.\"@{target}\""), Layer::Node(node)));
            }
        }
        if f.type_name.as_str() == type_name && !f.config.own.is_empty() {
            out.push((f, "config".to_owned(), Layer::Own(&f.config.own)));
        }
    }
    out
}

pub(crate) enum Layer<'c> {
    Node(&'c Node),
    Own(&'c [(crate::yaml::Key, Node)]),
}

/// The combined configuration of instance number `idx` of the inventory.
pub fn combined(catalog: &Catalog, idx: usize) -> Result<Value, Vec<CatalogError>> {
    let inst = &catalog.inventory.instances[idx];
    combined_with(catalog, idx, &layers(catalog, &inst.type_name))
}

/// [`combined`] with the type's layers computed once for all its instances.
pub(crate) fn combined_with(
    catalog: &Catalog,
    idx: usize,
    layers: &[(&Meta, String, Layer<'_>)],
) -> Result<Value, Vec<CatalogError>> {
    let inst = &catalog.inventory.instances[idx];
    let meta = catalog.meta(&inst.type_name);
    let scope = Scope {
        catalog,
        instance: Some(inst),
        vars_of: meta,
        depth: 0,
        agent_vars: false,
    };
    let mut errors = Vec::new();
    let mut out = Value::map();
    if let Some(w) = meta.and_then(|m| m.workers) {
        out.merge(Value::Map(IndexMap::from([(
            "workers".to_owned(),
            Value::Int(w as i64),
        )])));
    }
    for (f, path, layer) in layers {
        let v = match layer {
            Layer::Node(n) => resolve(n, path, &f.file, &scope, &mut errors),
            Layer::Own(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.name.clone(),
                            resolve(v, &join(path, &k.name), &f.file, &scope, &mut errors),
                        )
                    })
                    .collect(),
            ),
        };
        out.merge(v);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Checks that every variable written anywhere in the catalog can exist where it is used, and
/// that `@type` targets name real types. Run once at load, so a typo is reported even when no
/// instance currently uses the section.
pub(crate) fn check_variables(catalog: &Catalog, errors: &mut Vec<CatalogError>) {
    for f in catalog.metas.values() {
        let own = Scope {
            catalog,
            instance: None,
            vars_of: Some(f),
            depth: 0,
            agent_vars: false,
        };
        let builtins_only = Scope {
            catalog,
            instance: None,
            vars_of: None,
            depth: 0,
            agent_vars: false,
        };
        for (k, v) in &f.vars {
            resolve(v, &join("vars", k), &f.file, &builtins_only, errors);
        }
        for (k, v) in &f.config.own {
            resolve(v, &join("config", &k.name), &f.file, &own, errors);
        }
        if let Some(run) = &f.run {
            let host = Scope {
                agent_vars: true,
                ..own
            };
            for (path, node) in run_nodes(run) {
                resolve(node, &path, &f.file, &host, errors);
            }
        }
        if let Some(all) = &f.config.all {
            resolve(all, "config.\"*\"", &f.file, &builtins_only, errors);
        }
        for (t, pos, node) in &f.config.for_types {
            let path = format!("config.\"@{t}\"");
            match catalog.meta(t) {
                Some(target) => {
                    let scope = Scope {
                        catalog,
                        instance: None,
                        vars_of: Some(target),
                        depth: 0,
                        agent_vars: false,
                    };
                    resolve(node, &path, &f.file, &scope, errors);
                }
                None => errors.push(CatalogError {
                    file: f.file.clone(),
                    line: pos.line,
                    column: pos.col,
                    key: path,
                    kind: ErrorKind::UnknownReference,
                    message: format!("unknown type {t:?} (no meta/{t}.yaml)"),
                }),
            }
        }
    }
}

/// The `run` strings with their key paths: command items, then env values.
fn run_nodes(run: &crate::meta::Run) -> impl Iterator<Item = (String, &Node)> {
    let command = run
        .command_nodes
        .iter()
        .enumerate()
        .map(|(n, node)| (index("run.command", n), node));
    let env = run
        .env_nodes
        .iter()
        .map(|(k, node)| (join("run.env", k), node));
    command.chain(env)
}

/// An instance's `run` with variables substituted: argv and environment.
pub struct RunCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// How instance `idx` runs, variables substituted except the agent's own (`${config}`, ...).
/// `None` when its type has no `run` section.
pub fn run_command(catalog: &Catalog, idx: usize) -> Result<Option<RunCommand>, Vec<CatalogError>> {
    let inst = &catalog.inventory.instances[idx];
    let Some(meta) = catalog.meta(&inst.type_name) else {
        return Ok(None);
    };
    let Some(run) = &meta.run else {
        return Ok(None);
    };
    let scope = host_scope(catalog, idx);
    let mut errors = Vec::new();
    let mut text = |path: &str, node: &Node| {
        let v = resolve(node, path, &meta.file, &scope, &mut errors);
        scalar_text(&v)
    };
    let argv: Vec<String> = run
        .command_nodes
        .iter()
        .enumerate()
        .map(|(n, node)| text(&index("run.command", n), node))
        .collect();
    let env: Vec<(String, String)> = run
        .env_nodes
        .iter()
        .map(|(k, node)| (k.clone(), text(&join("run.env", k), node)))
        .collect();
    if errors.is_empty() {
        Ok(Some(RunCommand { argv, env }))
    } else {
        Err(errors)
    }
}

/// The `uninstall` paths of instance `idx`, variables substituted (the agent's own kept).
pub fn uninstall_paths(catalog: &Catalog, idx: usize) -> Result<Vec<String>, Vec<CatalogError>> {
    let inst = &catalog.inventory.instances[idx];
    let Some(meta) = catalog.meta(&inst.type_name) else {
        return Ok(Vec::new());
    };
    let scope = host_scope(catalog, idx);
    let mut errors = Vec::new();
    let out = meta
        .uninstall
        .iter()
        .enumerate()
        .map(|(n, p)| {
            // `uninstall` keeps no positions: the key path names the entry.
            let node = Node {
                pos: Default::default(),
                span: (0, 0),
                kind: Kind::Str(p.clone()),
            };
            scalar_text(&resolve(
                &node,
                &index("uninstall", n),
                &meta.file,
                &scope,
                &mut errors,
            ))
        })
        .collect();
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn host_scope(catalog: &Catalog, idx: usize) -> Scope<'_> {
    let inst = &catalog.inventory.instances[idx];
    Scope {
        catalog,
        instance: Some(inst),
        vars_of: catalog.meta(&inst.type_name),
        depth: 0,
        agent_vars: true,
    }
}

/// A substituted scalar as command-line text.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Null => String::new(),
        other => other.to_yaml().trim().to_owned(),
    }
}
