//! The review's probes of grants and provenance (issue 13, defect 22), against a real hub over
//! HTTPS: a coordinator granting a role to someone outside the study, a hospital claiming
//! another's provenance, an administrator making themself coordinator and then researcher; and
//! the catalogue file's mode.

use medfed_hub::RunningHub;
use medfed_policy::StudyRole;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{config_in, fresh_database};

struct World {
    _dir: tempfile::TempDir,
    hub: RunningHub,
    http: reqwest::Client,
    admin: (String, String),
    coord: (String, String),
    op: (String, String),
    colleague: (String, String),
    stranger: (String, String),
}

impl World {
    async fn call(
        &self,
        who: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(
                method.parse().unwrap(),
                format!("https://127.0.0.1:{}{path}", self.hub.addr.port()),
            )
            .bearer_auth(who);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("an HTTP answer");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn roles(&self, who: &str) -> Vec<Value> {
        let (s, v) = self.call(who, "GET", "/api/v1/me", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["grants"].as_array().cloned().unwrap_or_default()
    }
}

/// Study `s1` of org1 and org2; org3 is not in it. The administrator belongs to org1.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_in(dir.path(), fresh_database("sqlite", dir.path()).await);
    let hub = medfed_hub::start(cfg).await.expect("hub starts");
    let c = &hub.hub.catalogue;
    for o in ["org1", "org2", "org3"] {
        c.create_organisation(o, o).await.unwrap();
    }
    c.create_study("s1", "S1", &["org1".into(), "org2".into()])
        .await
        .unwrap();
    let admin = medfed_hub::bootstrap_on(&hub.hub, "local:admin", Some("org1"))
        .await
        .unwrap();
    let person = async |subject: &str, org: &str, grants: &[StudyRole]| {
        let u = c.create_user(subject, Some(org), false).await.unwrap();
        for r in grants {
            c.grant(&u.id, "s1", *r).await.unwrap();
        }
        (
            u.id.clone(),
            medfed_hub::issue_token(&hub.hub, &u.id, 1).await.unwrap(),
        )
    };
    let coord = person("local:coord", "org1", &[StudyRole::StudyCoordinator]).await;
    let op = person("local:op", "org1", &[StudyRole::SiteOperator]).await;
    let colleague = person("local:colleague", "org2", &[]).await;
    let stranger = person("local:stranger", "org3", &[]).await;
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(hub.hub.ca.cert_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    World {
        _dir: dir,
        hub,
        http,
        admin,
        coord,
        op,
        colleague,
        stranger,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_roles_go_only_to_people_of_the_studys_organisations() {
    let w = world().await;
    let grant = |user: &str| json!({"user": user, "role": "researcher"});
    // Someone of an organisation outside the study: refused, exactly like an unknown user.
    let (s, outside) = w
        .call(
            &w.coord.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(grant(&w.stranger.0)),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{outside}");
    let (s, unknown) = w
        .call(
            &w.coord.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(grant("no-such-user")),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(outside["detail"], unknown["detail"]);
    assert!(w.roles(&w.stranger.1).await.is_empty());
    // The stranger sees nothing of the study.
    let (s, _) = w
        .call(&w.stranger.1, "GET", "/api/v1/studies/s1", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A colleague of a member organisation: granted.
    let (s, v) = w
        .call(
            &w.coord.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(grant(&w.colleague.0)),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(
        w.roles(&w.colleague.1).await,
        vec![json!({"study": "s1", "role": "researcher"})]
    );
    w.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_cannot_make_themself_coordinator_and_then_researcher() {
    let w = world().await;
    // The administrator names themself coordinator of a new study: refused, nothing created.
    let (s, v) = w
        .call(
            &w.admin.1,
            "POST",
            "/api/v1/studies",
            Some(json!({"id": "mine", "title": "Mine", "organisations": ["org1"], "coordinator": w.admin.0})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(w.hub.hub.catalogue.study("mine").await.unwrap().is_none());
    assert!(w.roles(&w.admin.1).await.is_empty());
    // Made coordinator by someone else (the study is created with another coordinator, who
    // grants the administrator the role), they still cannot grant themself researcher.
    let (s, _) = w
        .call(
            &w.coord.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(json!({"user": w.admin.0, "role": "study-coordinator"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = w
        .call(
            &w.admin.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(json!({"user": w.admin.0, "role": "researcher"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // Nor can any coordinator.
    let (s, _) = w
        .call(
            &w.coord.1,
            "POST",
            "/api/v1/studies/s1/grants",
            Some(json!({"user": w.coord.0, "role": "researcher"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let roles = w.roles(&w.admin.1).await;
    assert_eq!(
        roles,
        vec![json!({"study": "s1", "role": "study-coordinator"})]
    );
    assert_eq!(
        w.roles(&w.coord.1).await,
        vec![json!({"study": "s1", "role": "study-coordinator"})]
    );
    w.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_names_the_authenticated_site_and_never_another() {
    let w = world().await;
    let body = |site: Option<&str>| {
        let mut p = json!({"deid_settings": "basic", "medfed_version": "test"});
        if let Some(s) = site {
            p["site"] = json!(s);
        }
        json!({"title": "CT", "licence": "members", "retention_until": "2099-12-31", "provenance": p})
    };
    // org1's operator claims org2 made the data: refused, nothing registered.
    let (s, v) = w
        .call(
            &w.op.1,
            "POST",
            "/api/v1/studies/s1/datasets",
            Some(body(Some("org2"))),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, listed) = w
        .call(&w.op.1, "GET", "/api/v1/studies/s1/datasets", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    // Left out, empty or their own: the hub writes the operator's organisation.
    for site in [None, Some(""), Some("org1")] {
        let (s, v) = w
            .call(
                &w.op.1,
                "POST",
                "/api/v1/studies/s1/datasets",
                Some(body(site)),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{site:?}: {v}");
        assert_eq!(v["provenance"]["site"], "org1", "{site:?}");
        let id = v["id"].as_str().unwrap();
        let stored = w.hub.hub.catalogue.dataset(id).await.unwrap().unwrap();
        assert_eq!(stored.provenance.site, "org1");
    }
    w.hub.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_file_and_its_journal_are_private_to_the_hub() {
    use std::os::unix::fs::PermissionsExt;
    let w = world().await;
    let db = w._dir.path().join("catalogue.db");
    for f in ["catalogue.db", "catalogue.db-wal", "catalogue.db-shm"] {
        let p = w._dir.path().join(f);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    w.hub.stop().await;
    // A catalogue made world-readable by an older hub is narrowed when opened.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cat = medfed_catalogue::Catalogue::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(cat);
}
