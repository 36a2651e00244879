//! One meta-configuration (`meta/<type>.yaml`): how a service type is installed, what it
//! depends on, the configuration it contributes (to itself and to other types), the ports it
//! exports through the gateway (`gateway.rs`), and the checks run after install or upgrade.

mod gateway;
mod run;

pub use gateway::{GatewayEntry, To};
pub use run::{Run, DEFAULT_STOP_TIMEOUT_MS};

use crate::error::ErrorKind;
use crate::read::{find, index, join, Reader};
use crate::yaml::{Kind, Node, Pos};
use gateway::read_gateway;
use portcullis_export::ServiceType;
use serde::Serialize;

pub const META_KEYS: &[&str] = &[
    "type",
    "description",
    "sort-order",
    "fake",
    "unique",
    "require-index",
    "workers",
    "install",
    "uninstall",
    "depends",
    "vars",
    "config",
    "gateway",
    "tests",
    "run",
];

#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// `meta/<type>.yaml`, relative to the catalog.
    pub file: String,
    #[serde(rename = "type")]
    pub type_name: ServiceType,
    pub description: Option<String>,
    pub sort_order: i64,
    pub fake: bool,
    pub unique: bool,
    pub require_index: bool,
    pub workers: Option<u32>,
    pub install: Install,
    pub uninstall: Vec<String>,
    pub depends: Vec<Dependency>,
    /// Type-level variables, usable as `${name}` in this type's configuration.
    #[serde(skip)]
    pub vars: Vec<(String, Node)>,
    #[serde(skip)]
    pub config: ConfigSections,
    pub gateway: Vec<GatewayEntry>,
    pub tests: Vec<TestSpec>,
    /// How an instance runs on its host (`portcullis-agent`); `None`: files only.
    pub run: Option<Run>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Install {
    pub mkdir: Vec<String>,
    pub link: Vec<Link>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Link {
    /// Path relative to the service root.
    pub path: String,
    pub target: LinkTarget,
    #[serde(skip)]
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkTarget {
    /// One of the server's data drives (chosen by instance index).
    Db,
    /// The server's archive mount.
    Archive,
    /// An absolute path.
    Path(String),
}

#[derive(Clone, Debug, Serialize)]
pub struct Dependency {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(skip)]
    pub pos: Pos,
}

/// The `config` section split by whom it configures (see docs/catalog.md, "Targeting").
#[derive(Clone, Debug, Default)]
pub struct ConfigSections {
    /// `"*"`: every instance of every type.
    pub all: Option<Node>,
    /// `"@type"`: instances of that type.
    pub for_types: Vec<(String, Pos, Node)>,
    /// Every other key: instances of this file's own type.
    pub own: Vec<(crate::yaml::Key, Node)>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TestSpec {
    /// `GET http://<instance address>:<port><path>` must answer `expect`.
    Http {
        name: String,
        port: u16,
        path: String,
        expect: u16,
    },
    /// A TCP connect to `<instance address>:<port>` must succeed.
    Tcp { name: String, port: u16 },
}

/// Reads `meta/<stem>.yaml`; `None` when the file is too broken to describe a type.
pub(crate) fn read_meta(r: &mut Reader, stem: &str, doc: &Node) -> Option<Meta> {
    let entries = r.map(doc, "", META_KEYS)?;
    let type_node = r.require(doc, &entries, "", "type")?;
    let type_text = r.string(type_node, "type")?;
    let type_name = match ServiceType::parse(&type_text) {
        Ok(t) if type_text == stem => t,
        Ok(_) => {
            r.error(
                type_node.pos,
                "type",
                ErrorKind::BadValue,
                format!("type {type_text:?} must match the file name meta/{type_text}.yaml"),
            );
            return None;
        }
        Err(e) => {
            r.bad(type_node, "type", &e);
            return None;
        }
    };
    let flag = |r: &mut Reader, key: &str| {
        find(&entries, key)
            .and_then(|n| r.boolean(n, key))
            .unwrap_or(false)
    };
    let fake = flag(r, "fake");
    let unique = flag(r, "unique");
    let require_index = flag(r, "require-index");
    let sort_order = find(&entries, "sort-order")
        .and_then(|n| r.int(n, "sort-order", -1_000_000, 1_000_000))
        .unwrap_or(100);
    let workers = find(&entries, "workers")
        .and_then(|n| r.int(n, "workers", 0, 1024))
        .map(|w| w as u32);
    let description = find(&entries, "description").and_then(|n| r.string(n, "description"));
    let install = find(&entries, "install")
        .map(|n| read_install(r, n))
        .unwrap_or_default();
    let uninstall = find(&entries, "uninstall")
        .map(|n| r.strings(n, "uninstall").into_iter().map(|s| s.0).collect())
        .unwrap_or_default();
    let depends = find(&entries, "depends")
        .map(|n| {
            r.strings(n, "depends")
                .into_iter()
                .map(|(type_name, pos)| Dependency { type_name, pos })
                .collect()
        })
        .unwrap_or_default();
    let vars = find(&entries, "vars")
        .and_then(|n| {
            let e = r.map(n, "vars", &[])?;
            Some(
                e.into_iter()
                    .filter(|(k, v)| {
                        let scalar = matches!(v.kind, Kind::Str(_) | Kind::Int(_) | Kind::Bool(_));
                        if !scalar {
                            r.bad(v, &join("vars", &k.name), "a string, integer or boolean");
                        }
                        scalar
                    })
                    .map(|(k, v)| (k.name.clone(), v.clone()))
                    .collect(),
            )
        })
        .unwrap_or_default();
    let config = find(&entries, "config")
        .map(|n| read_config(r, n))
        .unwrap_or_default();
    let gateway = find(&entries, "gateway")
        .and_then(|n| r.list(n, "gateway"))
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| read_gateway(r, n, &index("gateway", i)))
                .collect()
        })
        .unwrap_or_default();
    let tests = find(&entries, "tests")
        .and_then(|n| r.list(n, "tests"))
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| read_test(r, n, &index("tests", i)))
                .collect()
        })
        .unwrap_or_default();
    let run = find(&entries, "run").and_then(|n| run::read_run(r, n));
    Some(Meta {
        file: r.file.clone(),
        type_name,
        description,
        sort_order,
        fake,
        unique,
        require_index,
        workers,
        install,
        uninstall,
        depends,
        vars,
        config,
        gateway,
        tests,
        run,
    })
}

fn read_install(r: &mut Reader, node: &Node) -> Install {
    let mut install = Install::default();
    let Some(entries) = r.map(node, "install", &["mkdir", "link"]) else {
        return install;
    };
    if let Some(n) = find(&entries, "mkdir") {
        install.mkdir = r
            .strings(n, "install.mkdir")
            .into_iter()
            .map(|s| s.0)
            .collect();
    }
    if let Some(n) = find(&entries, "link") {
        for (k, v) in r.map(n, "install.link", &[]).unwrap_or_default() {
            let key = join("install.link", &k.name);
            let Some(t) = r.string(v, &key) else { continue };
            let target = match t.as_str() {
                "db" => LinkTarget::Db,
                "archive" => LinkTarget::Archive,
                p if p.starts_with('/') => LinkTarget::Path(p.to_owned()),
                _ => {
                    r.bad(v, &key, "db, archive or an absolute path");
                    continue;
                }
            };
            install.link.push(Link {
                path: k.name.clone(),
                target,
                pos: v.pos,
            });
        }
    }
    install
}

fn read_config(r: &mut Reader, node: &Node) -> ConfigSections {
    let mut c = ConfigSections::default();
    for (k, v) in r.map(node, "config", &[]).unwrap_or_default() {
        let key = join("config", &k.name);
        if k.name == "*" {
            if v.as_map().is_some() {
                c.all = Some(v.clone());
            } else {
                r.bad(v, &key, "a mapping (configuration for every instance)");
            }
        } else if let Some(t) = k.name.strip_prefix('@') {
            if v.as_map().is_none() {
                r.bad(v, &key, "a mapping (configuration for that type)");
            } else {
                c.for_types.push((t.to_owned(), k.pos, v.clone()));
            }
        } else {
            c.own.push((k.clone(), v.clone()));
        }
    }
    c
}

fn read_test(r: &mut Reader, node: &Node, path: &str) -> Option<TestSpec> {
    let e = r.map(node, path, &["name", "http", "tcp", "port", "expect"])?;
    let name = r.require(node, &e, path, "name")?;
    let name = r.string(name, &join(path, "name"))?;
    if let Some(http) = find(&e, "http") {
        let url_path = r.string(http, &join(path, "http"))?;
        if !url_path.starts_with('/') {
            r.bad(http, &join(path, "http"), "a path starting with /");
            return None;
        }
        let port = r.require(node, &e, path, "port")?;
        let port = r.int(port, &join(path, "port"), 1, 65535)? as u16;
        let expect = match find(&e, "expect") {
            Some(n) => r.int(n, &join(path, "expect"), 100, 599)? as u16,
            None => 200,
        };
        Some(TestSpec::Http {
            name,
            port,
            path: url_path,
            expect,
        })
    } else if let Some(tcp) = find(&e, "tcp") {
        let port = r.int(tcp, &join(path, "tcp"), 1, 65535)? as u16;
        Some(TestSpec::Tcp { name, port })
    } else {
        r.error(
            node.pos,
            path,
            ErrorKind::MissingKey,
            "a test needs `http: /path` (with `port`) or `tcp: PORT`",
        );
        None
    }
}
