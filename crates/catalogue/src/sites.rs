//! Site nodes in the catalogue: one-time enrolment tokens (hashed), enrolled sites with the
//! client certificates the hub signed for them, and the tasks the hub hands them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Catalogue, CatalogueError, Page, Result, exists_or, now_ms};

/// A one-time enrolment token as stored (the secret only as its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub id: String,
    pub study: String,
    pub organisation: String,
    pub secret_sha256: String,
    pub expires_ms: i64,
    pub created_by: String,
    pub used_ms: Option<i64>,
}

/// An enrolled site node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub id: String,
    pub organisation: String,
    /// The account the site acts as (subject `site:<id>`).
    pub user_id: String,
    pub name: String,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub version: String,
    /// What the site last reported about itself (queues, pauses, running tasks).
    pub state: Value,
}

/// A client certificate the hub's CA signed for a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCertificate {
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
    pub site_id: String,
    pub serial: String,
    pub not_after_ms: i64,
}

/// Where a task is. `queued` until the site picks it up; the site then reports the rest.
pub const TASK_STATES: &[&str] = &[
    "queued",
    "delivered",
    "awaiting-approval",
    "running",
    "done",
    "failed",
    "refused",
    "cancelled",
];

/// States a task never leaves.
pub fn task_is_final(status: &str) -> bool {
    matches!(status, "done" | "failed" | "refused" | "cancelled")
}

/// Work the hub hands one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub site_id: String,
    pub study: String,
    pub kind: String,
    pub params: Value,
    pub status: String,
    pub detail: String,
    pub progress: Value,
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A statement assembled from the constant column lists below; every value is bound.
macro_rules! statement {
    ($($t:tt)*) => { sqlx::AssertSqlSafe(format!($($t)*)) };
}

const SITE_COLUMNS: &str =
    "id, organisation, user_id, name, enrolled_ms, revoked_ms, last_seen_ms, version, state";
const TASK_COLUMNS: &str = "id, site_id, study, kind, params, status, detail, progress, created_by, created_ms, updated_ms";

fn json_of(row: &AnyRow, col: &str) -> Result<Value> {
    let s: String = row.try_get(col)?;
    Ok(serde_json::from_str(&s).unwrap_or(Value::Null))
}

fn site_from(row: &AnyRow) -> Result<Site> {
    Ok(Site {
        id: row.try_get("id")?,
        organisation: row.try_get("organisation")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        enrolled_ms: row.try_get("enrolled_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        version: row.try_get("version")?,
        state: json_of(row, "state")?,
    })
}

fn task_from(row: &AnyRow) -> Result<Task> {
    Ok(Task {
        id: row.try_get("id")?,
        site_id: row.try_get("site_id")?,
        study: row.try_get("study")?,
        kind: row.try_get("kind")?,
        params: json_of(row, "params")?,
        status: row.try_get("status")?,
        detail: row.try_get("detail")?,
        progress: json_of(row, "progress")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

impl Catalogue {
    pub async fn create_enrolment(&self, e: &Enrolment) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrolments (id, study, organisation, secret_sha256, expires_ms, created_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(&e.study)
        .bind(&e.organisation)
        .bind(&e.secret_sha256)
        .bind(e.expires_ms)
        .bind(&e.created_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("enrolment {}", e.id)))?;
        Ok(())
    }

    pub async fn enrolment(&self, id: &str) -> Result<Option<Enrolment>> {
        let row = sqlx::query(
            "SELECT id, study, organisation, secret_sha256, expires_ms, created_by, used_ms FROM enrolments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Enrolment {
                id: r.try_get("id")?,
                study: r.try_get("study")?,
                organisation: r.try_get("organisation")?,
                secret_sha256: r.try_get("secret_sha256")?,
                expires_ms: r.try_get("expires_ms")?,
                created_by: r.try_get("created_by")?,
                used_ms: r.try_get("used_ms")?,
            })
        })
        .transpose()
    }

    /// Use an enrolment token once: in one transaction, mark it used (only if unused and
    /// unexpired), create the site's account, the site and its first certificate.
    pub async fn redeem_enrolment(
        &self,
        enrolment: &str,
        site: &Site,
        cert: &SiteCertificate,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE enrolments SET used_ms = $1, site_id = $2 WHERE id = $3 AND used_ms IS NULL AND expires_ms > $1",
        )
        .bind(now)
        .bind(&site.id)
        .bind(enrolment)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Err(CatalogueError::NotFound(format!(
                "unused enrolment {enrolment}"
            )));
        }
        sqlx::query(
            "INSERT INTO users (id, subject, organisation, platform_admin, created_ms) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(&site.user_id)
        .bind(format!("site:{}", site.id))
        .bind(&site.organisation)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sites (id, organisation, user_id, name, enrolled_ms, version, state) VALUES ($1, $2, $3, $4, $5, $6, '{}')",
        )
        .bind(&site.id)
        .bind(&site.organisation)
        .bind(&site.user_id)
        .bind(&site.name)
        .bind(now)
        .bind(&site.version)
        .execute(&mut *tx)
        .await?;
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn add_site_certificate(&self, cert: &SiteCertificate) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_certificate(&mut conn, cert).await
    }

    pub async fn site(&self, id: &str) -> Result<Option<Site>> {
        let row = sqlx::query(statement!("SELECT {SITE_COLUMNS} FROM sites WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(site_from).transpose()
    }

    /// The site a client certificate was issued to, with the certificate's expiry.
    pub async fn site_by_certificate(&self, fingerprint: &str) -> Result<Option<(Site, i64)>> {
        let row = sqlx::query(statement!(
            "SELECT s.id, s.organisation, s.user_id, s.name, s.enrolled_ms, s.revoked_ms, s.last_seen_ms, s.version, s.state, c.not_after_ms \
             FROM site_certificates c JOIN sites s ON s.id = c.site_id WHERE c.fingerprint = $1"
        ))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((site_from(&r)?, r.try_get("not_after_ms")?)))
            .transpose()
    }

    /// Revoke a site; false if it was revoked already (or does not exist).
    pub async fn revoke_site(&self, id: &str) -> Result<bool> {
        let r =
            sqlx::query("UPDATE sites SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A site made contact: remember when, its version and what it reported.
    pub async fn site_seen(&self, id: &str, version: &str, state: &Value) -> Result<()> {
        sqlx::query("UPDATE sites SET last_seen_ms = $1, version = $2, state = $3 WHERE id = $4")
            .bind(now_ms())
            .bind(version)
            .bind(state.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sites of the given organisations (all sites when `None`), by id.
    pub async fn list_sites(
        &self,
        organisations: Option<&[String]>,
        page: Page,
    ) -> Result<Vec<Site>> {
        let rows = match organisations {
            None => {
                sqlx::query(statement!(
                    "SELECT {SITE_COLUMNS} FROM sites ORDER BY id LIMIT $1 OFFSET $2"
                ))
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(&self.pool)
                .await?
            }
            Some(orgs) => {
                // A short list (a study's organisations): one bound parameter each.
                let marks: Vec<String> = (0..orgs.len()).map(|i| format!("${}", i + 3)).collect();
                if marks.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {SITE_COLUMNS} FROM sites WHERE organisation IN ({}) ORDER BY id LIMIT $1 OFFSET $2",
                    marks.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(page.limit)
                    .bind(page.offset);
                for o in orgs {
                    q = q.bind(o);
                }
                q.fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(site_from).collect()
    }

    /// Studies an organisation takes part in.
    pub async fn studies_of_organisation(&self, organisation: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT study FROM study_organisations WHERE organisation = $1 ORDER BY study",
        )
        .bind(organisation)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn create_task(&self, t: &Task) -> Result<()> {
        sqlx::query(statement!(
            "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&t.id)
        .bind(&t.site_id)
        .bind(&t.study)
        .bind(&t.kind)
        .bind(t.params.to_string())
        .bind(&t.status)
        .bind(&t.detail)
        .bind(t.progress.to_string())
        .bind(&t.created_by)
        .bind(t.created_ms)
        .bind(t.updated_ms)
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("task {}", t.id)))?;
        Ok(())
    }

    pub async fn task(&self, id: &str) -> Result<Option<Task>> {
        let row = sqlx::query(statement!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from).transpose()
    }

    /// A site's tasks that are not final, oldest first.
    pub async fn open_tasks_of_site(&self, site: &str) -> Result<Vec<Task>> {
        let rows = sqlx::query(statement!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE site_id = $1 AND status NOT IN ('done', 'failed', 'refused', 'cancelled') ORDER BY created_ms, id"
        ))
        .bind(site)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from).collect()
    }

    pub async fn list_study_tasks(&self, study: &str, page: Page) -> Result<Vec<Task>> {
        let rows = sqlx::query(statement!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE study = $1 ORDER BY created_ms, id LIMIT $2 OFFSET $3"
        ))
        .bind(study)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from).collect()
    }

    /// Move a task that is not final to `status`; false when it is final already.
    pub async fn update_task(
        &self,
        id: &str,
        status: &str,
        detail: &str,
        progress: &Value,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE tasks SET status = $1, detail = $2, progress = $3, updated_ms = $4 WHERE id = $5 AND status NOT IN ('done', 'failed', 'refused', 'cancelled')",
        )
        .bind(status)
        .bind(detail)
        .bind(progress.to_string())
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}

async fn insert_certificate(conn: &mut sqlx::AnyConnection, cert: &SiteCertificate) -> Result<()> {
    sqlx::query(
        "INSERT INTO site_certificates (fingerprint, site_id, serial, not_after_ms, issued_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&cert.fingerprint)
    .bind(&cert.site_id)
    .bind(&cert.serial)
    .bind(cert.not_after_ms)
    .bind(now_ms())
    .execute(conn)
    .await
    .map_err(exists_or(format!("certificate {}", cert.fingerprint)))?;
    Ok(())
}
