//! The hub's metadata in a relational database: organisations, users and their API tokens,
//! studies and the roles granted in them, datasets (the FAIR catalogue entries, with their
//! wrapped data keys), stored objects, the DICOM index, pending uploads, and site nodes (their
//! enrolment tokens, client certificates and tasks).
//!
//! One schema and one set of queries serve SQLite (the embedded default) and PostgreSQL
//! (production), through sqlx's `Any` driver: columns are TEXT and BIGINT only and parameters
//! are `$n`, which both accept. Migrations are embedded and run when the catalogue opens.
//!
//! Access is not decided here: listings take the caller's user id and return only what the
//! caller is a member of (the SQL form of `medfed_policy::visible`, so that paging counts only
//! visible rows); the hub still asks `medfed_policy::decide` for every row it returns.

mod runs;
mod sites;

pub use runs::Run;
pub use sites::{Enrolment, Site, SiteCertificate, TASK_STATES, Task, task_is_final};

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use medfed_policy::{Grant, Principal, StudyRole};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Url(String),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CatalogueError>;

/// Migrations, in order, embedded at build time. Never edit one that has shipped (the migrator
/// refuses a changed checksum); add the next.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "sites", include_str!("../migrations/0002_sites.sql")),
    (3, "runs", include_str!("../migrations/0003_runs.sql")),
    (
        4,
        "object_names",
        include_str!("../migrations/0004_object_names.sql"),
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A page request: every listing is paged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// The authenticated subject (`oidc:<issuer>#<sub>`, or `local:<name>` for bootstrap users).
    pub subject: String,
    pub organisation: Option<String>,
    pub platform_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Study {
    pub id: String,
    pub title: String,
    pub organisations: Vec<String>,
}

/// Where a dataset came from (FAIR "R1.2: provenance").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provenance {
    /// The site (organisation) that produced it.
    pub site: String,
    /// The de-identification settings used at the site (profile and options).
    pub deid_settings: String,
    /// The medfed version that produced it.
    pub medfed_version: String,
}

/// A catalogue entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: String,
    /// Persistent identifier (`urn:uuid:...`).
    pub pid: String,
    pub study: String,
    pub owner_organisation: String,
    pub title: String,
    /// Licence or usage terms.
    pub licence: String,
    pub provenance: Provenance,
    pub retention_until_ms: i64,
    pub legal_hold: bool,
    pub created_ms: i64,
}

/// A dataset's data key as the catalogue keeps it (wrapped; the master key is never here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedDataKey {
    pub dataset: String,
    pub master_version: u32,
    pub wrapped_hex: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub dataset: String,
    pub id: String,
    pub name: String,
    pub media_type: String,
    pub size: i64,
    pub sha256: String,
    pub created_ms: i64,
}

/// The pseudonymised DICOM attributes the hub indexes for one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InstanceEntry {
    pub dataset: String,
    pub object: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class_uid: String,
    pub modality: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub series_number: String,
    pub instance_number: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadEntry {
    pub id: String,
    pub dataset: String,
    pub object: String,
    pub name: String,
    pub media_type: String,
    pub started_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub id: String,
    pub user_id: String,
    pub secret_sha256: String,
    pub expires_ms: i64,
    pub revoked: bool,
}

/// QIDO-RS filters (attribute matching: exact, or a trailing `*` wildcard; dates as ranges).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DicomQuery {
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub modality: Option<String>,
    /// Inclusive `YYYYMMDD` bounds.
    pub study_date_from: Option<String>,
    pub study_date_to: Option<String>,
}

/// One QIDO-RS result row at study, series or instance level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DicomMatch {
    pub dataset: String,
    pub study_uid: String,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
    pub sop_class_uid: Option<String>,
    pub object: Option<String>,
    pub patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub modality: String,
    pub series_number: Option<String>,
    pub instance_number: Option<String>,
    pub instances: i64,
    /// The dataset's study and owner, for the access decision on this row.
    pub study: String,
    pub owner_organisation: String,
}

/// The QIDO-RS levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Study,
    Series,
    Instance,
}

/// The metadata database.
#[derive(Clone)]
pub struct Catalogue {
    pool: AnyPool,
}

fn flag(b: bool) -> i64 {
    b as i64
}

fn role_name(r: StudyRole) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn parse_role(s: &str) -> Option<StudyRole> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

fn dataset_from(row: &AnyRow) -> Result<Dataset> {
    let provenance: String = row.try_get("provenance")?;
    Ok(Dataset {
        id: row.try_get("id")?,
        pid: row.try_get("pid")?,
        study: row.try_get("study")?,
        owner_organisation: row.try_get("owner_organisation")?,
        title: row.try_get("title")?,
        licence: row.try_get("licence")?,
        provenance: serde_json::from_str(&provenance).unwrap_or_default(),
        retention_until_ms: row.try_get("retention_until_ms")?,
        legal_hold: row.try_get::<i64, _>("legal_hold")? != 0,
        created_ms: row.try_get("created_ms")?,
    })
}

fn object_from(row: &AnyRow) -> Result<ObjectEntry> {
    Ok(ObjectEntry {
        dataset: row.try_get("dataset")?,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        media_type: row.try_get("media_type")?,
        size: row.try_get("size")?,
        sha256: row.try_get("sha256")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn user_from(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        subject: row.try_get("subject")?,
        organisation: row.try_get("organisation")?,
        platform_admin: row.try_get::<i64, _>("platform_admin")? != 0,
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn exists_or(what: String) -> impl FnOnce(sqlx::Error) -> CatalogueError {
    move |e| {
        if unique_violation(&e) {
            CatalogueError::Exists(what)
        } else {
            CatalogueError::Db(e)
        }
    }
}

/// The file of a `sqlite://PATH[?...]` URL; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// The catalogue holds who is in which study and the wrapped data keys: only the hub's own
/// account may read it. Made 0600 before SQLite opens it, so it never exists more open.
fn create_private(path: &Path) -> Result<()> {
    let file_err = |source| CatalogueError::File {
        path: path.to_path_buf(),
        source,
    };
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path).map_err(file_err)?;
    restrict_to_owner(path)
}

/// Mode 0600 on the database file and on its -wal and -shm files where they exist.
fn restrict_to_owner(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            files.push(PathBuf::from(p));
        }
        for f in files.iter().filter(|f| f.exists()) {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| CatalogueError::File {
                    path: f.clone(),
                    source,
                },
            )?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `x LIKE pattern` for a QIDO value with an optional trailing `*`.
fn like_pattern(v: &str) -> String {
    let escaped = v
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    match escaped.strip_suffix('*') {
        Some(prefix) => format!("{prefix}%"),
        None => escaped,
    }
}

impl Catalogue {
    /// Connect and run pending migrations. `sqlite://PATH` creates the file if needed.
    pub async fn open(url: &str) -> Result<Catalogue> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(CatalogueError::Url(url.to_string()));
        }
        let sqlite_file = if is_sqlite { sqlite_path(url) } else { None };
        if let Some(path) = &sqlite_file {
            create_private(path)?;
        }
        let url = if is_sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // WAL: readers do not block the writer; foreign keys are off by default;
                        // LIKE is case-sensitive as in PostgreSQL, so a query matches the same
                        // rows on both (names are lowered explicitly where matching ignores case).
                        sqlx::raw_sql(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                             PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000; \
                             PRAGMA case_sensitive_like=ON;",
                        )
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let cat = Catalogue { pool };
        cat.migrate().await?;
        if let Some(path) = &sqlite_file {
            // SQLite gives -wal and -shm the database file's mode; a catalogue made before
            // this (0644) is narrowed here, its journal files with it.
            restrict_to_owner(path)?;
        }
        Ok(cat)
    }

    /// Run pending migrations with sqlx's migrator (checksummed, locked against a second hub
    /// migrating at once). A catalogue made before the migrator was used records its versions
    /// in `schema_migrations`: those are adopted once, by checksum, so nothing is re-run.
    async fn migrate(&self) -> Result<()> {
        let migrator = migrator();
        self.adopt_legacy_migrations(&migrator).await?;
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn adopt_legacy_migrations(&self, migrator: &Migrator) -> Result<()> {
        // The probe fails (no such table) on every catalogue made by the migrator.
        let legacy: Vec<i64> = match sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&self.pool)
            .await
        {
            Ok(v) => v,
            Err(_) => return Ok(()),
        };
        let adopted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_default();
        if adopted > 0 {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        conn.ensure_migrations_table("_sqlx_migrations").await?;
        for m in migrator.iter().filter(|m| legacy.contains(&m.version)) {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, 0)",
            )
            .bind(m.version)
            .bind(m.description.to_string())
            .bind(m.checksum.to_vec())
            .execute(&mut *conn)
            .await?;
            tracing::info!(
                version = m.version,
                "catalogue migration adopted from schema_migrations"
            );
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- organisations and users ----

    pub async fn create_organisation(&self, id: &str, name: &str) -> Result<()> {
        sqlx::query("INSERT INTO organisations (id, name, created_ms) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(exists_or(format!("organisation {id}")))?;
        Ok(())
    }

    pub async fn organisation_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organisations WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn list_organisations(&self, page: Page) -> Result<Vec<Organisation>> {
        let rows = sqlx::query("SELECT id, name FROM organisations ORDER BY id LIMIT $1 OFFSET $2")
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Organisation {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .collect()
    }

    pub async fn create_user(
        &self,
        subject: &str,
        organisation: Option<&str>,
        platform_admin: bool,
    ) -> Result<User> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        sqlx::query(
            "INSERT INTO users (id, subject, organisation, platform_admin, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(subject)
        .bind(organisation)
        .bind(flag(platform_admin))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("user with subject {subject}")))?;
        Ok(User {
            id,
            subject: subject.to_string(),
            organisation: organisation.map(str::to_string),
            platform_admin,
        })
    }

    pub async fn user(&self, id: &str) -> Result<User> {
        let row = sqlx::query(
            "SELECT id, subject, organisation, platform_admin FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| CatalogueError::NotFound(format!("user {id}")))?;
        user_from(&row)
    }

    pub async fn user_by_subject(&self, subject: &str) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, subject, organisation, platform_admin FROM users WHERE subject = $1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from).transpose()
    }

    pub async fn list_users(&self, page: Page) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, subject, organisation, platform_admin FROM users ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from).collect()
    }

    pub async fn count_platform_admins(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE platform_admin = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The user as the policy module sees them: organisation, admin flag and study roles.
    pub async fn principal(&self, user: &User) -> Result<Principal> {
        let rows =
            sqlx::query("SELECT study, role FROM grants WHERE user_id = $1 ORDER BY study, role")
                .bind(&user.id)
                .fetch_all(&self.pool)
                .await?;
        let mut grants = Vec::with_capacity(rows.len());
        for r in &rows {
            let role: String = r.try_get("role")?;
            if let Some(role) = parse_role(&role) {
                grants.push(Grant {
                    study: r.try_get("study")?,
                    role,
                });
            }
        }
        Ok(Principal {
            id: user.id.clone(),
            organisation: user.organisation.clone(),
            platform_admin: user.platform_admin,
            grants,
        })
    }

    // ---- API tokens ----

    pub async fn store_token(&self, t: &TokenEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, secret_sha256, expires_ms, revoked, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.secret_sha256)
        .bind(t.expires_ms)
        .bind(flag(t.revoked))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("token {}", t.id)))?;
        Ok(())
    }

    /// A token and its user in one query (every API-token request starts here).
    pub async fn token_with_user(&self, id: &str) -> Result<Option<(TokenEntry, User)>> {
        let row = sqlx::query(
            "SELECT t.id AS token_id, t.user_id, t.secret_sha256, t.expires_ms, t.revoked, \
             u.id, u.subject, u.organisation, u.platform_admin \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                TokenEntry {
                    id: r.try_get("token_id")?,
                    user_id: r.try_get("user_id")?,
                    secret_sha256: r.try_get("secret_sha256")?,
                    expires_ms: r.try_get("expires_ms")?,
                    revoked: r.try_get::<i64, _>("revoked")? != 0,
                },
                user_from(&r)?,
            ))
        })
        .transpose()
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenEntry>> {
        let row = sqlx::query(
            "SELECT id, user_id, secret_sha256, expires_ms, revoked FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenEntry {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                secret_sha256: r.try_get("secret_sha256")?,
                expires_ms: r.try_get("expires_ms")?,
                revoked: r.try_get::<i64, _>("revoked")? != 0,
            })
        })
        .transpose()
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let n = sqlx::query("UPDATE api_tokens SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(CatalogueError::NotFound(format!("token {id}")));
        }
        Ok(())
    }

    // ---- studies and grants ----

    pub async fn create_study(
        &self,
        id: &str,
        title: &str,
        organisations: &[String],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO studies (id, title, created_ms) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(title)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(exists_or(format!("study {id}")))?;
        for org in organisations {
            sqlx::query("INSERT INTO study_organisations (study, organisation) VALUES ($1, $2)")
                .bind(id)
                .bind(org)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn study(&self, id: &str) -> Result<Option<Study>> {
        let Some(row) = sqlx::query("SELECT id, title FROM studies WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let organisations = sqlx::query_scalar(
            "SELECT organisation FROM study_organisations WHERE study = $1 ORDER BY organisation",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(Study {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            organisations,
        }))
    }

    /// Studies the user has a role in (need-to-know), or all of them (`user = None`: platform
    /// administration, which sees study ids and titles only).
    pub async fn list_studies(&self, user: Option<&str>, page: Page) -> Result<Vec<Study>> {
        let ids: Vec<String> = match user {
            Some(u) => sqlx::query_scalar(
                "SELECT s.id FROM studies s WHERE EXISTS (SELECT 1 FROM grants g WHERE g.study = s.id AND g.user_id = $1) ORDER BY s.id LIMIT $2 OFFSET $3",
            )
            .bind(u)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query_scalar("SELECT id FROM studies ORDER BY id LIMIT $1 OFFSET $2")
                .bind(page.limit)
                .bind(page.offset)
                .fetch_all(&self.pool)
                .await?,
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.study(&id).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    pub async fn grant(&self, user_id: &str, study: &str, role: StudyRole) -> Result<()> {
        let r = sqlx::query("INSERT INTO grants (user_id, study, role) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(study)
            .bind(role_name(role))
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(()),
            // Granting a role twice is not an error.
            Err(e) if unique_violation(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn revoke_grant(&self, user_id: &str, study: &str, role: StudyRole) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM grants WHERE user_id = $1 AND study = $2 AND role = $3")
                .bind(user_id)
                .bind(study)
                .bind(role_name(role))
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    // ---- datasets ----

    pub async fn create_dataset(
        &self,
        d: &Dataset,
        key: &WrappedDataKey,
        created_by: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO datasets (id, pid, study, owner_organisation, title, licence, provenance, retention_until_ms, legal_hold, wrapped_key, master_version, created_by, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&d.id)
        .bind(&d.pid)
        .bind(&d.study)
        .bind(&d.owner_organisation)
        .bind(&d.title)
        .bind(&d.licence)
        .bind(serde_json::to_string(&d.provenance).unwrap_or_default())
        .bind(d.retention_until_ms)
        .bind(flag(d.legal_hold))
        .bind(&key.wrapped_hex)
        .bind(key.master_version as i64)
        .bind(created_by)
        .bind(d.created_ms)
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("dataset {}", d.id)))?;
        Ok(())
    }

    pub async fn dataset(&self, id: &str) -> Result<Option<Dataset>> {
        let row = sqlx::query("SELECT * FROM datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dataset_from).transpose()
    }

    pub async fn wrapped_key(&self, dataset: &str) -> Result<WrappedDataKey> {
        let row = sqlx::query("SELECT wrapped_key, master_version FROM datasets WHERE id = $1")
            .bind(dataset)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| CatalogueError::NotFound(format!("dataset {dataset}")))?;
        Ok(WrappedDataKey {
            dataset: dataset.to_string(),
            wrapped_hex: row.try_get("wrapped_key")?,
            master_version: row.try_get::<i64, _>("master_version")? as u32,
        })
    }

    pub async fn all_wrapped_keys(&self) -> Result<Vec<WrappedDataKey>> {
        let rows = sqlx::query("SELECT id, wrapped_key, master_version FROM datasets ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WrappedDataKey {
                    dataset: r.try_get("id")?,
                    wrapped_hex: r.try_get("wrapped_key")?,
                    master_version: r.try_get::<i64, _>("master_version")? as u32,
                })
            })
            .collect()
    }

    /// Replace wrapped keys (master-key rotation), all in one transaction.
    pub async fn replace_wrapped_keys(&self, keys: &[WrappedDataKey]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for k in keys {
            sqlx::query("UPDATE datasets SET wrapped_key = $1, master_version = $2 WHERE id = $3")
                .bind(&k.wrapped_hex)
                .bind(k.master_version as i64)
                .bind(&k.dataset)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Datasets of studies the user has a role in, optionally of one study, optionally with a
    /// title containing `text`.
    pub async fn list_datasets(
        &self,
        user_id: &str,
        study: Option<&str>,
        text: Option<&str>,
        page: Page,
    ) -> Result<Vec<Dataset>> {
        let rows = sqlx::query(
            "SELECT d.* FROM datasets d \
             WHERE EXISTS (SELECT 1 FROM grants g WHERE g.study = d.study AND g.user_id = $1) \
             AND ($2 = '' OR d.study = $2) \
             AND ($3 = '' OR LOWER(d.title) LIKE $4 ESCAPE '\\') \
             ORDER BY d.created_ms, d.id LIMIT $5 OFFSET $6",
        )
        .bind(user_id)
        .bind(study.unwrap_or(""))
        .bind(text.unwrap_or(""))
        .bind(format!(
            "%{}%",
            like_pattern(&text.unwrap_or("").to_lowercase())
        ))
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dataset_from).collect()
    }

    pub async fn set_legal_hold(&self, dataset: &str, hold: bool) -> Result<()> {
        sqlx::query("UPDATE datasets SET legal_hold = $1 WHERE id = $2")
            .bind(flag(hold))
            .bind(dataset)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Datasets whose retention ended before `now_ms` and that are not on legal hold.
    pub async fn expired_datasets(&self, now_ms: i64) -> Result<Vec<Dataset>> {
        let rows = sqlx::query(
            "SELECT * FROM datasets WHERE retention_until_ms < $1 AND legal_hold = 0 ORDER BY id",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dataset_from).collect()
    }

    pub async fn all_dataset_ids(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM datasets ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Remove a dataset's rows: index, objects, uploads and the dataset itself with its wrapped
    /// key (so the data key is gone: crypto-shredding). One transaction.
    pub async fn delete_dataset(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM instances WHERE dataset = $1",
            "DELETE FROM objects WHERE dataset = $1",
            "DELETE FROM uploads WHERE dataset = $1",
            "DELETE FROM datasets WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- objects and the DICOM index ----

    /// Make an object visible: its row and, for DICOM, its index row, in one transaction.
    pub async fn add_object(
        &self,
        o: &ObjectEntry,
        instance: Option<&InstanceEntry>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO objects (dataset, id, name, media_type, size, sha256, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&o.dataset)
        .bind(&o.id)
        .bind(&o.name)
        .bind(&o.media_type)
        .bind(o.size)
        .bind(&o.sha256)
        .bind(o.created_ms)
        .execute(&mut *tx)
        .await
        .map_err(exists_or(format!("an object named {:?}", o.name)))?;
        if let Some(i) = instance {
            sqlx::query(
                "INSERT INTO instances (dataset, object, study_uid, series_uid, sop_uid, sop_class_uid, modality, patient_id, patient_name, study_date, series_number, instance_number) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&i.dataset)
            .bind(&i.object)
            .bind(&i.study_uid)
            .bind(&i.series_uid)
            .bind(&i.sop_uid)
            .bind(&i.sop_class_uid)
            .bind(&i.modality)
            .bind(&i.patient_id)
            .bind(&i.patient_name)
            .bind(&i.study_date)
            .bind(&i.series_number)
            .bind(&i.instance_number)
            .execute(&mut *tx)
            .await
            .map_err(exists_or(format!("instance in dataset {}", i.dataset)))?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn object(&self, dataset: &str, id: &str) -> Result<Option<ObjectEntry>> {
        let row = sqlx::query("SELECT * FROM objects WHERE dataset = $1 AND id = $2")
            .bind(dataset)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(object_from).transpose()
    }

    /// The object of a dataset with exactly this name, if any (names are stored in NFC).
    pub async fn object_named(&self, dataset: &str, name: &str) -> Result<Option<ObjectEntry>> {
        let row = sqlx::query("SELECT * FROM objects WHERE dataset = $1 AND name = $2 LIMIT 1")
            .bind(dataset)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(object_from).transpose()
    }

    pub async fn list_objects(&self, dataset: &str, page: Page) -> Result<Vec<ObjectEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM objects WHERE dataset = $1 ORDER BY created_ms, id LIMIT $2 OFFSET $3",
        )
        .bind(dataset)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(object_from).collect()
    }

    pub async fn object_ids(&self, dataset: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM objects WHERE dataset = $1")
                .bind(dataset)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn delete_object(&self, dataset: &str, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM instances WHERE dataset = $1 AND object = $2")
            .bind(dataset)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM objects WHERE dataset = $1 AND id = $2")
            .bind(dataset)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// QIDO-RS over the instances of studies the user has a role in. Study and series levels
    /// group instances; every level is paged.
    pub async fn query_dicom(
        &self,
        user_id: &str,
        level: Level,
        q: &DicomQuery,
        page: Page,
    ) -> Result<Vec<DicomMatch>> {
        let (select, group) = match level {
            Level::Study => (
                "i.dataset, i.study_uid, MIN(i.patient_id) AS patient_id, MIN(i.patient_name) AS patient_name, MIN(i.study_date) AS study_date, MIN(i.modality) AS modality, MIN(d.study) AS study, MIN(d.owner_organisation) AS owner_organisation, COUNT(*) AS n",
                "GROUP BY i.study_uid, i.dataset ORDER BY i.study_uid, i.dataset",
            ),
            Level::Series => (
                "i.dataset, i.study_uid, i.series_uid, MIN(i.patient_id) AS patient_id, MIN(i.patient_name) AS patient_name, MIN(i.study_date) AS study_date, MIN(i.modality) AS modality, MIN(i.series_number) AS series_number, MIN(d.study) AS study, MIN(d.owner_organisation) AS owner_organisation, COUNT(*) AS n",
                "GROUP BY i.series_uid, i.dataset, i.study_uid ORDER BY i.series_uid, i.dataset",
            ),
            Level::Instance => (
                "i.dataset, i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.object, i.patient_id, i.patient_name, i.study_date, i.modality, i.series_number, i.instance_number, d.study, d.owner_organisation, CAST(1 AS BIGINT) AS n",
                "ORDER BY i.sop_uid, i.dataset",
            ),
        };
        // CROSS JOIN keeps instances as the outer loop in SQLite (PostgreSQL plans it as an
        // inner join), so a page walks the (uid, dataset) index in order and stops at its limit.
        let sql = format!(
            "SELECT {select} FROM instances i CROSS JOIN datasets d \
             WHERE d.id = i.dataset AND d.study IN (SELECT g.study FROM grants g WHERE g.user_id = $1) \
             AND ($2 = '' OR i.study_uid = $2) AND ($3 = '' OR i.series_uid = $3) AND ($4 = '' OR i.sop_uid = $4) \
             AND ($5 = '' OR i.patient_id LIKE $5 ESCAPE '\\') AND ($6 = '' OR LOWER(i.patient_name) LIKE LOWER($6) ESCAPE '\\') \
             AND ($7 = '' OR i.modality = $7) AND ($8 = '' OR i.study_date >= $8) AND ($9 = '' OR i.study_date <= $9) \
             {group} LIMIT $10 OFFSET $11"
        );
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let l = |v: &Option<String>| v.as_deref().map(like_pattern).unwrap_or_default();
        // Built only from the constant fragments above; every value is a bound parameter.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(s(&q.study_uid))
            .bind(s(&q.series_uid))
            .bind(s(&q.sop_uid))
            .bind(l(&q.patient_id))
            .bind(l(&q.patient_name))
            .bind(s(&q.modality))
            .bind(s(&q.study_date_from))
            .bind(s(&q.study_date_to))
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        let opt = |r: &AnyRow, c: &str| -> Option<String> {
            (level != Level::Study
                && (level == Level::Instance || c == "series_uid" || c == "series_number"))
                .then(|| r.try_get::<String, _>(c).ok())
                .flatten()
        };
        rows.iter()
            .map(|r| {
                Ok(DicomMatch {
                    dataset: r.try_get("dataset")?,
                    study_uid: r.try_get("study_uid")?,
                    series_uid: opt(r, "series_uid"),
                    sop_uid: opt(r, "sop_uid"),
                    sop_class_uid: opt(r, "sop_class_uid"),
                    object: opt(r, "object"),
                    patient_id: r.try_get("patient_id")?,
                    patient_name: r.try_get("patient_name")?,
                    study_date: r.try_get("study_date")?,
                    modality: r.try_get("modality")?,
                    series_number: opt(r, "series_number"),
                    instance_number: opt(r, "instance_number"),
                    instances: r.try_get("n")?,
                    study: r.try_get("study")?,
                    owner_organisation: r.try_get("owner_organisation")?,
                })
            })
            .collect()
    }

    // ---- uploads ----

    pub async fn create_upload(&self, u: &UploadEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO uploads (id, dataset, object, name, media_type, started_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&u.id)
        .bind(&u.dataset)
        .bind(&u.object)
        .bind(&u.name)
        .bind(&u.media_type)
        .bind(&u.started_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(exists_or(format!("upload {}", u.id)))?;
        Ok(())
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadEntry>> {
        let row = sqlx::query("SELECT * FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UploadEntry {
                id: r.try_get("id")?,
                dataset: r.try_get("dataset")?,
                object: r.try_get("object")?,
                name: r.try_get("name")?,
                media_type: r.try_get("media_type")?,
                started_by: r.try_get("started_by")?,
            })
        })
        .transpose()
    }

    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_sql_wildcards() {
        assert_eq!(like_pattern("AB*"), "AB%");
        assert_eq!(like_pattern("A%B_"), "A\\%B\\_");
        assert_eq!(like_pattern("*"), "%");
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for r in [
            StudyRole::StudyCoordinator,
            StudyRole::Researcher,
            StudyRole::SiteOperator,
            StudyRole::DataOwner,
            StudyRole::Auditor,
        ] {
            assert_eq!(parse_role(&role_name(r)), Some(r));
        }
        assert_eq!(parse_role("platform-admin"), None);
    }
}
