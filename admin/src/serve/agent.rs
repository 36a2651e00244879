//! The host-agent endpoints (docs/admin-api.yaml, "Agents"):
//!
//! - `GET /v1/servers/{name}/desired[?wait=30s]` — the server's desired state with an ETag,
//!   long-polled like the export: held until it changes (catalog or run state) or the wait ends.
//! - `GET /v1/blobs/{sha256}` — one file of a version; the agent checks it against its sha256.
//! - `PUT /v1/servers/{name}/observed` — the agent's report.
//! - `POST /v1/instances/{id}/start|stop|restart` — the desired run state (ADMIN token).
//!
//! A server's token (`serve --agent-tokens`) reads only that server's desired state and the
//! blobs it references, and writes only that server's report; the ADMIN token may do all of it.

use super::auth::{bearer, is_operator};
use super::export_poll::{none_match, not_modified, parse_wait};
use super::http::ApiError;
use super::state::AdminState;
use super::{AgentHub, RunAction};
use crate::desired::{self, DesiredError};
use axum::extract::{DefaultBodyLimit, Path, Query, State as Ext};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use portcullis_agent_proto::{Desired, Observed};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A report of a few hundred instances with their test results fits; anything bigger is not one.
const BODY_LIMIT: usize = 1024 * 1024;

pub(super) fn routes(state: AdminState) -> Router<AdminState> {
    let control = Router::new()
        .route("/v1/instances/{id}/start", post(start))
        .route("/v1/instances/{id}/stop", post(stop))
        .route("/v1/instances/{id}/restart", post(restart))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::auth_writes,
        ));
    Router::new()
        .route("/v1/servers/{name}/desired", get(desired_state))
        .route("/v1/servers/{name}/observed", put(observed))
        .route("/v1/blobs/{sha256}", get(blob))
        .merge(control)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

fn hub(state: &AdminState) -> Result<&Arc<AgentHub>, ApiError> {
    state.options().agents.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "agents are not enabled on this server (--state)",
        )
    })
}

enum Caller {
    Admin,
    Server(String),
}

/// Who is calling: the ADMIN token, or one server's token. No token, or an unknown one: 401.
fn caller(state: &AdminState, hub: &AgentHub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    let given = bearer(headers).ok_or_else(unauthorized)?;
    if is_operator(headers, state.options()) {
        return Ok(Caller::Admin);
    }
    hub.server_of_token(given)
        .map(|s| Caller::Server(s.to_owned()))
        .ok_or_else(unauthorized)
}

/// The ADMIN token, or `server`'s own token.
fn authorize(
    state: &AdminState,
    hub: &AgentHub,
    headers: &HeaderMap,
    server: &str,
) -> Result<(), ApiError> {
    match caller(state, hub, headers)? {
        Caller::Admin => Ok(()),
        Caller::Server(s) if s == server => Ok(()),
        Caller::Server(s) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the token of server {s} is not valid for server {server}"),
        )),
    }
}

fn compute(state: &AdminState, hub: &AgentHub, server: &str) -> Result<Desired, ApiError> {
    let snap = state.snapshot();
    desired::for_server(&snap.catalog, hub.store(), server, |id| hub.run_control(id)).map_err(|e| {
        match e {
            DesiredError::UnknownServer(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            DesiredError::Config { ref errors, .. } => ApiError::with_details(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                serde_json::to_value(errors).unwrap_or_default(),
            ),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
}

fn desired_response(d: &Desired, etag: &str) -> Response {
    let mut r = Json(d).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

async fn desired_state(
    Ext(state): Ext<AdminState>,
    Path(server): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?.clone();
    authorize(&state, &hub, &headers, &server)?;
    let wait = match &q.wait {
        None => Duration::ZERO,
        Some(w) => parse_wait(w)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("wait: {w:?}: {e}")))?,
    }
    .min(state.options().max_wait);
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Subscribe before computing, so a change in between is not missed.
    let mut catalog_rx = state.subscribe();
    let mut run_rx = hub.subscribe();
    let permit = state.waiters().clone().try_acquire_owned().ok();
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = state.shutdown_signal();
    loop {
        catalog_rx.borrow_and_update();
        run_rx.borrow_and_update();
        let d = compute(&state, &hub, &server)?;
        let etag = desired::etag(&d);
        if !none_match(inm.as_deref(), &etag) {
            return Ok(desired_response(&d, &etag));
        }
        // Too many held polls (no permit): answer now, the agent falls back to its interval.
        if permit.is_none() || tokio::time::Instant::now() >= deadline {
            return Ok(not_modified(&etag));
        }
        tokio::select! {
            r = catalog_rx.changed() => if r.is_err() { return Ok(not_modified(&etag)) },
            r = run_rx.changed() => if r.is_err() { return Ok(not_modified(&etag)) },
            _ = tokio::time::sleep_until(deadline) => return Ok(not_modified(&etag)),
            _ = shutdown.wait_for(|s| *s) => return Ok(not_modified(&etag)),
        }
    }
}

/// Blobs travel one file at a time, as the store keeps them: content-addressed, so the agent
/// verifies each against the sha256 in the manifest, fetches only what it does not have, and
/// no archive format (or its path-traversal pitfalls) sits in between.
async fn blob(
    Ext(state): Ext<AdminState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?.clone();
    let valid = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "expected a sha256 in lowercase hex",
        ));
    }
    if let Caller::Server(server) = caller(&state, &hub, &headers)? {
        // A server's token reads only the blobs of versions placed on that server.
        let d = compute(&state, &hub, &server)?;
        let referenced = d
            .instances
            .iter()
            .filter_map(|i| i.release.as_ref())
            .any(|r| r.files.iter().any(|f| f.sha256 == sha256));
        if !referenced {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("blob {sha256} is not part of a version placed on server {server}"),
            ));
        }
    }
    let path = hub.store().blob_path(&sha256);
    // Versions are scripts and binaries of a few MB: read whole, on a blocking thread.
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no blob {sha256}"))
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(r)
}

async fn observed(
    Ext(state): Ext<AdminState>,
    Path(server): Path<String>,
    headers: HeaderMap,
    Json(report): Json<Observed>,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?.clone();
    authorize(&state, &hub, &headers, &server)?;
    if !state
        .snapshot()
        .catalog
        .inventory
        .servers
        .contains_key(&server)
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no server {server}"),
        ));
    }
    hub.set_observed(&server, report)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn run_action(
    state: AdminState,
    id: String,
    action: RunAction,
) -> Result<Response, ApiError> {
    let hub = hub(&state)?.clone();
    if state.snapshot().catalog.instance(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no instance {id}"),
        ));
    }
    let c = hub
        .set_run(&id, action)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(instance = %id, ?action, "desired run state changed");
    Ok(
        Json(json!({ "id": id, "run_state": c.state, "restart_generation": c.restart_generation }))
            .into_response(),
    )
}

async fn start(Ext(state): Ext<AdminState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    run_action(state, id, RunAction::Start).await
}

async fn stop(Ext(state): Ext<AdminState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    run_action(state, id, RunAction::Stop).await
}

async fn restart(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    run_action(state, id, RunAction::Restart).await
}

/// `GET /v1/instances/{id}` with agents: the desired run state and what the agent last saw.
pub(super) fn add_run_state(
    hub: &AgentHub,
    i: &crate::inventory::Instance,
    v: &mut serde_json::Value,
) {
    let c = hub.run_control(&i.id);
    v["run_state"] = json!(c.state);
    v["restart_generation"] = json!(c.restart_generation);
    v["observed"] = match hub.observed(&i.server) {
        Some(report) => match report.instances.into_iter().find(|o| o.id == i.id) {
            Some(o) => {
                let mut o = serde_json::to_value(o).unwrap_or_default();
                o["reported_at"] = json!(report.at);
                o
            }
            None => serde_json::Value::Null,
        },
        None => serde_json::Value::Null,
    };
}
