//! The HTTP API (docs/admin-api.yaml): the routes and their auth, combined configs, listings,
//! status, and the instance state changes; the export with its ETag and long-poll is in
//! `export_poll.rs`. Errors are JSON `{"error": ...}`.

use super::auth::{auth_reads, auth_writes, Identity};
use super::export_poll::{export, none_match, not_modified};
use super::inventory_api::{self, REVISION_HEADER};
use super::state::AdminState;
use crate::inventory::State;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as Ext};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// The API router over `state` (add it to your own server, or use [`super::spawn`]).
pub fn router(state: AdminState) -> Router {
    let body_limit = state.options().body_limit;
    let reads = Router::new();
    #[cfg(feature = "db")]
    let reads = reads.route("/v1/db/{instance}", get(super::db_api::status));
    let reads = reads
        .route("/v1/export.csv", get(export))
        .route("/v1/config/{type}/{server}/{index}", get(config))
        .route("/v1/services", get(services))
        .route("/v1/instances", get(instances))
        .route("/v1/instances/{id}", get(instance))
        .route("/v1/servers", get(servers))
        .route("/v1/servers/{name}", get(inventory_api::server))
        .route("/v1/status", get(status))
        .route("/v1/versions", get(super::versions_api::list))
        .route("/v1/versions/{id}", get(super::versions_api::show))
        .route(
            "/v1/instances/{id}/versions",
            get(super::versions_api::instance_versions),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth_reads));
    let writes = Router::new()
        .route("/v1/instances/{id}/{action}", post(mutate))
        .route("/v1/instances", post(inventory_api::create_instance))
        .route(
            "/v1/types/{type}/{action}",
            post(super::agent_deploy::rolling),
        )
        .route("/v1/instances/{id}", delete(inventory_api::delete_instance))
        .route("/v1/servers", post(inventory_api::add_server))
        .route("/v1/servers/{name}", delete(inventory_api::remove_server))
        // Who changed what is for operators only: the audit log needs the token.
        .route("/v1/audit", get(inventory_api::audit));
    #[cfg(feature = "db")]
    let writes = writes.route("/v1/db/{instance}/patch", post(super::db_api::patch));
    let writes = writes.route_layer(middleware::from_fn_with_state(state.clone(), auth_writes));
    reads
        .merge(writes)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        // Bodies over the limit get 413 whether or not a handler reads them: announced ones
        // with a JSON error here, streamed ones from tower-http when they cross the limit.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            content_length_limit,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            revision_header,
        ))
        // Host agents: their own token checks and body limit (a report outgrows 16 KiB).
        .merge(super::agent::routes(state.clone()))
        .with_state(state)
}

pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn with_details(
        status: StatusCode,
        message: impl Into<String>,
        details: serde_json::Value,
    ) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: Some(details),
        }
    }

    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Every response carries the catalog revision (`X-Catalog-Revision`): the one a mutation
/// produced, or the one current when the request arrived — never newer than what the
/// response shows, so an `If-Match` built from it can only be too old (412), not wrong.
async fn revision_header(Ext(state): Ext<AdminState>, req: Request, next: Next) -> Response {
    let revision = state.snapshot().revision.clone();
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(REVISION_HEADER) {
        if let Ok(v) = HeaderValue::from_str(&revision) {
            resp.headers_mut().insert(REVISION_HEADER, v);
        }
    }
    resp
}

async fn content_length_limit(Ext(state): Ext<AdminState>, req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = state.options().body_limit;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes"),
        )
        .into_response()
    };
    match announced {
        Some(n) if n > limit as u64 => too_large(),
        Some(_) => next.run(req).await,
        // No length announced (chunked): a handler that never reads its body would accept
        // any amount of it, so the body is read here, up to the limit, before any handler runs.
        None => {
            let (parts, body) = req.into_parts();
            match axum::body::to_bytes(body, limit).await {
                Ok(bytes) => {
                    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                        .await
                }
                Err(_) => too_large(),
            }
        }
    }
}

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

/// `GET /v1/config/{type}/{server}/{index}`: YAML, or JSON with `?format=json` or
/// `Accept: application/json`. Has an ETag too, so services can poll it cheaply.
async fn config(
    Ext(state): Ext<AdminState>,
    Path((type_name, server, index)): Path<(String, String, String)>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snap = state.snapshot();
    let id = format!("{type_name}.{server}.{index}");
    let idx = snap
        .catalog
        .instance_index(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no instance {id}")))?;
    let value = crate::config::combined(&snap.catalog, idx).map_err(|errors| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the configuration of {id} does not resolve"),
        details: serde_json::to_value(errors).ok(),
    })?;
    let accept_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let json = match q.format.as_deref() {
        Some("json") => true,
        Some("yaml") | None => accept_json && q.format.is_none(),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format: expected yaml or json, found {other:?}"),
            ))
        }
    };
    let (body, ctype) = if json {
        (
            serde_json::to_string_pretty(&value).unwrap_or_default(),
            "application/json",
        )
    } else {
        (value.to_yaml(), "application/yaml")
    };
    use sha2::Digest;
    let d = sha2::Sha256::digest(body.as_bytes());
    let etag: String = format!(
        "\"{}\"",
        d[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let inm = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if none_match(inm, &etag) {
        return Ok(not_modified(&etag));
    }
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

async fn services(Ext(state): Ext<AdminState>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    let c = &snap.catalog;
    let list: Vec<serde_json::Value> = c
        .metas
        .values()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            let n = c
                .inventory
                .instances
                .iter()
                .filter(|i| i.type_name == m.type_name.as_str())
                .count();
            v["instances"] = json!(n);
            v["active"] = json!(c.merge_order.iter().any(|t| t == m.type_name.as_str()));
            v
        })
        .collect();
    Json(
        json!({ "services": list, "merge_order": c.merge_order, "dependency_order": c.dependency_order }),
    )
}

fn instance_json(c: &crate::Catalog, i: &crate::inventory::Instance) -> serde_json::Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    if let Some(s) = c.inventory.servers.get(&i.server) {
        v["address"] = json!(s.address);
        v["location"] = json!(s.location);
    }
    v["exported"] = json!(
        i.state != State::Maintenance
            && c.meta(&i.type_name).is_some_and(|m| !m.gateway.is_empty())
    );
    v
}

async fn instances(Ext(state): Ext<AdminState>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    let c = &snap.catalog;
    let list: Vec<_> = c
        .inventory
        .instances
        .iter()
        .map(|i| instance_json(c, i))
        .collect();
    Json(json!({ "instances": list }))
}

async fn instance(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = state.snapshot();
    let c = &snap.catalog;
    let i = c
        .instance(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no instance {id}")))?;
    let mut v = instance_json(c, i);
    if let Some(hub) = &state.options().agents {
        super::agent::add_run_state(hub, i, &mut v);
    }
    Ok(Json(v))
}

async fn servers(Ext(state): Ext<AdminState>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    let c = &snap.catalog;
    let list: Vec<_> = c
        .inventory
        .servers
        .values()
        .map(|s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            let ids: Vec<&str> = c
                .inventory
                .instances
                .iter()
                .filter(|i| i.server == s.name)
                .map(|i| i.id.as_str())
                .collect();
            v["instances"] = json!(ids);
            v
        })
        .collect();
    Json(json!({ "servers": list, "locations": c.inventory.locations }))
}

async fn status(Ext(state): Ext<AdminState>) -> Json<serde_json::Value> {
    let snap = state.snapshot();
    let reload = state.reload_status();
    let loaded = snap
        .loaded_at
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let held = state.options().max_waiters - state.waiters().available_permits();
    Json(json!({
        "catalog": state.catalog_source(),
        "generation": snap.generation,
        "etag": snap.etag,
        "revision": snap.revision,
        "locations": snap.locations.keys().collect::<Vec<_>>(),
        "loaded_at": loaded,
        "types": snap.catalog.metas.len(),
        "instances": snap.catalog.inventory.instances.len(),
        "export_bytes": snap.csv.len(),
        "export_refused": snap.refused,
        "long_polls": held,
        "reload": {
            "ok": reload.errors.is_none(),
            "last_attempt": reload.last_attempt,
            "errors": reload.errors,
        },
    }))
}

/// `POST /v1/instances/{id}/drain|undrain|maintenance|move|install|upgrade|downgrade`.
async fn mutate(
    Ext(state): Ext<AdminState>,
    axum::extract::Extension(identity): axum::extract::Extension<Identity>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<super::versions_api::DeployQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if let Some(a) = crate::versions::Action::parse(&action) {
        return super::versions_api::deploy(&state, &identity, &id, a, q).await;
    }
    let target = match action.as_str() {
        "drain" => State::Drained,
        "undrain" => State::Production,
        "maintenance" => State::Maintenance,
        "move" => {
            return Ok(inventory_api::move_instance(&state, &identity, id, &headers, &body).await)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {action:?}: drain, undrain, maintenance, move, install, upgrade or downgrade"),
            ))
        }
    };
    Ok(inventory_api::set_state(&state, &identity, id, target, &headers).await)
}
