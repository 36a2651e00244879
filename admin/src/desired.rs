//! A server's desired state for its agent (`GET /v1/servers/{name}/desired`): every instance
//! placed on it, with the release its inventory `version:` names in the store, its combined
//! configuration, install steps with drive links resolved against the server, its run command,
//! tests and uninstall paths. Pure: the run states come from the caller, manifests from the
//! store (the only I/O).

use crate::catalog::Catalog;
use crate::error::CatalogError;
use crate::meta::{LinkTarget, TestSpec};
use crate::versions::store::{is_id, Store};
use crate::versions::VersionError;
use portcullis_agent_proto as proto;
use proto::{Desired, DesiredInstance, RunState};

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("no server {0}")]
    UnknownServer(String),
    #[error("instance {instance}: {message}")]
    Instance { instance: String, message: String },
    #[error("instance {instance}: its configuration does not resolve")]
    Config {
        instance: String,
        errors: Vec<CatalogError>,
    },
    #[error("instance {instance}: {source}")]
    Version {
        instance: String,
        source: VersionError,
    },
}

/// The run state ADMIN wants for an instance and its restart counter (start/stop/restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunControl {
    pub state: RunState,
    pub restart_generation: u64,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            state: RunState::Running,
            restart_generation: 0,
        }
    }
}

/// The version an instance should run: its inventory `version:` when that names a version in
/// the store (`LABEL_0123456789ab`). A free-form label (`pgw-1.4.2`) names no content, so there
/// is nothing to install.
fn release(
    catalog: &Catalog,
    store: &Store,
    idx: usize,
) -> Result<Option<proto::Release>, DesiredError> {
    let inst = &catalog.inventory.instances[idx];
    let Some(v) = inst.version.as_deref().filter(|v| is_id(v)) else {
        return Ok(None);
    };
    let m = store.manifest(v).map_err(|source| DesiredError::Version {
        instance: inst.id.clone(),
        source,
    })?;
    if m.type_name != inst.type_name {
        return Err(DesiredError::Instance {
            instance: inst.id.clone(),
            message: format!(
                "{v} is a version of {}, not of {}",
                m.type_name, inst.type_name
            ),
        });
    }
    Ok(Some(proto::Release {
        id: m.id,
        type_name: m.type_name,
        digest: m.digest,
        files: m
            .files
            .into_iter()
            .map(|f| proto::ReleaseFile {
                path: f.path,
                mode: f.mode,
                size: f.size,
                sha256: f.sha256,
            })
            .collect(),
    }))
}

/// The desired state of `server`; `control` gives each instance's run state.
pub fn for_server(
    catalog: &Catalog,
    store: &Store,
    server: &str,
    control: impl Fn(&str) -> RunControl,
) -> Result<Desired, DesiredError> {
    let srv = catalog
        .inventory
        .servers
        .get(server)
        .ok_or_else(|| DesiredError::UnknownServer(server.to_owned()))?;
    let mut instances = Vec::new();
    for (idx, inst) in catalog.inventory.instances.iter().enumerate() {
        if inst.server != server {
            continue;
        }
        let Some(meta) = catalog.meta(&inst.type_name) else {
            continue;
        };
        let problem = |message: String| DesiredError::Instance {
            instance: inst.id.clone(),
            message,
        };
        let config_errors = |errors| DesiredError::Config {
            instance: inst.id.clone(),
            errors,
        };
        let config = crate::config::combined(catalog, idx).map_err(config_errors)?;
        let mut links = Vec::new();
        for l in &meta.install.link {
            let (drive, target) = match &l.target {
                LinkTarget::Path(p) => ("path", p.clone()),
                LinkTarget::Db if srv.drives.is_empty() => {
                    return Err(problem(format!(
                        "install.link {}: server {server} has no drives",
                        l.path
                    )))
                }
                // Instances spread over the drives by index, as `${drive}` does.
                LinkTarget::Db => (
                    "db",
                    srv.drives[(inst.index as usize).saturating_sub(1) % srv.drives.len()].clone(),
                ),
                LinkTarget::Archive => (
                    "archive",
                    srv.archive.clone().ok_or_else(|| {
                        problem(format!(
                            "install.link {}: server {server} has no archive mount",
                            l.path
                        ))
                    })?,
                ),
            };
            links.push(proto::LinkStep {
                path: l.path.clone(),
                drive: drive.to_owned(),
                target,
            });
        }
        let run = crate::config::run_command(catalog, idx)
            .map_err(config_errors)?
            .map(|run| proto::RunSpec {
                command: run.argv,
                env: run.env.into_iter().collect(),
                stop_timeout_ms: meta
                    .run
                    .as_ref()
                    .map_or(crate::meta::DEFAULT_STOP_TIMEOUT_MS, |r| r.stop_timeout_ms),
            });
        let uninstall = crate::config::uninstall_paths(catalog, idx).map_err(config_errors)?;
        let c = control(&inst.id);
        instances.push(DesiredInstance {
            id: inst.id.clone(),
            type_name: inst.type_name.clone(),
            index: inst.index,
            release: release(catalog, store, idx)?,
            config: serde_json::to_value(&config).unwrap_or_default(),
            install: proto::Install {
                mkdir: meta.install.mkdir.clone(),
                links,
            },
            run,
            run_state: c.state,
            restart_generation: c.restart_generation,
            tests: meta.tests.iter().map(test_spec).collect(),
            uninstall,
        });
    }
    Ok(Desired {
        server: server.to_owned(),
        address: srv.address.to_string(),
        instances,
    })
}

fn test_spec(t: &TestSpec) -> proto::TestSpec {
    match t {
        TestSpec::Http {
            name,
            port,
            path,
            expect,
        } => proto::TestSpec::Http {
            name: name.clone(),
            port: *port,
            path: path.clone(),
            expect: *expect,
        },
        TestSpec::Tcp { name, port } => proto::TestSpec::Tcp {
            name: name.clone(),
            port: *port,
        },
    }
}

/// Strong ETag of a desired state: its JSON's sha256, abbreviated, quoted.
pub fn etag(d: &Desired) -> String {
    use sha2::Digest;
    let body = serde_json::to_vec(d).unwrap_or_default();
    let h = sha2::Sha256::digest(&body);
    format!("\"{}\"", proto::hex(&h[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(dir: &std::path::Path) -> Catalog {
        std::fs::create_dir_all(dir.join("meta")).unwrap();
        std::fs::write(
            dir.join("inventory.yaml"),
            "locations:\n  l1: { ip-labels: { www: [203.0.113.1] } }\n\
             servers:\n  a: { kind: db, location: l1, address: 127.0.0.1, drives: [/d1, /d2] }\n  \
             b: { kind: db, location: l1, address: 127.0.0.2, drives: [/e1] }\n\
             instances:\n  - { type: web, server: a, index: 2 }\n  - { type: web, server: b, index: 1 }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("meta/web.yaml"),
            "type: web\nrequire-index: true\nuninstall: [\"${drive}/web-${app-index}\"]\n\
             install: { mkdir: [log], link: { data: db } }\n\
             config: { port: \"80${app-index}0\" }\n\
             run:\n  command: [/bin/sh, \"${release}/bin/web\", \"${config}\", \"${app-index}\", \"${host-ip}\"]\n  \
             env: { WEB_ID: \"${id}\" }\n  stop-timeout: 2s\n",
        )
        .unwrap();
        Catalog::load(dir).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_servers_instances_with_substituted_run_and_resolved_links() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(dir.path());
        let store = Store::new(dir.path());
        let d = for_server(&c, &store, "a", |_| RunControl::default()).unwrap();
        assert_eq!(d.instances.len(), 1);
        let i = &d.instances[0];
        assert_eq!(i.id, "web.a.2");
        let run = i.run.as_ref().unwrap();
        // ADMIN's variables are substituted; the agent's host paths are left for it.
        assert_eq!(
            run.command,
            [
                "/bin/sh",
                "${release}/bin/web",
                "${config}",
                "2",
                "127.0.0.1"
            ]
        );
        assert_eq!(run.env.get("WEB_ID").map(String::as_str), Some("web.a.2"));
        assert_eq!(run.stop_timeout_ms, 2000);
        assert_eq!(i.install.links[0].drive, "db");
        assert_eq!(i.install.links[0].target, "/d2");
        assert_eq!(i.uninstall, ["/d2/web-2"]);
        assert_eq!(i.config["port"], serde_json::json!("8020"));
        assert!(i.release.is_none());
        let b = for_server(&c, &store, "b", |_| RunControl::default()).unwrap();
        assert_eq!(b.instances[0].install.links[0].target, "/e1");
        assert!(matches!(
            for_server(&c, &store, "nope", |_| RunControl::default()),
            Err(DesiredError::UnknownServer(_))
        ));
        let stopped = for_server(&c, &store, "a", |_| RunControl {
            state: RunState::Stopped,
            restart_generation: 0,
        })
        .unwrap();
        assert_ne!(etag(&d), etag(&stopped));
    }

    #[test]
    fn run_errors_are_located_in_the_meta_file() {
        let dir = tempfile::tempdir().unwrap();
        catalog(dir.path());
        std::fs::write(
            dir.path().join("meta/web.yaml"),
            "type: web\nrun:\n  command: [x, \"${nope}\"]\n  stop-timeout: forever\n",
        )
        .unwrap();
        let e = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("meta/web.yaml:4") && e.contains("run.stop-timeout"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("meta/web.yaml"),
            "type: web\nrun:\n  command: [x, \"${nope}\"]\n",
        )
        .unwrap();
        let e = Catalog::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("meta/web.yaml:3") && e.contains("run.command[1]") && e.contains("nope"),
            "{e}"
        );
    }
}
