//! Federated runs in the catalogue: the submitted spec, the status, and the coordinator's
//! state as of the last completed round, so a restarted hub resumes the run from there.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Catalogue, Page, Result, exists_or, now_ms};

/// A federated run. `status`: running, done, failed, cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub study: String,
    /// The study spec as submitted (TOML).
    pub spec: String,
    pub status: String,
    pub detail: String,
    pub state: Value,
    /// The dataset holding the results once done.
    pub result_dataset: Option<String>,
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn run_from(r: &AnyRow) -> Result<Run> {
    let state: String = r.try_get("state")?;
    Ok(Run {
        id: r.try_get("id")?,
        study: r.try_get("study")?,
        spec: r.try_get("spec")?,
        status: r.try_get("status")?,
        detail: r.try_get("detail")?,
        state: serde_json::from_str(&state).unwrap_or(Value::Null),
        result_dataset: r.try_get("result_dataset")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

impl Catalogue {
    pub async fn create_run(&self, run: &Run) -> Result<()> {
        sqlx::query(
            "INSERT INTO runs (id, study, spec, status, detail, state, created_by, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&run.id)
        .bind(&run.study)
        .bind(&run.spec)
        .bind(&run.status)
        .bind(&run.detail)
        .bind(run.state.to_string())
        .bind(&run.created_by)
        .bind(run.created_ms)
        .bind(run.updated_ms)
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("run {}", run.id)))?;
        Ok(())
    }

    pub async fn run(&self, id: &str) -> Result<Option<Run>> {
        let row = sqlx::query("SELECT * FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from).transpose()
    }

    pub async fn list_study_runs(&self, study: &str, page: Page) -> Result<Vec<Run>> {
        let rows = sqlx::query(
            "SELECT * FROM runs WHERE study = $1 ORDER BY created_ms DESC, id LIMIT $2 OFFSET $3",
        )
        .bind(study)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from).collect()
    }

    /// Runs a hub resumes at start.
    pub async fn running_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query("SELECT * FROM runs WHERE status = 'running' ORDER BY created_ms")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(run_from).collect()
    }

    /// Save where a run is. A run that is no longer `running` is not changed.
    pub async fn update_run(
        &self,
        id: &str,
        status: &str,
        detail: &str,
        state: &Value,
        result_dataset: Option<&str>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = $1, detail = $2, state = $3, result_dataset = $4, updated_ms = $5 WHERE id = $6 AND status = 'running'",
        )
        .bind(status)
        .bind(detail)
        .bind(state.to_string())
        .bind(result_dataset)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
