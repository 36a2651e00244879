//! Inventory changes as values: create, delete and move an instance, change its state, add and
//! remove a server. [`apply`] turns one into the inventory it would produce (choosing a
//! `require-index` type's index), [`text::render`] into the `inventory.yaml` text to write —
//! edited in place when it can be, so comments survive. Neither validates the whole catalog nor
//! does any I/O: the server runs the result through `Catalog::from_sources`, the same checks as
//! `portcullis-admin check`, before anything is written.

pub mod text;

use crate::catalog::Catalog;
use crate::inventory::{Instance, Inventory, Server, ServerKind, State};
use crate::yaml::Pos;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A new server, as `POST /v1/servers` takes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub name: String,
    pub kind: ServerKind,
    pub location: String,
    pub address: IpAddr,
    #[serde(default)]
    pub drives: Vec<String>,
    #[serde(default)]
    pub archive: Option<String>,
}

/// A new instance, as `POST /v1/instances` takes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    #[serde(rename = "type")]
    pub type_name: String,
    pub server: String,
    /// Without it, a `require-index` type gets the lowest index free on the server; other
    /// types are written without one (index 1).
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub state: Option<State>,
    #[serde(default)]
    pub version: Option<String>,
}

/// One change to the inventory.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "operation", rename_all = "kebab-case")]
pub enum Edit {
    CreateInstance(InstanceSpec),
    DeleteInstance {
        id: String,
    },
    /// To another server; with `index`, under that index.
    MoveInstance {
        id: String,
        server: String,
        index: Option<u32>,
    },
    SetState {
        id: String,
        state: State,
    },
    /// The version the instance should run (`None`: no version); agents install it.
    SetVersion {
        id: String,
        version: Option<String>,
    },
    AddServer(ServerSpec),
    RemoveServer {
        name: String,
    },
}

impl Edit {
    /// The operation's stable name (audit log, `ctl` output).
    pub fn operation(&self) -> &'static str {
        match self {
            Edit::CreateInstance(_) => "create-instance",
            Edit::DeleteInstance { .. } => "delete-instance",
            Edit::MoveInstance { .. } => "move-instance",
            Edit::SetState { .. } => "set-state",
            Edit::SetVersion { .. } => "set-version",
            Edit::AddServer(_) => "add-server",
            Edit::RemoveServer { .. } => "remove-server",
        }
    }
}

/// An edit that cannot even be applied (the catalog checks never run).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("no instance {0}")]
    NoInstance(String),
    #[error("no server {0}")]
    NoServer(String),
    #[error("server {0} already exists")]
    ServerExists(String),
    #[error("server {name} still has instances: {}; delete or move them first", instances.join(", "))]
    ServerInUse {
        name: String,
        instances: Vec<String>,
    },
    #[error("index must be 1-9999, found {0}")]
    BadIndex(u32),
}

impl EditError {
    /// Not found (404) or a conflict with the current inventory (409).
    pub fn is_not_found(&self) -> bool {
        matches!(self, EditError::NoInstance(_) | EditError::NoServer(_))
    }
}

/// What an edit did: the inventory it produces, what it touched, and that thing before and
/// after (JSON, for the audit log and the response). `before == after` means no change.
#[derive(Clone, Debug)]
pub struct Applied {
    pub inventory: Inventory,
    /// The instance id or server name the edit is about (a moved instance: its new id).
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

fn json<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

fn instance_id(type_name: &str, server: &str, index: u32) -> String {
    format!("{type_name}.{server}.{index}")
}

/// The lowest index no instance of `type_name` on `server` uses (ignoring `except`).
fn lowest_free_index(inv: &Inventory, type_name: &str, server: &str, except: Option<&str>) -> u32 {
    let used: std::collections::BTreeSet<u32> = inv
        .instances
        .iter()
        .filter(|i| i.type_name == type_name && i.server == server && Some(i.id.as_str()) != except)
        .map(|i| i.index)
        .collect();
    (1..).find(|n| !used.contains(n)).unwrap_or(1)
}

fn check_index(index: Option<u32>) -> Result<(), EditError> {
    match index {
        Some(n) if !(1..=9999).contains(&n) => Err(EditError::BadIndex(n)),
        _ => Ok(()),
    }
}

/// Applies `edit` to `catalog`'s inventory. The result is not validated: run it through the
/// catalog checks.
pub fn apply(catalog: &Catalog, edit: &Edit) -> Result<Applied, EditError> {
    let mut inv = catalog.inventory.clone();
    let require_index = |t: &str| catalog.meta(t).is_some_and(|m| m.require_index);
    let position = |inv: &Inventory, id: &str| {
        inv.instances
            .iter()
            .position(|i| i.id == id)
            .ok_or_else(|| EditError::NoInstance(id.to_owned()))
    };
    match edit {
        Edit::CreateInstance(spec) => {
            check_index(spec.index)?;
            let index_given = spec.index.is_some() || require_index(&spec.type_name);
            let index = spec.index.unwrap_or_else(|| {
                if require_index(&spec.type_name) {
                    lowest_free_index(&inv, &spec.type_name, &spec.server, None)
                } else {
                    1
                }
            });
            let inst = Instance {
                id: instance_id(&spec.type_name, &spec.server, index),
                type_name: spec.type_name.clone(),
                server: spec.server.clone(),
                index,
                index_given,
                state: spec.state.unwrap_or(State::Production),
                version: spec.version.clone(),
                pos: Pos::default(),
                index_pos: Pos::default(),
            };
            let after = json(&inst);
            let target = inst.id.clone();
            inv.instances.push(inst);
            Ok(Applied {
                inventory: inv,
                target,
                before: None,
                after,
            })
        }
        Edit::DeleteInstance { id } => {
            let at = position(&inv, id)?;
            let gone = inv.instances.remove(at);
            Ok(Applied {
                inventory: inv,
                target: id.clone(),
                before: json(&gone),
                after: None,
            })
        }
        Edit::SetState { id, state } => {
            let at = position(&inv, id)?;
            let before = json(&inv.instances[at]);
            inv.instances[at].state = *state;
            let after = json(&inv.instances[at]);
            Ok(Applied {
                inventory: inv,
                target: id.clone(),
                before,
                after,
            })
        }
        Edit::SetVersion { id, version } => {
            let at = position(&inv, id)?;
            let before = json(&inv.instances[at]);
            inv.instances[at].version = version.clone();
            let after = json(&inv.instances[at]);
            Ok(Applied {
                inventory: inv,
                target: id.clone(),
                before,
                after,
            })
        }
        Edit::MoveInstance { id, server, index } => {
            check_index(*index)?;
            let at = position(&inv, id)?;
            let before = json(&inv.instances[at]);
            let inst = &inv.instances[at];
            let type_name = inst.type_name.clone();
            // Keep the index when it is free on the new server; a require-index type takes the
            // lowest free one otherwise. An explicit index is used as given (the checks refuse
            // a duplicate).
            let (new_index, given) = match index {
                Some(n) => (*n, true),
                None if require_index(&type_name) => {
                    let taken = inv.instances.iter().any(|i| {
                        i.type_name == type_name && i.server == *server && i.index == inst.index
                    });
                    let n = if taken {
                        lowest_free_index(&inv, &type_name, server, Some(id))
                    } else {
                        inst.index
                    };
                    (n, true)
                }
                None => (inst.index, inst.index_given),
            };
            let inst = &mut inv.instances[at];
            inst.server = server.clone();
            inst.index = new_index;
            inst.index_given = given;
            inst.id = instance_id(&type_name, server, new_index);
            let after = json(&*inst);
            let target = inst.id.clone();
            Ok(Applied {
                inventory: inv,
                target,
                before,
                after,
            })
        }
        Edit::AddServer(spec) => {
            if inv.servers.contains_key(&spec.name) {
                return Err(EditError::ServerExists(spec.name.clone()));
            }
            let server = Server {
                name: spec.name.clone(),
                kind: spec.kind,
                location: spec.location.clone(),
                address: spec.address,
                drives: spec.drives.clone(),
                archive: spec.archive.clone(),
                pos: Pos::default(),
            };
            let after = json(&server);
            inv.servers.insert(spec.name.clone(), server);
            Ok(Applied {
                inventory: inv,
                target: spec.name.clone(),
                before: None,
                after,
            })
        }
        Edit::RemoveServer { name } => {
            let Some(server) = inv.servers.get(name) else {
                return Err(EditError::NoServer(name.clone()));
            };
            let instances: Vec<String> = inv
                .instances
                .iter()
                .filter(|i| i.server == *name)
                .map(|i| i.id.clone())
                .collect();
            if !instances.is_empty() {
                return Err(EditError::ServerInUse {
                    name: name.clone(),
                    instances,
                });
            }
            let before = json(server);
            inv.servers.shift_remove(name);
            Ok(Applied {
                inventory: inv,
                target: name.clone(),
                before,
                after: None,
            })
        }
    }
}
