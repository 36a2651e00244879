//! `GET /v1/db/{instance}` and `POST /v1/db/{instance}/patch`: the CLI's `db status` and
//! `db patch` for an instance of the served catalog. Status codes: 200 done (or nothing to do),
//! 404 unknown instance, 409 refused (drift, missing, gap), 422 a patch failed and was rolled
//! back, 423 lock timeout, 400 bad catalog input (no `database.url`, bad patch files), 502 the
//! database cannot be reached.

use super::http::ApiError;
use super::state::AdminState;
use crate::db::{self, plan::Allow, DbError, RunOptions};
use axum::extract::{Path, Query, State as Ext};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

fn target(state: &AdminState, id: &str) -> Result<db::Target, ApiError> {
    // Patches are files beside a directory catalog; a shared catalog stores no patches.
    if state.shared().is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "DB patching needs a directory catalog (serve --catalog DIR); this server serves a shared catalog from PostgreSQL",
        ));
    }
    let snap = state.snapshot();
    if snap.catalog.instance_index(id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no instance {id}"),
        ));
    }
    db::Target::instance(&snap.catalog, state.dir(), id).map_err(error)
}

fn error(e: DbError) -> ApiError {
    let status = match e {
        DbError::BadInput(_) => StatusCode::BAD_REQUEST,
        DbError::Connect(_) | DbError::Database(_) => StatusCode::BAD_GATEWAY,
        DbError::LockTimeout(_) => StatusCode::LOCKED,
        DbError::Refused(_) => StatusCode::CONFLICT,
    };
    ApiError::with_details(
        status,
        e.to_string(),
        serde_json::json!({ "kind": e.kind() }),
    )
}

pub(crate) async fn status(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<db::StatusReport>, ApiError> {
    let t = target(&state, &id)?;
    db::status(&t).await.map(Json).map_err(error)
}

#[derive(Deserialize)]
pub(crate) struct PatchQuery {
    /// `drift,missing,gap`: refusals to override.
    #[serde(default)]
    allow: String,
    /// Seconds to wait for a concurrent run (default 30, at most 600).
    lock_timeout: Option<u64>,
}

pub(crate) async fn patch(
    Ext(state): Ext<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<PatchQuery>,
) -> Result<Response, ApiError> {
    let mut allow = Allow::default();
    for a in q.allow.split(',').filter(|a| !a.is_empty()) {
        match a {
            "drift" => allow.drift = true,
            "missing" => allow.missing = true,
            "gap" => allow.gap = true,
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("allow: unknown {other:?}; expected drift, missing or gap"),
                ))
            }
        }
    }
    let opts = RunOptions {
        allow,
        lock_timeout: std::time::Duration::from_secs(q.lock_timeout.unwrap_or(30).min(600)),
    };
    let t = target(&state, &id)?;
    let report = db::patch(&t, opts).await.map_err(error)?;
    tracing::info!(instance = %id, outcome = report.outcome, applied = report.applied.len(), "db patch");
    let code = if report.failed.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((code, Json(report)).into_response())
}
