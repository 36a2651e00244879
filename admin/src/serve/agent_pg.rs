//! The agents' hub of replicas sharing a catalog in PostgreSQL (`serve --state postgres://…`):
//! the desired run states and the agents' last reports are rows, so an agent may talk to any
//! replica and every replica sees its report and every start/stop/restart.
//!
//! ```text
//! portcullis_agent_run       instance -> state, restart_generation
//! portcullis_agent_observed  server   -> the last report (JSON)
//! ```
//!
//! Each replica keeps both in memory (the desired state and `GET /v1/instances/{id}` read them
//! without a round trip) and follows the database: every write ends with a `NOTIFY` on
//! [`CHANNEL`] (`run`, or `observed SERVER`), on which the replicas reload what changed; after
//! (re)connecting the listener they reload everything, catching up on what they missed.

use super::agent_hub::{HubError, RunAction};
use crate::desired::RunControl;
use portcullis_agent_proto::{Observed, RunState};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row;
use std::collections::BTreeMap;

pub const CHANNEL: &str = "portcullis_agents";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS portcullis_agent_run (
    instance TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    restart_generation BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS portcullis_agent_observed (
    server TEXT PRIMARY KEY,
    report TEXT NOT NULL
);
";

/// Not the catalog's schema lock (pgstate.rs): the two set-ups may run at the same time.
const SCHEMA_LOCK: i64 = 0x706f_7274_6361_7402;

#[derive(Clone)]
pub struct PgHub {
    pool: PgPool,
}

/// What a notification says changed.
pub enum Change {
    Run,
    Observed(String),
    /// Unknown payload or a reconnected listener: reload everything.
    All,
}

fn corrupt(what: String) -> HubError {
    HubError::Stored(what)
}

fn parse_state(s: &str) -> Result<RunState, HubError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|e| corrupt(format!("portcullis_agent_run.state {s:?}: {e}")))
}

fn state_text(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Stopped => "stopped",
    }
}

impl PgHub {
    pub async fn connect(url: &str) -> Result<PgHub, HubError> {
        let pool = crate::pgstate::connect_with_schema(url, 4, SCHEMA_LOCK, SCHEMA).await?;
        Ok(PgHub { pool })
    }

    pub async fn load_run(&self) -> Result<BTreeMap<String, RunControl>, HubError> {
        let rows =
            sqlx::query("SELECT instance, state, restart_generation FROM portcullis_agent_run")
                .fetch_all(&self.pool)
                .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let generation: i64 = r.try_get(2)?;
            out.insert(
                r.try_get::<String, _>(0)?,
                RunControl {
                    state: parse_state(r.try_get::<&str, _>(1)?)?,
                    restart_generation: u64::try_from(generation).unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    /// Every server's report, or only `server`'s.
    pub async fn load_observed(
        &self,
        server: Option<&str>,
    ) -> Result<BTreeMap<String, Observed>, HubError> {
        let rows = sqlx::query(
            "SELECT server, report FROM portcullis_agent_observed \
             WHERE $1::TEXT IS NULL OR server = $1",
        )
        .bind(server)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let server: String = r.try_get(0)?;
            let report = serde_json::from_str(r.try_get::<&str, _>(1)?)
                .map_err(|e| corrupt(format!("the report of {server}: {e}")))?;
            out.insert(server, report);
        }
        Ok(out)
    }

    /// Applies `action` in one statement, so two replicas restarting the same instance at once
    /// bump its generation twice rather than once.
    pub async fn save_run(
        &self,
        instance: &str,
        action: RunAction,
    ) -> Result<RunControl, HubError> {
        let (state, bump) = match action {
            RunAction::Start => (RunState::Running, 0i64),
            RunAction::Stop => (RunState::Stopped, 0),
            RunAction::Restart => (RunState::Running, 1),
        };
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO portcullis_agent_run (instance, state, restart_generation) \
             VALUES ($1, $2, $3) ON CONFLICT (instance) DO UPDATE SET state = EXCLUDED.state, \
             restart_generation = portcullis_agent_run.restart_generation + $3 \
             RETURNING restart_generation",
        )
        .bind(instance)
        .bind(state_text(state))
        .bind(bump)
        .fetch_one(&mut *tx)
        .await?;
        notify(&mut tx, "run").await?;
        tx.commit().await?;
        let generation: i64 = row.try_get(0)?;
        Ok(RunControl {
            state,
            restart_generation: u64::try_from(generation).unwrap_or(0),
        })
    }

    pub async fn save_observed(&self, server: &str, report: &Observed) -> Result<(), HubError> {
        let text = serde_json::to_string(report).map_err(|e| corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO portcullis_agent_observed (server, report) VALUES ($1, $2) \
             ON CONFLICT (server) DO UPDATE SET report = EXCLUDED.report",
        )
        .bind(server)
        .bind(text)
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, &format!("observed {server}")).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A connection listening on [`CHANNEL`].
    pub async fn listen(&self) -> Result<PgListener, HubError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

/// What the next notification says changed (waits for it).
pub async fn next_change(listener: &mut PgListener) -> Result<Change, HubError> {
    Ok(match listener.try_recv().await? {
        Some(n) if n.payload() == "run" => Change::Run,
        Some(n) => match n.payload().strip_prefix("observed ") {
            Some(server) => Change::Observed(server.to_owned()),
            None => Change::All,
        },
        // The connection dropped; the next call re-establishes it: catch up.
        None => Change::All,
    })
}

async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    payload: &str,
) -> Result<(), HubError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
