//! The authorisation matrix: principals x routes (every route of the OpenAPI table) -> the
//! expected status, through the router in-process; plus search filtering and the rule that a
//! hidden resource answers exactly like a missing one.

use axum::http::StatusCode;
use medfed_policy::StudyRole::{self, *};
use serde_json::{Value, json};

use crate::support::{Fixture, backends, dataset_body, instance, pseudonym};

/// Columns of the matrix.
const PRINCIPALS: [&str; 11] = [
    "anon",
    "admin",
    "admin+res",
    "coord",
    "res-a",
    "res-b",
    "op-a1",
    "op-a2",
    "owner-a1",
    "auditor",
    "outsider",
];

/// The world every cell starts from: studies A and B (organisations org1 and org2), dataset DA
/// (A, org1) with a plain object, a DICOM instance and a pending upload; dataset DB (B, org1).
struct World {
    f: Fixture,
    tokens: Vec<Option<String>>,
    user_ids: Vec<String>,
    token_ids: Vec<String>,
    da: String,
    db: String,
    da_object: String,
    upload: String,
    study_uid: String,
    series_uid: String,
    sop_uid: String,
    db_study_uid: String,
    site: String,
    task: String,
}

async fn world(backend: &str) -> World {
    let f = Fixture::new(backend).await;
    let c = &f.hub.catalogue;
    c.create_organisation("org1", "Hospital One").await.unwrap();
    c.create_organisation("org2", "Hospital Two").await.unwrap();
    c.create_study("study-a", "Study A", &["org1".into(), "org2".into()])
        .await
        .unwrap();
    c.create_study("study-b", "Study B", &["org1".into(), "org2".into()])
        .await
        .unwrap();
    type Spec<'a> = (&'a str, Option<&'a str>, bool, &'a [(&'a str, StudyRole)]);
    let specs: [Spec; 10] = [
        ("admin", None, true, &[]),
        ("admin-res", None, true, &[("study-a", Researcher)]),
        (
            "coord",
            Some("org1"),
            false,
            &[("study-a", StudyCoordinator)],
        ),
        ("res-a", Some("org1"), false, &[("study-a", Researcher)]),
        ("res-b", Some("org2"), false, &[("study-b", Researcher)]),
        ("op-a1", Some("org1"), false, &[("study-a", SiteOperator)]),
        ("op-a2", Some("org2"), false, &[("study-a", SiteOperator)]),
        ("owner-a1", Some("org1"), false, &[("study-a", DataOwner)]),
        ("auditor", Some("org2"), false, &[("study-a", Auditor)]),
        ("outsider", Some("org1"), false, &[]),
    ];
    let mut tokens = vec![None];
    let mut user_ids = vec![String::new()];
    let mut token_ids = vec![String::new()];
    for (name, org, admin, grants) in specs {
        let (id, t) = f.user(&format!("local:{name}"), org, admin, grants).await;
        token_ids.push(medfed_auth::ApiTokens::id_of(&t).unwrap().to_string());
        tokens.push(Some(t));
        user_ids.push(id);
    }
    let (_, op_b) = f
        .user(
            "local:op-b1",
            Some("org1"),
            false,
            &[("study-b", SiteOperator)],
        )
        .await;
    let op_a1 = tokens[6].clone().unwrap();
    let (s, v) = f
        .call(
            "POST",
            "/api/v1/studies/study-a/datasets",
            Some(&op_a1),
            Some(dataset_body()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let da = v["id"].as_str().unwrap().to_string();
    let (s, v) = f
        .call(
            "POST",
            "/api/v1/studies/study-b/datasets",
            Some(&op_b),
            Some(dataset_body()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let db = v["id"].as_str().unwrap().to_string();
    let da_object = f
        .upload(
            &op_a1,
            &da,
            "features.csv",
            "text/csv",
            b"case,volume\n1,2.5\n",
            7,
        )
        .await;
    let (study_uid, series_uid, sop_uid) = (
        "2.25.1001".to_string(),
        "2.25.1002".to_string(),
        "2.25.1003".to_string(),
    );
    let (s, v) = f
        .stow(
            &op_a1,
            &da,
            &[instance(
                &study_uid,
                &series_uid,
                &sop_uid,
                &pseudonym("A"),
                &pseudonym("A"),
                true,
            )],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let db_study_uid = "2.25.2001".to_string();
    let (s, _) = f
        .stow(
            &op_b,
            &db,
            &[instance(
                &db_study_uid,
                "2.25.2002",
                "2.25.2003",
                &pseudonym("B"),
                &pseudonym("B"),
                true,
            )],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let pending = b"0123456789";
    let upload = f
        .start_upload(
            &op_a1,
            &da,
            "pending.bin",
            "application/octet-stream",
            pending,
            10,
        )
        .await;
    let (s, _) = f.put_chunk(&op_a1, &upload, 0, pending).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (site, task) = enrolled_site_with_task(c, &w_user(&f, "local:coord").await).await;
    World {
        f,
        tokens,
        user_ids,
        token_ids,
        da,
        db,
        da_object,
        upload,
        study_uid,
        series_uid,
        sop_uid,
        db_study_uid,
        site,
        task,
    }
}

async fn w_user(f: &Fixture, subject: &str) -> String {
    f.hub
        .catalogue
        .user_by_subject(subject)
        .await
        .unwrap()
        .unwrap()
        .id
}

/// A site of org1 (enrolled through the catalogue; its certificate is not used here) with a
/// queued task of study A.
async fn enrolled_site_with_task(c: &medfed_catalogue::Catalogue, coord: &str) -> (String, String) {
    use medfed_catalogue::{Enrolment, Site, SiteCertificate, Task, now_ms};
    c.create_enrolment(&Enrolment {
        id: "e1".into(),
        study: "study-a".into(),
        organisation: "org1".into(),
        secret_sha256: "00".into(),
        expires_ms: now_ms() + 60_000,
        created_by: coord.into(),
        used_ms: None,
    })
    .await
    .unwrap();
    let site = Site {
        id: "site1".into(),
        organisation: "org1".into(),
        user_id: "site1-user".into(),
        name: "Site One".into(),
        enrolled_ms: now_ms(),
        revoked_ms: None,
        last_seen_ms: None,
        version: String::new(),
        state: json!({}),
    };
    let cert = SiteCertificate {
        fingerprint: "ab".repeat(32),
        site_id: "site1".into(),
        serial: "01".into(),
        not_after_ms: now_ms() + 60_000,
    };
    c.redeem_enrolment("e1", &site, &cert).await.unwrap();
    let task = Task {
        id: "task1".into(),
        site_id: "site1".into(),
        study: "study-a".into(),
        kind: "features".into(),
        params: json!({}),
        status: "queued".into(),
        detail: String::new(),
        progress: json!({}),
        created_by: coord.into(),
        created_ms: now_ms(),
        updated_ms: now_ms(),
    };
    c.create_task(&task).await.unwrap();
    ("site1".into(), "task1".into())
}

/// One row: method, path (with placeholders), body, whether each cell needs a fresh world
/// (the request changes state), and the expected status per principal.
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    fresh: bool,
    expect: [u16; 11],
}

const fn row(
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    fresh: bool,
    expect: [u16; 11],
) -> Row {
    Row {
        method,
        path,
        body,
        fresh,
        expect,
    }
}

// anon, admin, admin+res, coord, res-a, res-b, op-a1, op-a2, owner-a1, auditor, outsider
const ALL_AUTH: [u16; 11] = [401, 200, 200, 200, 200, 200, 200, 200, 200, 200, 200];
const ADMIN_ONLY: [u16; 11] = [401, 200, 200, 403, 403, 403, 403, 403, 403, 403, 403];
const ADMIN_CREATE: [u16; 11] = [401, 201, 201, 403, 403, 403, 403, 403, 403, 403, 403];
const MEMBERS_OF_A: [u16; 11] = [401, 404, 200, 200, 200, 404, 200, 200, 200, 200, 404];
const COORDINATOR_OF_A: [u16; 11] = [401, 404, 403, 204, 403, 404, 403, 403, 403, 403, 404];
const RESEARCHERS_OF_A: [u16; 11] = [401, 404, 200, 403, 200, 404, 403, 403, 403, 403, 404];
const OWNER_A1: [u16; 11] = [401, 404, 403, 403, 403, 404, 403, 403, 204, 403, 404];
/// Site-node routes need a client certificate: a bearer token of a person is not a site.
const SITES_ONLY: [u16; 11] = [401, 403, 403, 403, 403, 403, 403, 403, 403, 403, 403];
const fn operator_a1(ok: u16) -> [u16; 11] {
    [401, 404, 403, 403, 403, 404, ok, 403, 403, 403, 404]
}

const ROWS: &[Row] = &[
    row("GET", "/api/v1/enrol/trust", None, false, [200; 11]),
    // A wrong one-time token is refused for everyone (each cell its own token id, so the
    // failure limit does not turn the answer into 429).
    row(
        "POST",
        "/api/v1/enrol",
        Some(r#"{"token": "mfe1.00{n}.bad", "csr_pem": "x"}"#),
        false,
        [401; 11],
    ),
    row(
        "POST",
        "/api/v1/site/poll",
        Some(r#"{"wait_s": 0}"#),
        false,
        SITES_ONLY,
    ),
    row(
        "POST",
        "/api/v1/site/renew",
        Some(r#"{"csr_pem": "x"}"#),
        false,
        SITES_ONLY,
    ),
    row(
        "POST",
        "/api/v1/site/tasks/{task}",
        Some(r#"{"status": "running"}"#),
        false,
        SITES_ONLY,
    ),
    row(
        "POST",
        "/api/v1/studies/study-a/enrolments",
        Some(r#"{"organisation": "org1"}"#),
        false,
        [401, 404, 403, 201, 403, 404, 403, 403, 403, 403, 404],
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/sites",
        None,
        false,
        MEMBERS_OF_A,
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/tasks",
        None,
        false,
        MEMBERS_OF_A,
    ),
    row(
        "POST",
        "/api/v1/studies/study-a/tasks",
        Some(r#"{"site": "{site}", "kind": "features"}"#),
        false,
        [401, 404, 403, 201, 403, 404, 403, 403, 403, 403, 404],
    ),
    row(
        "DELETE",
        "/api/v1/studies/study-a/tasks/{task}",
        None,
        true,
        COORDINATOR_OF_A,
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/runs",
        None,
        false,
        MEMBERS_OF_A,
    ),
    row(
        "POST",
        "/api/v1/studies/study-a/runs",
        // Allowed for the coordinator, then refused: the world's site has no table.
        Some(
            r#"{"spec": "study = \"study-a\"\n[data]\ntable = \"t\"\nlabel = \"y\"\nfeatures = [\"x\"]\n[algorithm]\nkind = \"fedavg\"\n"}"#,
        ),
        false,
        [401, 404, 403, 422, 403, 404, 403, 403, 403, 403, 404],
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/runs/no-such-run",
        None,
        false,
        [401, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404],
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/runs/no-such-run/results/result.json",
        None,
        false,
        [401, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404],
    ),
    row(
        "DELETE",
        "/api/v1/studies/study-a/runs/no-such-run",
        None,
        false,
        [401, 404, 403, 404, 403, 404, 403, 403, 403, 403, 404],
    ),
    row(
        "POST",
        "/api/v1/site/runs/no-such-run/exchange",
        Some(r#"{"message": "poll", "wait_ms": 0}"#),
        false,
        SITES_ONLY,
    ),
    row("GET", "/api/v1/sites", None, false, ADMIN_ONLY),
    row(
        "POST",
        "/api/v1/sites/{site}/revoke",
        None,
        true,
        [401, 204, 204, 403, 403, 403, 403, 403, 403, 403, 403],
    ),
    row("GET", "/api/v1/health", None, false, [200; 11]),
    row("GET", "/api/v1/openapi.json", None, false, [200; 11]),
    row("GET", "/api/v1/me", None, false, ALL_AUTH),
    row(
        "POST",
        "/api/v1/tokens",
        Some(r#"{"days": 1}"#),
        false,
        [401, 201, 201, 201, 201, 201, 201, 201, 201, 201, 201],
    ),
    // res-a's token: its owner and platform admins may revoke it; to others it does not exist.
    row(
        "DELETE",
        "/api/v1/tokens/{res_a_token}",
        None,
        true,
        [401, 204, 204, 404, 204, 404, 404, 404, 404, 404, 404],
    ),
    row("GET", "/api/v1/organisations", None, false, ADMIN_ONLY),
    row(
        "POST",
        "/api/v1/organisations",
        Some(r#"{"id": "org-new-{n}", "name": "New"}"#),
        false,
        ADMIN_CREATE,
    ),
    row("GET", "/api/v1/users", None, false, ADMIN_ONLY),
    row(
        "POST",
        "/api/v1/users",
        Some(r#"{"subject": "local:new-{n}", "organisation": "org1"}"#),
        false,
        ADMIN_CREATE,
    ),
    row("GET", "/api/v1/admin/studies", None, false, ADMIN_ONLY),
    row("GET", "/api/v1/studies", None, false, ALL_AUTH),
    row(
        "POST",
        "/api/v1/studies",
        Some(
            r#"{"id": "study-new-{n}", "title": "T", "organisations": ["org1"], "coordinator": "{coord}"}"#,
        ),
        false,
        ADMIN_CREATE,
    ),
    row("GET", "/api/v1/studies/study-a", None, false, MEMBERS_OF_A),
    row(
        "POST",
        "/api/v1/studies/study-a/grants",
        Some(r#"{"user": "{outsider}", "role": "researcher"}"#),
        true,
        COORDINATOR_OF_A,
    ),
    row(
        "DELETE",
        "/api/v1/studies/study-a/grants/{res_a}/researcher",
        None,
        true,
        COORDINATOR_OF_A,
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/datasets",
        None,
        false,
        MEMBERS_OF_A,
    ),
    row(
        "POST",
        "/api/v1/studies/study-a/datasets",
        Some("{dataset_body}"),
        false,
        [401, 404, 403, 403, 403, 404, 201, 201, 403, 403, 404],
    ),
    row(
        "GET",
        "/api/v1/studies/study-a/audit",
        None,
        false,
        [401, 404, 403, 200, 403, 404, 403, 403, 403, 200, 404],
    ),
    row("GET", "/api/v1/datasets", None, false, ALL_AUTH),
    row("GET", "/api/v1/datasets/{da}", None, false, MEMBERS_OF_A),
    row("DELETE", "/api/v1/datasets/{da}", None, true, OWNER_A1),
    row(
        "PUT",
        "/api/v1/datasets/{da}/legal-hold",
        Some(r#"{"hold": false}"#),
        false,
        OWNER_A1,
    ),
    row(
        "GET",
        "/api/v1/datasets/{da}/objects",
        None,
        false,
        MEMBERS_OF_A,
    ),
    row(
        "GET",
        "/api/v1/datasets/{da}/objects/{da_object}",
        None,
        false,
        RESEARCHERS_OF_A,
    ),
    row(
        "POST",
        "/api/v1/datasets/{da}/uploads",
        Some(
            r#"{"name": "x.bin", "media_type": "application/octet-stream", "size": 3, "sha256": "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81", "chunk_size": 3}"#,
        ),
        false,
        operator_a1(201),
    ),
    row(
        "GET",
        "/api/v1/uploads/{upload}",
        None,
        false,
        operator_a1(200),
    ),
    row(
        "DELETE",
        "/api/v1/uploads/{upload}",
        None,
        true,
        operator_a1(204),
    ),
    row(
        "PUT",
        "/api/v1/uploads/{upload}/chunks/0",
        Some("0123456789"),
        false,
        operator_a1(204),
    ),
    row(
        "POST",
        "/api/v1/uploads/{upload}/complete",
        None,
        true,
        operator_a1(201),
    ),
    row("GET", "/api/v1/dicomweb/studies", None, false, ALL_AUTH),
    row(
        "POST",
        "/api/v1/dicomweb/studies?dataset={da}",
        Some("{stow}"),
        true,
        operator_a1(200),
    ),
    row(
        "GET",
        "/api/v1/dicomweb/studies/{study_uid}/series",
        None,
        false,
        ALL_AUTH,
    ),
    row(
        "GET",
        "/api/v1/dicomweb/studies/{study_uid}/series/{series_uid}/instances",
        None,
        false,
        ALL_AUTH,
    ),
    row(
        "GET",
        "/api/v1/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
        None,
        false,
        RESEARCHERS_OF_A,
    ),
];

fn fill(s: &str, w: &World, n: usize) -> String {
    s.replace("{res_a_token}", &w.token_ids[4])
        .replace("{res_a}", &w.user_ids[4])
        .replace("{coord}", &w.user_ids[3])
        .replace("{outsider}", &w.user_ids[10])
        .replace("{da_object}", &w.da_object)
        .replace("{da}", &w.da)
        .replace("{upload}", &w.upload)
        .replace("{study_uid}", &w.study_uid)
        .replace("{series_uid}", &w.series_uid)
        .replace("{sop_uid}", &w.sop_uid)
        .replace("{site}", &w.site)
        .replace("{task}", &w.task)
        .replace("{n}", &n.to_string())
}

async fn cell(w: &World, r: &Row, p: usize) -> StatusCode {
    use axum::body::Body;
    use axum::http::Request;
    let path = fill(r.path, w, p);
    let mut b = Request::builder().method(r.method).uri(&path);
    if let Some(t) = &w.tokens[p] {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = match r.body {
        None => b.body(Body::empty()),
        Some("{stow}") => {
            let sop = format!("2.25.9{p}");
            let inst = instance(
                &w.study_uid,
                &w.series_uid,
                &sop,
                &pseudonym("A"),
                &pseudonym("A"),
                true,
            );
            let mut body = b"--bb\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
            body.extend_from_slice(&inst);
            body.extend_from_slice(b"\r\n--bb--\r\n");
            b.header(
                "content-type",
                "multipart/related; type=\"application/dicom\"; boundary=bb",
            )
            .body(Body::from(body))
        }
        Some("0123456789") => b
            .header(
                "x-medfed-chunk-sha256",
                crate::support::sha256(b"0123456789"),
            )
            .body(Body::from("0123456789")),
        Some("{dataset_body}") => b
            .header("content-type", "application/json")
            .body(Body::from(dataset_body().to_string())),
        Some(json) => b
            .header("content-type", "application/json")
            .body(Body::from(fill(json, w, p))),
    }
    .unwrap();
    w.f.send(req).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_principal_as_the_policy_says() {
    // Every route of the API is in the matrix.
    let fits = |template: &str, path: &str| {
        let (a, b): (Vec<&str>, Vec<&str>) = (
            template.split('/').collect(),
            path.split('?').next().unwrap_or("").split('/').collect(),
        );
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.starts_with('{') || x == y)
    };
    for route in medfed_hub::openapi::ROUTES {
        assert!(
            ROWS.iter()
                .any(|r| r.method == route.method && fits(route.path, r.path)),
            "route {} {} is not in the matrix",
            route.method,
            route.path
        );
    }
    for backend in backends() {
        let shared = world(backend).await;
        let mut wrong = Vec::new();
        for r in ROWS {
            for (p, principal) in PRINCIPALS.iter().enumerate() {
                let got = if r.fresh {
                    let w = world(backend).await;
                    cell(&w, r, p).await
                } else {
                    cell(&shared, r, p).await
                };
                if got.as_u16() != r.expect[p] {
                    wrong.push(format!(
                        "{backend}: {} {} as {}: {} (expected {})",
                        r.method,
                        r.path,
                        principal,
                        got.as_u16(),
                        r.expect[p]
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} cells differ:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_only_find_what_the_caller_may_know_and_hidden_equals_missing() {
    for backend in backends() {
        let w = world(backend).await;
        let t = |p: usize| w.tokens[p].as_deref();
        // Catalogue search.
        let (_, v) = w.f.call("GET", "/api/v1/datasets", t(4), None).await;
        assert_eq!(ids(&v), vec![w.da.clone()], "{backend}: researcher of A");
        let (_, v) = w.f.call("GET", "/api/v1/datasets", t(5), None).await;
        assert_eq!(ids(&v), vec![w.db.clone()], "{backend}: researcher of B");
        let (_, v) =
            w.f.call("GET", "/api/v1/datasets?study=study-a", t(5), None)
                .await;
        assert!(
            ids(&v).is_empty(),
            "{backend}: naming another study finds nothing"
        );
        let (_, v) = w.f.call("GET", "/api/v1/datasets", t(1), None).await;
        assert!(
            ids(&v).is_empty(),
            "{backend}: platform admin without a study role sees no datasets"
        );
        let (_, v) = w.f.call("GET", "/api/v1/studies", t(5), None).await;
        assert_eq!(ids(&v), vec!["study-b".to_string()]);
        // QIDO-RS.
        let uids = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s["0020000D"]["Value"][0].as_str().unwrap().to_string())
                .collect()
        };
        let (_, v) =
            w.f.call("GET", "/api/v1/dicomweb/studies", t(5), None)
                .await;
        assert_eq!(uids(&v), vec![w.db_study_uid.clone()], "{backend}");
        let (_, v) =
            w.f.call(
                "GET",
                &format!("/api/v1/dicomweb/studies?StudyInstanceUID={}", w.study_uid),
                t(5),
                None,
            )
            .await;
        assert!(
            uids(&v).is_empty(),
            "{backend}: a UID of another study is not found"
        );
        let (_, v) =
            w.f.call("GET", "/api/v1/dicomweb/studies?PatientID=MF*", t(4), None)
                .await;
        assert_eq!(uids(&v), vec![w.study_uid.clone()]);
        // Hidden answers byte-for-byte like missing.
        for (hidden, missing) in [
            (
                format!("/api/v1/datasets/{}", w.da),
                "/api/v1/datasets/00000000-0000-4000-8000-000000000000".to_string(),
            ),
            (
                "/api/v1/studies/study-a".to_string(),
                "/api/v1/studies/study-zz".to_string(),
            ),
            (
                format!("/api/v1/datasets/{}/objects/{}", w.da, w.da_object),
                format!("/api/v1/datasets/{}/objects/ffff", w.db),
            ),
            (
                format!(
                    "/api/v1/dicomweb/studies/{}/series/{}/instances/{}",
                    w.study_uid, w.series_uid, w.sop_uid
                ),
                "/api/v1/dicomweb/studies/1.2/series/1.3/instances/1.4".to_string(),
            ),
        ] {
            let a = w.f.call("GET", &hidden, t(5), None).await;
            let b = w.f.call("GET", &missing, t(5), None).await;
            assert_eq!(a.0, StatusCode::NOT_FOUND, "{backend}: {hidden}");
            assert_eq!(a, b, "{backend}: {hidden} vs {missing}");
        }
        // Paging is mandatory: a page too large is refused; the default page says what comes next.
        let (s, _) =
            w.f.call("GET", "/api/v1/datasets?limit=100000", t(4), None)
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) =
            w.f.call("GET", "/api/v1/dicomweb/studies?limit=100000", t(4), None)
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (_, v) = w.f.call("GET", "/api/v1/users?limit=3", t(1), None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        assert_eq!(v["next_offset"], json!(3));
    }
}
