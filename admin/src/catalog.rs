//! The catalog: every meta-configuration plus the inventory, loaded from a directory and
//! validated as a whole. A `Catalog` value is always valid — every instance's combined
//! configuration resolves and the export passes the gateway's own validator — so the server
//! can answer from it without failing.

use crate::error::{CatalogError, CatalogErrors, ErrorKind};
use crate::inventory::{read_inventory, Inventory};
use crate::meta::{read_meta, LinkTarget, Meta};
use crate::read::Reader;
use crate::yaml::Pos;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const INVENTORY_FILE: &str = "inventory.yaml";
pub const META_DIR: &str = "meta";

/// The text of a catalog's files, as read from disk (or built in memory by tests).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub inventory: String,
    /// (type stem, text) for every `meta/*.yaml`.
    pub metas: Vec<(String, String)>,
}

impl Sources {
    pub fn read(dir: &Path) -> Result<Sources, CatalogErrors> {
        let io = |file: &str, e: std::io::Error| {
            CatalogErrors(vec![CatalogError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                key: String::new(),
                kind: ErrorKind::Io,
                message: format!("cannot read {}: {e}", dir.join(file).display()),
            }])
        };
        let inventory =
            std::fs::read_to_string(dir.join(INVENTORY_FILE)).map_err(|e| io(INVENTORY_FILE, e))?;
        let mut metas = Vec::new();
        let rd = std::fs::read_dir(dir.join(META_DIR)).map_err(|e| io(META_DIR, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| io(META_DIR, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".yaml") else {
                continue;
            };
            if stem.starts_with('.') {
                continue;
            }
            let file = format!("{META_DIR}/{name}");
            let text = std::fs::read_to_string(entry.path()).map_err(|e| io(&file, e))?;
            metas.push((stem.to_owned(), text));
        }
        metas.sort();
        Ok(Sources { inventory, metas })
    }
}

/// Copies a catalog's files (`inventory.yaml`, `meta/*.yaml`) into `dst`, which is created.
/// For demos and tests that change instance states without touching the original.
pub fn copy_files(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst.join(META_DIR))?;
    std::fs::copy(src.join(INVENTORY_FILE), dst.join(INVENTORY_FILE))?;
    for e in std::fs::read_dir(src.join(META_DIR))? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".yaml") {
            std::fs::copy(e.path(), dst.join(META_DIR).join(e.file_name()))?;
        }
    }
    Ok(())
}

/// A validated catalog. Treat it as immutable: indexes are built at load, so a changed
/// catalog is a new one (`Catalog::from_sources`).
#[derive(Clone, Debug)]
pub struct Catalog {
    pub dir: Option<PathBuf>,
    /// By type name.
    pub metas: BTreeMap<String, Meta>,
    pub inventory: Inventory,
    /// The inventory text it was read from (for in-place state edits).
    pub inventory_text: String,
    /// Types in `depends` order: a type comes after everything it depends on.
    pub dependency_order: Vec<String>,
    /// Active meta files (fake, or with instances) in merge order: (sort-order, type).
    pub merge_order: Vec<String>,
    /// Inventory positions of each type's instances, and of each id.
    pub(crate) by_type: HashMap<String, Vec<usize>>,
    by_id: HashMap<String, usize>,
}

impl Catalog {
    /// Reads and validates the catalog in `dir`.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogErrors> {
        let sources = Sources::read(dir)?;
        let mut c = Catalog::from_sources(&sources)?;
        c.dir = Some(dir.to_owned());
        Ok(c)
    }

    /// Validates a catalog given as text: every error, sorted by file and line.
    pub fn from_sources(src: &Sources) -> Result<Catalog, CatalogErrors> {
        let mut errors = Vec::new();
        let mut metas = BTreeMap::new();
        for (stem, text) in &src.metas {
            let file = format!("{META_DIR}/{stem}.yaml");
            if let Some(doc) = parse_file(&file, text, &mut errors) {
                let mut r = Reader {
                    file,
                    errors: &mut errors,
                };
                if let Some(m) = read_meta(&mut r, stem, &doc) {
                    metas.insert(stem.clone(), m);
                }
            }
        }
        let inventory = match parse_file(INVENTORY_FILE, &src.inventory, &mut errors) {
            Some(doc) => {
                let mut r = Reader {
                    file: INVENTORY_FILE.into(),
                    errors: &mut errors,
                };
                read_inventory(&mut r, &doc)
            }
            None => Inventory::default(),
        };
        let mut catalog = Catalog {
            dir: None,
            metas,
            inventory,
            inventory_text: src.inventory.clone(),
            dependency_order: Vec::new(),
            merge_order: Vec::new(),
            by_type: HashMap::new(),
            by_id: HashMap::new(),
        };
        for (i, inst) in catalog.inventory.instances.iter().enumerate() {
            catalog
                .by_type
                .entry(inst.type_name.clone())
                .or_default()
                .push(i);
            catalog.by_id.entry(inst.id.clone()).or_insert(i);
        }
        catalog.cross_check(&mut errors);
        if errors.is_empty() {
            crate::config::check_variables(&catalog, &mut errors);
        }
        if errors.is_empty() {
            for (type_name, idxs) in &catalog.by_type {
                let layers = crate::config::layers(&catalog, type_name);
                for &i in idxs {
                    if let Err(mut e) = crate::config::combined_with(&catalog, i, &layers) {
                        errors.append(&mut e);
                    }
                }
            }
        }
        if errors.is_empty() {
            // What gateways receive must validate: the cloud-wide export, or — when a fwmark
            // groups frontends of several locations, which only per-location exports can
            // serve — each location's export on its own.
            let rows = crate::export::rows(&catalog);
            let parts: Vec<(Option<&str>, Vec<_>)> =
                if crate::export::spanning_fwmarks(&catalog, &rows).is_empty() {
                    vec![(None, rows)]
                } else {
                    catalog
                        .inventory
                        .locations
                        .keys()
                        .filter_map(|name| {
                            let mine = crate::export::location_rows(&catalog, &rows, name)?;
                            Some((Some(name.as_str()), mine))
                        })
                        .collect()
                };
            for (location, part) in parts {
                let Err(e) = portcullis_export::validate_rows(&part) else {
                    continue;
                };
                let whose = location.map_or_else(String::new, |l| format!(" of location {l}"));
                for e in e.errors {
                    errors.push(CatalogError {
                        file: INVENTORY_FILE.into(),
                        line: 1,
                        column: 1,
                        key: String::new(),
                        kind: ErrorKind::ExportRejected,
                        message: format!("the derived export{whose} would be rejected: {e}"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogErrors::sorted(errors))
        }
    }

    pub fn meta(&self, type_name: &str) -> Option<&Meta> {
        self.metas.get(type_name)
    }

    pub fn instance(&self, id: &str) -> Option<&crate::inventory::Instance> {
        self.by_id.get(id).map(|&i| &self.inventory.instances[i])
    }

    /// Position of instance `id` in the inventory.
    pub fn instance_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The instances of one type, in inventory order.
    pub fn instances_of<'a>(
        &'a self,
        type_name: &str,
    ) -> impl Iterator<Item = &'a crate::inventory::Instance> + 'a {
        self.by_type
            .get(type_name)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|&i| &self.inventory.instances[i])
    }

    pub(crate) fn instance_count(&self, type_name: &str) -> usize {
        self.by_type.get(type_name).map_or(0, Vec::len)
    }

    fn cross_check(&mut self, errors: &mut Vec<CatalogError>) {
        let inv_err = |errors: &mut Vec<CatalogError>, pos: Pos, key: String, kind, msg: String| {
            errors.push(CatalogError {
                file: INVENTORY_FILE.into(),
                line: pos.line,
                column: pos.col,
                key,
                kind,
                message: msg,
            })
        };
        for (name, s) in &self.inventory.servers {
            if !self.inventory.locations.contains_key(&s.location) {
                inv_err(
                    errors,
                    s.pos,
                    format!("servers.{name}.location"),
                    ErrorKind::UnknownReference,
                    format!("unknown location {:?}", s.location),
                );
            }
        }
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut per_type: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, inst) in self.inventory.instances.iter().enumerate() {
            let key = format!("instances[{i}]");
            let meta = self.metas.get(&inst.type_name);
            if meta.is_none() {
                inv_err(
                    errors,
                    inst.pos,
                    format!("{key}.type"),
                    ErrorKind::UnknownReference,
                    format!(
                        "unknown type {:?} (no meta/{}.yaml)",
                        inst.type_name, inst.type_name
                    ),
                );
            }
            let server = self.inventory.servers.get(&inst.server);
            if server.is_none() && !self.inventory.broken_servers.contains(&inst.server) {
                inv_err(
                    errors,
                    inst.pos,
                    format!("{key}.server"),
                    ErrorKind::UnknownReference,
                    format!("unknown server {:?}", inst.server),
                );
            }
            if let Some(m) = meta {
                if m.require_index && !inst.index_given {
                    inv_err(
                        errors,
                        inst.pos,
                        format!("{key}.index"),
                        ErrorKind::MissingKey,
                        format!(
                            "type {} has require-index: every instance needs an index",
                            inst.type_name
                        ),
                    );
                }
                if m.unique {
                    let n = per_type.get(inst.type_name.as_str()).map_or(0, Vec::len);
                    if n >= 1 {
                        let first = &self.inventory.instances[per_type[inst.type_name.as_str()][0]];
                        inv_err(
                            errors,
                            inst.pos,
                            key.clone(),
                            ErrorKind::Unique,
                            format!(
                                "type {} is unique: only one instance in the whole cloud (first is {} at line {})",
                                inst.type_name, first.id, first.pos.line
                            ),
                        );
                    }
                }
                if let Some(s) = server {
                    for link in &m.install.link {
                        let ok = match &link.target {
                            LinkTarget::Db => !s.drives.is_empty(),
                            LinkTarget::Archive => s.archive.is_some(),
                            LinkTarget::Path(_) => true,
                        };
                        if !ok {
                            inv_err(
                                errors,
                                inst.pos,
                                format!("{key}.server"),
                                ErrorKind::Placement,
                                format!(
                                    "{} links {} to {:?} ({}:{}) but server {} has {}",
                                    inst.type_name,
                                    link.path,
                                    link.target,
                                    m.file,
                                    link.pos.line,
                                    s.name,
                                    if link.target == LinkTarget::Db {
                                        "no drives"
                                    } else {
                                        "no archive mount"
                                    }
                                ),
                            );
                        }
                    }
                }
            }
            if let Some(first) = seen.get(inst.id.as_str()) {
                inv_err(
                    errors,
                    inst.index_pos,
                    format!("{key}.index"),
                    ErrorKind::DuplicateIndex,
                    format!(
                        "duplicate instance {} (index {} of {} on {} is already used at line {})",
                        inst.id, inst.index, inst.type_name, inst.server, first.line
                    ),
                );
            } else {
                if portcullis_export::InstanceId::parse(&inst.id).is_err() {
                    inv_err(errors, inst.pos, key.clone(), ErrorKind::BadValue, format!("instance id {:?} is not a valid export instance id (1-64 of A-Z a-z 0-9 . _ -)", inst.id));
                }
                seen.insert(&inst.id, inst.pos);
            }
            per_type.entry(&inst.type_name).or_default().push(i);
        }
        self.check_gateway(errors);
        self.check_depends(errors);
        let mut order: Vec<&Meta> = self
            .metas
            .values()
            .filter(|m| m.fake || self.instance_count(m.type_name.as_str()) > 0)
            .collect();
        order.sort_by(|a, b| {
            (a.sort_order, a.type_name.as_str()).cmp(&(b.sort_order, b.type_name.as_str()))
        });
        self.merge_order = order.iter().map(|m| m.type_name.to_string()).collect();
    }
}

fn parse_file(file: &str, text: &str, errors: &mut Vec<CatalogError>) -> Option<crate::yaml::Node> {
    match crate::yaml::parse(text) {
        Ok((doc, dups)) => {
            for d in dups {
                errors.push(CatalogError {
                    file: file.into(),
                    line: d.pos.line,
                    column: d.pos.col,
                    key: String::new(),
                    kind: ErrorKind::DuplicateKey,
                    message: d.message,
                });
            }
            Some(doc)
        }
        Err(e) => {
            errors.push(CatalogError {
                file: file.into(),
                line: e.pos.line,
                column: e.pos.col,
                key: String::new(),
                kind: ErrorKind::Syntax,
                message: e.message,
            });
            None
        }
    }
}
