//! The version endpoints: the store (`GET /v1/versions`, `/v1/versions/{id}`), an instance's
//! versions and history (`GET /v1/instances/{id}/versions`), and `POST
//! /v1/instances/{id}/install|upgrade|downgrade?to=ID` (token). Status codes of a deploy: 200
//! done (`ok` or `unchanged`), 422 a test failed and the instance was switched back, 404
//! unknown instance or version, 400 bad request, 409 another deploy of the instance is
//! running, 500 a corrupt store or I/O error (nothing was switched).

use super::http::ApiError;
use super::state::AdminState;
use crate::versions::{Action, Deployer, VersionError};
use axum::extract::{Path, Query, State as Ext};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

fn deployer(state: &AdminState) -> Result<&Deployer, ApiError> {
    state.options().versions.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "versions are not enabled on this server (--state)",
        )
    })
}

fn error(e: VersionError) -> ApiError {
    let status = match e {
        VersionError::BadInput(_) => StatusCode::BAD_REQUEST,
        VersionError::NotFound(_) => StatusCode::NOT_FOUND,
        VersionError::Busy(_) => StatusCode::CONFLICT,
        VersionError::Corrupt(_) | VersionError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::with_details(
        status,
        e.to_string(),
        serde_json::json!({ "kind": e.kind() }),
    )
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "type")]
    type_name: Option<String>,
}

pub(crate) async fn list(
    Ext(state): Ext<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let d = deployer(&state)?;
    let list = d.store.list(q.type_name.as_deref()).map_err(error)?;
    Ok(Json(serde_json::json!(list
        .iter()
        .map(|m| serde_json::json!({
            "id": m.id, "type": m.type_name, "label": m.label,
            "files": m.files.len(), "bytes": m.total_size(),
        }))
        .collect::<Vec<_>>())))
}

pub(crate) async fn show(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<crate::versions::Manifest>, ApiError> {
    deployer(&state)?
        .store
        .manifest(&id)
        .map(Json)
        .map_err(error)
}

pub(crate) async fn instance_versions(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<crate::versions::InstanceVersions>, ApiError> {
    let d = deployer(&state)?;
    if state.snapshot().catalog.instance_index(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no instance {id}"),
        ));
    }
    d.versions_of(&id).map(Json).map_err(error)
}

#[derive(Deserialize, Default)]
pub(crate) struct DeployQuery {
    to: Option<String>,
    /// How long to wait for the agent's report (servers with agents only), e.g. `60s`.
    wait: Option<String>,
}

/// On a server with an agent, through the agent (`agent_deploy.rs`); otherwise into `--roots`
/// on the ADMIN host.
pub(crate) async fn deploy(
    state: &AdminState,
    identity: &super::auth::Identity,
    id: &str,
    action: Action,
    q: DeployQuery,
) -> Result<Response, ApiError> {
    if super::agent_deploy::through_agent(state, id) {
        return super::agent_deploy::deploy_response(
            state,
            identity,
            id,
            action,
            q.to.as_deref(),
            q.wait.as_deref(),
        )
        .await;
    }
    let d = deployer(state)?;
    let catalog = state.snapshot().catalog.clone();
    let r = d
        .deploy(&catalog, id, action, q.to.as_deref())
        .await
        .map_err(error)?;
    tracing::info!(instance = %id, to = %r.to, outcome = %r.outcome, "version change");
    let code = if r.outcome == "rolled-back" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((code, Json(r)).into_response())
}
