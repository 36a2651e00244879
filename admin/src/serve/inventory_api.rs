//! The inventory's write routes (docs/admin-api.yaml): create, delete and move instances,
//! change their state, add and remove servers — each with `If-Match` on the catalog revision
//! and an audit entry — plus `GET /v1/audit` and `GET /v1/servers/{name}`. The work is
//! [`AdminState::apply_edit`]'s; here are the HTTP shapes and status codes.

use super::auth::Identity;
use super::http::ApiError;
use super::state::{AdminState, MutationError};
use crate::edit::{Edit, InstanceSpec, ServerSpec};
use crate::inventory::State;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State as Ext};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

pub(crate) const REVISION_HEADER: &str = "x-catalog-revision";

fn with_revision(mut r: Response, revision: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(revision) {
        r.headers_mut().insert(REVISION_HEADER, v);
    }
    r
}

/// The status code and body of a refused change.
pub(crate) fn mutation_error(e: MutationError) -> Response {
    let (status, details) = match &e {
        MutationError::Edit(edit) if edit.is_not_found() => (StatusCode::NOT_FOUND, json!({})),
        MutationError::Edit(_) => (StatusCode::CONFLICT, json!({})),
        MutationError::InvalidCatalog(errors) => (StatusCode::CONFLICT, json!(errors)),
        MutationError::Rejected(errors) => (StatusCode::UNPROCESSABLE_ENTITY, json!(errors)),
        MutationError::Stale { current, .. } => {
            let body = ApiError::with_details(
                StatusCode::PRECONDITION_FAILED,
                e.to_string(),
                json!({ "revision": current }),
            );
            return with_revision(body.into_response(), current);
        }
        #[cfg(feature = "db")]
        MutationError::Store(_) => {
            tracing::error!(%e, "inventory change failed");
            (StatusCode::SERVICE_UNAVAILABLE, json!({}))
        }
        MutationError::Audit { .. } | MutationError::Io { .. } => {
            tracing::error!(%e, "inventory change failed");
            (StatusCode::INTERNAL_SERVER_ERROR, json!({}))
        }
    };
    // The first line only: the located errors are in `details`.
    let message = e.to_string();
    let message = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches(':');
    ApiError::with_details(status, message, details).into_response()
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    })
}

/// Runs `edit` and answers with the change (or the refusal): `created` for a new thing.
async fn run(
    state: &AdminState,
    edit: Edit,
    headers: &HeaderMap,
    identity: &Identity,
    created: bool,
) -> Response {
    match state.apply_edit(edit, if_match(headers), &identity.0).await {
        Ok(change) => {
            let status = if created && change.changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let revision = change.revision.clone();
            with_revision((status, Json(change)).into_response(), &revision)
        }
        Err(e) => mutation_error(e),
    }
}

/// `POST /v1/instances`.
pub(crate) async fn create_instance(
    Ext(state): Ext<AdminState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    spec: Result<Json<InstanceSpec>, JsonRejection>,
) -> Response {
    match body(spec) {
        Ok(spec) => {
            run(
                &state,
                Edit::CreateInstance(spec),
                &headers,
                &identity,
                true,
            )
            .await
        }
        Err(r) => r.into_response(),
    }
}

/// `DELETE /v1/instances/{id}`.
pub(crate) async fn delete_instance(
    Ext(state): Ext<AdminState>,
    Extension(identity): Extension<Identity>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    run(
        &state,
        Edit::DeleteInstance { id },
        &headers,
        &identity,
        false,
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveBody {
    server: String,
    #[serde(default)]
    index: Option<u32>,
}

/// `POST /v1/instances/{id}/move`.
pub(crate) async fn move_instance(
    state: &AdminState,
    identity: &Identity,
    id: String,
    headers: &HeaderMap,
    raw: &[u8],
) -> Response {
    let to: MoveBody = match serde_json::from_slice(raw) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}"))
                .into_response()
        }
    };
    let edit = Edit::MoveInstance {
        id,
        server: to.server,
        index: to.index,
    };
    run(state, edit, headers, identity, false).await
}

/// `POST /v1/instances/{id}/drain|undrain|maintenance`.
pub(crate) async fn set_state(
    state: &AdminState,
    identity: &Identity,
    id: String,
    target: State,
    headers: &HeaderMap,
) -> Response {
    let edit = Edit::SetState {
        id: id.clone(),
        state: target,
    };
    match state.apply_edit(edit, if_match(headers), &identity.0).await {
        Ok(change) => {
            // `id`, `previous` and `state` as this route answered before there were others.
            let mut v = serde_json::to_value(&change).unwrap_or_default();
            v["id"] = json!(id);
            v["previous"] = change
                .before
                .as_ref()
                .map_or(json!(null), |b| b["state"].clone());
            v["state"] = json!(target);
            with_revision(Json(v).into_response(), &change.revision)
        }
        Err(e) => mutation_error(e),
    }
}

/// `POST /v1/servers`.
pub(crate) async fn add_server(
    Ext(state): Ext<AdminState>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    spec: Result<Json<ServerSpec>, JsonRejection>,
) -> Response {
    match body(spec) {
        Ok(spec) => run(&state, Edit::AddServer(spec), &headers, &identity, true).await,
        Err(r) => r.into_response(),
    }
}

/// `DELETE /v1/servers/{name}`.
pub(crate) async fn remove_server(
    Ext(state): Ext<AdminState>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    run(
        &state,
        Edit::RemoveServer { name },
        &headers,
        &identity,
        false,
    )
    .await
}

/// `GET /v1/servers/{name}`.
pub(crate) async fn server(
    Ext(state): Ext<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snap = state.snapshot();
    let inv = &snap.catalog.inventory;
    let s = inv
        .servers
        .get(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no server {name}")))?;
    let mut v = serde_json::to_value(s).unwrap_or_default();
    let ids: Vec<&str> = inv
        .instances
        .iter()
        .filter(|i| i.server == name)
        .map(|i| i.id.as_str())
        .collect();
    v["instances"] = json!(ids);
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /v1/audit[?limit=N]`: the last N entries (default 100, at most 10 000), oldest first.
pub(crate) async fn audit(
    Ext(state): Ext<AdminState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    let entries = state.audit_tail(limit).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the audit log: {e}"),
        )
    })?;
    Ok(Json(json!({ "entries": entries })))
}
