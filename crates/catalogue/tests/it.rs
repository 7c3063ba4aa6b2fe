//! The catalogue's migrations run through sqlx's migrator, and a catalogue made by the earlier
//! hand-written runner (versions in `schema_migrations`) is adopted without re-running anything;
//! later migrations then run on it.

use medfed_catalogue::Catalogue;
use sqlx::Connection;

const LEGACY: [(i64, &str); 3] = [
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_sites.sql")),
    (3, include_str!("../migrations/0003_runs.sql")),
];

#[tokio::test]
async fn a_catalogue_of_the_hand_written_runner_is_adopted_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("catalogue.db").display()
    );
    sqlx::any::install_default_drivers();
    {
        // What the hand-written runner left: its table, every migration applied, and data.
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        for (version, sql) in LEGACY {
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            sqlx::query("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, 0)")
                .bind(version)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        // Two objects of one name, which that hub's check-then-insert let a race store (their
        // dataset row is beside the point here).
        sqlx::raw_sql("PRAGMA foreign_keys = OFF")
            .execute(&mut conn)
            .await
            .unwrap();
        for (id, ms) in [("o-late", 2), ("o-early", 1)] {
            sqlx::query("INSERT INTO objects (dataset, id, name, media_type, size, sha256, created_ms) VALUES ('ds', $1, 'scan.dcm', 'application/dicom', 1, 'x', $2)")
                .bind(id)
                .bind(ms)
                .execute(&mut conn)
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
    }
    let cat = Catalogue::open(&url)
        .await
        .expect("adopted, nothing re-run");
    cat.create_organisation("org-a", "Hospital A")
        .await
        .unwrap();
    // Both objects kept; the later one renamed so that the unique index could be made.
    let early = cat.object("ds", "o-early").await.unwrap().unwrap();
    let late = cat.object("ds", "o-late").await.unwrap().unwrap();
    assert_eq!(early.name, "scan.dcm");
    assert_eq!(late.name, "scan.dcm [o-late]");
    // Now the database itself refuses a second object of a name, whatever the hub checked.
    let again = medfed_catalogue::ObjectEntry {
        id: "o-third".into(),
        ..early.clone()
    };
    let e = cat.add_object(&again, None).await.unwrap_err();
    assert!(
        matches!(e, medfed_catalogue::CatalogueError::Exists(ref w) if w.contains("scan.dcm")),
        "{e}"
    );
    cat.close().await;
    // Reopened: the migrator finds every version applied, with matching checksums.
    let cat = Catalogue::open(&url).await.unwrap();
    assert!(cat.organisation_exists("org-a").await.unwrap());
    cat.close().await;
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        applied,
        LEGACY.len() as i64 + 1,
        "the legacy three, then 0004"
    );
}

#[tokio::test]
async fn a_changed_migration_is_refused_rather_than_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("catalogue.db").display()
    );
    Catalogue::open(&url).await.unwrap().close().await;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 2")
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let e = Catalogue::open(&url).await.err().expect("refused");
    assert!(e.to_string().contains("migration"), "{e}");
}
