//! Fixtures: a hub on a fresh database (SQLite file, or a fresh PostgreSQL schema), principals
//! with API tokens, and requests through the router in-process.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use http_body_util::BodyExt;
use medfed_hub::{Hub, HubConfig};
use medfed_policy::StudyRole::{self, *};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The metadata backends to run on: SQLite always, PostgreSQL when `MEDFED_TEST_DATABASE_URL`
/// names one (always under CI: a missing URL there fails the test instead of skipping the leg).
pub fn backends() -> Vec<&'static str> {
    let mut b = vec!["sqlite"];
    if std::env::var("MEDFED_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        b.push("postgres");
    } else {
        medfed_testkit::skip(
            None,
            "the PostgreSQL leg: MEDFED_TEST_DATABASE_URL is not set",
        );
    }
    b
}

/// A database URL of a fresh, empty catalogue on `backend`.
pub async fn fresh_database(backend: &str, dir: &Path) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}", dir.join("catalogue.db").display()),
        _ => {
            let base = std::env::var("MEDFED_TEST_DATABASE_URL").expect("MEDFED_TEST_DATABASE_URL");
            let schema = format!("t{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
                .await
                .expect("connect to MEDFED_TEST_DATABASE_URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut conn)
                .await
                .expect("create schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options=-c%20search_path%3D{schema}")
        }
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub hub: Arc<Hub>,
    pub router: Router,
}

pub fn config_in(dir: &Path, database_url: String) -> HubConfig {
    HubConfig {
        data_dir: dir.to_path_buf(),
        database_url: Some(database_url),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..HubConfig::default()
    }
}

impl Fixture {
    pub async fn new(backend: &str) -> Fixture {
        Self::with(backend, |_| {}).await
    }

    pub async fn with(backend: &str, tweak: impl FnOnce(&mut HubConfig)) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config_in(dir.path(), fresh_database(backend, dir.path()).await);
        tweak(&mut cfg);
        let hub = Hub::open(cfg).await.expect("hub opens");
        let router = medfed_hub::router(hub.clone());
        Fixture { dir, hub, router }
    }

    /// A user with an API token.
    pub async fn user(
        &self,
        subject: &str,
        org: Option<&str>,
        admin: bool,
        grants: &[(&str, StudyRole)],
    ) -> (String, String) {
        let u = self
            .hub
            .catalogue
            .create_user(subject, org, admin)
            .await
            .expect("user");
        for (study, role) in grants {
            self.hub
                .catalogue
                .grant(&u.id, study, *role)
                .await
                .expect("grant");
        }
        let token = medfed_hub::issue_token(&self.hub, &u.id, 1)
            .await
            .expect("token");
        (u.id, token)
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    pub async fn send_raw(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default();
        (status, headers, bytes)
    }

    /// An authenticated GET, answered raw.
    pub async fn get_raw(
        &self,
        path: &str,
        token: &str,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let req = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        self.send_raw(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, _, bytes) = self.send_raw(req).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Upload `bytes` as one object through the chunked API; returns the object id.
    pub async fn upload(
        &self,
        token: &str,
        dataset: &str,
        name: &str,
        media_type: &str,
        bytes: &[u8],
        chunk: usize,
    ) -> String {
        let upload = self
            .start_upload(token, dataset, name, media_type, bytes, chunk)
            .await;
        for (i, c) in bytes.chunks(chunk.max(1)).enumerate() {
            let (s, _) = self.put_chunk(token, &upload, i, c).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
        }
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/v1/uploads/{upload}/complete"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().expect("object id").to_string()
    }

    pub async fn start_upload(
        &self,
        token: &str,
        dataset: &str,
        name: &str,
        media_type: &str,
        bytes: &[u8],
        chunk: usize,
    ) -> String {
        let (s, v) = self
            .call(
                "POST",
                &format!("/api/v1/datasets/{dataset}/uploads"),
                Some(token),
                Some(json!({"name": name, "media_type": media_type, "size": bytes.len(), "sha256": sha256(bytes), "chunk_size": chunk})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["upload"].as_str().expect("upload id").to_string()
    }

    pub async fn put_chunk(
        &self,
        token: &str,
        upload: &str,
        index: usize,
        bytes: &[u8],
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("PUT")
            .uri(format!("/api/v1/uploads/{upload}/chunks/{index}"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-medfed-chunk-sha256", sha256(bytes))
            .body(Body::from(bytes.to_vec()))
            .expect("request");
        self.send(req).await
    }

    pub async fn stow(
        &self,
        token: &str,
        dataset: &str,
        instances: &[Vec<u8>],
    ) -> (StatusCode, Value) {
        let mut body = Vec::new();
        for i in instances {
            body.extend_from_slice(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n");
            body.extend_from_slice(i);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--b0undary--\r\n");
        let req = Request::builder()
            .method("POST")
            .uri(format!("/api/v1/dicomweb/studies?dataset={dataset}"))
            .header("authorization", format!("Bearer {token}"))
            .header(
                "content-type",
                "multipart/related; type=\"application/dicom\"; boundary=b0undary",
            )
            .body(Body::from(body))
            .expect("request");
        self.send(req).await
    }

    /// Every file under the hub's data directory with its size (to prove nothing was written
    /// outside its place).
    pub fn tree(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = walkdir::WalkDir::new(self.dir.path())
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e
                    .path()
                    .strip_prefix(self.dir.path())
                    .unwrap_or(e.path())
                    .display()
                    .to_string();
                (rel, e.metadata().map(|m| m.len()).unwrap_or(0))
            })
            .collect();
        v.sort();
        v
    }
}

/// One study (`study-a`, organisation `org1`) with a site operator, a researcher, a data owner
/// and one dataset registered by the operator.
pub struct Site {
    pub f: Fixture,
    pub op: String,
    pub researcher: String,
    pub owner: String,
    pub dataset: String,
}

pub async fn site(backend: &str) -> Site {
    site_in(Fixture::new(backend).await).await
}

pub async fn site_in(f: Fixture) -> Site {
    f.hub
        .catalogue
        .create_organisation("org1", "Hospital One")
        .await
        .unwrap();
    f.hub
        .catalogue
        .create_study("study-a", "A", &["org1".into()])
        .await
        .unwrap();
    let (_, op) = f
        .user(
            "local:op",
            Some("org1"),
            false,
            &[("study-a", SiteOperator)],
        )
        .await;
    let (_, researcher) = f
        .user("local:res", Some("org1"), false, &[("study-a", Researcher)])
        .await;
    let (_, owner) = f
        .user(
            "local:owner",
            Some("org1"),
            false,
            &[("study-a", DataOwner)],
        )
        .await;
    let (s, v) = f
        .call(
            "POST",
            "/api/v1/studies/study-a/datasets",
            Some(&op),
            Some(dataset_body()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let dataset = v["id"].as_str().unwrap().to_string();
    Site {
        f,
        op,
        researcher,
        owner,
        dataset,
    }
}

pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn dataset_body() -> Value {
    json!({
        "title": "Lung CT, site one",
        "licence": "CC-BY-4.0 for study members",
        "retention_until": "2099-12-31",
        // The producing site is set by the hub from the caller.
        "provenance": {"deid_settings": "basic+rlmd", "medfed_version": "0.1.0"},
    })
}

/// A patient pseudonym in medfed-deid's form (`MF` and 16 base-32 characters) spelling `word`.
pub fn pseudonym(word: &str) -> String {
    let mut p: String = word
        .to_ascii_uppercase()
        .chars()
        .filter(|c| c.is_ascii_uppercase() || ('2'..='7').contains(c))
        .take(16)
        .collect();
    while p.len() < 16 {
        p.push('A');
    }
    format!("MF{p}")
}

/// A small CT instance. `identity_removed`: marked de-identified (0012,0062 and the CID 7050
/// codes of the basic profile with Retain Longitudinal Modified Dates and Clean Descriptors in
/// 0012,0064), which the hub believes only if the content agrees (pass pseudonyms and `2.25`
/// UIDs for an instance it accepts).
pub fn instance(
    study: &str,
    series: &str,
    sop: &str,
    patient_id: &str,
    patient_name: &str,
    identity_removed: bool,
) -> Vec<u8> {
    instance_described(
        study,
        series,
        sop,
        patient_id,
        patient_name,
        identity_removed,
        "",
    )
}

/// [`instance`] with a Study Description (kept, cleaned, under Clean Descriptors).
pub fn instance_described(
    study: &str,
    series: &str,
    sop: &str,
    patient_id: &str,
    patient_name: &str,
    identity_removed: bool,
    description: &str,
) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    let put = |o: &mut InMemDicomObject, t, vr, v: &str| {
        o.put(DataElement::new(t, vr, PrimitiveValue::from(v)))
    };
    put(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::CT_IMAGE_STORAGE,
    );
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop);
    put(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, study);
    put(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, series);
    put(&mut obj, tags::MODALITY, VR::CS, "CT");
    put(&mut obj, tags::PATIENT_ID, VR::LO, patient_id);
    put(&mut obj, tags::PATIENT_NAME, VR::PN, patient_name);
    put(&mut obj, tags::STUDY_DATE, VR::DA, "20240315");
    put(&mut obj, tags::SERIES_NUMBER, VR::IS, "1");
    put(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    if !description.is_empty() {
        put(&mut obj, tags::STUDY_DESCRIPTION, VR::LO, description);
    }
    if identity_removed {
        put(&mut obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        let code = |value: &str| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
            ])
        };
        obj.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::new(
                vec![code("113100"), code("113107"), code("113105")],
                dicom_core::Length::UNDEFINED,
            ),
        ));
    }
    obj.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(4u16),
    ));
    obj.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(4u16),
    ));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![7u16; 16].into()),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .expect("meta");
    let file = obj.with_exact_meta(meta);
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write DICOM");
    out
}
