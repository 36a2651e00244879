//! Version changes through the host agents: for an instance whose server has an agent
//! (`--agent-tokens`), `POST /v1/instances/{id}/install|upgrade|downgrade?to=ID&wait=60s` sets
//! the instance's inventory `version:` (an audited edit, like any other) and waits for the
//! agent's report; `POST /v1/types/{type}/upgrade?to=ID&wait=60s` does it one instance at a
//! time and stops at the first one that does not succeed.
//!
//! Outcomes: `ok` (the report shows the new version running and its tests passed), `unchanged`,
//! `rolled-back` / `failed` (the agent switched back or could not install; the inventory goes
//! back to the previous version so desired and observed agree again), `timeout` (no verdict
//! within `wait`: the inventory keeps the new version, which the agent applies when it can).

use super::auth::Identity;
use super::export_poll::parse_wait;
use super::http::ApiError;
use super::state::AdminState;
use super::AgentHub;
use crate::edit::Edit;
use crate::versions::Action;
use axum::extract::{Path, Query, State as Ext};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_agent_proto::{ObservedInstance, ProcessState, TestResult};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How long a version change waits for the agent unless `wait=` says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// A deploy holds its request open while it waits: cap it like nothing else is held longer.
const MAX_WAIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Serialize)]
pub struct AgentDeployReport {
    pub instance: String,
    pub action: Action,
    pub from: Option<String>,
    pub to: String,
    /// `ok`, `unchanged`, `rolled-back`, `failed` or `timeout`.
    pub outcome: String,
    pub tests: Vec<TestResult>,
    pub error: Option<String>,
    /// From the edit to the verdict.
    pub seconds: f64,
}

impl AgentDeployReport {
    fn succeeded(&self) -> bool {
        matches!(self.outcome.as_str(), "ok" | "unchanged")
    }
}

/// The HTTP status of an outcome: 200 done, 422 the agent rolled back or failed, 504 timeout.
fn status_of(outcome: &str) -> StatusCode {
    match outcome {
        "ok" | "unchanged" => StatusCode::OK,
        "timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// What the agent's report says about a change to `target`, if it says anything yet.
/// A version that failed on an instance is not retried there by its agent, so an earlier
/// failure of the same version is the verdict too.
pub fn verdict(o: &ObservedInstance, target: &str) -> Option<(String, Option<String>)> {
    let change = o.last_change.as_ref().filter(|c| c.to == target)?;
    match change.outcome.as_str() {
        "ok" => {
            let live = matches!(o.state, ProcessState::Running | ProcessState::Installed);
            let passed = o.tests.iter().all(|t| t.ok);
            (o.version.as_deref() == Some(target) && live && passed).then(|| ("ok".into(), None))
        }
        other => Some((other.to_owned(), change.error.clone())),
    }
}

fn observed_instance(hub: &AgentHub, server: &str, id: &str) -> Option<ObservedInstance> {
    hub.observed(server)?
        .instances
        .into_iter()
        .find(|o| o.id == id)
}

fn bad(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message.into())
}

pub(crate) fn parse_wait_query(wait: Option<&str>) -> Result<Duration, ApiError> {
    match wait {
        None => Ok(DEFAULT_WAIT),
        Some(w) => parse_wait(w)
            .map(|d| d.min(MAX_WAIT))
            .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("wait: {w:?}: {e}"))),
    }
}

/// Whether `instance`'s server has an agent, so its versions change through it.
pub(crate) fn through_agent(state: &AdminState, instance: &str) -> bool {
    let snap = state.snapshot();
    match (
        state.options().agents.as_ref(),
        snap.catalog.instance(instance),
    ) {
        (Some(hub), Some(i)) => hub.manages(&i.server),
        _ => false,
    }
}

async fn set_version(
    state: &AdminState,
    identity: &Identity,
    id: &str,
    version: Option<String>,
) -> Result<(), ApiError> {
    let edit = Edit::SetVersion {
        id: id.to_owned(),
        version,
    };
    state
        .apply_edit(edit, None, &identity.0)
        .await
        .map(|_| ())
        .map_err(|e| {
            // The same status the inventory routes give this error, with its message.
            let status = mutation_error_status(&e);
            bad(status, e.to_string())
        })
}

fn mutation_error_status(e: &super::state::MutationError) -> StatusCode {
    use super::state::MutationError as M;
    match e {
        M::Edit(edit) if edit.is_not_found() => StatusCode::NOT_FOUND,
        M::Edit(_) | M::InvalidCatalog(_) | M::Stale { .. } => StatusCode::CONFLICT,
        M::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Sets `id`'s desired version and waits for its agent's verdict (see the module comment).
pub(crate) async fn deploy_one(
    state: &AdminState,
    identity: &Identity,
    id: &str,
    action: Action,
    to: Option<&str>,
    wait: Duration,
) -> Result<AgentDeployReport, ApiError> {
    let hub = state
        .options()
        .agents
        .clone()
        .ok_or_else(|| bad(StatusCode::NOT_FOUND, "agents are not enabled (--state)"))?;
    let inst = state
        .snapshot()
        .catalog
        .instance(id)
        .cloned()
        .ok_or_else(|| bad(StatusCode::NOT_FOUND, format!("no instance {id}")))?;
    let observed = observed_instance(&hub, &inst.server, id);
    let from = inst.version.clone();
    let has_version = from.as_deref().is_some_and(crate::versions::store::is_id);
    let target = match (action, to) {
        (Action::Install, _) if has_version => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                format!("{id} already has a version: use upgrade or downgrade"),
            ))
        }
        (Action::Upgrade | Action::Downgrade, _) if !has_version => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                format!("{id} has no version yet: use install"),
            ))
        }
        (_, Some(t)) => t.to_owned(),
        // Back to what the agent last changed from, if that change is the one running now.
        (Action::Downgrade, None) => observed
            .as_ref()
            .and_then(|o| o.last_change.as_ref())
            .filter(|c| c.outcome == "ok" && Some(&c.to) == from.as_ref())
            .and_then(|c| c.from.clone())
            .ok_or_else(|| {
                bad(
                    StatusCode::BAD_REQUEST,
                    format!("{id}: no previous version known: downgrade --to VERSION"),
                )
            })?,
        (_, None) => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "install and upgrade need to=VERSION",
            ))
        }
    };
    let manifest = hub.store().manifest(&target).map_err(|e| {
        let code = match e {
            crate::versions::VersionError::NotFound(_) => StatusCode::NOT_FOUND,
            crate::versions::VersionError::BadInput(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        bad(code, e.to_string())
    })?;
    if manifest.type_name != inst.type_name {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            format!(
                "{target} is a version of {}, not of {}",
                manifest.type_name, inst.type_name
            ),
        ));
    }
    let start = Instant::now();
    let mut report = AgentDeployReport {
        instance: id.to_owned(),
        action,
        from: from.clone(),
        to: target.clone(),
        outcome: String::new(),
        tests: Vec::new(),
        error: None,
        seconds: 0.0,
    };
    let already = from.as_deref() == Some(target.as_str());
    if already && observed.as_ref().and_then(|o| o.version.as_deref()) == Some(target.as_str()) {
        report.outcome = "unchanged".into();
        return Ok(report);
    }
    if !already {
        set_version(state, identity, id, Some(target.clone())).await?;
    }
    // What the agent runs again after a failed change: the inventory goes back to it.
    let mut back = from.clone();
    loop {
        let seen = observed_instance(&hub, &inst.server, id);
        if let Some((outcome, error)) = seen.as_ref().and_then(|o| verdict(o, &target)) {
            report.outcome = outcome;
            report.error = error;
            if already {
                // The inventory named the target before this request (a rollout re-issued after
                // ADMIN was killed mid-change): the agent's report says what it went back to.
                back = seen
                    .as_ref()
                    .and_then(|o| o.last_change.as_ref())
                    .and_then(|c| c.from.clone());
            }
            report.tests = seen.map(|o| o.tests).unwrap_or_default();
            break;
        }
        if start.elapsed() >= wait {
            report.outcome = "timeout".into();
            report.error = Some(format!(
                "no report of {target} from the agent of {} within {wait:?}; the \
                 inventory keeps it, the agent applies it when it can",
                inst.server
            ));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    report.seconds = start.elapsed().as_secs_f64();
    // The agent runs the previous release again: say so in the inventory too, or the desired
    // state would name a version that runs nowhere.
    if matches!(report.outcome.as_str(), "rolled-back" | "failed") && back != Some(target.clone()) {
        set_version(state, identity, id, back).await?;
    }
    tracing::info!(instance = %id, to = %target, outcome = %report.outcome,
        seconds = report.seconds, "version change through the agent");
    Ok(report)
}

pub(crate) async fn deploy_response(
    state: &AdminState,
    identity: &Identity,
    id: &str,
    action: Action,
    to: Option<&str>,
    wait: Option<&str>,
) -> Result<Response, ApiError> {
    let wait = parse_wait_query(wait)?;
    let r = deploy_one(state, identity, id, action, to, wait).await?;
    Ok((status_of(&r.outcome), Json(r)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RollingQuery {
    to: Option<String>,
    wait: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RollingReport {
    #[serde(rename = "type")]
    pub type_name: String,
    pub to: String,
    /// `ok` (every instance runs `to`), or the outcome of the instance it stopped at.
    pub outcome: String,
    /// In the order they were changed, the last one the one it stopped at.
    pub instances: Vec<AgentDeployReport>,
    /// Not attempted because the rollout stopped: they keep their version.
    pub not_attempted: Vec<String>,
    /// Why it stopped (`None` when every instance succeeded).
    pub error: Option<String>,
}

/// `POST /v1/types/{type}/upgrade?to=ID[&wait=60s]`: a rolling upgrade (or downgrade: the
/// route takes any version of the type) of every instance of the type, in inventory order.
pub(crate) async fn rolling(
    Ext(state): Ext<AdminState>,
    Extension(identity): Extension<Identity>,
    Path((type_name, action)): Path<(String, String)>,
    Query(q): Query<RollingQuery>,
) -> Result<Response, ApiError> {
    let action = match Action::parse(&action) {
        Some(a @ (Action::Upgrade | Action::Downgrade)) => a,
        _ => {
            return Err(bad(
                StatusCode::NOT_FOUND,
                format!("unknown action {action:?}: upgrade or downgrade"),
            ))
        }
    };
    let to =
        q.to.ok_or_else(|| bad(StatusCode::BAD_REQUEST, "a rolling change needs to=VERSION"))?;
    let wait = parse_wait_query(q.wait.as_deref())?;
    let ids: Vec<String> = state
        .snapshot()
        .catalog
        .inventory
        .instances
        .iter()
        .filter(|i| i.type_name == type_name)
        .map(|i| i.id.clone())
        .collect();
    if ids.is_empty() {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no instances of type {type_name}"),
        ));
    }
    if let Some(id) = ids.iter().find(|id| !through_agent(&state, id)) {
        return Err(bad(
            StatusCode::CONFLICT,
            format!("{id}: its server has no agent (--agent-tokens); a rolling change needs one on every server"),
        ));
    }
    let mut report = RollingReport {
        type_name,
        to: to.clone(),
        outcome: "ok".into(),
        instances: Vec::new(),
        not_attempted: Vec::new(),
        error: None,
    };
    for (n, id) in ids.iter().enumerate() {
        let r = deploy_one(&state, &identity, id, action, Some(&to), wait).await?;
        let stop = !r.succeeded();
        if stop {
            report.outcome = r.outcome.clone();
            report.not_attempted = ids[n + 1..].to_vec();
            report.error = Some(format!(
                "stopped at {id}: {}{}; {} not attempted",
                r.outcome,
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
                report.not_attempted.len()
            ));
        }
        report.instances.push(r);
        if stop {
            break;
        }
    }
    let code = match report.outcome.as_str() {
        "ok" => StatusCode::OK,
        other => status_of(other),
    };
    Ok((code, Json(report)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_agent_proto::ChangeOutcome;

    fn observed(version: &str, outcome: &str, to: &str, test_ok: bool) -> ObservedInstance {
        ObservedInstance {
            id: "web.a.1".into(),
            version: Some(version.into()),
            state: ProcessState::Running,
            pid: Some(7),
            since: 0,
            restarts: 0,
            last_exit: None,
            tests: vec![TestResult {
                name: "health".into(),
                ok: test_ok,
                detail: String::new(),
                attempts: 1,
            }],
            last_change: Some(ChangeOutcome {
                from: Some("web_000000000001".into()),
                to: to.into(),
                outcome: outcome.into(),
                error: None,
                at: 0,
            }),
        }
    }

    #[test]
    fn only_a_report_of_the_target_running_and_tested_is_success() {
        let (old, new) = ("web_000000000001", "web_000000000002");
        // Still the old version: no verdict yet.
        assert_eq!(verdict(&observed(old, "ok", old, true), new), None);
        assert_eq!(
            verdict(&observed(new, "ok", new, true), new),
            Some(("ok".into(), None))
        );
        // Switched but its tests have not passed (yet): no verdict.
        assert_eq!(verdict(&observed(new, "ok", new, false), new), None);
        assert_eq!(
            verdict(&observed(old, "rolled-back", new, false), new).map(|v| v.0),
            Some("rolled-back".into())
        );
    }
}
