//! `ctl`: the operator's client over ADMIN's REST API (docs/admin-api.yaml) — list and show
//! instances and servers, create, move and delete them, drain/undrain/maintenance, deploys, DB
//! status, the audit log. Human tables by default, the server's JSON with `--json`. Exit 0 done,
//! 1 the server refused or failed (or could not be reached), 2 bad usage or authentication.

mod print;

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
    /// Install, upgrade or downgrade an instance's version (the server runs the type's tests).
    Deploy {
        /// install, upgrade or downgrade.
        action: String,
        id: String,
        /// The version to switch to [default: the server's choice].
        #[arg(long)]
        to: Option<String>,
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

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// 401 or 403: the token is missing, wrong, or the server takes no changes.
    #[error("{url}: {message} (HTTP {status}; check --token-file or ${TOKEN_ENV})")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: {source}")]
    Request { url: String, source: reqwest::Error },
    /// The server answered with an error; `details` are located catalog errors, if any.
    #[error("{message} (HTTP {status})")]
    Refused {
        status: u16,
        message: String,
        body: Value,
    },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::TokenFile { .. } | CtlError::Auth { .. } => 2,
            CtlError::Request { .. } | CtlError::Refused { .. } => 1,
        }
    }

    /// Lines to print before the summary: a refused change's located catalog errors, as
    /// `check` prints them.
    pub fn located(&self) -> Vec<String> {
        let CtlError::Refused { body, .. } = self else {
            return Vec::new();
        };
        body["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(print::located_error)
            .collect()
    }

    /// With `--json`, the error as JSON on stdout, where the caller's parser looks.
    pub fn json(&self) -> Value {
        match self {
            CtlError::Refused { status, body, .. } => json!({ "status": status, "response": body }),
            other => json!({ "error": other.to_string() }),
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    if_match: Option<String>,
}

impl Client {
    fn new(a: &CtlArgs) -> Result<Client, CtlError> {
        let base = a
            .url
            .clone()
            .or_else(|| std::env::var(URL_ENV).ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CtlError::Usage(format!(
                "--url: expected http://HOST:PORT or https://…, found {base:?}"
            )));
        }
        let token = match &a.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| CtlError::TokenFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()),
        }
        .filter(|t| !t.is_empty());
        let http = reqwest::Client::builder()
            .timeout(a.timeout)
            .build()
            .map_err(|source| CtlError::Request {
                url: base.clone(),
                source,
            })?;
        Ok(Client {
            http,
            base,
            token,
            if_match: a.if_match.clone(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if method != reqwest::Method::GET {
            if let Some(m) = &self.if_match {
                req = req.header("if-match", m);
            }
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let failed = |source| CtlError::Request {
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        let text = resp.text().await.map_err(failed)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = || {
            body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned)
        };
        match status.as_u16() {
            200..=299 => Ok(body),
            401 | 403 => Err(CtlError::Auth {
                url,
                status: status.as_u16(),
                message: message(),
            }),
            code => Err(CtlError::Refused {
                status: code,
                message: message(),
                body,
            }),
        }
    }
}

/// What to print for a successful command.
enum Shown {
    Instances(Value),
    Servers(Value),
    Object(Value),
    Change(Value),
    Audit(Value),
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
        }
    })?;
    if a.json {
        let v = match &shown {
            Shown::Instances(v)
            | Shown::Servers(v)
            | Shown::Object(v)
            | Shown::Change(v)
            | Shown::Audit(v) => v,
        };
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        match shown {
            Shown::Instances(v) => print::instances(&v),
            Shown::Servers(v) => print::servers(&v),
            Shown::Object(v) => print::object(&v),
            Shown::Change(v) => print::change(&v),
            Shown::Audit(v) => print::audit(&v),
        }
    }
    Ok(())
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
        C::Deploy { action, id, to } => {
            if !matches!(action.as_str(), "install" | "upgrade" | "downgrade") {
                return Err(CtlError::Usage(format!(
                    "deploy: expected install, upgrade or downgrade, found {action:?}"
                )));
            }
            let mut path = format!("/v1/instances/{}/{action}", segment(&id)?);
            if let Some(v) = to {
                path.push_str(&format!("?to={}", segment(&v)?));
            }
            Shown::Object(c.call(Method::POST, &path, None).await?)
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
