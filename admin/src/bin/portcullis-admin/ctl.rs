//! `ctl`: the operator's client over ADMIN's REST API (docs/admin-api.yaml) — list and show
//! instances and servers, create, move and delete them, drain/undrain/maintenance, deploys, DB
//! status, the audit log. Human tables by default, the server's JSON with `--json`. Exit 0 done,
//! 1 the server refused or failed (or could not be reached), 2 bad usage or authentication.

mod client;
mod print;

use client::Client;
pub use client::CtlError;

use clap::Subcommand;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable `ctl` takes its token from when there is no `--token-file`.
const TOKEN_ENV: &str = "PORTCULLIS_ADMIN_TOKEN";
const URL_ENV: &str = "PORTCULLIS_ADMIN_URL";

#[derive(clap::Args)]
pub struct CtlArgs {
    /// ADMIN's base URL [default: $PORTCULLIS_ADMIN_URL, else http://127.0.0.1:8080].
    #[arg(long, global = true)]
    url: Option<String>,
    /// File holding the bearer token [default: $PORTCULLIS_ADMIN_TOKEN].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Only change the catalog if it is still at this revision (else exit 1, HTTP 412).
    #[arg(long, global = true)]
    if_match: Option<String>,
    /// Give up on a request after this long (deploys run their tests within it).
    #[arg(long, global = true, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// List instances.
    Instances,
    /// Show one instance.
    Instance { id: String },
    /// List servers (and locations).
    Servers,
    /// Show one server.
    Server { name: String },
    /// Create an instance; a require-index type gets the lowest free index unless --index.
    Create {
        #[arg(value_name = "TYPE")]
        type_name: String,
        server: String,
        #[arg(long)]
        index: Option<u32>,
        /// production, drained or maintenance [default: production].
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        version: Option<String>,
    },
    /// Delete an instance.
    Delete { id: String },
    /// Move an instance to another server.
    Move {
        id: String,
        server: String,
        #[arg(long)]
        index: Option<u32>,
    },
    /// Add a server.
    AddServer {
        name: String,
        /// app, db or archive.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        location: String,
        #[arg(long)]
        address: String,
        /// A data drive (db servers); repeat for several.
        #[arg(long = "drive")]
        drives: Vec<String>,
        #[arg(long)]
        archive: Option<String>,
    },
    /// Remove a server without instances.
    RemoveServer { name: String },
    /// Take an instance out of new connections (weight 0).
    Drain { id: String },
    /// Put an instance back into production.
    Undrain { id: String },
    /// Take an instance out of the export altogether.
    Maintenance { id: String },
    /// Install, upgrade or downgrade an instance's version, or (--type) every instance of a
    /// type one at a time, stopping at the first failure. On a server with an agent ADMIN sets
    /// the version and waits for the agent's report; exit 1 when it rolled back or timed out.
    Deploy {
        /// install, upgrade or downgrade.
        action: String,
        /// The instance (or --type).
        #[arg(required_unless_present = "type_name", conflicts_with = "type_name")]
        id: Option<String>,
        /// A rolling upgrade or downgrade of every instance of TYPE (needs --to).
        #[arg(long = "type", value_name = "TYPE")]
        type_name: Option<String>,
        /// The version to switch to [default: the server's choice].
        #[arg(long)]
        to: Option<String>,
        /// How long ADMIN waits for each agent's report, e.g. 60s [default: ADMIN's, 60s].
        #[arg(long)]
        wait: Option<String>,
    },
    /// The database patch status of an instance.
    Db { id: String },
    /// The last audit log entries.
    Audit {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The server's status (catalog revision, export ETag, reload errors).
    Status,
}

/// What to print for a successful command.
enum Shown {
    Instances(Value),
    Servers(Value),
    Object(Value),
    Change(Value),
    Audit(Value),
    /// A rolling change of a type: one row per instance.
    Rollout(Value),
}

pub fn ctl(a: CtlArgs) -> Result<(), CtlError> {
    let client = Client::new(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Usage(format!("starting the runtime: {e}")))?;
    let shown = rt.block_on(run(&client, a.command)).inspect_err(|e| {
        if a.json {
            println!("{}", e.json());
        } else if let CtlError::Refused { body, .. } = e {
            // A deploy that rolled back or timed out: its report is the useful part.
            if body["instances"].is_array() {
                print::rollout(body);
            } else if body["outcome"].is_string() {
                print::object(body);
            }
        }
    })?;
    if a.json {
        let v = match &shown {
            Shown::Instances(v)
            | Shown::Servers(v)
            | Shown::Object(v)
            | Shown::Change(v)
            | Shown::Audit(v)
            | Shown::Rollout(v) => v,
        };
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        match shown {
            Shown::Instances(v) => print::instances(&v),
            Shown::Servers(v) => print::servers(&v),
            Shown::Object(v) => print::object(&v),
            Shown::Change(v) => print::change(&v),
            Shown::Audit(v) => print::audit(&v),
            Shown::Rollout(v) => print::rollout(&v),
        }
    }
    Ok(())
}

/// Where `portcullis-admin install|upgrade|downgrade` send their change (without `--local`).
pub struct Remote {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub json: bool,
    /// How long ADMIN waits for each agent's report.
    pub wait: Duration,
}

/// `portcullis-admin install|upgrade|downgrade`: exactly `ctl deploy` (the same request, the
/// same report), so the two spellings cannot drift apart.
pub fn deploy(
    remote: Remote,
    action: &str,
    id: Option<String>,
    type_name: Option<String>,
    to: Option<String>,
) -> Result<(), CtlError> {
    // Milliseconds: humantime's own rendering ("1m 30s") has a space, not a path segment.
    let wait = format!("{}ms", remote.wait.as_millis());
    ctl(CtlArgs {
        url: remote.url,
        token_file: remote.token_file,
        json: remote.json,
        if_match: None,
        // ADMIN answers 504 itself when the agent is late; the request must outlive that, and
        // a rolling change waits once per instance.
        timeout: remote
            .wait
            .saturating_mul(if type_name.is_some() { 100 } else { 1 })
            + Duration::from_secs(30),
        command: CtlCommand::Deploy {
            action: action.to_owned(),
            id,
            type_name,
            to,
            wait: Some(wait),
        },
    })
}

/// A path segment as given, refusing what would change the path (`/`, `?`, `#`, `%`).
fn segment(s: &str) -> Result<&str, CtlError> {
    if s.is_empty() || s.contains(['/', '?', '#', '%', ' ']) {
        return Err(CtlError::Usage(format!("not a valid name or id: {s:?}")));
    }
    Ok(s)
}

async fn run(c: &Client, command: CtlCommand) -> Result<Shown, CtlError> {
    use reqwest::Method;
    use CtlCommand as C;
    Ok(match command {
        C::Instances => Shown::Instances(c.call(Method::GET, "/v1/instances", None).await?),
        C::Instance { id } => Shown::Object(
            c.call(
                Method::GET,
                &format!("/v1/instances/{}", segment(&id)?),
                None,
            )
            .await?,
        ),
        C::Servers => Shown::Servers(c.call(Method::GET, "/v1/servers", None).await?),
        C::Server { name } => Shown::Object(
            c.call(
                Method::GET,
                &format!("/v1/servers/{}", segment(&name)?),
                None,
            )
            .await?,
        ),
        C::Create {
            type_name,
            server,
            index,
            state,
            version,
        } => {
            let mut body = json!({ "type": type_name, "server": server });
            if let Some(i) = index {
                body["index"] = json!(i);
            }
            if let Some(s) = state {
                body["state"] = json!(s);
            }
            if let Some(v) = version {
                body["version"] = json!(v);
            }
            Shown::Change(c.call(Method::POST, "/v1/instances", Some(body)).await?)
        }
        C::Delete { id } => Shown::Change(
            c.call(
                Method::DELETE,
                &format!("/v1/instances/{}", segment(&id)?),
                None,
            )
            .await?,
        ),
        C::Move { id, server, index } => {
            let mut body = json!({ "server": server });
            if let Some(i) = index {
                body["index"] = json!(i);
            }
            let path = format!("/v1/instances/{}/move", segment(&id)?);
            Shown::Change(c.call(Method::POST, &path, Some(body)).await?)
        }
        C::AddServer {
            name,
            kind,
            location,
            address,
            drives,
            archive,
        } => {
            let mut body = json!({
                "name": name, "kind": kind, "location": location, "address": address,
                "drives": drives,
            });
            if let Some(a) = archive {
                body["archive"] = json!(a);
            }
            Shown::Change(c.call(Method::POST, "/v1/servers", Some(body)).await?)
        }
        C::RemoveServer { name } => Shown::Change(
            c.call(
                Method::DELETE,
                &format!("/v1/servers/{}", segment(&name)?),
                None,
            )
            .await?,
        ),
        C::Drain { id } => state_change(c, &id, "drain").await?,
        C::Undrain { id } => state_change(c, &id, "undrain").await?,
        C::Maintenance { id } => state_change(c, &id, "maintenance").await?,
        C::Deploy {
            action,
            id,
            type_name,
            to,
            wait,
        } => {
            if !matches!(action.as_str(), "install" | "upgrade" | "downgrade") {
                return Err(CtlError::Usage(format!(
                    "deploy: expected install, upgrade or downgrade, found {action:?}"
                )));
            }
            let mut path = match (id, type_name) {
                (Some(id), None) => format!("/v1/instances/{}/{action}", segment(&id)?),
                (None, Some(t)) => format!("/v1/types/{}/{action}", segment(&t)?),
                _ => {
                    return Err(CtlError::Usage(
                        "deploy: give an instance id or --type TYPE".into(),
                    ))
                }
            };
            let mut query = Vec::new();
            if let Some(v) = to {
                query.push(format!("to={}", segment(&v)?));
            }
            if let Some(w) = wait {
                query.push(format!("wait={}", segment(&w)?));
            }
            if !query.is_empty() {
                path.push('?');
                path.push_str(&query.join("&"));
            }
            let v = c.call(Method::POST, &path, None).await?;
            if v["instances"].is_array() {
                Shown::Rollout(v)
            } else {
                Shown::Object(v)
            }
        }
        C::Db { id } => Shown::Object(
            c.call(Method::GET, &format!("/v1/db/{}", segment(&id)?), None)
                .await?,
        ),
        C::Audit { limit } => Shown::Audit(
            c.call(Method::GET, &format!("/v1/audit?limit={limit}"), None)
                .await?,
        ),
        C::Status => Shown::Object(c.call(Method::GET, "/v1/status", None).await?),
    })
}

async fn state_change(c: &Client, id: &str, action: &str) -> Result<Shown, CtlError> {
    let path = format!("/v1/instances/{}/{action}", segment(id)?);
    Ok(Shown::Change(
        c.call(reqwest::Method::POST, &path, None).await?,
    ))
}
